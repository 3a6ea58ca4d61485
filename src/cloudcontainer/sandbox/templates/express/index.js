import express from 'express';

const port = 3000;
const app = express();

app.get('/', (_req, res) => {
  res.send('<!doctype html><title>Express</title><h1>Hello from Express</h1>');
});

app.listen(port, '0.0.0.0', () => {
  console.log(`Listening on http://localhost:${port}`);
});
