// The loopback redirect listener for `gprxy login` (RFC 8252 7.3): 127.0.0.1 on a port the kernel picks (or a
// fixed one for issuers that match redirect ports exactly), one path; resolves with the first request to that path as a full URL (code and state in its query).
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface CallbackListener {
  /** The redirect URI to register in the authorization request (http://127.0.0.1:<port><path>). */
  redirectUri: string;
  /** The URL the browser was sent back to. */
  result: Promise<URL>;
  close(): void;
}

export async function listenForCallback(
  path: string,
  successHtml: string,
  timeoutMs: number,
  fixedPort = 0,
): Promise<CallbackListener> {
  let settle!: { resolve: (u: URL) => void; reject: (e: Error) => void };
  const result = new Promise<URL>((resolve, reject) => {
    settle = { resolve, reject };
  });
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', redirectUri);
    if (url.pathname !== path) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found\n');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(successHtml);
    settle.resolve(url);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: fixedPort }, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const redirectUri = `http://127.0.0.1:${port}${path}`;
  const timer = setTimeout(
    () => settle.reject(new Error(`no answer from the browser within ${Math.round(timeoutMs / 1000)} s`)),
    timeoutMs,
  );
  const close = () => {
    clearTimeout(timer);
    server.close();
    server.closeAllConnections();
  };
  result.then(close, close);
  return { redirectUri, result, close };
}
