// The floor for a Node.js relay: a bare byte pipe (no parsing, no pooling, no auth) between each client and its
// own PostgreSQL connection, with the same socket options as gprxy. Used by bench/node-floor.ts.
// Usage: node bench/node-pipe.mjs <pg-port>; prints the port it listens on (127.0.0.1, port 0).
import net from 'node:net';

const pgPort = Number(process.argv[2]);
const server = net.createServer({ noDelay: true }, (client) => {
  const pg = net.connect({ host: '127.0.0.1', port: pgPort, noDelay: true });
  client.on('data', (d) => {
    if (!pg.write(d)) client.pause();
  });
  pg.on('data', (d) => {
    if (!client.write(d)) pg.pause();
  });
  client.on('drain', () => pg.resume());
  pg.on('drain', () => client.resume());
  client.on('close', () => pg.destroy());
  pg.on('close', () => client.destroy());
  client.on('error', () => undefined);
  pg.on('error', () => undefined);
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${server.address().port}\n`);
});
