/**
 * `webcontainer.spawn`: a program on a PTY in the container (a terminal of the server,
 * docs/terminals.md) and its own WebSocket.
 *
 * Each binary frame of the server is one `output` chunk, decoded as streaming UTF-8 (a
 * character split across frames comes whole with the next one): the bolt shell's framing
 * (one OSC 654 marker per frame, at its end) is part of WebContainer's contract. What the
 * server cannot do is handled here: after a Ctrl-C is typed into the bolt shell, frames are
 * joined into one chunk up to the next marker, so a dev server's line already on its way
 * when the Ctrl-C left never reaches bolt as a chunk of its own.
 */

import { absolute, normalize } from './fs.js';
import { type Server, ServerError } from './server.js';
import { backoffMs, sleep } from './link.js';
import type { SpawnOptions, WebContainerProcess } from './types.js';
import { openSocket } from './websocket.js';

const MARKER = '\x1b]654;';
const CTRL_C = '\x03';
/** How long frames are joined after a Ctrl-C when no marker comes (a program ignoring it). */
const JOIN_LIMIT_MS = 1_500;
const DEFAULT_SIZE = { cols: 80, rows: 24 };

interface Terminal {
  id: string;
  state: 'running' | 'exited';
  exit_code: number | null;
}

export async function spawnProcess(
  server: Server,
  containerId: string,
  command: string,
  args: string[],
  options: SpawnOptions,
): Promise<WebContainerProcess> {
  const size = options.terminal ?? DEFAULT_SIZE;
  const env = Object.fromEntries(
    Object.entries(options.env ?? {}).map(([key, value]) => [key, String(value)]),
  );
  const base = `/api/containers/${containerId}/terminals`;
  const terminal = await server.json<Terminal>('POST', base, {
    json: {
      command,
      args,
      env,
      cols: size.cols,
      rows: size.rows,
      ...(options.cwd ? { cwd: resolveCwd(options.cwd) } : {}),
    },
  });
  const bolt = args.includes('--osc');
  const process = new Process(server, `${base}/${terminal.id}`, options.output !== false, bolt);
  await process.connect();
  return process;
}

function resolveCwd(cwd: string): string {
  return cwd.startsWith('/') && !cwd.startsWith('/home/project')
    ? cwd
    : absolute(normalize(cwd));
}

/** A process's output is resumed, not repeated, after a dropped connection: the server says
 * where each attach's scrollback starts in the whole output (`offset`), and the bytes this
 * side already has are skipped. */
class Process implements WebContainerProcess {
  readonly exit: Promise<number>;
  readonly input: WritableStream<string>;
  readonly output: ReadableStream<string>;
  readonly stdout: ReadableStream<string>;
  readonly stderr: ReadableStream<string>;

