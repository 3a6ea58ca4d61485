/**
 * `webcontainer.internal`, the surface of the `-internal` build bolt.diy pins: `watchPaths`
 * (a watch on the container's socket, globs applied in the sandbox) and `textSearch`
 * (ripgrep in the sandbox, streamed). The rest keeps its name and signature; what
 * cloudcontainer has no counterpart for rejects with a clear error.
 */

import { fromBase64 } from './encoding.js';
import { absolute, normalize, WORKDIR } from './fs.js';
import type { ContainerLink, Message } from './link.js';
import { ndjson } from './ndjson.js';
import type { Server } from './server.js';
import type {
  FileSearchOptions,
  GlobOptions,
  PathWatcherEvent,
  PreviewScriptAPI,
  ProxyOptions,
  TextSearchMatch,
  TextSearchOnProgressCallback,
  TextSearchOptions,
  WatchPathsOptions,
} from './types.js';

let watchIds = 0;

interface WireEvent {
  type: PathWatcherEvent['type'];
  path: string;
  mtime: number;
  ino: number;
  buffer?: string;
}

export class WebContainerInternal {
  readonly previewScript: PreviewScriptAPI = {
    storage: {
      get: async () => undefined,
      set: () => unsupported('previewScript.storage'),
      on: () => () => undefined,
    },
    broadcast: () => unsupported('previewScript.broadcast'),
    on: () => () => undefined,
  };

  /** @internal */
  constructor(
    private readonly link: ContainerLink,
    private readonly server: Server,
  ) {}

  /** Changes under the workspace, batched per server frame. The first frames report what
   * exists (`add_dir`/`add_file`, parents first). After a reconnect the watch resumes from
   * its cursor; when the server can only give the whole state (`resync`), the paths that
   * are gone are reported as removals, children first. */
  watchPaths(options: WatchPathsOptions, cb: (events: PathWatcherEvent[]) => void): () => void {
    const id = `watchPaths-${++watchIds}`;
    const root = options.path ? absolute(normalize(options.path)) : WORKDIR;
    const include = options.include ?? [`${root}/**`];
    const exclude = [...(options.exclude ?? [])];
    if (options.ignoreHiddenFiles || options.ignoreHiddenFolders) {
      exclude.push('.*');
    }
    const known = new Map<string, boolean>(); // path → is a folder
    let resyncing: Set<string> | undefined;
    this.link.watch(
      {
        type: 'watch',
        id,
        include,
        exclude,
        content: options.includeContent ?? false,
        initial: true,
      },
      (frame: Message) => {
        if (frame.type !== 'fs') {
          return;
        }
        const events = (frame.events as WireEvent[]).map(toEvent);
        if (frame.resync) {
          resyncing ??= new Set();
          for (const event of events) {
            resyncing.add(event.path);
          }
        }
        for (const event of events) {
          if (event.type.startsWith('remove')) {
            known.delete(event.path);
          } else {
            known.set(event.path, event.type === 'add_dir');
          }
        }
        if (frame.resync && frame.cursor && resyncing) {
          events.push(...removalsFor(known, resyncing));
          resyncing = undefined;
        }
        if (events.length) {
          cb(events);
        }
      },
    );
    return () => this.link.unwatch(id);
  }

  async fileSearch(
    _patterns: string | undefined,
    _cwd: string,
    _options?: Partial<FileSearchOptions>,
  ): Promise<string[]> {
    return unsupported('fileSearch');
  }

  /** ripgrep in the sandbox: each file's matches go to `onProgress` as soon as rg has them
   * (path absolute, 1-based lines, 0-based UTF-16 columns); resolves with all of them. */
  async textSearch(
    pattern: string,
    options: Partial<TextSearchOptions> = {},
    onProgress?: TextSearchOnProgressCallback,
  ): Promise<Map<string, TextSearchMatch[]>> {
    const folder = options.folders?.[0] ?? WORKDIR;
    const response = await this.server.request(
      'POST',
      `/api/containers/${this.link.containerId}/search`,
      {
        json: {
          query: pattern,
          regex: options.isRegex ?? false,
          case_sensitive: options.caseSensitive ?? false,
          whole_word: options.isWordMatch ?? false,
          include: options.includes ?? [],
          exclude: options.excludes ?? [],
          gitignore: options.gitignore ?? true,
          path: normalize(folder),
          max_results: Math.min(Math.max(options.resultLimit ?? 500, 1), 10_000),
        },
      },
    );
    const results = new Map<string, TextSearchMatch[]>();
    for await (const line of ndjson(response)) {
      if (line.type === 'file') {
        const path = String(line.path);
        const matches = line.matches as TextSearchMatch[];
        results.set(path, matches);
        onProgress?.(path, matches);
      } else if (line.type === 'error') {
        throw new Error(`textSearch failed: ${String(line.message)}`);
      }
    }
    return results;
  }

  async getProcesses(): Promise<{ pid: number }[]> {
    return unsupported('getProcesses');
  }

  onProcessesRemove(_cb: (process: { pid: number }) => void): () => void {
    return () => undefined;
  }

  async serialize(_path: string, _options?: GlobOptions): Promise<Uint8Array> {
    return unsupported('serialize');
  }

  /** Sandboxes reach the internet directly: no CORS proxy is needed or used. */
  async setCORSProxy(_options?: ProxyOptions): Promise<void> {}

  async setCORSAuthToken(_token?: string): Promise<void> {}
}

function toEvent(wire: WireEvent): PathWatcherEvent {
  const event: PathWatcherEvent = {
    type: wire.type,
    path: wire.path,
    mtime: wire.mtime,
    ino: wire.ino,
  };
  if (wire.buffer !== undefined) {
    event.buffer = fromBase64(wire.buffer);
  }
  return event;
}

/** What a resync's state no longer has, as removals: children before their folders. */
function removalsFor(known: Map<string, boolean>, present: Set<string>): PathWatcherEvent[] {
  const gone = [...known.keys()].filter((path) => !present.has(path));
  gone.sort((a, b) => b.split('/').length - a.split('/').length);
  return gone.map((path) => {
    const folder = known.get(path);
    known.delete(path);
    return { type: folder ? 'remove_dir' : 'remove_file', path, mtime: Date.now(), ino: 0 };
  });
}

function unsupported(what: string): never {
  throw new Error(`internal.${what} is not supported by cloudcontainer`);
}
