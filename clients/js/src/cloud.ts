/**
 * The cloud API for code written for cloudcontainer rather than WebContainer: projects,
 * persistent containers, files, commands, PTYs, previews, history and snapshots, typed, in the
 * style of E2B's SDK (`sandbox.files`, `sandbox.commands`, `sandbox.pty`).
 *
 *     const cloud = new Cloud({ url, token });
 *     const project = await cloud.projects.create({ name: 'demo' });
 *     const box = await cloud.sandboxes.create({ projectId: project.id, template: 'vite-react' });
 *     await box.commands.run('npm install');
 *     const dev = await box.pty.create({ command: 'npm', args: ['run', 'dev'] });
 *     const preview = await box.previews.wait(5173);
 *
 * Everything goes through the HTTP API (docs/api.md), except PTYs, which are processes as
 * `spawn` makes them (resumed after a dropped connection).
 */

import { decode, encode } from './encoding.js';
import { normalize } from './fs.js';
import { ndjson } from './ndjson.js';
import { spawnProcess } from './process.js';
import { discover, Server, type ServerOptions } from './server.js';
import type { WebContainerProcess } from './types.js';

export interface Project {
  id: string;
  owner_id: string;
  name: string;
  description: string;
  created_at: string;
  updated_at: string;
}

export interface ContainerInfo {
  id: string;
  project_id: string;
  status: 'creating' | 'starting' | 'running' | 'stopping' | 'stopped' | 'failed';
  status_reason: string;
  template: string;
  ephemeral: boolean;
  toolchain: { node: string };
  resources: { cpu: number; memory_mb: number; pids: number; disk_mb: number };
  ports: number[];
  [field: string]: unknown;
}

export interface Entry {
  path: string;
  name: string;
  type: 'file' | 'directory' | 'symlink' | 'other';
  size: number;
  mtime: number;
  mode: number;
}

export interface Preview {
  port: number;
  url: string;
  origin: string;
  external_port: number;
  status: 'open' | 'ready' | 'closed';
  public: boolean;
  protocol: string;
}

export interface Snapshot {
  id: string;
  project_id: string;
  container_id: string;
  created_at: string;
  reason: 'manual' | 'auto' | 'stop';
  file_count: number;
  total_bytes: number;
}

export interface HistoryEntry {
  id: string;
  container_id: string;
  source: 'exec' | 'shell';
  command: string;
  exit_code: number | null;
  started_at: string;
  finished_at: string | null;
}

export interface CommandResult {
  stdout: string;
  stderr: string;
  exitCode: number;
  timedOut: boolean;
}

export interface RunOptions {
  args?: string[];
  cwd?: string;
  env?: Record<string, string>;
  /** Seconds before the command is killed (default 60). */
  timeout?: number;
  stdin?: string;
  onStdout?: (data: string) => void;
  onStderr?: (data: string) => void;
}

export class Cloud {
  readonly server: Server;
  readonly projects: Projects;
  readonly sandboxes: Sandboxes;

  /** Options as `configure()` takes them; what is missing is discovered like `boot()` does. */
  constructor(options: ServerOptions = {}) {
    this.server = new Server({ ...discover(), ...options, url: options.url ?? discover().url });
    this.projects = new Projects(this.server);
    this.sandboxes = new Sandboxes(this.server);
  }
}

class Projects {
  constructor(private readonly server: Server) {}

  create(body: { name: string; description?: string }): Promise<Project> {
    return this.server.json('POST', '/api/projects', { json: body });
  }

  async list(): Promise<Project[]> {
    const all: Project[] = [];
    for (let offset = 0; ; offset += 100) {
      const page = await this.server.json<{ items: Project[]; total: number }>(
        'GET',
        `/api/projects?limit=100&offset=${offset}`,
      );
      all.push(...page.items);
      if (offset + 100 >= page.total) {
        return all;
      }
    }
  }

  get(id: string): Promise<Project> {
    return this.server.json('GET', `/api/projects/${id}`);
  }

  async delete(id: string): Promise<void> {
    await this.server.request('DELETE', `/api/projects/${id}`);
  }

