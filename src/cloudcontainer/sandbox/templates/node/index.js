import { createServer } from 'node:http';

const port = 3000;

const server = createServer((_req, res) => {
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(`<!doctype html>
<title>Node.js</title>
<h1>Hello from Node.js</h1>
<p>Running on ${process.version}. Edit index.js and save: the server restarts.</p>
`);
});

server.listen(port, '0.0.0.0', () => {
  console.log(`Listening on http://localhost:${port}`);
});
