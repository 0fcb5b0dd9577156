// Framing of the PostgreSQL byte stream: startup-phase packets, buffered typed messages, and the streaming relay scanner.
import { PgError } from './errors.ts';

/** PostgreSQL's own cap on a startup packet (MAX_STARTUP_PACKET_LENGTH). */
export const MAX_STARTUP_PACKET = 10_000;
/** Cap for messages during authentication: a 6 KB Azure token, or a SASL message, fits with margin. */
export const MAX_AUTH_MESSAGE = 64 * 1024;

/** Shared by every empty drain(): a zero-length Buffer cannot be written to (one less object per idle client). */
const EMPTY = Buffer.alloc(0);

export interface Frame {
  type: number;
  /** The message body, without type byte and length. */
  body: Buffer;
}

/**
 * Accumulates bytes and hands out whole messages. For low-volume phases (startup, authentication, server login):
 * every message is buffered whole, so each one is capped.
 */
class ByteQueue {
  private chunks: Buffer[] = [];
  protected size = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.size += chunk.length;
  }

  get pending(): number {
    return this.size;
  }

  /** Reads `n` bytes at `offset` without consuming; caller guarantees availability. */
  protected peek(offset: number, n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length >= offset + n) return first.subarray(offset, offset + n);
    return this.take(offset + n, false).subarray(offset);
  }

  /** Removes and returns the first `n` bytes as one buffer (copied, so no socket read buffer is retained). */
  protected take(n: number, consume = true): Buffer {
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    let i = 0;
    while (filled < n) {
      const c = this.chunks[i]!;
      const k = Math.min(c.length, n - filled);
      c.copy(out, filled, 0, k);
      filled += k;
      if (consume) {
        if (k === c.length) {
          this.chunks.shift();
        } else {
          this.chunks[0] = c.subarray(k);
        }
      } else {
        i++;
      }
    }
    if (consume) this.size -= n;
    return out;
  }

  /** Everything still buffered, copied out; the queue is left empty. */
  drain(): Buffer {
    const out = this.size === 0 ? EMPTY : this.take(this.size);
    this.chunks = [];
    this.size = 0;
    return out;
  }
}

/** Startup-phase packets: Int32 length (self-inclusive), then the body whose first Int32 is the request code. */
export class StartupFramer extends ByteQueue {
  constructor(private readonly max = MAX_STARTUP_PACKET) {
    super();
  }

  /** The next whole packet's body (request code first), or null when more bytes are needed. */
  next(): Buffer | null {
    if (this.size < 4) return null;
    const len = this.peek(0, 4).readInt32BE(0);
    if (len < 8 || len > this.max) {
      throw PgError.protocolViolation(`invalid startup packet length ${len}`, 'GPRXY_BAD_STARTUP_LENGTH');
    }
    if (this.size < len) return null;
    return this.take(len).subarray(4);
  }
}

/** Typed messages (type byte, Int32 length, body), each buffered whole and capped at `max` body bytes. */
export class MessageFramer extends ByteQueue {
  constructor(private readonly max = MAX_AUTH_MESSAGE) {
    super();
  }

  next(): Frame | null {
    if (this.size < 5) return null;
    const head = this.peek(0, 5);
    const type = head[0]!;
    const len = head.readInt32BE(1);
    if (len < 4) throw PgError.protocolViolation(`invalid message length ${len}`, 'GPRXY_BAD_LENGTH');
    if (len - 4 > this.max) {
      throw PgError.protocolViolation(
        `message of type "${printable(type)}" is ${len - 4} bytes, over the limit of ${this.max}`,
        'GPRXY_MESSAGE_TOO_LARGE',
      );
    }
    if (this.size < len + 1) return null;
    const whole = this.take(len + 1);
    return { type, body: whole.subarray(5) };
  }
}

export function printable(type: number): string {
  return type >= 0x20 && type < 0x7f ? String.fromCharCode(type) : `0x${type.toString(16)}`;
}

/** What the scanner does with a message type. */
export const Scan = {
  /** Forward without looking. */
  PASS: 0,
  /** Forward; tell the handler the type and length (body never buffered). */
  NOTE: 1,
  /** Buffer the whole body (capped), let the handler decide to keep or drop it. */
  INSPECT: 2,
} as const;

export interface ScanHandler {
  /** A NOTE message's header, seen before its bytes (and possibly some earlier ones) have been forwarded. */
  onNote(type: number, length: number): void;
  /**
   * A whole INSPECT message; `body` may be a view into the socket's read buffer: copy what you keep.
   * Bytes before the message may still be pending (runs are forwarded lazily, one write per chunk where possible):
   * a handler that writes its own bytes, or stops forwarding, calls the scanner's flushBefore() first (or
   * flushThrough() to write after the message while keeping it). Return true to drop the message.
   */
  onMessage(type: number, body: Buffer): boolean;
  /** Bytes to forward unchanged, in order. */
  forward(bytes: Buffer): void;
}

/**
 * The relay's hot path. Bytes are forwarded as contiguous runs of the input chunks (no copy, no re-encode); only
 * headers are read, plus the bodies of INSPECT types. A large message of a PASS/NOTE type (a 100 MB DataRow, COPY
 * data) streams through chunk by chunk and is never buffered whole.
 */
export class StreamScanner {
  /** A header split across chunks; allocated on first need (most scanners of idle clients never need one). */
  private header: Buffer | null = null;
  private headerLen = 0;
  /** Body bytes of the current PASS/NOTE message still to come. */
  private skip = 0;
  /** The INSPECT message being assembled across chunks (whole frame, header included). */
  private partial: Buffer | null = null;
  private partialFill = 0;
  // The chunk being scanned and the pending run [runStart, msgStart) before the INSPECT message being handled.
  private chunk: Buffer | null = null;
  private runStart = 0;
  private msgStart = 0;
  private msgEnd = 0;
  /** The current INSPECT message was already forwarded by flushThrough(). */
  private sent = false;

