// PARITY.md "Files": WebContainer's fs semantics as bolt.diy relies on them.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { boot, rejection, run, WORKDIR } from './helpers.mjs';

let wc;
before(async () => {
  wc = await boot();
});
after(() => wc?.teardown());

test('paths are jailed at the workdir: ../../src/a.txt is /home/project/src/a.txt', async () => {
  assert.equal(wc.workdir, WORKDIR);
  await wc.fs.mkdir('../../src', { recursive: true });
  await wc.fs.writeFile('../../src/a.txt', 'from bolt');
  assert.equal(await wc.fs.readFile(`${WORKDIR}/src/a.txt`, 'utf-8'), 'from bolt');
  assert.equal(await wc.fs.readFile('/src/a.txt', 'utf8'), 'from bolt');
  assert.equal(await wc.fs.readFile('src/a.txt', 'utf-8'), 'from bolt');
  const shell = await run(wc, 'cat', [`${WORKDIR}/src/a.txt`]);
  assert.equal(shell.output, 'from bolt'); // one namespace with processes
  await wc.fs.mkdir('../..', { recursive: true }); // idempotent, even at the root
});

test('readFile: bytes by default, strings with an encoding, lossy UTF-8', async () => {
  const all = Uint8Array.from({ length: 256 }, (_, i) => i);
  await wc.fs.writeFile('bytes.bin', all);
  const back = await wc.fs.readFile('bytes.bin');
  assert.ok(back instanceof Uint8Array);
  assert.deepEqual([...back], [...all]);
  // A Node Buffer is a view into a shared pool: only its own bytes are written.
  await wc.fs.writeFile('buffer.bin', Buffer.from('pooled bytes'));
  assert.equal(await wc.fs.readFile('buffer.bin', 'utf-8'), 'pooled bytes');
  await wc.fs.writeFile('bad.txt', Uint8Array.of(0x61, 0xff, 0x62));
  assert.equal(await wc.fs.readFile('bad.txt', 'utf-8'), 'a\ufffdb');
  assert.equal(await wc.fs.readFile('bytes.bin', 'hex'), Buffer.from(all).toString('hex'));
  await wc.fs.writeFile('b64.txt', Buffer.from('hello').toString('base64'), { encoding: 'base64' });
  assert.equal(await wc.fs.readFile('b64.txt', 'utf8'), 'hello');
  await wc.fs.writeFile('opts.txt', 'with options', { encoding: 'utf8' });
  await wc.fs.writeFile('undef.txt', 'undefined encoding', { encoding: undefined });
  await wc.fs.writeFile('str.txt', 'a string encoding', 'utf8');
  assert.equal(await wc.fs.readFile('str.txt', 'utf-8'), 'a string encoding');
  assert.equal(await wc.fs.readFile('undef.txt', 'utf-8'), 'undefined encoding');
});

test('errors carry Node codes and messages', async () => {
  const missing = await rejection(wc.fs.readFile('nope.txt'));
  assert.equal(missing.code, 'ENOENT');
  assert.match(missing.message, /^ENOENT/);
  await wc.fs.mkdir('folder');
  assert.equal((await rejection(wc.fs.readFile('folder'))).code, 'EISDIR');
  assert.equal((await rejection(wc.fs.writeFile('no/such/dir.txt', 'x'))).code, 'ENOENT');
  assert.equal((await rejection(wc.fs.mkdir('folder'))).code, 'EEXIST');
  assert.equal((await rejection(wc.fs.mkdir('a/b/c'))).code, 'ENOENT');
  assert.equal((await rejection(wc.fs.readdir('nope'))).code, 'ENOENT');
});

test('readdir: names, file types, buffers', async () => {
  await wc.fs.mkdir('list/sub', { recursive: true });
  await wc.fs.writeFile('list/one.txt', '1');
  assert.deepEqual((await wc.fs.readdir('list')).sort(), ['one.txt', 'sub']);
  const typed = await wc.fs.readdir('/list', { withFileTypes: true });
  const byName = Object.fromEntries(typed.map((e) => [e.name, [e.isFile(), e.isDirectory()]]));
  assert.deepEqual(byName, { 'one.txt': [true, false], sub: [false, true] });
  const buffers = await wc.fs.readdir(`${WORKDIR}/list`, 'buffer');
  assert.ok(buffers.every((name) => name instanceof Uint8Array));
  assert.ok(!(await wc.fs.readdir('/')).includes('.'));
});

test('rm needs recursive for folders and force for missing paths; rename', async () => {
  await wc.fs.mkdir('tree/deep', { recursive: true });
  await wc.fs.writeFile('tree/deep/f.txt', 'x');
  assert.ok(['EISDIR', 'ENOTEMPTY', 'ERR_FS_EISDIR'].includes((await rejection(wc.fs.rm('tree'))).code));
  await wc.fs.rm('tree', { recursive: true });
  assert.equal((await rejection(wc.fs.readdir('tree'))).code, 'ENOENT');
  assert.equal((await rejection(wc.fs.rm('gone.txt'))).code, 'ENOENT');
  await wc.fs.rm('gone.txt', { force: true });
  await wc.fs.writeFile('old.txt', 'moved');
  await wc.fs.rename('old.txt', 'new.txt');
  assert.equal(await wc.fs.readFile('new.txt', 'utf-8'), 'moved');
  await wc.fs.writeFile('plain.txt', 'p');
  await wc.fs.rm('plain.txt', { recursive: false });
  assert.equal((await rejection(wc.fs.readFile('plain.txt'))).code, 'ENOENT');
});

