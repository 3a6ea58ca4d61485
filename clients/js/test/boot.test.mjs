// boot and teardown: the singleton rule and its texts, a fresh container per boot.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { WebContainer, ContainerGoneError } from '../dist/index.js';

test('one instance at a time, a fresh container per boot, teardown once', async () => {
  await assert.rejects(WebContainer.boot({ workdirName: 'a/b' }), {
    message: 'workdirName should be a valid folder name',
  });
  const first = await WebContainer.boot({ workdirName: 'project' });
  await assert.rejects(WebContainer.boot(), {
    message: 'Only a single WebContainer instance can be booted',
  });
  await first.fs.writeFile('marker.txt', 'first');
  assert.throws(() => first.on('nonsense', () => {}), { message: "Unsupported event type 'nonsense'." });
  first.teardown();
  assert.throws(() => first.teardown(), { message: 'WebContainer already torn down' });
  await assert.rejects(first.fs.readFile('marker.txt'), ContainerGoneError);

  const second = await WebContainer.boot({ workdirName: 'project' });
  assert.notEqual(second.containerId, first.containerId);
  assert.deepEqual(await second.fs.readdir('/'), []); // fresh and empty
  second.teardown();
});

test('concurrent boots are serialised: one wins, the other gets the singleton error', async () => {
  const results = await Promise.allSettled([WebContainer.boot(), WebContainer.boot()]);
  const booted = results.filter((r) => r.status === 'fulfilled');
  const refused = results.filter((r) => r.status === 'rejected');
  assert.equal(booted.length, 1);
  assert.equal(refused[0].reason.message, 'Only a single WebContainer instance can be booted');
  booted[0].value.teardown();
});
