// Byte-fixture builders for protocol tests: raw frames written with plain Buffer writes, independent of the codecs.

/** Type byte as a number: accepts 'Q' or 0x51. */
function typeByte(type: string | number): number {
  return typeof type === 'number' ? type : type.charCodeAt(0);
}

/** A C string (UTF-8 bytes + NUL). */
export function cstr(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  const out = Buffer.alloc(b.length + 1);
  b.copy(out, 0);
  return out;
}

export function int32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(v, 0);
  return b;
}

export function int16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeInt16BE(v, 0);
  return b;
}

/** A typed message: type byte, Int32 length (body + 4), body. `len` overrides the length field. */
export function msg(
  type: string | number,
  body: Buffer | Uint8Array = Buffer.alloc(0),
  len?: number,
): Buffer {
  const out = Buffer.alloc(5 + body.length);
  out[0] = typeByte(type);
  out.writeInt32BE(len ?? body.length + 4, 1);
  Buffer.from(body.buffer, body.byteOffset, body.length).copy(out, 5);
  return out;
}

/** Just a 5-byte header (type + length), for messages whose body is streamed separately. */
export function header(type: string | number, len: number): Buffer {
  const out = Buffer.alloc(5);
  out[0] = typeByte(type);
  out.writeInt32BE(len, 1);
  return out;
}

/** An untyped startup-phase packet: Int32 length (self-inclusive) + body. `len` overrides the length field. */
export function untyped(body: Buffer, len?: number): Buffer {
  const out = Buffer.alloc(4 + body.length);
  out.writeInt32BE(len ?? body.length + 4, 0);
  body.copy(out, 4);
  return out;
}

/** StartupMessage with protocol major.minor and params (terminated by an extra NUL unless `terminate` is false). */
export function startup(
  params: Record<string, string> | [string, string][] = {},
  opts: { major?: number; minor?: number; terminate?: boolean } = {},
): Buffer {
  const parts: Buffer[] = [];
  const code = Buffer.alloc(4);
  code.writeUInt16BE(opts.major ?? 3, 0);
  code.writeUInt16BE(opts.minor ?? 0, 2);
  parts.push(code);
  const entries = Array.isArray(params) ? params : Object.entries(params);
  for (const [k, v] of entries) parts.push(cstr(k), cstr(v));
  if (opts.terminate !== false) parts.push(Buffer.from([0]));
  return untyped(Buffer.concat(parts));
}

export function sslRequest(): Buffer {
  return untyped(int32(80877103));
}

export function gssencRequest(): Buffer {
  return untyped(int32(80877104));
}

export function cancelRequest(pid: number, secret: Buffer = Buffer.from([1, 2, 3, 4])): Buffer {
  return untyped(Buffer.concat([int32(80877102), int32(pid), secret]));
}

export function query(sql: string): Buffer {
  return msg('Q', cstr(sql));
}

/** PasswordMessage / SASLResponse ('p' + raw body). */
export function password(pw: string): Buffer {
  return msg('p', cstr(pw));
}

/** SASLInitialResponse: mechanism, Int32 length (-1 for none), data. */
export function saslInitial(mechanism: string, data: Buffer | null): Buffer {
  return msg(
    'p',
    Buffer.concat([cstr(mechanism), int32(data === null ? -1 : data.length), data ?? Buffer.alloc(0)]),
  );
}

/** DataRow carrying one column of `n` bytes (filled with `fill`): total body n + 6 bytes. */
export function dataRow(n: number, fill = 0x61): Buffer {
  const body = Buffer.alloc(2 + 4 + n, fill);
  body.writeInt16BE(1, 0);
  body.writeInt32BE(n, 2);
  return msg('D', body);
}

/** A DataRow header only, for a row whose single column has `n` bytes (body streamed by the test). */
export function dataRowHeader(n: number): Buffer {
  const b = Buffer.alloc(5 + 6);
  b[0] = 0x44;
  b.writeInt32BE(4 + 6 + n, 1);
  b.writeInt16BE(1, 5);
  b.writeInt32BE(n, 7);
  return b;
}

export function readyForQuery(status: 'I' | 'T' | 'E' = 'I'): Buffer {
  return msg('Z', Buffer.from(status, 'latin1'));
}

export function commandComplete(tag: string): Buffer {
  return msg('C', cstr(tag));
}

export function parameterStatus(name: string, value: string): Buffer {
  return msg('S', Buffer.concat([cstr(name), cstr(value)]));
}

export function backendKeyData(pid: number, secret: Buffer = Buffer.from([9, 8, 7, 6])): Buffer {
  return msg('K', Buffer.concat([int32(pid), secret]));
}

/** Authentication request: code, then the code-specific payload as given. */
export function auth(code: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  return msg('R', Buffer.concat([int32(code), payload]));
}

export function authSasl(mechanisms: string[]): Buffer {
  return auth(10, Buffer.concat([...mechanisms.map(cstr), Buffer.from([0])]));
}

/** ErrorResponse/NoticeResponse from (field code, value) pairs. */
export function errorResponse(fields: [string, string][], type: 'E' | 'N' = 'E'): Buffer {
  const parts: Buffer[] = [];
  for (const [code, value] of fields) parts.push(Buffer.from(code, 'latin1'), cstr(value));
  parts.push(Buffer.from([0]));
  return msg(type, Buffer.concat(parts));
}

export function terminate(): Buffer {
  return Buffer.from([0x58, 0, 0, 0, 4]);
}

export function sync(): Buffer {
  return Buffer.from([0x53, 0, 0, 0, 4]);
}

/** The body of a typed message (everything after the 5-byte header). */
export function bodyOf(frame: Buffer): Buffer {
  return frame.subarray(5);
}

/** A copy of `buf` in its own ArrayBuffer (Buffer.alloc never uses the shared pool), so views are identifiable. */
export function own(buf: Buffer): Buffer {
  const out = Buffer.alloc(buf.length);
  buf.copy(out, 0);
  return out;
}

/** Splits `buf` into chunks at the given offsets (ascending, within bounds); each chunk is its own copy (see own()). */
export function splitAt(buf: Buffer, cuts: readonly number[]): Buffer[] {
  const out: Buffer[] = [];
  let prev = 0;
  for (const c of [...cuts, buf.length]) {
    if (c < prev) continue;
    out.push(own(buf.subarray(prev, c)));
    prev = c;
  }
  return out;
}

/** Every way of cutting `buf` in two (including empty halves), as [head, tail]. */
export function* everySplit(buf: Buffer): Generator<[Buffer, Buffer]> {
  for (let i = 0; i <= buf.length; i++) {
    yield [own(buf.subarray(0, i)), own(buf.subarray(i))];
  }
}

/** `buf` cut into chunks of `size` bytes (the last one shorter). */
export function chunked(buf: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) out.push(own(buf.subarray(i, i + size)));
  return out;
}
