// bolt.diy's own code (BoltShell, FilesStore, the message parser and ActionRunner), bundled
// from its source archive with `@webcontainer/api` aliased to this package, driven in Node.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { boltModules } from './bolt/bundle.mjs';
import { boot, run, until, WORKDIR } from './helpers.mjs';

const SESSIONS = Number(process.env.BOLT_SESSIONS ?? 50);
const PREEMPT_MS = 5_000; // the next command runs within 5 s of a dev server (PARITY.md)
const DEV_SERVER_DELAY_MS = 2_000; // bolt's runner waits this long after starting one

// bolt's code runs in browsers: it reaches for `self` where Node has `globalThis`.
globalThis.self ??= globalThis;

let wc;
let bolt;
let source;
before(async () => {
  ({ modules: bolt, source } = await boltModules());
  // In a browser bolt's path module resolves relative paths against `/`, not a directory.
  process.chdir('/');
  wc = await boot();
});
after(() => wc?.teardown());

/** xterm as bolt's terminal store uses it: `input` is typing, `write` is the screen. */
function terminal() {
  const listeners = [];
  const screen = [];
  return {
    cols: 80,
    rows: 15,
    screen,
    reset() {},
    write: (data) => void screen.push(data),
    onData: (listener) => void listeners.push(listener),
    input: (data) => listeners.forEach((listener) => listener(data)),
  };
}

async function newShell() {
  const shell = new bolt.BoltShell();
  const screen = terminal();
  await shell.init(wc, screen);
  await shell.ready();
  return { shell, screen };
}

