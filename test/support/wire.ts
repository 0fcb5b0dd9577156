// A bare wire-protocol client with a real SCRAM-SHA-256 login, for message sequences drivers never send on their
// own (Execute without Sync, a query pipelined behind the password) against gprxy or PostgreSQL directly.
import net from 'node:net';
import { ScramClient } from '../../src/auth/scram-client.ts';
import { cstr, int16, int32, msg } from '../../src/protocol/testing/builders.ts';

export interface WireMsg {
  type: string;
  body: Buffer;
}

export class Wire {
  private buf = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  closed = false;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake?.();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
  }

  static async connect(port: number, localAddress?: string): Promise<Wire> {
    const socket = net.connect({ host: '127.0.0.1', port, ...(localAddress ? { localAddress } : {}) });
    await new Promise<void>((res, rej) => {
      socket.once('connect', res);
      socket.once('error', rej);
    });
    return new Wire(socket);
  }

  /**
   * Logs in with SCRAM-SHA-256. `pipelined` is sent in the same write as the client-final-message, before the
   * server has answered it (the caller then reads the rest of the login itself); otherwise reads up to the first
   * ReadyForQuery.
   */
  static async login(
    port: number,
    user: string,
    password: string,
    database: string,
    pipelined?: Buffer,
    localAddress?: string,
  ): Promise<Wire> {
    const w = await Wire.connect(port, localAddress);
    w.send(startupMessage({ user, database }));
    let m = await w.expect('R');
    const scram = new ScramClient({ password }, { cache: null });
    const first = scram.clientFirst();
    w.send(msg('p', Buffer.concat([cstr('SCRAM-SHA-256'), int32(first.length), first])));
    m = await w.expect('R');
    const final = msg('p', await scram.serverFirst(m.body.subarray(4)));
    w.send(pipelined ? Buffer.concat([final, pipelined]) : final);
    if (pipelined) return w;
    m = await w.expect('R');
    scram.serverFinal(m.body.subarray(4));
    await w.until('Z');
    return w;
  }

  send(b: Buffer): void {
    this.socket.write(b);
  }

  async next(timeoutMs = 15_000): Promise<WireMsg> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.buf.length >= 5) {
        const len = this.buf.readInt32BE(1);
        if (this.buf.length >= len + 1) {
          const m = {
            type: String.fromCharCode(this.buf[0]!),
            body: Buffer.from(this.buf.subarray(5, len + 1)),
          };
          this.buf = this.buf.subarray(len + 1);
          return m;
        }
      }
      if (this.closed) throw new Error('connection closed');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timed out waiting for a message');
      await new Promise<void>((res) => {
        const t = setTimeout(res, left);
        this.wake = () => {
          clearTimeout(t);
          res();
        };
      });
    }
  }

  async expect(type: string): Promise<WireMsg> {
    const m = await this.next();
    if (m.type !== type) throw new Error(`expected ${type}, got ${m.type}: ${m.body.toString('latin1')}`);
    return m;
  }

  /** Reads up to and including the next message of `type`. */
  async until(type: string, timeoutMs = 15_000): Promise<WireMsg[]> {
    const out: WireMsg[] = [];
    for (;;) {
      const m = await this.next(timeoutMs);
      out.push(m);
      if (m.type === type) return out;
    }
  }
}

export function startupMessage(params: Record<string, string>): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of Object.entries(params)) parts.push(cstr(k), cstr(v));
  parts.push(Buffer.from([0]));
  const body = Buffer.concat(parts);
  return Buffer.concat([int32(body.length + 8), int32(196608), body]);
}

export function simpleQuery(sql: string): Buffer {
  return msg('Q', cstr(sql));
}

/**
 * Parse + Bind + Execute (unnamed, at most `maxRows` rows) + Flush: the statement runs in an implicit transaction
 * that only a Sync ends.
 */
export function executeNoSync(sql: string, maxRows = 0): Buffer {
  return Buffer.concat([
    msg('P', Buffer.concat([cstr(''), cstr(sql), int16(0)])),
    msg('B', Buffer.concat([cstr(''), cstr(''), int16(0), int16(0), int16(0)])),
    msg('E', Buffer.concat([cstr(''), int32(maxRows)])),
    msg('H'),
  ]);
}

/** The first column of each DataRow, as text (NULL as null). */
export function firstColumns(msgs: WireMsg[]): (string | null)[] {
  return msgs
    .filter((m) => m.type === 'D')
    .map((m) => {
      const len = m.body.readInt32BE(2);
      return len < 0 ? null : m.body.subarray(6, 6 + len).toString('utf8');
    });
}
