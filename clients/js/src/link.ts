/**
 * The container's one WebSocket for events, watches and file calls
 * (`/api/containers/{id}/events`, docs/api.md), kept open across network trouble.
 *
 * - Calls are sent in the order they were made and the server runs them in that order
 *   (api/calls.py). Calls made while offline wait and go, in order, once connected.
 * - On a drop it reconnects with backoff (a new ticket each time). Calls that were on their
 *   way are sent again when that is harmless (reads, writes, listings, recursive mkdir, forced
 *   rm); the others fail with `ECONNRESET`, since they may or may not have run.
 * - Watches are renewed from the last cursor they got, so nothing is missed or repeated.
 * - A container that is gone (deleted, or 404 on reconnect) rejects every waiting call and
 *   every later one with `ContainerGoneError`.
 */

import { reportConnection } from './connection.js';
import { describe, type Server, ServerError } from './server.js';
import { openSocket } from './websocket.js';

export type Message = { type: string; [key: string]: unknown };
type Listener = (message: Message) => void;

interface PendingCall {
  frame: { type: 'call'; call: number; op: string; args: Record<string, unknown> };
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  sent: boolean;
}

interface WatchState {
  command: Record<string, unknown> & { id: string };
  cursor: string | null;
  onFrame: (frame: Message) => void;
}

const REPEATABLE = new Set(['fs.read', 'fs.write', 'fs.list']);
const BACKOFF_FIRST_MS = 250;
const BACKOFF_MAX_MS = 5_000;

/** How long to wait before retry `attempt` (0-based): doubling from `firstMs`, at most 5 s. */
export function backoffMs(attempt: number, firstMs = BACKOFF_FIRST_MS): number {
  return Math.min(BACKOFF_MAX_MS, firstMs * 2 ** attempt);
}

/** An fs-style error: `code` is the Node errno (`ENOENT`) when the sandbox gave one. */
export class CallError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly serverCode: string,
  ) {
    super(message);
    this.name = 'Error';
  }
}

export class ContainerGoneError extends Error {
  readonly code = 'ECONTAINERGONE';
  constructor(message: string) {
    super(message);
    this.name = 'ContainerGoneError';
  }
}

export class ContainerLink {
  private socket: WebSocket | undefined;
  private nextCall = 0;
  private readonly calls = new Map<number, PendingCall>();
  private readonly watches = new Map<string, WatchState>();
  private readonly listeners = new Set<Listener>();
  private gone: Error | undefined;
  private closed = false;
  private connecting: Promise<void> | undefined;
  private attempt = 0;
  private reconnecting = false;

  constructor(
    private readonly server: Server,
    readonly containerId: string,
  ) {}

  /** Connect once; later drops reconnect on their own. */
  async start(): Promise<void> {
    await this.connect();
  }

  /** Every event and answer frame, as it arrives. */
  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  call<T>(op: string, args: Record<string, unknown>): Promise<T> {
    if (this.gone) {
      return Promise.reject(this.gone);
    }
    const call = ++this.nextCall;
    return new Promise<T>((resolve, reject) => {
      const pending: PendingCall = {
        frame: { type: 'call', call, op, args },
        resolve: resolve as (value: unknown) => void,
        reject,
        sent: false,
      };
      this.calls.set(call, pending);
      this.sendCall(pending);
    });
  }

  /** Resolves once every call made before it has been answered. */
  async settled(): Promise<void> {
    const waiting = [...this.calls.values()].map(
      (pending) =>
        new Promise<void>((resolve) => {
          const { resolve: done, reject } = pending;
          pending.resolve = (value) => {
            done(value);
            resolve();
          };
          pending.reject = (error) => {
            reject(error);
            resolve();
          };
        }),
    );
    await Promise.all(waiting);
  }

  watch(command: WatchState['command'], onFrame: (frame: Message) => void): void {
    this.watches.set(command.id, { command, cursor: null, onFrame });
    this.sendJson(command);
  }

  unwatch(id: string): void {
    if (this.watches.delete(id)) {
      this.sendJson({ type: 'unwatch', id });
    }
  }

  close(): void {
    this.closed = true;
    this.socket?.close(1000);
    this.socket = undefined;
    this.fail(new ContainerGoneError('The WebContainer was torn down.'));
  }

  // -- the socket ------------------------------------------------------------------------

  private connect(): Promise<void> {
    this.connecting ??= this.open().finally(() => {
      this.connecting = undefined;
    });
    return this.connecting;
  }

  private async open(): Promise<void> {
    const path = `/api/containers/${this.containerId}/events`;
    const socket = await openSocket(await this.server.socketUrl(path));
    if (this.closed) {
      socket.close(1000);
      return;
    }
    this.socket = socket;
    this.attempt = 0;
    socket.addEventListener('message', (event) => this.received(event.data));
    socket.addEventListener('close', (event) => this.dropped(socket, event.code));
    for (const watch of this.watches.values()) {
      this.sendJson(watch.cursor ? { ...watch.command, since: watch.cursor } : watch.command);
    }
    for (const pending of this.calls.values()) {
      this.sendCall(pending);
    }
  }

