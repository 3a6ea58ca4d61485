"""The programs the preview benchmarks run: a node dev server in the sandbox, and one Python
client (stdlib only) run both inside the sandbox (the floor) and on the host (through the
preview proxy), so the two figures come from the same code."""

from __future__ import annotations

# argv: port, watched directory, download size in MiB. GET / answers 200 "ok" (keep-alive),
# GET /big the download; an Upgrade gets a hand-written WebSocket handshake, and every client
# gets {"type": "update", "seq": <hmr.txt's text>} whenever the watched directory's hmr.txt
# changes (as a dev server's HMR socket does on a save).
DEV_SERVER = r"""
const http = require('http'), crypto = require('crypto'), fs = require('fs');
const [port, dir, mib] = [Number(process.argv[2]), process.argv[3], Number(process.argv[4])];
const MIB = Buffer.alloc(1 << 20, 7);
const OK = Buffer.from('ok');
const sockets = new Set();
const server = http.createServer((req, res) => {
  if (req.url === '/big') {
    res.writeHead(200, {'Content-Type': 'application/octet-stream',
                        'Content-Length': String(mib * MIB.length)});
    let sent = 0;
    const pump = () => {
      while (sent < mib) {
        sent++;
        if (!res.write(MIB)) { res.once('drain', pump); return; }
      }
      res.end();
    };
    pump();
    return;
  }
  res.writeHead(200, {'Content-Type': 'text/plain', 'Content-Length': '2'});
  res.end(OK);
});
server.keepAliveTimeout = 120000;
server.on('upgrade', (req, socket) => {
  const accept = crypto.createHash('sha1')
    .update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
    .digest('base64');
  socket.setNoDelay(true);
  socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n' +
               'Connection: Upgrade\r\nSec-WebSocket-Accept: ' + accept + '\r\n\r\n');
  sockets.add(socket);
  socket.on('data', (data) => {  // a close frame from the client: answer it and hang up
    if ((data[0] & 0x0f) === 8) { socket.end(Buffer.from([0x88, 0])); }
  });
  const forget = () => sockets.delete(socket);
  socket.on('close', forget);
  socket.on('error', forget);
});
function frame(text) {
  const data = Buffer.from(text);
  const head = data.length < 126 ? Buffer.from([0x81, data.length])
                                 : Buffer.from([0x81, 126, data.length >> 8, data.length & 255]);
  return Buffer.concat([head, data]);
}
// Each save's text once: a save (temp file + rename) fires several watch events, and their
// reads can complete out of order (an older text after a newer one).
const announced = new Set();
fs.watch(dir, () => {
  fs.readFile(dir + '/hmr.txt', 'utf8', (err, text) => {
    if (err || announced.has(text)) return;
    announced.add(text);
    const message = frame(JSON.stringify({type: 'update', seq: text}));
    for (const socket of sockets) socket.write(message);
  });
});
server.listen(port, '0.0.0.0', () => console.log('listening on ' + port));
"""

# argv: mode host port [...]; prints one JSON object.
#   latency HOST PORT N: N GETs one after the other on one keep-alive connection (after 50
#     unmeasured), the seconds each took.
#   download HOST PORT: GET /big, read in 1 MiB chunks; bytes, seconds.
#   throughput HOST PORT CONNECTIONS SECONDS: that many keep-alive connections, each on its
#     own thread, GETs in a loop; requests and errors (the fallback when wrk is missing).
CLIENT = r"""
import http.client, json, sys, threading, time

def latency(host, port, n):
    conn = http.client.HTTPConnection(host, port, timeout=30)
    times = []
    for i in range(n + 50):
        started = time.perf_counter()
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"status {response.status}")
        if i >= 50:
            times.append(time.perf_counter() - started)
    return {"samples_s": times}

def download(host, port):
    conn = http.client.HTTPConnection(host, port, timeout=60)
    started = time.perf_counter()
    conn.request("GET", "/big")
    response = conn.getresponse()
    total = 0
    while chunk := response.read(1 << 20):
        total += len(chunk)
    return {"status": response.status, "bytes": total, "seconds": time.perf_counter() - started}

def throughput(host, port, connections, seconds):
    counts, errors = [0] * connections, [0] * connections
    stop = time.perf_counter() + seconds
    def run(k):
        conn = http.client.HTTPConnection(host, port, timeout=30)
        while time.perf_counter() < stop:
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                counts[k] += response.status == 200
                errors[k] += response.status != 200
            except OSError:
                errors[k] += 1
                conn = http.client.HTTPConnection(host, port, timeout=30)
    threads = [threading.Thread(target=run, args=(k,)) for k in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {"requests": sum(counts), "errors": sum(errors), "seconds": elapsed,
            "requests_per_s": sum(counts) / elapsed}

mode, host, port, *rest = sys.argv[1:]
if mode == "latency":
    result = latency(host, int(port), int(rest[0]))
elif mode == "download":
    result = download(host, int(port))
else:
    result = throughput(host, int(port), int(rest[0]), float(rest[1]))
result["python"] = sys.version.split()[0]
print(json.dumps(result))
"""

# argv: first port, count, output file. Listens on one new port after another, a random
# 250-450 ms apart (so the listens fall anywhere in the agent's 100 ms poll), and appends
# "<port> <time.time() just after listen()>" for each; keeps them all open to the end.
LISTENER = r"""
import random, socket, sys, time
first, count, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
time.sleep(1.5)
held = []
for port in range(first, first + count):
    time.sleep(random.uniform(0.25, 0.45))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(8)
    listened = time.time()
    held.append(sock)
    with open(out, "a") as handle:
        handle.write(f"{port} {listened!r}\n")
time.sleep(3)
"""

# Prints the CPU seconds (user + system) the sandbox's agent has used so far.
AGENT_CPU = r"""
import os
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read()
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    if command.startswith(b"/usr/bin/python3") and b"agent.pyz" in command:
        print((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
"""
