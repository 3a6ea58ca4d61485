/**
 * `webcontainer.fs`: Node's fs/promises subset that WebContainer offers, over the container's
 * socket (`fs.*` calls, run by the server in the order they were made).
 *
 * Paths are workdir-rooted as in WebContainer: `src/a.ts`, `/src/a.ts`, `../../src/a.ts` and
 * `/home/project/src/a.ts` are the same file; `..` never leaves the workspace. The server does
 * this; the client only does it for URLs. Contents over SOCKET_CONTENT_BYTES travel through
 * the HTTP file API instead, in the same order: such a call waits for the calls before it,
 * and the calls after it wait for it.
 */

import { decode, encode, fromBase64, toBase64 } from './encoding.js';
import { CallError, type ContainerLink, type Message } from './link.js';
import type { Server } from './server.js';
import type {
  BufferEncoding,
  DirEnt,
  FileSystemAPI,
  FSWatchCallback,
  FSWatchOptions,
  IFSWatcher,
} from './types.js';

/** As api/calls.py: the largest content one call carries. */
export const SOCKET_CONTENT_BYTES = 1024 * 1024;
export const WORKDIR = '/home/project';

type ReaddirOptions =
  | 'buffer'
  | BufferEncoding
  | null
  | { encoding?: BufferEncoding | 'buffer' | null; withFileTypes?: boolean };

interface Listed {
  entries: { name: string; type: 'file' | 'directory' | 'symlink' | 'other' }[];
}

let watchIds = 0;

export class Files implements FileSystemAPI {
  /** Settles when the last large-file transfer (and everything before it) is done. */
  private gate: Promise<void> = Promise.resolve();

  constructor(
    private readonly link: ContainerLink,
    private readonly server: Server,
  ) {}

  readFile(path: string, encoding?: null): Promise<Uint8Array>;
  readFile(path: string, encoding: BufferEncoding): Promise<string>;
  async readFile(path: string, encoding?: BufferEncoding | null): Promise<Uint8Array | string> {
    const bytes = await this.readBytes(path);
    return encoding ? decode(bytes, encoding) : bytes;
  }

  async writeFile(
    path: string,
    data: string | Uint8Array,
    options?: string | { encoding?: string | null } | null,
  ): Promise<void> {
    const encoding = typeof options === 'string' ? options : options?.encoding;
    if (typeof data === 'string' && isUtf8(encoding) && data.length <= SOCKET_CONTENT_BYTES / 3) {
      // At most 3 bytes per UTF-16 unit: small enough without encoding it here.
      await this.call('fs.write', { path, content: data });
      return;
    }
    const bytes = typeof data === 'string' ? encode(data, encoding) : asBytes(data);
    if (bytes.length > SOCKET_CONTENT_BYTES) {
      await this.transfer(() =>
        this.server.request('PUT', this.fileUrl(path), { body: bytes }).then(() => undefined),
      );
      return;
    }
    await this.call('fs.write', { path, content: toBase64(bytes), encoding: 'base64' });
  }

  mkdir(path: string, options?: { recursive?: false }): Promise<void>;
  mkdir(path: string, options: { recursive: true }): Promise<string>;
  async mkdir(path: string, options?: { recursive?: boolean }): Promise<string | void> {
    const recursive = Boolean(options?.recursive);
    const made = await this.call<{ path: string }>('fs.mkdir', { path, recursive });
    return recursive ? absolute(made.path) : undefined;
  }

  readdir(
    path: string,
    options: 'buffer' | { encoding: 'buffer'; withFileTypes?: false },
  ): Promise<Uint8Array[]>;
  readdir(
    path: string,
    options?: { encoding?: BufferEncoding | null; withFileTypes?: false } | BufferEncoding | null,
  ): Promise<string[]>;
  readdir(
    path: string,
    options: { encoding: 'buffer'; withFileTypes: true },
  ): Promise<DirEnt<Uint8Array>[]>;
  readdir(
    path: string,
    options: { encoding?: BufferEncoding | null; withFileTypes: true },
  ): Promise<DirEnt<string>[]>;
  async readdir(path: string, options?: ReaddirOptions): Promise<unknown[]> {
    const listed = await this.call<Listed>('fs.list', { path });
    const encoding = typeof options === 'object' && options ? options.encoding : options;
    const name = (text: string) => (encoding === 'buffer' ? encode(text, 'utf8') : text);
    const withTypes = typeof options === 'object' && options?.withFileTypes;
    return listed.entries.map((entry) =>
      withTypes
        ? {
            name: name(entry.name),
            isFile: () => entry.type === 'file',
            isDirectory: () => entry.type === 'directory',
          }
        : name(entry.name),
    );
  }

