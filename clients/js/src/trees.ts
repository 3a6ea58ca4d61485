/**
 * `mount` and `export`: file trees travel as gzip'd tar archives through the server's archive
 * API (one request, all or nothing, symlinks kept), packed and unpacked here with the
 * platform's `CompressionStream`.
 *
 * Binary snapshots (`mount(bytes)`, `export(path, {format: 'binary'})`) are tar.gz (or zip)
 * archives: what `export` gives, `mount` takes back. WebContainer's own binary snapshot format
 * (`@webcontainer/snapshot`) is not read.
 */

import { decode, encode } from './encoding.js';
import type { Files } from './fs.js';
import type { Server } from './server.js';
import type { ExportOptions, FileSystemTree } from './types.js';

const BLOCK = 512;

interface Entry {
  path: string;
  type: 'file' | 'directory' | 'symlink';
  data?: Uint8Array;
  target?: string;
}

export async function mountTree(
  server: Server,
  containerId: string,
  snapshotOrTree: FileSystemTree | Uint8Array | ArrayBuffer,
  root: string,
): Promise<void> {
  let body: Uint8Array;
  let format: 'tar.gz' | 'zip' = 'tar.gz';
  if (snapshotOrTree instanceof Uint8Array || snapshotOrTree instanceof ArrayBuffer) {
    body = new Uint8Array(snapshotOrTree);
    if (body[0] === 0x50 && body[1] === 0x4b) {
      format = 'zip';
    } else if (!(body[0] === 0x1f && body[1] === 0x8b)) {
      throw new Error(
        'mount() takes a file tree, or a tar.gz or zip snapshot as export(path, ' +
          "{format: 'binary'}) makes; WebContainer's own snapshot format is not supported",
      );
    }
  } else {
    body = await gzip(tar(flatten(snapshotOrTree, '')));
  }
  const query = `path=${encodeURIComponent(root)}&format=${format}`;
  await server.request('POST', `/api/containers/${containerId}/archive?${query}`, { body });
}

/** Refuse what WebContainer refuses: a single file in the JSON format. */
export async function checkExportable(files: Files, path: string, options: ExportOptions) {
  if ((options.format ?? 'json') !== 'json' || path === '/') {
    return;
  }
  const parent = path.slice(0, path.lastIndexOf('/')) || '/';
  const name = path.slice(path.lastIndexOf('/') + 1);
  const siblings = await files.readdir(parent, { withFileTypes: true });
  if (siblings.some((entry) => entry.name === name && entry.isFile())) {
    throw new Error('It is not possible to export a single file in the JSON format.');
  }
}

export async function exportTree(
  server: Server,
  containerId: string,
  path: string,
  options: ExportOptions,
): Promise<FileSystemTree | Uint8Array> {
  const format = options.format ?? 'json';
  const query = new URLSearchParams({ path, format: format === 'zip' ? 'zip' : 'tar.gz' });
  for (const exclude of options.excludes ?? []) {
    query.append('exclude', exclude);
  }
  const response = await server.request(
    'GET',
    `/api/containers/${containerId}/archive?${query.toString()}`,
  );
  const bytes = new Uint8Array(await response.arrayBuffer());
  return format === 'json' ? treeOf(untar(await gunzip(bytes))) : bytes;
}

// -- trees -----------------------------------------------------------------------------------

function flatten(tree: FileSystemTree, prefix: string): Entry[] {
  const entries: Entry[] = [];
  for (const [name, node] of Object.entries(tree)) {
    if (!name || name === '.' || name === '..' || name.includes('/')) {
      throw new Error(`Invalid name in a file tree: ${JSON.stringify(name)}`);
    }
    const path = prefix + name;
    if ('directory' in node) {
      entries.push({ path, type: 'directory' }, ...flatten(node.directory, `${path}/`));
    } else if ('symlink' in node.file) {
      entries.push({ path, type: 'symlink', target: node.file.symlink });
    } else {
      const contents = node.file.contents;
      const data = typeof contents === 'string' ? encode(contents, 'utf8') : contents;
      entries.push({ path, type: 'file', data });
    }
  }
  return entries;
}

function treeOf(entries: Entry[]): FileSystemTree {
  const root: FileSystemTree = {};
  const folder = (parts: string[]): FileSystemTree => {
    let node = root;
    for (const part of parts) {
      const next = node[part];
      if (!next || !('directory' in next)) {
        node[part] = { directory: {} };
      }
      node = (node[part] as { directory: FileSystemTree }).directory;
    }
    return node;
  };
  for (const entry of entries) {
    const parts = entry.path.split('/').filter(Boolean);
    const name = parts.pop();
    if (!name) {
      continue;
    }
    const parent = folder(parts);
    if (entry.type === 'directory') {
      folder([...parts, name]);
    } else if (entry.type === 'symlink') {
      parent[name] = { file: { symlink: entry.target ?? '' } };
    } else {
      const data = entry.data ?? new Uint8Array();
      const text = utf8OrNull(data);
      parent[name] = { file: { contents: text ?? data } };
    }
  }
  return root;
}

function utf8OrNull(data: Uint8Array): string | null {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(data);
  } catch {
    return null;
  }
}

// -- tar (ustar, with PAX names for long paths) ------------------------------------------------

