// Shared by the package tests: a booted WebContainer on the server the test setup started
// (CLOUDCONTAINER_URL / CLOUDCONTAINER_TOKEN, set by tests/test_js_client.py).
import assert from 'node:assert/strict';

import { WebContainer } from '../dist/index.js';

export const WORKDIR = '/home/project';

/** Boot for one test file; `after` tears it down. */
export async function boot(options = { workdirName: 'project' }) {
  return WebContainer.boot(options);
}

/** All of a process's output, and its exit code. */
export async function run(wc, command, args = [], options = {}) {
  const process = await wc.spawn(command, args, options);
  const chunks = [];
  await process.output.pipeTo(new WritableStream({ write: (chunk) => void chunks.push(chunk) }));
  return { output: chunks.join(''), chunks, code: await process.exit };
}

/** Wait until `check()` is truthy (an upper bound, never a timing assertion). */
export async function until(check, what, seconds = 60) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const value = await check();
    if (value) return value;
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** The rejection of `promise` (fails when it resolves). */
export async function rejection(promise) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  assert.fail('expected a rejection');
}

/** A TCP proxy on loopback in front of the server, whose connections a test can cut: a real
 * network drop, with the server and the container untouched. */
export async function flakyProxy(target = process.env.CLOUDCONTAINER_URL) {
  const net = await import('node:net');
  const upstream = new URL(target);
  const sockets = new Set();
  const server = net.createServer((client) => {
    const remote = net.connect(Number(upstream.port), upstream.hostname);
    for (const socket of [client, remote]) {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => undefined);
    }
    client.pipe(remote);
    remote.pipe(client);
    client.on('close', () => remote.destroy());
    remote.on('close', () => client.destroy());
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = server.address().port;
  return {
    url: `http://127.0.0.1:${port}`,
    /** Drop every connection and refuse new ones for `ms`. */
    async cut(ms) {
      this.refuse();
      await new Promise((resolve) => setTimeout(resolve, ms));
      await this.reopen();
    },
    /** Drop every connection and stop listening until `reopen()`: connections are refused,
     * as by a server that is down. */
    refuse() {
      server.close();
      for (const socket of sockets) socket.destroy();
    },
    reopen: () => new Promise((resolve) => server.listen(port, '127.0.0.1', resolve)),
    close: () => new Promise((resolve) => {
      for (const socket of sockets) socket.destroy();
      if (server.listening) server.close(resolve);
      else resolve();
    }),
  };
}
