// Outbound connections to PostgreSQL: TCP connect with timeout, SSLRequest negotiation per sslmode, CancelRequest.
import net from 'node:net';
import tls from 'node:tls';
import type { ServerTlsConfig } from '../config/schema.ts';
import { encodeCancelRequest, encodeSSLRequest } from '../protocol/frontend.ts';
import { serverLegOptions } from './tls.ts';

export interface DialTarget {
  host: string;
  port: number;
  tls: ServerTlsConfig;
  connectTimeoutMs: number;
  keepalive?: boolean;
}

export class DialError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
    this.name = 'DialError';
  }
}

export type ServerSocket = net.Socket | tls.TLSSocket;

function tune(s: net.Socket, keepalive: boolean): void {
  s.setNoDelay(true);
  if (keepalive) s.setKeepAlive(true, 30_000);
}

/** Connects and negotiates TLS; resolves with a socket ready for the StartupMessage. */
export function dialServer(t: DialTarget): Promise<{ socket: ServerSocket; tls: boolean }> {
  return new Promise((resolvePromise, reject) => {
    let done = false;
    const raw = net.connect({ host: t.host, port: t.port });
    let current: net.Socket = raw;
    const fail = (err: DialError) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      current.destroy();
      raw.destroy();
      reject(err);
    };
    const ok = (socket: ServerSocket, isTls: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.removeAllListeners('error');
      socket.removeAllListeners('close');
      resolvePromise({ socket, tls: isTls });
    };
    const timer = setTimeout(
      () => fail(new DialError(`connect to ${t.host}:${t.port} timed out`, 'GPRXY_CONNECT_TIMEOUT')),
      t.connectTimeoutMs,
    );
    raw.once('error', (e: NodeJS.ErrnoException) =>
      fail(
        new DialError(
          `connect to ${t.host}:${t.port} failed: ${e.code ?? e.message}`,
          'GPRXY_CONNECT_FAILED',
        ),
      ),
    );
    raw.once('close', () =>
      fail(new DialError('server closed the connection during setup', 'GPRXY_CONNECT_CLOSED')),
    );
    raw.once('connect', () => {
      tune(raw, t.keepalive ?? true);
      if (t.tls.sslmode === 'disable') return ok(raw, false);
      raw.write(encodeSSLRequest());
      raw.once('data', (chunk: Buffer) => {
        // A server must answer with exactly one byte; more is a man-in-the-middle injecting data (CVE-2021-23222).
        if (chunk.length !== 1) {
          return fail(new DialError('server sent unexpected data after SSLRequest', 'GPRXY_TLS_PROTOCOL'));
        }
        if (chunk[0] === 0x4e /* N */) {
          if (t.tls.sslmode === 'prefer') return ok(raw, false);
          return fail(
            new DialError(`server does not support TLS (sslmode=${t.tls.sslmode})`, 'GPRXY_TLS_REFUSED'),
          );
        }
        if (chunk[0] !== 0x53 /* S */) {
          return fail(new DialError('server sent an invalid answer to SSLRequest', 'GPRXY_TLS_PROTOCOL'));
        }
        raw.removeAllListeners('close');
        raw.removeAllListeners('error');
        let secure: tls.TLSSocket;
        try {
          secure = tls.connect({ socket: raw, ...serverLegOptions(t.tls, t.host) });
        } catch (e) {
          return fail(new DialError(`TLS setup failed: ${(e as Error).message}`, 'GPRXY_TLS_CONFIG'));
        }
        current = secure;
        secure.once('error', (e) =>
          fail(new DialError(`TLS to server failed: ${e.message}`, 'GPRXY_TLS_FAILED')),
        );
        secure.once('close', () =>
          fail(new DialError('server closed the connection during TLS', 'GPRXY_CONNECT_CLOSED')),
        );
        secure.once('secureConnect', () => ok(secure, true));
      });
    });
  });
}

/** Sends a CancelRequest on a new connection and waits for the server to close it (or a timeout). */
export async function sendCancelRequest(t: DialTarget, pid: number, secret: Buffer): Promise<void> {
  const { socket } = await dialServer(t);
  await new Promise<void>((res) => {
    const timer = setTimeout(() => {
      socket.destroy();
      res();
    }, t.connectTimeoutMs);
    socket.once('close', () => {
      clearTimeout(timer);
      res();
    });
    socket.on('error', () => undefined);
    socket.end(encodeCancelRequest(pid, secret));
  });
}
