// boot and teardown: the singleton rule and its texts, a fresh container per boot.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { configure, WebContainer, ContainerGoneError } from '../dist/index.js';

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

/** A new API key of the test's user (made with the key the test setup gave), and its revocation. */
async function apiKey() {
  const call = (method, path, body) =>
    fetch(process.env.CLOUDCONTAINER_URL + path, {
      method,
      headers: { authorization: `Bearer ${process.env.CLOUDCONTAINER_TOKEN}`, 'content-type': 'application/json' },
      body: body && JSON.stringify(body),
    });
  const made = await (await call('POST', '/api/auth/keys', { name: 'short-lived' })).json();
  return { key: made.key, revoke: async () => assert.equal((await call('DELETE', `/api/auth/keys/${made.id}`)).status, 204) };
}

test('a token revoked mid-session is asked for again; one that stays refused is a clear auth error', async () => {
  let current = await apiKey();
  let asked = 0;
  configure({ token: async () => (asked++, current.key) });
  try {
    const wc = await WebContainer.boot();
    await wc.fs.writeFile('a.txt', 'before');
    const old = current;
    current = await apiKey();
    await old.revoke(); // its sockets close; its requests get 401
    const echo = await wc.spawn('echo', ['after']);
    assert.equal(await echo.exit, 0);
    assert.equal(await wc.fs.readFile('a.txt', 'utf-8'), 'before'); // the socket came back
    await wc.fs.writeFile('a.txt', 'after');
    assert.equal(await wc.fs.readFile('a.txt', 'utf-8'), 'after');
    assert.ok(asked >= 2, `the token function was asked ${asked} times`);
    wc.teardown();

    await current.revoke();
    await assert.rejects(WebContainer.boot(), { name: 'ServerError', status: 401 });
  } finally {
    configure({ token: undefined });
  }
});