  private socket: WebSocket | undefined;
  private readonly decoder = new TextDecoder();
  private readonly encoder = new TextEncoder();
  private output_: ReadableStreamDefaultController<string> | undefined;
  private readonly streams: ReadableStreamDefaultController<string>[] = [];
  private resolveExit!: (code: number) => void;
  private exited = false;
  private received = -1; // offset of the next output byte in the whole output (-1: none yet)
  private skip = 0; // bytes of the replay that follows which this side already has
  private readonly typed: Uint8Array[] = []; // input while reconnecting
  private joined: string | undefined; // frames since a Ctrl-C, up to the next marker
  private joinTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly server: Server,
    private readonly path: string,
    emitOutput: boolean,
    private readonly bolt: boolean,
  ) {
    this.exit = new Promise((resolve) => (this.resolveExit = resolve));
    this.output = new ReadableStream<string>({
      start: (controller) => {
        this.streams.push(controller);
        if (emitOutput) {
          this.output_ = controller;
        }
      },
    });
    const empty = () =>
      new ReadableStream<string>({ start: (controller) => void this.streams.push(controller) });
    this.stdout = empty();
    this.stderr = empty();
    this.input = new WritableStream<string>({ write: (chunk) => this.type(chunk) });
  }

  /** Attach (again): a new socket with a new ticket. */
  async connect(): Promise<void> {
    const socket = await openSocket(await this.server.socketUrl(this.path));
    this.socket = socket;
    socket.addEventListener('message', (event) => this.received_(event.data));
    socket.addEventListener('close', () => this.dropped(socket));
  }

  kill(): void {
    if (!this.exited) {
      this.server.request('DELETE', this.path).catch(() => undefined);
    }
  }

  resize(dimensions: { cols: number; rows: number }): void {
    if (!this.exited && this.socket?.readyState === 1) {
      this.socket.send(
        JSON.stringify({ type: 'resize', cols: dimensions.cols, rows: dimensions.rows }),
      );
    }
  }

  private type(chunk: string): void {
    if (this.exited) {
      console.warn('This process already exited');
      return;
    }
    if (this.bolt && chunk.includes(CTRL_C)) {
      this.join();
    }
    const bytes = this.encoder.encode(chunk);
    if (this.socket?.readyState === 1 && this.received >= 0) {
      this.socket.send(bytes);
    } else {
      this.typed.push(bytes); // sent once attached again
    }
  }

  private received_(data: unknown): void {
    if (typeof data === 'string') {
      this.control(JSON.parse(data) as { type: string; code?: number; offset?: number });
      return;
    }
    let bytes = new Uint8Array(data as ArrayBuffer);
    if (this.skip > 0) {
      const dropped = Math.min(this.skip, bytes.length);
      this.skip -= dropped;
      bytes = bytes.subarray(dropped);
    }
    if (bytes.length === 0) {
      return;
    }
    this.received += bytes.length;
    this.emit(this.decoder.decode(bytes, { stream: true }));
  }

  private control(message: { type: string; code?: number; offset?: number }): void {
    if (message.type === 'attached' || message.type === 'lagged') {
      // The replay that follows starts at `offset` of the whole output; this side has every
      // byte before `received`, so it skips the difference (bytes past it were lost).
      const offset = message.offset ?? 0;
      if (this.received < 0) {
        this.received = offset;
      }
      this.skip = Math.max(0, this.received - offset);
      this.received = Math.max(this.received, offset);
      this.flushTyped();
    } else if (message.type === 'exit') {
      this.ended(message.code ?? 0);
    }
  }

  private flushTyped(): void {
    while (this.typed.length && this.socket?.readyState === 1) {
      this.socket.send(this.typed.shift()!);
    }
  }

  private emit(text: string): void {
    if (this.joined !== undefined) {
      this.joined += text;
      if (text.includes(MARKER)) {
        this.flushJoined();
      }
      return;
    }
    if (text) {
      this.output_?.enqueue(text);
    }
  }

  private join(): void {
    this.joined ??= '';
    clearTimeout(this.joinTimer);
    this.joinTimer = setTimeout(() => this.flushJoined(), JOIN_LIMIT_MS);
  }

  private flushJoined(): void {
    clearTimeout(this.joinTimer);
    const text = this.joined;
    this.joined = undefined;
    if (text) {
      this.output_?.enqueue(text);
    }
  }

  /** The socket closed before the exit: attach again (with backoff) while the terminal is
   * there; a terminal that is gone ends the process with 1. */
  private async dropped(socket: WebSocket): Promise<void> {
    if (this.exited || socket !== this.socket) {
      return;
    }
    this.socket = undefined;
    for (let attempt = 0; !this.exited; attempt++) {
      await sleep(backoffMs(attempt));
      try {
        await this.server.json<Terminal>('GET', this.path);
        await this.connect();
        return;
      } catch (error) {
        if (error instanceof ServerError && error.status === 404) {
          console.warn('[cloudcontainer] the process is gone:', error.message);
          this.ended(1);
          return;
        }
      }
    }
  }

  private ended(code: number): void {
    if (this.exited) {
      return;
    }
    this.exited = true;
    this.flushJoined();
    const rest = this.decoder.decode();
    if (rest) {
      this.output_?.enqueue(rest);
    }
    for (const controller of this.streams) {
      try {
        controller.close();
      } catch {
        // already closed by its reader
      }
    }
    this.resolveExit(code);
    if (this.socket?.readyState === 1) {
      this.socket.close(1000);
    }
  }
}
