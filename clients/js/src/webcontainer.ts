/**
 * `WebContainer`: WebContainer's class, backed by a container on a cloudcontainer server.
 *
 * `boot()` finds the server (server.ts), makes a fresh container and opens its socket. One
 * instance per page at a time, with WebContainer's own error texts.
 */

import { Files, normalize, WORKDIR } from './fs.js';
import { WebContainerInternal } from './internal.js';
import { backoffMs, ContainerLink, type Message, sleep } from './link.js';
import { spawnProcess } from './process.js';
import { reportConnection } from './connection.js';
import { describe, discover, isUnreachable, Server, ServerError } from './server.js';
import type {
  BootOptions,
  CodeListener,
  ErrorListener,
  ExportOptions,
  FileSystemAPI,
  FileSystemTree,
  OpenListener,
  PortListener,
  PreviewMessage,
  PreviewMessageListener,
  PreviewScriptOptions,
  ServerReadyListener,
  SpawnOptions,
  Unsubscribe,
  WebContainerProcess,
} from './types.js';
import { isPreviewMessage } from './utils.js';
import { checkExportable, exportTree, mountTree } from './trees.js';

const PROJECT_NAME = 'webcontainer';
const BOOT_BACKOFF_FIRST_MS = 500;

interface ContainerOut {
  id: string;
  status: string;
  status_reason: string | null;
  toolchain: { node: string };
}

let live: WebContainer | undefined;
let booting: Promise<unknown> = Promise.resolve();
let tearingDown: Promise<void> = Promise.resolve();

export class WebContainer {
  readonly fs: FileSystemAPI;
  private readonly files: Files;
  readonly internal: WebContainerInternal;
  private readonly portEvents: { chain: Promise<void> } = { chain: Promise.resolve() };
  private tornDown = false;
  private script = '';

  /** @internal */
  private constructor(
    private readonly server: Server,
    private readonly link: ContainerLink,
    private readonly container: ContainerOut,
    private readonly forwardErrors: boolean,
  ) {
    this.files = new Files(link, server);
    this.fs = this.files;
    this.internal = new WebContainerInternal(link, server);
  }

  static async boot(options: BootOptions = {}): Promise<WebContainer> {
    await tearingDown;
    const name = options.workdirName;
    if (name !== undefined && (name.includes('/') || name === '.' || name === '..')) {
      throw new Error('workdirName should be a valid folder name');
    }
    const boot = booting.then(() => WebContainer.bootOne(options));
    booting = boot.catch(() => undefined);
    return boot;
  }

  private static async bootOne(options: BootOptions): Promise<WebContainer> {
    if (live) {
      throw new Error('Only a single WebContainer instance can be booted');
    }
    if (options.workdirName !== undefined && options.workdirName !== 'project') {
      console.warn(`[cloudcontainer] the workdir is always ${WORKDIR}, whatever workdirName says`);
    }
    const target = discover();
    const server = new Server(target);
    const create = async () => {
      const projectId = target.projectId ?? (await ensureProject(server));
      return server.json<ContainerOut>('POST', '/api/containers?wait=true', {
        json: { project_id: projectId, template: target.template ?? 'blank', ephemeral: true },
      });
    };
    const container = target.waitForServer ? await untilReachable(create) : await create();
    if (container.status !== 'running') {
      throw new Error(`The container did not start: ${container.status_reason ?? container.status}`);
    }
    const link = new ContainerLink(server, container.id);
    await link.start();
    const forwardErrors = Boolean(options.forwardPreviewErrors);
    const instance = new WebContainer(server, link, container, forwardErrors);
    if (forwardErrors) {
      await instance.putScript();
    }
    live = instance;
    return instance;
  }

  /** The container's id on the server (not in WebContainer's API). */
  get containerId(): string {
    return this.container.id;
  }

  get workdir(): string {
    return WORKDIR;
  }

