// The admin HTTP listener (node:http) and a TCP reachability probe for /readyz; routing lives in admin/http.ts.
import http from 'node:http';
import net from 'node:net';

export interface HttpRequest {
  method: string;
  path: string;
  headers: http.IncomingHttpHeaders;
}

export interface HttpResponse {
  status: number;
  contentType: string;
  body: string;
}

export interface HttpListener {
  readonly host: string;
  readonly port: number;
  close(): Promise<void>;
}

export async function listenHttp(
  host: string,
  port: number,
  handle: (req: HttpRequest) => Promise<HttpResponse>,
  onError: (e: Error) => void,
): Promise<HttpListener> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    handle({ method: req.method ?? 'GET', path, headers: req.headers }).then(
      (r) => {
        res.writeHead(r.status, { 'content-type': r.contentType, 'cache-control': 'no-store' });
        res.end(req.method === 'HEAD' ? undefined : r.body);
      },
      (e: Error) => {
        onError(e);
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end('internal error\n');
      },
    );
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((res, rej) => {
    server.once('error', rej);
    server.listen({ host, port }, () => {
      server.off('error', rej);
      res();
    });
  });
  server.on('error', onError);
  const addr = server.address() as net.AddressInfo;
  return {
    host: addr.address,
    port: addr.port,
    close: () =>
      new Promise<void>((res) => {
        server.close(() => res());
        server.closeAllConnections();
      }),
  };
}

/** Whether a TCP connection to host:port opens within the timeout (closed again at once). */
export function probeTcp(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (ok: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}