test('200 unawaited mkdir + write pairs run in the order issued', async () => {
  const calls = [];
  for (let n = 0; n < 200; n++) {
    calls.push(wc.fs.mkdir(`order/d${n}`, { recursive: true }));
    calls.push(wc.fs.writeFile(`order/d${n}/f.txt`, String(n)));
    calls.push(wc.fs.writeFile('order/last.txt', String(n)));
  }
  await Promise.all(calls);
  assert.equal(await wc.fs.readFile('order/last.txt', 'utf-8'), '199');
  assert.equal((await wc.fs.readdir('order')).length, 201);
  assert.equal(await wc.fs.readFile('order/d137/f.txt', 'utf-8'), '137');
});

test('large files go whole, in order with the calls around them', async () => {
  const big = Uint8Array.from({ length: 3 * 1024 * 1024 + 7 }, (_, i) => (i * 31) % 251);
  const small1 = wc.fs.writeFile('large/before.txt', 'before').catch((e) => e);
  await wc.fs.mkdir('large', { recursive: true });
  const calls = [
    wc.fs.writeFile('large/big.bin', big),
    wc.fs.writeFile('large/big.bin.done', 'after'),
    wc.fs.readFile('large/big.bin'),
  ];
  const [, , read] = await Promise.all(calls);
  assert.equal((await small1).code, 'ENOENT'); // made before the mkdir: its parent was missing
  assert.equal(read.length, big.length);
  assert.ok(read.every((byte, i) => byte === big[i]));
  const sum = await run(wc, 'sh', ['-c', 'wc -c < large/big.bin']);
  assert.equal(sum.output.trim(), String(big.length));
  const text = 'é'.repeat(600_000); // 1.2 MB of UTF-8 from a string
  await wc.fs.writeFile('large/text.txt', text);
  assert.equal(await wc.fs.readFile('large/text.txt', 'utf-8'), text);
});

test('mount a tree and export it back as json, zip and binary', async () => {
  await wc.fs.mkdir('mnt', { recursive: true });
  const tree = {
    'package.json': { file: { contents: '{"name":"mounted"}' } },
    src: {
      directory: {
        'main.js': { file: { contents: 'console.log(1)' } },
        'logo.bin': { file: { contents: Uint8Array.of(0, 1, 2, 255) } },
        [`${'n'.repeat(120)}.txt`]: { file: { contents: 'a long name' } },
      },
    },
    link: { file: { symlink: 'src/main.js' } },
  };
  await wc.mount(tree, { mountPoint: 'mnt' });
  assert.equal(await wc.fs.readFile('mnt/src/main.js', 'utf-8'), 'console.log(1)');
  assert.equal(await wc.fs.readFile('mnt/link', 'utf-8'), 'console.log(1)');
  const exported = await wc.export('mnt');
  assert.equal(exported['package.json'].file.contents, '{"name":"mounted"}');
  assert.deepEqual([...exported.src.directory['logo.bin'].file.contents], [0, 1, 2, 255]);
  assert.equal(exported.src.directory[`${'n'.repeat(120)}.txt`].file.contents, 'a long name');
  assert.deepEqual(exported.link, { file: { symlink: 'src/main.js' } });
  const without = await wc.export('mnt', { format: 'json', excludes: ['*.bin'] });
  assert.equal(without.src.directory['logo.bin'], undefined);
  await assert.rejects(wc.export('mnt/package.json'), {
    message: 'It is not possible to export a single file in the JSON format.',
  });
  const zip = await wc.export('mnt', { format: 'zip' });
  assert.deepEqual([...zip.subarray(0, 2)], [0x50, 0x4b]);
  const binary = await wc.export('mnt', { format: 'binary' });
  await wc.mount(binary, { mountPoint: 'copy' });
  assert.equal(await wc.fs.readFile('copy/src/main.js', 'utf-8'), 'console.log(1)');
  await assert.rejects(wc.mount(Uint8Array.of(1, 2, 3)), /not supported/);
});

test('fs.watch reports renames and changes', async () => {
  await wc.fs.mkdir('watched', { recursive: true });
  const seen = [];
  const watcher = wc.fs.watch('watched', { recursive: true }, (event, name) => seen.push([event, name]));
  await new Promise((resolve) => setTimeout(resolve, 500));
  await wc.fs.writeFile('watched/a.txt', '1');
  const deadline = Date.now() + 30_000;
  while (!seen.some(([, name]) => name === 'a.txt') && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  watcher.close();
  assert.ok(seen.some(([event, name]) => event === 'rename' && name === 'a.txt'), JSON.stringify(seen));
});