  /** Commands run in the project's containers (exec and shells), newest first. */
  history(id: string, query: { q?: string; limit?: number } = {}): Promise<HistoryEntry[]> {
    const params = new URLSearchParams();
    if (query.q) params.set('q', query.q);
    if (query.limit) params.set('limit', String(query.limit));
    return this.server.json('GET', `/api/projects/${id}/history?${params.toString()}`);
  }

  snapshots(id: string): Promise<Snapshot[]> {
    return this.server.json('GET', `/api/projects/${id}/snapshots`);
  }
}

class Sandboxes {
  constructor(private readonly server: Server) {}

  /** A new container of a project, running when this resolves (or an error saying why). */
  async create(options: {
    projectId: string;
    template?: string;
    resources?: Partial<{ cpu: number; memory_mb: number; pids: number; disk_mb: number }>;
    node?: string;
    ephemeral?: boolean;
  }): Promise<Sandbox> {
    const info = await this.server.json<ContainerInfo>('POST', '/api/containers?wait=true', {
      json: {
        project_id: options.projectId,
        ...(options.template ? { template: options.template } : {}),
        ...(options.resources ? { resources: options.resources } : {}),
        ...(options.node ? { toolchain: { node: options.node } } : {}),
        ...(options.ephemeral ? { ephemeral: true } : {}),
      },
    });
    if (info.status !== 'running') {
      throw new Error(`The container did not start: ${info.status_reason || info.status}`);
    }
    return new Sandbox(this.server, info);
  }

  /** An existing container (a stopped one starts again on its first call). */
  async connect(id: string): Promise<Sandbox> {
    return new Sandbox(this.server, await this.server.json('GET', `/api/containers/${id}`));
  }

  list(): Promise<ContainerInfo[]> {
    return this.server.json('GET', '/api/containers');
  }
}

export class Sandbox {
  readonly id: string;
  readonly files: SandboxFiles;
  readonly commands: Commands;
  readonly pty: Pty;
  readonly previews: Previews;
  readonly snapshots: Snapshots;

  constructor(
    private readonly server: Server,
    public info: ContainerInfo,
  ) {
    this.id = info.id;
    const base = `/api/containers/${info.id}`;
    this.files = new SandboxFiles(server, base);
    this.commands = new Commands(server, base);
    this.pty = new Pty(server, info.id);
    this.previews = new Previews(server, base);
    this.snapshots = new Snapshots(server, base);
  }

  async refresh(): Promise<ContainerInfo> {
    this.info = await this.server.json('GET', `/api/containers/${this.id}`);
    return this.info;
  }

  async start(): Promise<void> {
    this.info = await this.server.json('POST', `/api/containers/${this.id}/start?wait=true`);
  }

  async stop(): Promise<void> {
    this.info = await this.server.json('POST', `/api/containers/${this.id}/stop`);
  }

  async delete(): Promise<void> {
    await this.server.request('DELETE', `/api/containers/${this.id}`);
  }
}

class SandboxFiles {
  constructor(
    private readonly server: Server,
    private readonly base: string,
  ) {}

  read(path: string): Promise<string>;
  read(path: string, options: { format: 'bytes' }): Promise<Uint8Array>;
  async read(path: string, options?: { format: 'bytes' }): Promise<string | Uint8Array> {
    const response = await this.server.request('GET', this.url(path));
    const bytes = new Uint8Array(await response.arrayBuffer());
    return options?.format === 'bytes' ? bytes : decode(bytes, 'utf8');
  }

  /** Replace a file atomically (its folders are made); streams through HTTP at any size. */
  async write(path: string, data: string | Uint8Array): Promise<Entry & { etag: string }> {
    const body = typeof data === 'string' ? encode(data, 'utf8') : data;
    return (await this.server.request('PUT', `${this.url(path)}?mkdirs=true`, { body })).json();
  }

  async list(path = '/', options: { recursive?: boolean } = {}): Promise<Entry[]> {
    const query = new URLSearchParams({ path, recursive: String(Boolean(options.recursive)) });
    const listing = await this.server.json<{ entries: Entry[] }>(
      'GET',
      `${this.base}/files?${query.toString()}`,
    );
    return listing.entries;
  }

