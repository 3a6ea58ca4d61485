/**
 * A WebSocket in browsers and in Node: the platform's own where there is one (browsers,
 * Node >= 22), else the `ws` package (Node 20), which speaks the same DOM API.
 */

type Constructor = new (url: string) => WebSocket;

let cached: Constructor | undefined;

async function implementation(): Promise<Constructor> {
  if (cached) {
    return cached;
  }
  const native = (globalThis as { WebSocket?: Constructor }).WebSocket;
  if (native) {
    cached = native;
  } else {
    // Not a literal: bundlers for the browser must not try to include `ws`.
    const name = 'ws';
    const module = (await import(/* @vite-ignore */ name)) as { WebSocket: Constructor };
    cached = module.WebSocket;
  }
  return cached;
}

/** Open a socket; resolves once it is open, rejects when it closes first. */
export async function openSocket(url: string): Promise<WebSocket> {
  const Socket = await implementation();
  const socket = new Socket(url);
  socket.binaryType = 'arraybuffer';
  await new Promise<void>((resolve, reject) => {
    const opened = () => {
      socket.removeEventListener('close', closed);
      resolve();
    };
    const closed = (event: CloseEvent) => {
      socket.removeEventListener('open', opened);
      reject(new Error(`WebSocket closed before it opened (${event.code} ${event.reason})`));
    };
    socket.addEventListener('open', opened, { once: true });
    socket.addEventListener('close', closed, { once: true });
  });
  return socket;
}
