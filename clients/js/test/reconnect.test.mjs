// Connections that drop: a TCP proxy between the client and the server cuts them (the server
// and the container go on). Processes resume their output without a byte lost or repeated,
// calls made offline run in order, watches resume from their cursor, and a deleted container
// rejects calls instead of leaving them hanging.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { configure, ContainerGoneError, WebContainer } from '../dist/index.js';
import { flakyProxy, until, WORKDIR } from './helpers.mjs';

let proxy;
let wc;
before(async () => {
  proxy = await flakyProxy();
  configure({ url: proxy.url });
  wc = await WebContainer.boot();
});
after(async () => {
  try {
    wc?.teardown();
  } catch {
    // torn down by a test
  }
  await proxy?.close();
});

test("a process's output resumes after a drop: every line once, in order", async () => {
  const lines = 60;
  const process = await wc.spawn('sh', ['-c', `for i in $(seq 1 ${lines}); do echo line-$i; sleep 0.05; done`]);
  const chunks = [];
  const reading = process.output.pipeTo(new WritableStream({ write: (c) => void chunks.push(c) }));
  await until(() => chunks.join('').includes('line-10'), 'the first lines');
  await proxy.cut(1_000);
  assert.equal(await process.exit, 0);
  await reading;
  const seen = chunks.join('').match(/line-\d+/g);
  assert.deepEqual(seen, Array.from({ length: lines }, (_, i) => `line-${i + 1}`));
});

test('calls made while offline wait, then run in the order made', async () => {
  const cut = proxy.cut(1_500);
  await new Promise((resolve) => setTimeout(resolve, 100));
  const calls = [];
  for (let n = 0; n < 20; n++) {
    calls.push(wc.fs.mkdir(`offline/d${n}`, { recursive: true }));
    calls.push(wc.fs.writeFile(`offline/d${n}/f.txt`, String(n)));
    calls.push(wc.fs.writeFile('offline/last.txt', String(n)));
  }
  await cut;
  await Promise.all(calls);
  assert.equal(await wc.fs.readFile('offline/last.txt', 'utf-8'), '19');
  assert.equal((await wc.fs.readdir('offline')).length, 21);
});

test('a watch resumes from its cursor: changes made while offline arrive once', async () => {
  await wc.fs.mkdir('journal', { recursive: true });
  const events = [];
  const stop = wc.internal.watchPaths({ include: [`${WORKDIR}/journal/**`], includeContent: true }, (batch) =>
    events.push(...batch),
  );
  await wc.fs.writeFile('journal/before.txt', 'before');
  await until(() => events.some((e) => e.path.endsWith('before.txt')), 'the first event');
  const writer = await wc.spawn('sh', ['-c', 'sleep 0.5; echo a > journal/a.txt; echo b > journal/b.txt; sleep 0.5']);
  await proxy.cut(2_000);
  await writer.exit;
  await until(() => events.some((e) => e.path.endsWith('b.txt')), 'the offline changes');
  const added = events.filter((e) => e.type === 'add_file').map((e) => e.path.slice(`${WORKDIR}/journal/`.length));
  assert.deepEqual(added.sort(), ['a.txt', 'b.txt', 'before.txt']);
  stop();
});

test('a container that is gone rejects waiting and later calls', async () => {
  const token = process.env.CLOUDCONTAINER_TOKEN;
  const deleted = await fetch(`${process.env.CLOUDCONTAINER_URL}/api/containers/${wc.containerId}`, {
    method: 'DELETE',
    headers: { authorization: `Bearer ${token}` },
  });
  assert.equal(deleted.status, 204);
  await until(async () => {
    try {
      await wc.fs.readdir('/');
      return false;
    } catch (error) {
      return error instanceof ContainerGoneError;
    }
  }, 'calls to be refused');
  await assert.rejects(wc.fs.writeFile('x.txt', 'x'), ContainerGoneError);
});
