// P12: what this package adds on top of the server. Run by bench/client.py (`make bench`),
// which starts the server and passes CLOUDCONTAINER_URL / CLOUDCONTAINER_TOKEN; writes one
// JSON document of samples (seconds) to the file OUTPUT names (bolt's logger owns stdout).
//
// Each pair is measured in the same container, interleaved sample by sample so that drift in
// the machine's load falls on both alike:
// - fs.writeFile through the client against the same `fs.write` call sent by hand on a raw
//   events WebSocket (the client's own path), and against a raw HTTP PUT of the same bytes;
// - spawn('echo') until its exit through the client against the same steps by hand: POST a
//   terminal, take a ticket, open its WebSocket, wait for the `exit` frame;
// - bolt.diy's own BoltShell.executeCommand (bundled from its source) through the client.
// Raw sockets use the `ws` package, as the client does on Node 20.
import { writeFileSync } from 'node:fs';

import { WebSocket } from 'ws';

import { WebContainer } from '../dist/index.js';
import { boltModules } from '../test/bolt/bundle.mjs';

const URL_ = process.env.CLOUDCONTAINER_URL;
const TOKEN = process.env.CLOUDCONTAINER_TOKEN;
const OUTPUT = process.env.OUTPUT;
const SAMPLES = Number(process.env.SAMPLES ?? 200);
const WARMUP = 10;
const CONTENT = 'x'.repeat(10 * 1024); // P3's file: 10 KiB

globalThis.self ??= globalThis; // bolt's code reaches for `self`

async function api(method, path, body) {
  const response = await fetch(URL_ + path, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`);
  }
  return response.status === 204 ? undefined : response.json();
}

async function socket(path) {
  const { ticket } = await api('POST', '/api/auth/ws-ticket', { path });
  const ws = new WebSocket(`${URL_.replace(/^http/, 'ws')}${path}?ticket=${ticket}`);
  ws.binaryType = 'arraybuffer';
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  return ws;
}

/** The events socket's `fs.write` call, by hand: one frame out, its result back. */
async function rawCalls(containerId) {
  const ws = await socket(`/api/containers/${containerId}/events`);
  const waiting = new Map();
  ws.on('message', (data, binary) => {
    if (binary) return;
    const message = JSON.parse(data.toString());
    if (message.type === 'result') {
      waiting.get(message.call)?.(message);
      waiting.delete(message.call);
    }
  });
  let next = 0;
  return {
    call(op, args) {
      const call = ++next;
      return new Promise((resolve, reject) => {
        waiting.set(call, (message) => (message.error ? reject(new Error(message.error.message)) : resolve()));
        ws.send(JSON.stringify({ type: 'call', call, op, args }));
      });
    },
    close: () => ws.close(1000),
  };
}

async function rawPut(containerId, path) {
  const response = await fetch(`${URL_}/api/containers/${containerId}/files/${path}`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${TOKEN}` },
    body: CONTENT,
  });
  if (!response.ok) throw new Error(`PUT: ${response.status}`);
  await response.arrayBuffer();
}

/** spawn('echo') by hand: the terminal, a ticket, its socket, until `exit`. */
async function rawSpawn(containerId) {
  const base = `/api/containers/${containerId}/terminals`;
  const terminal = await api('POST', base, { command: 'echo', args: ['hi'], env: {}, cols: 80, rows: 24 });
  const ws = await socket(`${base}/${terminal.id}`);
  await new Promise((resolve) => {
    ws.on('message', (data, binary) => {
      if (!binary && JSON.parse(data.toString()).type === 'exit') resolve();
    });
  });
  ws.close(1000);
}

async function clientSpawn(wc) {
  const process_ = await wc.spawn('echo', ['hi']);
  await process_.exit;
}

async function timed(fn) {
  const started = performance.now();
  await fn();
  return (performance.now() - started) / 1000;
}

/** Interleave the variants sample by sample, each round in turn starting with the next one
 * (no variant always runs first); the first WARMUP rounds are not kept. */
async function interleaved(variants, samples) {
  const results = Object.fromEntries(Object.keys(variants).map((name) => [name, []]));
  const entries = Object.entries(variants);
  for (let round = 0; round < samples + WARMUP; round++) {
    const turn = round % entries.length;
    for (const [name, fn] of [...entries.slice(turn), ...entries.slice(0, turn)]) {
      const took = await timed(() => fn(round));
      if (round >= WARMUP) results[name].push(took);
    }
  }
  return results;
}

/** bolt's BoltShell on `jsh --osc` through the client, xterm replaced by a recorder. */
async function boltCommands(wc, samples) {
  const { modules: bolt } = await boltModules();
  process.chdir('/'); // bolt's path module resolves against `/` in a browser
  const listeners = [];
  const screen = {
    cols: 80, rows: 15, reset() {}, write() {},
    onData: (listener) => void listeners.push(listener),
    input: (data) => listeners.forEach((listener) => listener(data)),
  };
  const shell = new bolt.BoltShell();
  await shell.init(wc, screen);
  await shell.ready();
  const times = [];
  for (let step = 0; step < samples + WARMUP; step++) {
    const took = await timed(async () => {
      const result = await shell.executeCommand('s', `echo step-${step}`);
      if (result?.exitCode !== 0) throw new Error(`echo step-${step}: ${JSON.stringify(result)}`);
    });
    if (step >= WARMUP) times.push(took);
  }
  return times;
}

async function main() {
  const wc = await WebContainer.boot({ workdirName: 'project' });
  try {
    const calls = await rawCalls(wc.containerId);
    const writeFile = await interleaved(
      {
        client: (i) => wc.fs.writeFile(`client-${i % 10}.txt`, CONTENT),
        socket: (i) => calls.call('fs.write', { path: `socket-${i % 10}.txt`, content: CONTENT }),
        http: (i) => rawPut(wc.containerId, `http-${i % 10}.txt`),
      },
      SAMPLES,
    );
    calls.close();
    const spawnSamples = Math.max(20, Math.floor(SAMPLES / 2));
    const spawn = await interleaved(
      { client: () => clientSpawn(wc), raw: () => rawSpawn(wc.containerId) },
      spawnSamples,
    );
    const executeCommand = await boltCommands(wc, spawnSamples);
    const result = { container: wc.containerId, node: process.version, writeFile, spawn, executeCommand };
    writeFileSync(OUTPUT, JSON.stringify(result));
  } finally {
    await wc.teardown();
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
