// A raw wire-protocol client for tests that need exact bytes: negotiation requests, hand-built StartupMessages,
// garbage. Collects everything the peer sends; reads single bytes or typed messages with timeouts.
import net from 'node:net';
import tls from 'node:tls';
import { ScramClient } from '../../src/auth/scram-client.ts';
import { decodeErrorFields } from '../../src/protocol/backend.ts';
import {
  encodeQuery,
  encodeSaslInitialResponse,
  encodeSaslResponse,
  GSSENC_REQUEST_CODE,
  SSL_REQUEST_CODE,
  TERMINATE,
} from '../../src/protocol/frontend.ts';

export interface RawMessage {
  type: string;
  body: Buffer;
}

export class RawConn {
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  closed = false;
  error: Error | undefined;

  private static readonly live = new Set<net.Socket>();

  /** Destroys every connection still open (for after(): a failed test must not keep the run alive). */
  static destroyAll(): void {
    for (const s of RawConn.live) s.destroy();
    RawConn.live.clear();
  }

  constructor(readonly socket: net.Socket | tls.TLSSocket) {
    RawConn.live.add(socket);
    socket.on('data', (c: Buffer) => {
      this.buf = Buffer.concat([this.buf, c]);
      this.wake();
    });
    socket.on('error', (e) => {
      this.error = e;
    });
    socket.on('close', () => {
      RawConn.live.delete(socket);
      this.closed = true;
      this.wake();
    });
  }

  static connect(port: number, host = '127.0.0.1'): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host, port });
      s.once('error', reject);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(new RawConn(s));
      });
    });
  }

  /** Direct TLS (sslnegotiation=direct): TLS from the first byte. */
  static connectTls(port: number, opts: tls.ConnectionOptions, timeoutMs = 5000): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port, ...opts });
      const timer = setTimeout(() => {
        s.destroy();
        reject(new Error('TLS handshake timed out'));
      }, timeoutMs);
      s.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      s.once('secureConnect', () => {
        clearTimeout(timer);
        s.removeAllListeners('error');
        resolve(new RawConn(s));
      });
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private async until<T>(take: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = take();
      if (v !== undefined) return v;
      if (this.closed)
        throw new Error(`connection closed while waiting for ${what} (have ${this.buf.length} bytes)`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((res) => {
        const t = setTimeout(res, left);
        this.waiters.push(() => {
          clearTimeout(t);
          res();
        });
      });
    }
  }

  /** Everything received and not yet consumed. */
  get pending(): Buffer {
    return this.buf;
  }

  write(b: Buffer | string): void {
    this.socket.write(b);
  }

  readBytes(n: number, timeoutMs = 5000): Promise<Buffer> {
    return this.until(
      () => {
        if (this.buf.length < n) return undefined;
        const out = this.buf.subarray(0, n);
        this.buf = this.buf.subarray(n);
        return out;
      },
      timeoutMs,
      `${n} byte(s)`,
    );
  }

  readMessage(timeoutMs = 5000): Promise<RawMessage> {
    return this.until(
      () => {
        if (this.buf.length < 5) return undefined;
        const len = this.buf.readInt32BE(1);
        if (this.buf.length < len + 1) return undefined;
        const m = {
          type: String.fromCharCode(this.buf[0]!),
          body: Buffer.from(this.buf.subarray(5, len + 1)),
        };
        this.buf = this.buf.subarray(len + 1);
        return m;
      },
      timeoutMs,
      'a message',
    );
  }

  /** Resolves with whatever arrived (unconsumed) once the peer has closed the connection. */
  async waitClosed(timeoutMs = 5000): Promise<Buffer> {
    await this.until(() => (this.closed ? true : undefined), timeoutMs, 'close').catch((e: Error) => {
      if (!this.closed) throw e;
    });
    return this.buf;
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** An untyped startup-phase packet with a request code (SSLRequest, GSSENCRequest, CancelRequest). */
export function requestPacket(code: number, extra: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(8 + extra.length);
  b.writeInt32BE(8 + extra.length, 0);
  b.writeInt32BE(code, 4);
  extra.copy(b, 8);
  return b;
}

export const SSL_REQUEST = requestPacket(SSL_REQUEST_CODE);
export const GSSENC_REQUEST = requestPacket(GSSENC_REQUEST_CODE);

/** A StartupMessage with an explicit protocol version. */
export function startupPacket(params: Record<string, string>, major = 3, minor = 0): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of Object.entries(params)) parts.push(Buffer.from(`${k}\0${v}\0`));
  parts.push(Buffer.from([0]));
  const body = Buffer.concat(parts);
  const out = Buffer.alloc(8 + body.length);
  out.writeInt32BE(out.length, 0);
  out.writeInt32BE((major << 16) | minor, 4);
  body.copy(out, 8);
  return out;
}

export function errorFields(m: RawMessage): { code: string; message: string; severity: string } {
  const f = decodeErrorFields(m.body);
  return { code: f.get('C') ?? '', message: f.get('M') ?? '', severity: f.get('S') ?? '' };
}

/**
 * Completes a SCRAM-SHA-256 login after the StartupMessage was sent (starting at the first 'R'), then runs
 * `sql` with the simple protocol and returns the first column of each row. Messages before the first 'R'
 * (e.g. NegotiateProtocolVersion) are returned in `before`.
 */
export async function rawLoginAndQuery(
  c: RawConn,
  password: string,
  sql: string,
): Promise<{ before: RawMessage[]; rows: string[] }> {
  const before: RawMessage[] = [];
  let m = await c.readMessage();
  while (m.type !== 'R') {
    if (m.type === 'E') throw new Error(`login failed: ${errorFields(m).message}`);
    before.push(m);
    m = await c.readMessage();
  }
  if (m.body.readInt32BE(0) !== 10)
    throw new Error(`expected AuthenticationSASL, got ${m.body.readInt32BE(0)}`);
  const scram = new ScramClient({ password }, { cache: null });
  c.write(encodeSaslInitialResponse('SCRAM-SHA-256', scram.clientFirst()));
  m = await c.readMessage();
  if (m.type !== 'R' || m.body.readInt32BE(0) !== 11) throw new Error(`expected SASLContinue, got ${m.type}`);
  c.write(encodeSaslResponse(await scram.serverFirst(m.body.subarray(4))));
  m = await c.readMessage();
  if (m.type === 'E') throw new Error(`login failed: ${errorFields(m).message}`);
  if (m.type !== 'R' || m.body.readInt32BE(0) !== 12) throw new Error(`expected SASLFinal, got ${m.type}`);
  if (!scram.serverFinal(m.body.subarray(4))) throw new Error('server signature did not verify');
  for (;;) {
    m = await c.readMessage();
    if (m.type === 'E') throw new Error(`login failed: ${errorFields(m).message}`);
    if (m.type === 'Z') break;
  }
  c.write(encodeQuery(sql));
  const rows: string[] = [];
  for (;;) {
    m = await c.readMessage();
    if (m.type === 'E') throw new Error(`query failed: ${errorFields(m).message}`);
    if (m.type === 'D') {
      const len = m.body.readInt32BE(2);
      rows.push(len < 0 ? '' : m.body.subarray(6, 6 + len).toString());
    }
    if (m.type === 'Z') break;
  }
  c.write(TERMINATE);
  return { before, rows };
}