function tar(entries: Entry[]): Uint8Array {
  const blocks: Uint8Array[] = [];
  for (const entry of entries) {
    const data = entry.type === 'file' ? (entry.data ?? new Uint8Array()) : new Uint8Array();
    const name = entry.type === 'directory' ? `${entry.path}/` : entry.path;
    const target = entry.target ?? '';
    if (encode(name, 'utf8').length > 100 || encode(target, 'utf8').length > 100) {
      const pax = paxRecords({ path: name, ...(target ? { linkpath: target } : {}) });
      blocks.push(header('././@PaxHeader', 'x', pax.length, ''), ...padded(pax));
    }
    const flag = entry.type === 'directory' ? '5' : entry.type === 'symlink' ? '2' : '0';
    blocks.push(header(name, flag, data.length, target), ...padded(data));
  }
  blocks.push(new Uint8Array(BLOCK * 2));
  return concat(blocks);
}

function header(name: string, flag: string, size: number, target: string): Uint8Array {
  const block = new Uint8Array(BLOCK);
  const put = (text: string, offset: number, length: number) =>
    block.set(encode(text, 'utf8').subarray(0, length), offset);
  const mode = flag === '5' ? 0o755 : 0o644;
  put(name, 0, 100);
  put(`${mode.toString(8).padStart(7, '0')}\0`, 100, 8);
  put('0001750\0', 108, 8); // uid 1000
  put('0001750\0', 116, 8);
  put(`${size.toString(8).padStart(11, '0')}\0`, 124, 12);
  put(`${Math.floor(Date.now() / 1000).toString(8).padStart(11, '0')}\0`, 136, 12);
  put('        ', 148, 8);
  put(flag, 156, 1);
  put(target, 157, 100);
  put('ustar\0', 257, 6);
  put('00', 263, 2);
  const sum = block.reduce((total, byte) => total + byte, 0);
  put(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8);
  return block;
}

function paxRecords(records: Record<string, string>): Uint8Array {
  let text = '';
  for (const [key, value] of Object.entries(records)) {
    const body = ` ${key}=${value}\n`;
    const base = encode(body, 'utf8').length;
    let length = base + String(base).length;
    if (String(length).length > String(base).length) {
      length = base + String(length).length; // the count counts its own digits
    }
    text += `${length}${body}`;
  }
  return encode(text, 'utf8');
}

function untar(archive: Uint8Array): Entry[] {
  const entries: Entry[] = [];
  let pax: Record<string, string> = {};
  let longName: string | undefined;
  for (let offset = 0; offset + BLOCK <= archive.length; ) {
    const block = archive.subarray(offset, offset + BLOCK);
    if (block.every((byte) => byte === 0)) {
      break;
    }
    const text = (start: number, length: number) =>
      decode(block.subarray(start, start + length), 'utf8').replace(/\0.*$/s, '');
    const size = parseInt(text(124, 12).trim() || '0', 8);
    const flag = text(156, 1) || '0';
    const prefix = text(345, 155);
    const data = archive.subarray(offset + BLOCK, offset + BLOCK + size);
    offset += BLOCK + Math.ceil(size / BLOCK) * BLOCK;
    if (flag === 'x') {
      pax = parsePax(decode(data, 'utf8'));
      continue;
    }
    if (flag === 'L') {
      longName = decode(data, 'utf8').replace(/\0.*$/s, '');
      continue;
    }
    const path = pax.path ?? longName ?? (prefix ? `${prefix}/${text(0, 100)}` : text(0, 100));
    const target = pax.linkpath ?? text(157, 100);
    pax = {};
    longName = undefined;
    const clean = path.replace(/^\.\//, '').replace(/\/$/, '');
    if (!clean || clean === '.') {
      continue;
    }
    if (flag === '5') {
      entries.push({ path: clean, type: 'directory' });
    } else if (flag === '2') {
      entries.push({ path: clean, type: 'symlink', target });
    } else if (flag === '0' || flag === '\0') {
      entries.push({ path: clean, type: 'file', data: data.slice() });
    }
  }
  return entries;
}

function parsePax(text: string): Record<string, string> {
  const records: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const match = /^\d+ ([^=]+)=(.*)$/s.exec(line);
    if (match) {
      records[match[1]!] = match[2]!;
    }
  }
  return records;
}

function padded(data: Uint8Array): Uint8Array[] {
  const rest = data.length % BLOCK;
  return rest ? [data, new Uint8Array(BLOCK - rest)] : [data];
}

function concat(parts: Uint8Array[]): Uint8Array {
  const whole = new Uint8Array(parts.reduce((total, part) => total + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    whole.set(part, offset);
    offset += part.length;
  }
  return whole;
}

async function gzip(data: Uint8Array): Promise<Uint8Array> {
  return through(data, new CompressionStream('gzip'));
}

async function gunzip(data: Uint8Array): Promise<Uint8Array> {
  return through(data, new DecompressionStream('gzip'));
}

async function through(
  data: Uint8Array,
  transform: { readable: ReadableStream<Uint8Array>; writable: WritableStream<BufferSource> },
): Promise<Uint8Array> {
  const [, bytes] = await Promise.all([
    (async () => {
      const writer = transform.writable.getWriter();
      await writer.write(data as BufferSource);
      await writer.close();
    })(),
    new Response(transform.readable).arrayBuffer(),
  ]);
  return new Uint8Array(bytes);
}