  /** The PATH processes start with. */
  get path(): string {
    return (
      `/opt/node/${this.container.toolchain.node}/bin:/home/.local/bin:` +
      '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    );
  }

  spawn(command: string, args: string[], options?: SpawnOptions): Promise<WebContainerProcess>;
  spawn(command: string, options?: SpawnOptions): Promise<WebContainerProcess>;
  spawn(
    command: string,
    argsOrOptions?: string[] | SpawnOptions,
    maybeOptions?: SpawnOptions,
  ): Promise<WebContainerProcess> {
    const args = Array.isArray(argsOrOptions) ? argsOrOptions : [];
    const options = (Array.isArray(argsOrOptions) ? maybeOptions : argsOrOptions) ?? {};
    return spawnProcess(this.server, this.container.id, command, args, options);
  }

  on(event: 'port', listener: PortListener): Unsubscribe;
  on(event: 'server-ready', listener: ServerReadyListener): Unsubscribe;
  on(event: 'preview-message', listener: PreviewMessageListener): Unsubscribe;
  on(event: 'error', listener: ErrorListener): Unsubscribe;
  on(event: 'xdg-open', listener: OpenListener): Unsubscribe;
  on(event: 'code', listener: CodeListener): Unsubscribe;
  on(event: string, listener: (...args: any[]) => void): Unsubscribe {
    let active = true;
    const guarded = (...args: unknown[]) => {
      if (active) {
        listener(...args);
      }
    };
    const stop = this.listen(event, guarded);
    return () => {
      active = false;
      stop();
    };
  }

  async mount(
    snapshotOrTree: FileSystemTree | Uint8Array | ArrayBuffer,
    options?: { mountPoint?: string },
  ): Promise<void> {
    const root = normalize(options?.mountPoint ?? '/');
    await this.files.transfer(() => mountTree(this.server, this.container.id, snapshotOrTree, root));
  }

  export(path: string): Promise<FileSystemTree>;
  export(path: string, options: ExportOptions & { format?: 'json' }): Promise<FileSystemTree>;
  export(path: string, options: ExportOptions): Promise<Uint8Array>;
  async export(path: string, options: ExportOptions = {}): Promise<FileSystemTree | Uint8Array> {
    const root = normalize(path);
    await checkExportable(this.files, root, options);
    return this.files.transfer(() => exportTree(this.server, this.container.id, root, options));
  }

  /** Injected at the start of `<head>` of every later HTML document of every port. */
  async setPreviewScript(scriptSrc: string, _options?: PreviewScriptOptions): Promise<void> {
    this.script = scriptSrc;
    await this.putScript();
  }

  teardown(): void {
    if (this.tornDown) {
      throw new Error('WebContainer already torn down');
    }
    this.tornDown = true;
    if (live === this) {
      live = undefined;
    }
    this.link.close();
    tearingDown = this.server
      .request('DELETE', `/api/containers/${this.container.id}`)
      .then(() => undefined)
      .catch((error: unknown) => {
        if (!(error instanceof ServerError && error.status === 404)) {
          console.warn('[cloudcontainer] the container could not be deleted:', describe(error));
        }
      });
  }

  // -- events ----------------------------------------------------------------------------

  private listen(event: string, listener: (...args: unknown[]) => void): () => void {
    switch (event) {
      case 'port':
        return this.link.subscribe((message) => {
          if (message.type === 'port') {
            this.inOrder(async () => {
              const url = await this.previewUrl(message);
              listener(message.port, message.state === 'open' ? 'open' : 'close', url);
            });
          }
        });
      case 'server-ready':
        return this.link.subscribe((message) => {
          if (message.type === 'server-ready') {
            this.inOrder(async () => listener(message.port, await this.previewUrl(message)));
          }
        });
      case 'preview-message':
        return this.onPreviewMessage(listener);
      case 'error':
        return this.link.subscribe((message) => {
          if (message.type === 'gone' || message.state === 'unauthorized') {
            listener({ message: String(message.message) });
          }
        });
      case 'xdg-open':
      case 'code':
        return () => undefined; // nothing in a container opens an editor or a browser tab
      default:
        throw new Error(`Unsupported event type '${event}'.`);
    }
  }

  /** Port events in the order they came, though a URL may need a request first. */
  private inOrder(work: () => Promise<void>): void {
    this.portEvents.chain = this.portEvents.chain.then(work).catch((error: unknown) => {
      console.error('[cloudcontainer] a port listener threw:', describe(error));
    });
  }

  /** The preview's origin (no trailing slash, as bolt.diy concatenates paths to it). In a
   * browser, a private port's cookie is set first, so the origin loads in an iframe. */
  private async previewUrl(message: Message): Promise<string> {
    const origin = String(message.origin ?? '');
    const token = message.url ? new URL(String(message.url)).searchParams.get('cc_token') : null;
    if (token && typeof document !== 'undefined') {
      try {
        await fetch(`${origin}/__cloudcontainer/auth?cc_token=${encodeURIComponent(token)}`, {
          credentials: 'include',
          mode: 'cors',
        });
      } catch (error) {
        console.warn(
          `[cloudcontainer] could not sign in to the preview at ${origin} (see docs/previews.md):`,
          describe(error),
        );
      }
    }
    return origin;
  }

  private onPreviewMessage(listener: (message: PreviewMessage) => void): () => void {
    const target = globalThis as { addEventListener?: typeof addEventListener };
    if (typeof target.addEventListener !== 'function') {
      return () => undefined;
    }
    const handler = (event: MessageEvent) => {
      const data = event.data as Record<string, unknown> | null;
      if (!data || data.__cloudcontainer !== 'preview-message') {
        return;
      }
      const { __cloudcontainer: _, ...message } = data;
      const withId = { ...message, previewId: String(message.port ?? '') };
      if (isPreviewMessage(withId)) {
        listener(withId);
      }
    };
    target.addEventListener('message', handler as EventListener);
    return () => globalThis.removeEventListener('message', handler as EventListener);
  }

  private async putScript(): Promise<void> {
    await this.server.request('PUT', `/api/containers/${this.container.id}/previews:script`, {
      json: { script: this.script, forward_errors: this.forwardErrors },
    });
  }
}

/** `work` again and again while the server cannot be reached, with backoff; what the server
 * refuses (a 4xx) is thrown. Every failed try and the success are reported. */
async function untilReachable<T>(work: () => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      const result = await work();
      reportConnection({ state: 'online', message: 'The cloudcontainer server is reachable.' });
      return result;
    } catch (error) {
      if (!isUnreachable(error)) {
        throw error;
      }
      reportConnection({ state: 'offline', message: `${describe(error)}. Trying again…` });
      await sleep(backoffMs(attempt, BOOT_BACKOFF_FIRST_MS));
    }
  }
}

async function ensureProject(server: Server): Promise<string> {
  for (let attempt = 0; attempt < 2; attempt++) {
    const found = await findProject(server);
    if (found) {
      return found;
    }
    try {
      return (await server.json<{ id: string }>('POST', '/api/projects', {
        json: { name: PROJECT_NAME, description: 'Containers booted by @cloudcontainer/api' },
      })).id;
    } catch (error) {
      if (!(error instanceof ServerError && error.code === 'project_name_taken')) {
        throw error;
      }
    }
  }
  throw new Error(`The project "${PROJECT_NAME}" could not be found or made.`);
}

async function findProject(server: Server): Promise<string | undefined> {
  for (let offset = 0; ; offset += 100) {
    const page = await server.json<{ items: { id: string; name: string }[]; total: number }>(
      'GET',
      `/api/projects?limit=100&offset=${offset}`,
    );
    const found = page.items.find((project) => project.name === PROJECT_NAME);
    if (found || offset + 100 >= page.total) {
      return found?.id;
    }
  }
}
