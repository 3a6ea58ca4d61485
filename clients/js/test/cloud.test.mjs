// The cloud API: projects, persistent sandboxes, files, commands, PTYs, previews, history
// and snapshots, against the real server.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Cloud } from '../dist/index.js';
import { until } from './helpers.mjs';

let cloud;
let project;
let box;
before(async () => {
  cloud = new Cloud();
  project = await cloud.projects.create({ name: `cloud-${Date.now()}` });
  box = await cloud.sandboxes.create({ projectId: project.id, template: 'node' });
});
after(async () => {
  await box?.delete().catch(() => undefined);
  await cloud?.projects.delete(project.id).catch(() => undefined);
});

test('a sandbox of a project: its template, files and listing', async () => {
  assert.equal(box.info.status, 'running');
  assert.equal(box.info.ephemeral, false);
  const names = (await box.files.list('/')).map((entry) => entry.name).sort();
  assert.ok(names.includes('package.json'), names.join());
  const written = await box.files.write('deep/dir/note.txt', 'héllo');
  assert.equal(written.path, '/deep/dir/note.txt');
  assert.equal(await box.files.read('/deep/dir/note.txt'), 'héllo');
  const bytes = await box.files.read('deep/dir/note.txt', { format: 'bytes' });
  assert.equal(bytes.length, 6);
  await box.files.move('deep/dir/note.txt', 'deep/moved.txt');
  const listed = await box.files.list('/deep', { recursive: true });
  assert.deepEqual(listed.map((e) => e.path).sort(), ['/deep/dir', '/deep/moved.txt']);
  await box.files.remove('deep', { recursive: true });
  await assert.rejects(box.files.read('deep/moved.txt'), { status: 404, code: 'file_not_found' });
});

test('commands run to their end with streamed output; the history keeps them', async () => {
  const streamed = [];
  const result = await box.commands.run('echo out; echo err >&2; exit 3', {
    onStdout: (data) => streamed.push(data),
  });
  assert.equal(result.exitCode, 3);
  assert.equal(result.stdout, 'out\n');
  assert.equal(result.stderr, 'err\n');
  assert.deepEqual(streamed, ['out\n']);
  const program = await box.commands.run('node', { args: ['-e', 'console.log(process.argv.length)'] });
  assert.equal(program.stdout.trim(), '1');
  const slow = await box.commands.run('sleep 10', { timeout: 1 });
  assert.equal(slow.timedOut, true);
  const history = await cloud.projects.history(project.id, { q: 'echo out' });
  assert.equal(history[0].command, "sh -c 'echo out; echo err >&2; exit 3'"); // shell-quoted
  assert.equal(history[0].exit_code, 3);
});

test('a PTY serves the dev server, and its preview is found and made public', async () => {
  await box.commands.run('npm install --no-audit --no-fund', { timeout: 300 });
  const dev = await box.pty.create({ command: 'npm', args: ['run', 'dev'] });
  const chunks = [];
  void dev.output.pipeTo(new WritableStream({ write: (c) => void chunks.push(c) }));
  const preview = await box.previews.wait(3000);
  assert.match(preview.origin, /^http:\/\/[^/]+:\d+$/);
  assert.equal(preview.public, false);
  const denied = await fetch(preview.origin);
  assert.equal(denied.status, 401); // private: no token, no cookie
  const opened = await box.previews.setPublic(3000, true);
  assert.equal(opened.public, true);
  const page = await (await fetch(opened.origin)).text();
  assert.match(page, /Hello from Node\.js/);
  assert.ok(chunks.join('').length > 0);
  dev.kill();
  assert.notEqual(await dev.exit, 0);
});

test('snapshots: taken, listed by project, restored', async () => {
  await box.files.write('kept.txt', 'v1');
  const snapshot = await box.snapshots.create();
  assert.equal(snapshot.reason, 'manual');
  await box.files.write('kept.txt', 'v2');
  await box.files.write('extra.txt', 'gone after the restore');
  const listed = await cloud.projects.snapshots(project.id);
  assert.ok(listed.some((s) => s.id === snapshot.id));
  await box.snapshots.restore(snapshot.id);
  assert.equal(await box.files.read('kept.txt'), 'v1');
  await assert.rejects(box.files.read('extra.txt'), { status: 404 });
});

test('stop, start, connect: the files are kept', async () => {
  await box.stop();
  assert.equal(box.info.status, 'stopped');
  const again = await cloud.sandboxes.connect(box.id);
  assert.equal(again.info.status, 'stopped');
  await again.start();
  await until(async () => (await again.refresh()).status === 'running', 'the sandbox to run');
  assert.equal(await again.files.read('kept.txt'), 'v1');
  assert.ok((await cloud.sandboxes.list()).some((info) => info.id === box.id));
});