function within(ms, promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** bolt's 25 commands: 20 echoes, a failure, an unknown command, an empty line, a dev server
 * started and not awaited (as bolt's runner starts one), then the command that preempts it. */
async function session(shell, screen, devServer, ready) {
  for (let step = 0; step < 20; step++) {
    const result = await within(30_000, shell.executeCommand('s', `echo step-$((${step}*2))`), `step ${step}`);
    assert.equal(result.exitCode, 0);
    assert.ok(result.output.includes(`step-${step * 2}`), result.output);
  }
  assert.equal((await shell.executeCommand('s', 'false')).exitCode, 1);
  const unknown = await shell.executeCommand('s', 'nosuch-tool --version');
  assert.equal(unknown.exitCode, 127);
  assert.match(unknown.output, /command not found/);
  assert.equal((await shell.executeCommand('s', '')).exitCode, 0);
  const server = shell.executeCommand('dev', devServer);
  await until(() => screen.screen.join('').includes(ready), `${devServer} to print ${ready}`);
  await new Promise((resolve) => setTimeout(resolve, DEV_SERVER_DELAY_MS));
  const ok = await within(PREEMPT_MS, shell.executeCommand('s', 'echo ok'), 'echo ok after the dev server');
  assert.equal(ok.exitCode, 0);
  assert.match(ok.output, /ok/);
  assert.equal((await within(PREEMPT_MS, server, "the dev server's end")).exitCode, 130);
}

test('BoltShell: the 25-command session with a preempted npx vite, 50 in a row', async () => {
  const install = await run(wc, 'npm', ['install', 'vite@5', '--no-audit', '--no-fund', '--loglevel=error']);
  assert.equal(install.code, 0, install.output);
  for (let n = 0; n < SESSIONS; n++) {
    const { shell, screen } = await newShell();
    await session(shell, screen, 'npx vite --port 5173', 'ready in');
    for (const chunk of screen.screen) {
      const markers = chunk.match(/\x1b\]654;/g) ?? [];
      assert.ok(markers.length <= 1, JSON.stringify(chunk));
    }
    shell.process.kill();
    await shell.process.exit;
  }
});

test('FilesStore sees every writer through internal.watchPaths', async () => {
  const files = new bolt.FilesStore(Promise.resolve(wc));
  await wc.fs.mkdir('watched/src', { recursive: true });
  await wc.fs.writeFile('watched/src/App.tsx', 'export default 1;');
  await run(wc, 'sh', ['-c', 'mkdir -p watched/node_modules/x && echo no > watched/node_modules/x/i.js && printf shell > watched/from-shell.txt']);
  const entry = (path) => files.files.get()[path];
  await until(() => entry(`${WORKDIR}/watched/src/App.tsx`)?.content === 'export default 1;', 'the API write');
  await until(() => entry(`${WORKDIR}/watched/from-shell.txt`)?.content === 'shell', 'the shell write');
  assert.equal(entry(`${WORKDIR}/watched/src`)?.type, 'folder');
  assert.ok(!Object.keys(files.files.get()).some((path) => path.includes('node_modules')));
  await wc.fs.rm('watched/src', { recursive: true });
  await until(() => !entry(`${WORKDIR}/watched/src/App.tsx`), 'the removal');
});

/** bolt's own fixtures: the inputs of message-parser.spec.ts's "valid artifacts with actions". */
function specFixtures() {
  const spec = readFileSync(join(source, 'app/lib/runtime/message-parser.spec.ts'), 'utf8');
  const section = spec.slice(spec.indexOf("describe('valid artifacts with actions'"));
  return [...section.matchAll(/'(Before <boltArtifact[^']*<boltAction[^']*)'/g)].map((m) => m[1]);
}

test('the message parser and ActionRunner write the files and run the commands', async () => {
  const { StreamingMessageParser, ActionRunner } = bolt;
  const shell = (await newShell()).shell;
  const alerts = [];
  const runners = new Map();
  let queue = Promise.resolve();
  const enqueue = (work) => (queue = queue.then(work).catch((error) => alerts.push(String(error))));
  const parser = new StreamingMessageParser({
    callbacks: {
      onArtifactOpen: (data) => {
        if (!runners.has(data.id)) {
          // as the workbench's addArtifact: an id seen before keeps its runner
          runners.set(data.id, new ActionRunner(Promise.resolve(wc), () => shell, (alert) => alerts.push(alert)));
        }
      },
      onActionOpen: (data) => {
        if (data.action.type === 'file') enqueue(() => runners.get(data.artifactId).addAction(data));
      },
      onActionClose: (data) => {
        if (data.action.type !== 'file') enqueue(() => runners.get(data.artifactId).addAction(data));
        enqueue(() => runners.get(data.artifactId).runAction(data));
      },
    },
  });
  const fixtures = specFixtures();
  assert.equal(fixtures.length, 2, 'the spec still has its two fixtures with actions');
  const message = [
    // A package.json first, so the fixtures' `npm install` has a project to install.
    '<boltArtifact id="setup" title="Setup"><boltAction type="file" filePath="package.json">' +
      '{"name": "fixtures", "version": "1.0.0"}</boltAction></boltArtifact>',
    ...fixtures,
    '<boltArtifact id="app" title="App"><boltAction type="file" filePath="src/main.js">console.log("main")</boltAction>' +
      '<boltAction type="shell">node src/main.js > ran.txt</boltAction></boltArtifact>',
  ].join('\n');
  // Streamed as a model streams it: the whole text so far, a few characters more each time.
  for (let end = 7; end < message.length + 7; end += 7) {
    parser.parse('message-1', message.slice(0, end));
  }
  await until(async () => {
    await queue;
    return [...runners.values()].every((runner) =>
      Object.values(runner.actions.get()).every((action) => ['complete', 'failed', 'aborted'].includes(action.status)),
    );
  }, 'every action to finish', 300);
  assert.deepEqual(alerts, []);
  // bolt's parser ends a file's content with a line break
  assert.equal(await wc.fs.readFile('index.js', 'utf-8'), 'some content\n');
  assert.equal(await wc.fs.readFile('src/main.js', 'utf-8'), 'console.log("main")\n');
  assert.equal((await wc.fs.readFile('ran.txt', 'utf-8')).trim(), 'main');
  const statuses = [...runners.values()].flatMap((runner) => Object.values(runner.actions.get()).map((a) => [a.type, a.status]));
  assert.ok(statuses.every(([, status]) => status === 'complete'), JSON.stringify(statuses));
  assert.equal(statuses.filter(([type]) => type === 'shell').length, 3); // 2 × npm install, node
});