  private dropped(socket: WebSocket, code: number): void {
    if (socket !== this.socket || this.closed) {
      return;
    }
    this.socket = undefined;
    for (const pending of this.calls.values()) {
      if (!pending.sent) {
        continue;
      }
      if (repeatable(pending.frame)) {
        pending.sent = false; // goes again once connected
      } else {
        this.calls.delete(pending.frame.call);
        pending.reject(
          new CallError(
            `ECONNRESET: the connection to the container dropped while ${pending.frame.op} ` +
              'ran; it may or may not have been applied',
            'ECONNRESET',
            'connection_lost',
          ),
        );
      }
    }
    if (code === 1000 && this.gone) {
      return;
    }
    this.emit({ type: 'connection', state: 'reconnecting' });
    void this.reconnect();
  }

  private async reconnect(): Promise<void> {
    if (this.reconnecting) {
      return;
    }
    this.reconnecting = true;
    try {
      await this.reconnectLoop();
    } finally {
      this.reconnecting = false;
    }
  }

  private async reconnectLoop(): Promise<void> {
    while (!this.closed && !this.gone && !this.socket) {
      const delay = backoffMs(this.attempt++);
      await sleep(delay * (0.75 + Math.random() / 2));
      try {
        await this.server.json('GET', `/api/containers/${this.containerId}`);
        await this.connect();
        this.emit({ type: 'connection', state: 'connected' });
        reportConnection({ state: 'online', message: 'Connected to the container again.' });
      } catch (error) {
        if (error instanceof ServerError && error.status === 404) {
          this.fail(new ContainerGoneError(`The container ${this.containerId} no longer exists.`));
        } else if (error instanceof ServerError && error.status === 401) {
          this.emit({ type: 'connection', state: 'unauthorized', message: error.message });
          reportConnection({ state: 'unauthorized', message: error.message });
        } else {
          // A blip that the first retry mends is not worth a word; this one lasts.
          reportConnection({ state: 'offline', message: `${describe(error)}. Reconnecting…` });
        }
      }
    }
  }

  private received(data: unknown): void {
    if (typeof data !== 'string') {
      return;
    }
    let message: Message;
    try {
      message = JSON.parse(data) as Message;
    } catch {
      return;
    }
    if (message.type === 'result') {
      this.answered(message);
      return;
    }
    if (message.type === 'status' && message.status === 'deleted') {
      this.fail(new ContainerGoneError(`The container ${this.containerId} was deleted.`));
    }
    if (message.type === 'fs' || message.type === 'watching') {
      const id = String(message.type === 'fs' ? message.watch : message.id);
      const watch = this.watches.get(id);
      if (watch) {
        if (typeof message.cursor === 'string' && message.cursor) {
          watch.cursor = message.cursor;
        }
        watch.onFrame(message);
      }
      return;
    }
    this.emit(message);
  }

  private answered(message: Message): void {
    const pending = this.calls.get(Number(message.call));
    if (!pending) {
      return;
    }
    this.calls.delete(pending.frame.call);
    const error = message.error as { code: string; message: string; errno?: string } | undefined;
    if (error) {
      pending.reject(new CallError(error.message, error.errno ?? error.code, error.code));
    } else {
      pending.resolve(message.result);
    }
  }

  private sendCall(pending: PendingCall): void {
    if (this.socket && this.socket.readyState === 1 && !pending.sent) {
      pending.sent = true;
      this.socket.send(JSON.stringify(pending.frame));
    } else if (!this.socket && !this.connecting && !this.closed) {
      void this.reconnect();
    }
  }

  private sendJson(frame: unknown): void {
    if (this.socket && this.socket.readyState === 1) {
      this.socket.send(JSON.stringify(frame));
    }
  }

  private emit(message: Message): void {
    for (const listener of [...this.listeners]) {
      try {
        listener(message);
      } catch (error) {
        console.error('[cloudcontainer] an event listener threw:', describe(error));
      }
    }
  }

  private fail(error: Error): void {
    if (this.gone) {
      return;
    }
    this.gone = error;
    for (const pending of this.calls.values()) {
      pending.reject(error);
    }
    this.calls.clear();
    this.emit({ type: 'gone', message: error.message });
  }
}

function repeatable(frame: PendingCall['frame']): boolean {
  if (REPEATABLE.has(frame.op)) {
    return true;
  }
  return (
    (frame.op === 'fs.mkdir' && frame.args.recursive === true) ||
    (frame.op === 'fs.delete' && frame.args.force === true)
  );
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
