// spawn: PTY processes, their streams, exit codes, input, resize, and the bolt shell's chunks.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { boot, run, until, WORKDIR } from './helpers.mjs';

let wc;
before(async () => {
  wc = await boot();
});
after(() => wc?.teardown());

test('spawn with args, with options only, exit codes', async () => {
  const echo = await run(wc, 'echo', ['hello', 'world']);
  assert.equal(echo.code, 0);
  assert.match(echo.output, /hello world\r\n/); // a PTY: CRLF
  const process = await wc.spawn('pwd', { terminal: { cols: 80, rows: 24 } });
  const chunks = [];
  await process.output.pipeTo(new WritableStream({ write: (c) => void chunks.push(c) }));
  assert.equal(await process.exit, 0);
  assert.equal(chunks.join('').trim(), WORKDIR);
  assert.equal((await run(wc, 'false')).code, 1);
  assert.equal((await run(wc, 'sh', ['-c', 'kill -9 $$'])).code, 137);
  const missing = await run(wc, 'no-such-program');
  assert.equal(missing.code, 127);
  assert.match(missing.output, /not found/);
});

test('cwd (relative to the workdir) and env', async () => {
  await wc.fs.mkdir('sub/dir', { recursive: true });
  const where = await run(wc, 'sh', ['-c', 'pwd; echo "$GREETING $N $FLAG"'], {
    cwd: 'sub/dir',
    env: { GREETING: 'hi', N: 42, FLAG: true },
  });
  assert.equal(where.output.replace(/\r/g, ''), `${WORKDIR}/sub/dir\nhi 42 true\n`);
});

test('input, kill, and writing to an exited process', async () => {
  const cat = await wc.spawn('cat');
  const chunks = [];
  const reading = cat.output.pipeTo(new WritableStream({ write: (c) => void chunks.push(c) }));
  const writer = cat.input.getWriter();
  await writer.write('typed line\n');
  await until(() => chunks.join('').includes('typed line'), 'the echo of the input');
  cat.kill();
  assert.notEqual(await cat.exit, 0);
  await reading;
  const warnings = [];
  const warn = console.warn;
  console.warn = (...args) => warnings.push(args.join(' '));
  try {
    await writer.write('too late\n'); // dropped with a warning, as WebContainer does
  } finally {
    console.warn = warn;
  }
  assert.deepEqual(warnings, ['This process already exited']);
});

test('terminal size and resize', async () => {
  const shell = await wc.spawn('sh', ['-c', 'stty size; read line; stty size'], {
    terminal: { cols: 100, rows: 30 },
  });
  const chunks = [];
  const reading = shell.output.pipeTo(new WritableStream({ write: (c) => void chunks.push(c) }));
  await until(() => chunks.join('').includes('30 100'), 'the first size');
  shell.resize({ cols: 120, rows: 40 });
  await new Promise((resolve) => setTimeout(resolve, 300));
  const writer = shell.input.getWriter();
  await writer.write('\n');
  assert.equal(await shell.exit, 0);
  await reading;
  assert.match(chunks.join(''), /40 120/);
});

test('a character split across frames arrives whole', async () => {
  const split = await run(wc, 'sh', ['-c', "printf '\\342\\202'; sleep 0.3; printf '\\254 done'"]);
  assert.ok(split.output.includes('€ done'), JSON.stringify(split.output));
  assert.ok(!split.output.includes('\ufffd'));
  assert.ok(split.chunks.every((chunk) => chunk.length > 0));
});

test('output: false never yields; stdout and stderr close at exit', async () => {
  const quiet = await wc.spawn('echo', ['unseen'], { output: false });
  const chunks = [];
  await quiet.output.pipeTo(new WritableStream({ write: (c) => void chunks.push(c) }));
  assert.equal(await quiet.exit, 0);
  assert.deepEqual(chunks, []);
  const both = await wc.spawn('echo', ['x'], { stdout: true, stderr: true });
  await Promise.all([
    both.stdout.pipeTo(new WritableStream()),
    both.stderr.pipeTo(new WritableStream()),
    both.output.pipeTo(new WritableStream()),
  ]);
  assert.equal(await both.exit, 0);
});

test('the bolt shell: one OSC 654 marker per chunk, at its end', async () => {
  const shell = await wc.spawn('/bin/jsh', ['--osc'], { terminal: { cols: 80, rows: 15 } });
  const chunks = [];
  const reading = shell.output.pipeTo(new WritableStream({ write: (c) => void chunks.push(c) }));
  const markers = () => chunks.flatMap((c) => [...c.matchAll(/\x1b\]654;([^\x07]*)\x07/g)].map((m) => m[1]));
  await until(() => markers().includes('prompt'), 'the first prompt');
  assert.equal(markers()[0], 'interactive');
  const writer = shell.input.getWriter();
  await writer.write('echo one\n');
  await until(() => markers().filter((m) => m === 'prompt').length >= 2, 'the second prompt');
  assert.ok(markers().some((m) => /^exit=\d+:0$/.test(m)), markers().join(' '));
  // A Ctrl-C while a program prints: the exit marker and the prompt are separate chunks.
  await writer.write('while true; do echo tick; sleep 0.01; done\n');
  await until(() => chunks.join('').includes('tick'), 'the loop to print');
  const before = chunks.length;
  await writer.write('\x03');
  await until(() => markers().filter((m) => m === 'prompt').length >= 3, 'the prompt after ^C');
  const after = chunks.slice(before).filter((c) => c.includes('\x1b]654;'));
  assert.match(after[0], /\x1b\]654;exit=\d+:130\x07$/);
  assert.match(after[1], /\x1b\]654;prompt\x07$/);
  for (const chunk of chunks) {
    assert.ok((chunk.match(/\x1b\]654;/g) ?? []).length <= 1, JSON.stringify(chunk));
  }
  await writer.write('exit\n');
  await shell.exit;
  await reading;
});
