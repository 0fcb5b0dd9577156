// Bounds-checked readers and a growable writer for message bodies; every decode error is a PgError 08P01.
import { PgError } from './errors.ts';

export class BodyReader {
  private pos = 0;
  constructor(private readonly buf: Buffer) {}

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  private need(n: number): void {
    if (this.buf.length - this.pos < n)
      throw PgError.protocolViolation('message truncated', 'GPRXY_TRUNCATED');
  }

  byte(): number {
    this.need(1);
    return this.buf[this.pos++]!;
  }

  int16(): number {
    this.need(2);
    const v = this.buf.readInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  int32(): number {
    this.need(4);
    const v = this.buf.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  bytes(n: number): Buffer {
    if (n < 0) throw PgError.protocolViolation('negative length', 'GPRXY_BAD_LENGTH');
    this.need(n);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }

  cstring(): string {
    const end = this.buf.indexOf(0, this.pos);
    if (end < 0) throw PgError.protocolViolation('unterminated string', 'GPRXY_BAD_STRING');
    const s = this.buf.toString('utf8', this.pos, end);
    this.pos = end + 1;
    return s;
  }

  rest(): Buffer {
    const v = this.buf.subarray(this.pos);
    this.pos = this.buf.length;
    return v;
  }
}

export class MessageWriter {
  private buf: Buffer;
  private len = 5;

  constructor(capacity = 64) {
    this.buf = Buffer.allocUnsafe(Math.max(capacity, 5));
  }

  private ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.len + n));
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }

  byte(v: number): this {
    this.ensure(1);
    this.buf[this.len++] = v;
    return this;
  }

  int16(v: number): this {
    this.ensure(2);
    this.buf.writeInt16BE(v, this.len);
    this.len += 2;
    return this;
  }

  int32(v: number): this {
    this.ensure(4);
    this.buf.writeInt32BE(v, this.len);
    this.len += 4;
    return this;
  }

  bytes(b: Buffer): this {
    this.ensure(b.length);
    b.copy(this.buf, this.len);
    this.len += b.length;
    return this;
  }

  /** A C string. An embedded NUL would end the string early and smuggle the rest in as more fields: refused. */
  cstring(s: string): this {
    if (s.includes('\0')) throw PgError.internal('GPRXY_NUL_IN_STRING');
    const n = Buffer.byteLength(s);
    this.ensure(n + 1);
    this.buf.write(s, this.len);
    this.len += n;
    this.buf[this.len++] = 0;
    return this;
  }

  /** A typed message: type byte + Int32 length + body. */
  finish(type: number): Buffer {
    this.buf[0] = type;
    this.buf.writeInt32BE(this.len - 1, 1);
    return this.buf.subarray(0, this.len);
  }

  /** An untyped startup-phase packet; the body must start with a placeholder int32 for the length. */
  finishUntyped(): Buffer {
    const out = this.buf.subarray(5, this.len);
    out.writeInt32BE(out.length, 0);
    return out;
  }
}
