/**
 * The state of the connection to the cloudcontainer server, for an app to show.
 *
 * WebContainer runs in the page, so it never loses its runtime; a cloud container can, for a
 * while: the server restarts, the network drops. The client rides that out on its own (boot
 * waits when `waitForServer` says so, sockets reconnect, calls wait and run in order), and
 * tells the app through `onConnectionChange`, so a person sees why nothing happens instead of
 * a page that seems frozen. bolt.diy shows it as toasts (integrations/bolt-diy).
 */

export type ConnectionState = 'offline' | 'online' | 'unauthorized';

export interface ConnectionChange {
  /** `offline`: the server cannot be reached and the client is retrying; `online`: it is
   * reached again (only after an `offline` or `unauthorized`); `unauthorized`: the server
   * refuses the token (a revoked key): the client retries, but a person must act. */
  state: ConnectionState;
  /** What happened, in words a person can act on. */
  message: string;
}

export type ConnectionListener = (change: ConnectionChange) => void;

const listeners = new Set<ConnectionListener>();
let last: ConnectionState = 'online';

/** Call `listener` on every change of the connection to the server (boot and every
 * container's socket); returns the function that stops it. */
export function onConnectionChange(listener: ConnectionListener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** @internal A part of the client reached the server, or failed to. `offline` and
 * `unauthorized` are reported on every failed try (an app that shows them late, or whose
 * first notice was lost, learns the state at the next one); `online` once, after them. */
export function reportConnection(change: ConnectionChange): void {
  if (change.state === 'online' && last === 'online') {
    return;
  }
  last = change.state;
  for (const listener of [...listeners]) {
    try {
      listener(change);
    } catch (error) {
      console.error('[cloudcontainer] a connection listener threw:', error);
    }
  }
}