  makeDir(path: string): Promise<Entry> {
    return this.server.json('POST', `${this.base}/files`, {
      json: { path, type: 'directory', mkdirs: true },
    });
  }

  async remove(path: string, options: { recursive?: boolean } = {}): Promise<void> {
    await this.server.request('DELETE', `${this.url(path)}?recursive=${Boolean(options.recursive)}`);
  }

  move(from: string, to: string): Promise<Entry> {
    return this.server.json('POST', `${this.base}/files:move`, { json: { from, to } });
  }

  private url(path: string): string {
    const segments = normalize(path).split('/').filter(Boolean).map(encodeURIComponent);
    return `${this.base}/files/${segments.join('/')}`;
  }
}

class Commands {
  constructor(
    private readonly server: Server,
    private readonly base: string,
  ) {}

  /** Run a command to its end (`exec`): a shell line when no `args` are given, else the
   * program with its arguments. Output streams to the callbacks as it comes. */
  async run(command: string, options: RunOptions = {}): Promise<CommandResult> {
    const argv = options.args ? { command, args: options.args } : { command: 'sh', args: ['-c', command] };
    const response = await this.server.request('POST', `${this.base}/exec`, {
      json: {
        ...argv,
        ...(options.cwd ? { cwd: options.cwd } : {}),
        ...(options.env ? { env: options.env } : {}),
        ...(options.timeout ? { timeout: options.timeout } : {}),
        ...(options.stdin !== undefined ? { stdin: options.stdin } : {}),
      },
    });
    const result: CommandResult = { stdout: '', stderr: '', exitCode: -1, timedOut: false };
    for await (const line of ndjson(response)) {
      if (line.type === 'stdout') {
        result.stdout += String(line.data);
        options.onStdout?.(String(line.data));
      } else if (line.type === 'stderr') {
        result.stderr += String(line.data);
        options.onStderr?.(String(line.data));
      } else if (line.type === 'exit') {
        result.exitCode = Number(line.code);
        result.timedOut = Boolean(line.timed_out);
      } else if (line.type === 'error') {
        throw new Error(`The command failed: ${String(line.message ?? line.code)}`);
      }
    }
    return result;
  }
}

class Pty {
  constructor(
    private readonly server: Server,
    private readonly containerId: string,
  ) {}

  /** A program on a PTY (`jsh` by default): the same process object as `spawn` gives. */
  create(
    options: { command?: string; args?: string[]; cwd?: string; env?: Record<string, string>; cols?: number; rows?: number } = {},
  ): Promise<WebContainerProcess> {
    return spawnProcess(this.server, this.containerId, options.command ?? 'jsh', options.args ?? [], {
      ...(options.cwd ? { cwd: options.cwd } : {}),
      ...(options.env ? { env: options.env } : {}),
      terminal: { cols: options.cols ?? 80, rows: options.rows ?? 24 },
    });
  }
}

class Previews {
  constructor(
    private readonly server: Server,
    private readonly base: string,
  ) {}

  list(): Promise<Preview[]> {
    return this.server.json('GET', `${this.base}/previews`);
  }

  /** The port's preview once it answers HTTP (polls the list; `timeout` in seconds). */
  async wait(port: number, timeout = 60): Promise<Preview> {
    const deadline = Date.now() + timeout * 1000;
    for (;;) {
      const found = (await this.list()).find((p) => p.port === port && p.status === 'ready');
      if (found) {
        return found;
      }
      if (Date.now() > deadline) {
        throw new Error(`Port ${port} did not answer HTTP within ${timeout} s`);
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }

  setPublic(port: number, open: boolean): Promise<Preview> {
    return this.server.json('PATCH', `${this.base}/previews/${port}`, { json: { public: open } });
  }
}

class Snapshots {
  constructor(
    private readonly server: Server,
    private readonly base: string,
  ) {}

  create(): Promise<Snapshot> {
    return this.server.json('POST', `${this.base}/snapshots`);
  }

  async restore(snapshotId: string): Promise<void> {
    await this.server.request('POST', `${this.base}/snapshots/${snapshotId}/restore`);
  }
}