  async rm(path: string, options?: { force?: boolean; recursive?: boolean }): Promise<void> {
    await this.call('fs.delete', {
      path,
      recursive: Boolean(options?.recursive),
      force: Boolean(options?.force),
    });
  }

  async rename(oldPath: string, newPath: string): Promise<void> {
    await this.call('fs.move', { from: oldPath, to: newPath });
  }

  watch(filename: string, options?: FSWatchOptions, listener?: FSWatchCallback): IFSWatcher;
  watch(filename: string, listener?: FSWatchCallback): IFSWatcher;
  watch(
    filename: string,
    optionsOrListener?: FSWatchOptions | FSWatchCallback,
    maybeListener?: FSWatchCallback,
  ): IFSWatcher {
    const listener = typeof optionsOrListener === 'function' ? optionsOrListener : maybeListener;
    const options = typeof optionsOrListener === 'function' ? null : optionsOrListener;
    const recursive = typeof options === 'object' && options !== null && options.recursive;
    const root = absolute(normalize(filename));
    const id = `fs.watch-${++watchIds}`;
    this.link.watch(
      { type: 'watch', id, include: [root, ...(recursive ? [`${root}/**`] : [`${root}/*`])], content: false },
      (frame: Message) => {
        if (frame.type !== 'fs' || !listener) {
          return;
        }
        for (const event of frame.events as { type: string; path: string }[]) {
          const relative = event.path === root ? basename(root) : event.path.slice(root.length + 1);
          listener(event.type === 'change' ? 'change' : 'rename', relative);
        }
      },
    );
    return { close: () => this.link.unwatch(id) };
  }

  // -- helpers ---------------------------------------------------------------------------

  private async readBytes(path: string): Promise<Uint8Array> {
    try {
      const read = await this.call<{ content: string; encoding: 'utf-8' | 'base64' }>('fs.read', {
        path,
      });
      return read.encoding === 'base64' ? fromBase64(read.content) : encode(read.content, 'utf8');
    } catch (error) {
      if (!(error instanceof CallError && error.serverCode === 'file_too_large')) {
        throw error;
      }
    }
    // Over the socket's limit: the HTTP file API streams it (and has its own, larger limit).
    return this.transfer(async () => {
      const response = await this.server.request('GET', this.fileUrl(path));
      return new Uint8Array(await response.arrayBuffer());
    });
  }

  /** A call on the socket, after any large transfer made before it. */
  private call<T>(op: string, args: Record<string, unknown>): Promise<T> {
    return this.gate.then(() => this.link.call<T>(op, args));
  }

  /** Run `work` (a transfer over HTTP) once every call made before it is answered; calls
   * made meanwhile wait for it. @internal */
  transfer<T>(work: () => Promise<T>): Promise<T> {
    const before = this.gate;
    const done = before.then(async () => {
      await this.link.settled();
      return work();
    });
    this.gate = done.then(
      () => undefined,
      () => undefined,
    );
    return done;
  }

  private fileUrl(path: string): string {
    const segments = normalize(path).split('/').filter(Boolean).map(encodeURIComponent);
    return `/api/containers/${this.link.containerId}/files/${segments.join('/')}`;
  }
}

/** The workdir-rooted form of `path`, as the server resolves it: `/` + normalized, `..`
 * clamped at the root, a leading `/home/project` dropped. */
export function normalize(path: string): string {
  const parts: string[] = [];
  for (const part of path.split('/')) {
    if (part === '..') {
      parts.pop();
    } else if (part && part !== '.') {
      parts.push(part);
    }
  }
  let joined = '/' + parts.join('/');
  if (joined === WORKDIR || joined.startsWith(WORKDIR + '/')) {
    joined = joined.slice(WORKDIR.length) || '/';
  }
  return joined;
}

export function absolute(workdirPath: string): string {
  return workdirPath === '/' ? WORKDIR : WORKDIR + workdirPath;
}

function basename(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

function isUtf8(encoding: string | null | undefined): boolean {
  return !encoding || /^utf-?8$/i.test(encoding);
}

function asBytes(data: Uint8Array): Uint8Array {
  // A Node Buffer is a Uint8Array over a shared pool: copy out just its bytes.
  return data.constructor === Uint8Array ? data : new Uint8Array(data);
}
