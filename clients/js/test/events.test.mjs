// Events: port and server-ready with the preview URL, unsubscribing, watchPaths, textSearch.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { boot, run, until, WORKDIR } from './helpers.mjs';

let wc;
before(async () => {
  wc = await boot();
});
after(() => wc?.teardown());

const SERVER = `require('http').createServer((q, s) => s.end('hi from ' + q.url)).listen(3000)`;

test('port open, server-ready and port close, with a stable origin per port', async () => {
  const ports = [];
  const ready = [];
  const unsubscribe = wc.on('port', (port, type, url) => ports.push([port, type, url]));
  const unready = wc.on('server-ready', (port, url) => ready.push([port, url]));
  await wc.fs.writeFile('server.cjs', SERVER);
  const server = await wc.spawn('node', ['server.cjs']);
  await until(() => ready.length, 'server-ready');
  const [port, url] = ready[0];
  assert.equal(port, 3000);
  assert.match(url, /^http:\/\/[^/]+:\d+$/); // an origin: bolt concatenates paths to it
  assert.deepEqual(ports[0], [3000, 'open', url]);
  server.kill();
  await until(() => ports.some(([, type]) => type === 'close'), 'the close event');
  assert.deepEqual(ports.at(-1), [3000, 'close', url]);
  unsubscribe();
  unready();
  const count = ports.length;
  const again = await wc.spawn('node', ['server.cjs']);
  await new Promise((resolve) => setTimeout(resolve, 2000));
  assert.equal(ports.length, count); // unsubscribed: nothing more
  again.kill();
  await again.exit;
});

test('internal.watchPaths with bolt.diy options: initial adds, content, exclusions', async () => {
  await wc.fs.mkdir('app/src', { recursive: true });
  await wc.fs.writeFile('app/src/existing.ts', 'old');
  const events = [];
  const stop = wc.internal.watchPaths(
    {
      include: [`${WORKDIR}/**`],
      exclude: ['**/node_modules', '.git', '**/package-lock.json'],
      includeContent: true,
    },
    (batch) => events.push(...batch),
  );
  const find = (type, path) => events.find((e) => e.type === type && e.path === path);
  await until(() => find('add_file', `${WORKDIR}/app/src/existing.ts`), 'the initial add');
  assert.ok(
    events.findIndex((e) => e.path === `${WORKDIR}/app/src`) <
      events.findIndex((e) => e.path === `${WORKDIR}/app/src/existing.ts`),
  );
  await wc.fs.writeFile('app/src/new.ts', 'export const x = 1;');
  const added = await until(() => find('add_file', `${WORKDIR}/app/src/new.ts`), 'the new file');
  assert.equal(new TextDecoder().decode(added.buffer), 'export const x = 1;');
  await wc.fs.mkdir('app/node_modules/pkg', { recursive: true });
  await wc.fs.writeFile('app/node_modules/pkg/index.js', 'ignored');
  await wc.fs.writeFile('app/package-lock.json', '{}');
  await wc.fs.writeFile('app/src/new.ts', 'changed');
  const changed = await until(() => find('change', `${WORKDIR}/app/src/new.ts`), 'the change');
  assert.equal(new TextDecoder().decode(changed.buffer), 'changed');
  assert.ok(!events.some((e) => e.path.includes('node_modules') || e.path.endsWith('package-lock.json')));
  await wc.fs.rm('app/src', { recursive: true });
  await until(() => find('remove_dir', `${WORKDIR}/app/src`), 'the removal');
  const removals = events.filter((e) => e.type.startsWith('remove')).map((e) => e.path);
  assert.ok(removals.indexOf(`${WORKDIR}/app/src/existing.ts`) < removals.indexOf(`${WORKDIR}/app/src`));
  stop();
});

test('internal.watchPaths during a real npm install: package.json seen, node_modules and the lock never', async () => {
  await wc.fs.mkdir('npm-app', { recursive: true });
  await wc.fs.writeFile('npm-app/package.json', JSON.stringify({ name: 'npm-app', version: '1.0.0' }));
  const events = [];
  const stop = wc.internal.watchPaths(
    {
      include: [`${WORKDIR}/npm-app/**`],
      exclude: ['**/node_modules', '.git', '**/package-lock.json'],
      includeContent: true,
    },
    (batch) => events.push(...batch),
  );
  const manifest = `${WORKDIR}/npm-app/package.json`;
  await until(() => events.some((e) => e.path === manifest), 'the initial add');
  const install = await run(wc, 'npm', ['install', 'is-number@7', '--no-audit', '--no-fund'], { cwd: 'npm-app' });
  assert.equal(install.code, 0, install.output);
  const text = (e) => new TextDecoder().decode(e.buffer);
  await until(
    () => events.some((e) => e.type === 'change' && e.path === manifest && text(e).includes('is-number')),
    "npm's change to package.json",
  );
  assert.ok(await wc.fs.readFile('npm-app/node_modules/is-number/package.json', 'utf-8'));
  const leaked = events.filter((e) => e.path.includes('node_modules') || e.path.endsWith('package-lock.json'));
  assert.deepEqual(leaked, []);
  stop();
});

test('internal.textSearch streams bolt-shaped matches', async () => {
  await wc.fs.mkdir('find/node_modules', { recursive: true });
  await wc.fs.writeFile('find/a.ts', 'const needle = 1;\nno match\nlet x = needle + NEEDLE;\n');
  await wc.fs.writeFile('find/node_modules/b.ts', 'needle');
  const progress = [];
  const results = await wc.internal.textSearch(
    'needle',
    {
      homeDir: WORKDIR,
      folders: [WORKDIR],
      includes: ['**/*.*'],
      excludes: ['**/node_modules/**'],
      gitignore: true,
      requireGit: false,
      globalIgnoreFiles: true,
      ignoreSymlinks: false,
      resultLimit: 500,
      isRegex: false,
      caseSensitive: false,
      isWordMatch: false,
    },
    (path, matches) => progress.push([path, matches]),
  );
  assert.equal(progress.length, 1);
  const [path, matches] = progress[0];
  assert.equal(path, `${WORKDIR}/find/a.ts`);
  assert.equal(results.get(path), matches);
  assert.equal(matches.length, 2);
  assert.deepEqual(matches[0].ranges, [{ startLineNumber: 1, endLineNumber: 1, startColumn: 6, endColumn: 12 }]);
  assert.equal(matches[0].preview.text, 'const needle = 1;');
  assert.equal(matches[1].ranges.length, 2); // needle and NEEDLE (case-insensitive)
  assert.equal(matches[1].preview.matches[0].startLineNumber, 3);
});
