/**
 * Finding the server and talking HTTP to it: discovery, the bearer token (refreshed when it
 * is a function), JSON errors, and WebSocket tickets.
 */

/** A token, or something that gives a fresh one (called again when the server says expired). */
export type TokenSource = string | (() => string | Promise<string>);

export interface ServerOptions {
  /** The cloudcontainer server, e.g. `http://127.0.0.1:8000`. */
  url?: string;
  /** An API key (`cc_…`) or an access token, or a function that returns one. */
  token?: TokenSource;
  /** The project containers are made in (an id); default: a project named `webcontainer`. */
  projectId?: string;
  /** The template of new containers (default `blank`: an empty workspace, as WebContainer boots). */
  template?: string;
  /** When the server cannot be reached (or the token cannot be had), `boot()` keeps trying
   * with backoff, reporting through `onConnectionChange`, instead of rejecting at once. For
   * pages that boot on load, as bolt.diy does. */
  waitForServer?: boolean;
}

let configured: ServerOptions = {};

/** Where `boot()` connects, before it does: the first of `configure()`, the page's
 * `globalThis.__CLOUDCONTAINER__`, the `CLOUDCONTAINER_URL`/`CLOUDCONTAINER_TOKEN`
 * environment variables (Node), and the page's own origin. */
export function configure(options: ServerOptions): void {
  configured = { ...configured, ...options };
}

export function discover(): Required<Pick<ServerOptions, 'url'>> & ServerOptions {
  const page = (globalThis as { __CLOUDCONTAINER__?: ServerOptions }).__CLOUDCONTAINER__ ?? {};
  const env = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env ?? {};
  const origin = (globalThis as { location?: { origin?: string } }).location?.origin;
  const url = configured.url ?? page.url ?? env.CLOUDCONTAINER_URL ?? origin;
  if (!url) {
    throw new Error(
      'No cloudcontainer server: call configure({url, token}), set globalThis.__CLOUDCONTAINER__, ' +
        'or CLOUDCONTAINER_URL and CLOUDCONTAINER_TOKEN.',
    );
  }
  return {
    ...page,
    ...configured,
    url: url.replace(/\/+$/, ''),
    token: configured.token ?? page.token ?? env.CLOUDCONTAINER_TOKEN,
  };
}

/** An error the server answered: its HTTP status and its error code (`file_not_found`). */
export class ServerError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
    readonly errno?: string,
  ) {
    super(message);
    this.name = 'ServerError';
  }
}

interface RequestOptions {
  json?: unknown;
  body?: Uint8Array;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

export class Server {
  readonly url: string;
  private token: string | undefined;
  private readonly source: TokenSource | undefined;

  constructor(options: Required<Pick<ServerOptions, 'url'>> & ServerOptions) {
    this.url = options.url;
    this.source = options.token;
    this.token = typeof options.token === 'string' ? options.token : undefined;
  }

  /** A request; 4xx and 5xx answers are thrown as ServerError. A 401 for an expired token
   * asks the token function for a new one and tries once more. */
  async request(method: string, path: string, options: RequestOptions = {}): Promise<Response> {
    let response = await this.send(method, path, options);
    if (response.status === 401 && typeof this.source === 'function') {
      this.token = undefined;
      response = await this.send(method, path, options);
    }
    if (!response.ok) {
      throw await errorOf(response);
    }
    return response;
  }

  async json<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const response = await this.request(method, path, options);
    return response.status === 204 ? (undefined as T) : ((await response.json()) as T);
  }

  /** The URL of a WebSocket at `path`, with a fresh single-use ticket. */
  async socketUrl(path: string): Promise<string> {
    const { ticket } = await this.json<{ ticket: string }>('POST', '/api/auth/ws-ticket', {
      json: { path },
    });
    return `${this.url.replace(/^http/, 'ws')}${path}?ticket=${encodeURIComponent(ticket)}`;
  }

  private async send(method: string, path: string, options: RequestOptions): Promise<Response> {
    const headers: Record<string, string> = { ...options.headers };
    const token = await this.currentToken();
    if (token) {
      headers.authorization = `Bearer ${token}`;
    }
    let body: BodyInit | undefined;
    if (options.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(options.json);
    } else if (options.body !== undefined) {
      headers['content-type'] = 'application/octet-stream';
      body = options.body as BodyInit;
    }
    try {
      return await fetch(this.url + path, { method, headers, body, signal: options.signal });
    } catch (error) {
      if (options.signal?.aborted) {
        throw error;
      }
      throw new ServerError(
        `The cloudcontainer server at ${this.url} cannot be reached: ${describe(error)}`,
        0,
        'unreachable',
      );
    }
  }

  private async currentToken(): Promise<string | undefined> {
    if (this.token === undefined && typeof this.source === 'function') {
      try {
        this.token = await this.source();
      } catch (error) {
        throw new ServerError(`No token for ${this.url}: ${describe(error)}`, 0, 'token_unavailable');
      }
    }
    return this.token;
  }
}

/** The server (or the way to it) is down for now, not refusing: worth another try. */
export function isUnreachable(error: unknown): boolean {
  return error instanceof ServerError && [0, 502, 503, 504].includes(error.status);
}

async function errorOf(response: Response): Promise<ServerError> {
  let code = `http_${response.status}`;
  let message = `The server answered ${response.status} ${response.statusText}`;
  try {
    const body = (await response.json()) as { error?: { code?: string; message?: string } };
    code = body.error?.code ?? code;
    message = body.error?.message ?? message;
  } catch {
    // not JSON: keep the status line
  }
  return new ServerError(message, response.status, code);
}

export function describe(error: unknown): string {
  if (error instanceof Error) {
    const cause = (error as { cause?: unknown }).cause;
    return cause instanceof Error ? `${error.message} (${cause.message})` : error.message;
  }
  return String(error);
}
