// Outbound connections to PostgreSQL: TCP connect with timeout, SSLRequest negotiation per sslmode, CancelRequest.
import net from 'node:net';
import tls from 'node:tls';
import type { ServerTlsConfig } from '../config/schema.ts';
import { PgError, SqlState } from '../protocol/errors.ts';
import { encodeCancelRequest, encodeSSLRequest } from '../protocol/frontend.ts';
import { serverLegOptions } from './tls.ts';

export interface DialTarget {
  host: string;
  port: number;
  tls: ServerTlsConfig;
  connectTimeoutMs: number;
  keepalive?: boolean;
}

/**
 * A failed connect or TLS negotiation toward a server. A PgError (08006, FATAL) so the pool hands it to waiting
 * clients as it is; the message names the server and says what failed, never with a stack.
 */
export class DialError extends PgError {
  constructor(message: string, code: string) {
    super('FATAL', SqlState.CONNECTION_FAILURE, message, { code });
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
    const where = `could not connect to server ${t.host}:${t.port}`;
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
      // Our 'error'/'close' listeners stay (fail() is a no-op from now on): the caller attaches its own only
      // after the promise settles, and an 'error' in between must not go unhandled.
      resolvePromise({ socket, tls: isTls });
    };
    const timer = setTimeout(
      () =>
        fail(new DialError(`${where}: timed out after ${t.connectTimeoutMs} ms`, 'GPRXY_CONNECT_TIMEOUT')),
      t.connectTimeoutMs,
    );
    // `on`, not `once`: a socket may emit more than one error, and a second one must not go unhandled.
    raw.on('error', (e: NodeJS.ErrnoException) =>
      fail(new DialError(`${where}: ${e.code ?? e.message}`, 'GPRXY_CONNECT_FAILED')),
    );
    raw.once('close', () =>
      fail(new DialError(`${where}: server closed the connection during setup`, 'GPRXY_CONNECT_CLOSED')),
    );
    raw.once('connect', () => {
      tune(raw, t.keepalive ?? true);
      if (t.tls.sslmode === 'disable') return ok(raw, false);
      raw.write(encodeSSLRequest());
      raw.once('data', (chunk: Buffer) => {
        // A server must answer with exactly one byte; more is a man-in-the-middle injecting data (CVE-2021-23222).
        if (chunk.length !== 1) {
          return fail(
            new DialError(`${where}: server sent unexpected data after SSLRequest`, 'GPRXY_TLS_PROTOCOL'),
          );
        }
        if (chunk[0] === 0x4e /* N */) {
          if (t.tls.sslmode === 'prefer') return ok(raw, false);
          return fail(
            new DialError(
              `${where}: server does not support TLS (server_tls sslmode=${t.tls.sslmode})`,
              'GPRXY_TLS_REFUSED',
            ),
          );
        }
        if (chunk[0] !== 0x53 /* S */) {
          return fail(
            new DialError(`${where}: server sent an invalid answer to SSLRequest`, 'GPRXY_TLS_PROTOCOL'),
          );
        }
        let secure: tls.TLSSocket;
        try {
          secure = tls.connect({ socket: raw, ...serverLegOptions(t.tls, t.host) });
        } catch (e) {
          return fail(
            new DialError(`${where}: TLS setup failed: ${(e as Error).message}`, 'GPRXY_TLS_CONFIG'),
          );
        }
        current = secure;
        secure.on('error', (e) =>
          fail(
            new DialError(
              `${where}: TLS handshake failed (server_tls sslmode=${t.tls.sslmode}): ${e.message}`,
              'GPRXY_TLS_FAILED',
            ),
          ),
        );
        secure.once('close', () =>
          fail(
            new DialError(
              `${where}: server closed the connection during the TLS handshake`,
              'GPRXY_CONNECT_CLOSED',
            ),
          ),
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
