// The connection's state, as an app shows it (onConnectionChange): a server that is down at
// boot (with and without waitForServer), a token that cannot be had yet, and an outage
// mid-session that outlasts the first reconnect. The outages are real: a TCP proxy in front
// of the server refuses connections for a while.
import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';

import { configure, onConnectionChange, ServerError, WebContainer } from '../dist/index.js';
import { flakyProxy, rejection, run, until } from './helpers.mjs';

const TOKEN = process.env.CLOUDCONTAINER_TOKEN;
let cleanup = [];
afterEach(async () => {
  for (const step of cleanup.reverse()) await step();
  cleanup = [];
  configure({ url: undefined, token: TOKEN, waitForServer: undefined });
});

/** A server that is down (a proxy that refuses connections until `open()`), and the
 * connection changes reported meanwhile. */
async function downServer() {
  const proxy = await flakyProxy();
  proxy.refuse();
  const changes = [];
  cleanup.push(() => proxy.close(), onConnectionChange((change) => changes.push(change)));
  return { proxy, changes, open: () => proxy.reopen() };
}

test('without waitForServer, boot rejects at once when the server cannot be reached', async () => {
  const down = await downServer();
  configure({ url: down.proxy.url });
  const error = await rejection(WebContainer.boot());
  assert.ok(error instanceof ServerError, String(error));
  assert.equal(error.code, 'unreachable');
  assert.match(error.message, /cannot be reached/);
});

test('with waitForServer, boot waits for the server, says so, and then works', async () => {
  const down = await downServer();
  configure({ url: down.proxy.url, waitForServer: true });
  const booting = WebContainer.boot();
  await until(() => down.changes.length >= 1, 'the offline report');
  assert.equal(down.changes[0].state, 'offline');
  assert.match(down.changes[0].message, /cannot be reached/);
  await down.open();
  const wc = await booting;
  cleanup.push(() => wc.teardown());
  assert.deepEqual(down.changes.at(-1), { state: 'online', message: 'The cloudcontainer server is reachable.' });
  assert.equal((await run(wc, 'echo', ['back'])).output.trim(), 'back');
});

test("with waitForServer, a page's token that cannot be had yet is retried, not fatal", async () => {
  const changes = [];
  cleanup.push(onConnectionChange((change) => changes.push(change)));
  let asked = 0;
  configure({
    waitForServer: true,
    token: async () => {
      if (++asked < 3) throw new Error('502 from the page server');
      return TOKEN;
    },
  });
  const wc = await WebContainer.boot();
  cleanup.push(() => wc.teardown());
  assert.equal(asked, 3);
  // Once per failed try (an app that shows it late learns it at the next), then online once.
  assert.deepEqual(changes.map((change) => change.state), ['offline', 'offline', 'online']);
  assert.match(changes[0].message, /No token for .*502 from the page server/);
});

test('an outage mid-session is reported once it outlasts a retry, and its end too', async () => {
  const proxy = await flakyProxy();
  cleanup.push(() => proxy.close());
  configure({ url: proxy.url });
  const wc = await WebContainer.boot();
  cleanup.push(() => wc.teardown());
  const changes = [];
  cleanup.push(onConnectionChange((change) => changes.push(change)));
  await proxy.cut(3_000);
  await until(() => changes.some((change) => change.state === 'online'), 'the online report');
  assert.equal(changes[0].state, 'offline');
  assert.match(changes[0].message, /Reconnecting/);
  assert.equal(changes.at(-1).state, 'online');
  await wc.fs.writeFile('after.txt', 'kept');
  assert.equal(await wc.fs.readFile('after.txt', 'utf8'), 'kept');
});