  constructor(
    private readonly policy: Uint8Array,
    private readonly maxInspect: number,
    private readonly handler: ScanHandler,
  ) {}

  /** True when the stream is at a message boundary. */
  get atBoundary(): boolean {
    return this.skip === 0 && this.headerLen === 0 && this.partial === null;
  }

  /** During onMessage: forwards the pending bytes before the current message. */
  flushBefore(): void {
    const c = this.chunk;
    if (c !== null && this.msgStart > this.runStart)
      this.handler.forward(c.subarray(this.runStart, this.msgStart));
    this.runStart = this.msgStart;
  }

  /** During onMessage: forwards the pending bytes and the current message itself (the handler then keeps it). */
  flushThrough(): void {
    if (this.sent) return;
    this.flushBefore();
    const p = this.partial;
    if (p !== null) this.handler.forward(p);
    else if (this.chunk !== null) this.handler.forward(this.chunk.subarray(this.msgStart, this.msgEnd));
    this.runStart = this.msgEnd;
    this.sent = true;
  }

  push(chunk: Buffer): void {
    const n = chunk.length;
    let pos = 0;
    this.chunk = chunk;
    this.runStart = 0;
    const h = this.handler;
    while (pos < n) {
      if (this.skip > 0) {
        const k = Math.min(this.skip, n - pos);
        this.skip -= k;
        pos += k;
        continue;
      }
      if (this.partial !== null) {
        const p = this.partial;
        const k = Math.min(p.length - this.partialFill, n - pos);
        chunk.copy(p, this.partialFill, pos, pos + k);
        this.partialFill += k;
        pos += k;
        this.runStart = pos;
        if (this.partialFill === p.length) this.completePartial(pos);
        continue;
      }
      // At a message boundary: read the header, possibly split across chunks.
      let type: number;
      let len: number;
      let fromSaved = false;
      if (this.headerLen === 0 && n - pos >= 5) {
        type = chunk[pos]!;
        len = chunk.readInt32BE(pos + 1);
      } else {
        if (this.headerLen === 0 && pos > this.runStart) {
          h.forward(chunk.subarray(this.runStart, pos));
        }
        if (this.header === null) this.header = Buffer.alloc(5);
        const header = this.header;
        const k = Math.min(5 - this.headerLen, n - pos);
        chunk.copy(header, this.headerLen, pos, pos + k);
        this.headerLen += k;
        pos += k;
        this.runStart = pos;
        if (this.headerLen < 5) break;
        this.headerLen = 0;
        type = header[0]!;
        len = header.readInt32BE(1);
        fromSaved = true;
      }
      if (len < 4) throw PgError.protocolViolation(`invalid message length ${len}`, 'GPRXY_BAD_LENGTH');
      const policy = this.policy[type]!;
      if (policy === Scan.INSPECT) {
        if (len - 4 > this.maxInspect) {
          throw PgError.protocolViolation(
            `message of type "${printable(type)}" is ${len - 4} bytes, over max_packet_size ${this.maxInspect}`,
            'GPRXY_MESSAGE_TOO_LARGE',
          );
        }
        const start = fromSaved ? pos : pos + 5;
        const end = start + len - 4;
        if (!fromSaved && end <= n) {
          // Whole message inside this chunk: it stays in the pending run unless dropped.
          this.msgStart = pos;
          this.msgEnd = end;
          this.sent = false;
          const drop = h.onMessage(type, chunk.subarray(start, end));
          if (drop) {
            this.flushBefore();
            this.runStart = end;
          } else if (this.sent) {
            this.runStart = end;
          }
          pos = end;
          continue;
        }
        // Split message: flush the run before it and assemble it in its own buffer.
        if (!fromSaved && pos > this.runStart) h.forward(chunk.subarray(this.runStart, pos));
        const whole = Buffer.allocUnsafe(len + 1);
        whole[0] = type;
        whole.writeInt32BE(len, 1);
        this.partial = whole;
        this.partialFill = 5;
        if (!fromSaved) pos += 5;
        this.runStart = pos;
        if (len === 4) this.completePartial(pos);
        continue;
      }
      if (policy === Scan.NOTE) h.onNote(type, len);
      if (fromSaved) {
        // The header came (partly) from an earlier chunk and was held back: forward it now.
        h.forward(Buffer.from(this.header!));
        this.runStart = pos;
        this.skip = len - 4;
      } else {
        pos += 5;
        this.skip = len - 4;
      }
    }
    if (pos > this.runStart && this.headerLen === 0) h.forward(chunk.subarray(this.runStart, pos));
    this.chunk = null;
  }

  /** An assembled INSPECT message is complete; `pos` is where the bytes after it start in the current chunk. */
  private completePartial(pos: number): void {
    const p = this.partial!;
    // Nothing is pending before an assembled message: the run before it was forwarded when assembly began.
    this.msgStart = pos;
    this.msgEnd = pos;
    this.runStart = pos;
    this.sent = false;
    const drop = this.handler.onMessage(p[0]!, p.subarray(5));
    if (!drop && !this.sent) this.handler.forward(p);
    this.partial = null;
  }
}

/** Builds a 256-entry scan policy from a type -> policy map. */
export function scanPolicy(entries: Record<string, number>): Uint8Array {
  const p = new Uint8Array(256);
  for (const [k, v] of Object.entries(entries)) p[k.charCodeAt(0)] = v;
  return p;
}
