// Backend (server -> client) messages the proxy reads from servers or writes to clients: Authentication,
// ParameterStatus, BackendKeyData, ReadyForQuery, ErrorResponse/NoticeResponse, NegotiateProtocolVersion.
import { PgError, type Severity } from './errors.ts';
import { BodyReader, MessageWriter } from './wire.ts';

/** Backend message type bytes. */
export const B = {
  Authentication: 0x52, // R
  ParameterStatus: 0x53, // S
  BackendKeyData: 0x4b, // K
  ReadyForQuery: 0x5a, // Z
  ErrorResponse: 0x45, // E
  NoticeResponse: 0x4e, // N
  CommandComplete: 0x43, // C
  RowDescription: 0x54, // T
  DataRow: 0x44, // D
  CopyInResponse: 0x47, // G
  CopyOutResponse: 0x48, // H
  CopyBothResponse: 0x57, // W
  CopyData: 0x64, // d
  CopyDone: 0x63, // c
  NotificationResponse: 0x41, // A
  NegotiateProtocolVersion: 0x76, // v
} as const;

export const AuthCode = {
  Ok: 0,
  CleartextPassword: 3,
  MD5Password: 5,
  SASL: 10,
  SASLContinue: 11,
  SASLFinal: 12,
} as const;

export type AuthRequest =
  | { code: 0 }
  | { code: 3 }
  | { code: 5; salt: Buffer }
  | { code: 10; mechanisms: string[] }
  | { code: 11; data: Buffer }
  | { code: 12; data: Buffer }
  | { code: number };

export function decodeAuthentication(body: Buffer): AuthRequest {
  const r = new BodyReader(body);
  const code = r.int32();
  switch (code) {
    case AuthCode.MD5Password:
      return { code, salt: Buffer.from(r.bytes(4)) };
    case AuthCode.SASL: {
      const mechanisms: string[] = [];
      for (;;) {
        const m = r.cstring();
        if (m === '') break;
        mechanisms.push(m);
      }
      return { code, mechanisms };
    }
    case AuthCode.SASLContinue:
    case AuthCode.SASLFinal:
      return { code, data: Buffer.from(r.rest()) };
    default:
      return { code };
  }
}

export function encodeAuthOk(): Buffer {
  return new MessageWriter(16).int32(AuthCode.Ok).finish(B.Authentication);
}

export function encodeAuthCleartext(): Buffer {
  return new MessageWriter(16).int32(AuthCode.CleartextPassword).finish(B.Authentication);
}

export function encodeAuthMd5(salt: Buffer): Buffer {
  return new MessageWriter(16).int32(AuthCode.MD5Password).bytes(salt).finish(B.Authentication);
}

export function encodeAuthSasl(mechanisms: readonly string[]): Buffer {
  const w = new MessageWriter().int32(AuthCode.SASL);
  for (const m of mechanisms) w.cstring(m);
  return w.byte(0).finish(B.Authentication);
}

export function encodeAuthSaslContinue(data: Buffer): Buffer {
  return new MessageWriter().int32(AuthCode.SASLContinue).bytes(data).finish(B.Authentication);
}

export function encodeAuthSaslFinal(data: Buffer): Buffer {
  return new MessageWriter().int32(AuthCode.SASLFinal).bytes(data).finish(B.Authentication);
}

export function encodeParameterStatus(name: string, value: string): Buffer {
  return new MessageWriter().cstring(name).cstring(value).finish(B.ParameterStatus);
}

export function decodeParameterStatus(body: Buffer): [string, string] {
  const r = new BodyReader(body);
  return [r.cstring(), r.cstring()];
}

/** DataRow with text columns (NULL as null). */
export function decodeDataRow(body: Buffer): (string | null)[] {
  const r = new BodyReader(body);
  const n = r.int16();
  const out: (string | null)[] = [];
  for (let i = 0; i < n; i++) {
    const len = r.int32();
    out.push(len < 0 ? null : r.bytes(len).toString('utf8'));
  }
  return out;
}

export function encodeBackendKeyData(pid: number, secret: Buffer): Buffer {
  return new MessageWriter(32).int32(pid).bytes(secret).finish(B.BackendKeyData);
}

export function decodeBackendKeyData(body: Buffer): { pid: number; secret: Buffer } {
  const r = new BodyReader(body);
  const pid = r.int32();
  const secret = Buffer.from(r.rest());
  if (secret.length < 4 || secret.length > 256) throw PgError.protocolViolation('invalid BackendKeyData');
  return { pid, secret };
}

export type TxStatus = 'I' | 'T' | 'E';

export function encodeReadyForQuery(status: TxStatus): Buffer {
  return Buffer.from([B.ReadyForQuery, 0, 0, 0, 5, status.charCodeAt(0)]);
}

export function decodeReadyForQuery(body: Buffer): TxStatus {
  const s = body.length === 1 ? String.fromCharCode(body[0]!) : '';
  if (s !== 'I' && s !== 'T' && s !== 'E') throw PgError.protocolViolation('invalid ReadyForQuery');
  return s;
}

/**
 * NegotiateProtocolVersion for major version 3. The docs call the first field the "newest minor version", but
 * PostgreSQL sends (and libpq 18 reads) the whole version number, 3 << 16 | minor: a bare minor (0) makes libpq 18
 * fail with "server requested downgrade to pre-3.0 protocol version".
 */
export function encodeNegotiateProtocolVersion(minor: number, unrecognized: readonly string[]): Buffer {
  const w = new MessageWriter().int32((3 << 16) | (minor & 0xffff)).int32(unrecognized.length);
  for (const o of unrecognized) w.cstring(o);
  return w.finish(B.NegotiateProtocolVersion);
}

/** ErrorResponse/NoticeResponse fields keyed by their one-letter codes (S, V, C, M, D, H, ...). */
export type ErrorFields = Map<string, string>;

export function decodeErrorFields(body: Buffer): ErrorFields {
  const r = new BodyReader(body);
  const fields: ErrorFields = new Map();
  for (;;) {
    const code = r.byte();
    if (code === 0) break;
    fields.set(String.fromCharCode(code), r.cstring());
  }
  return fields;
}

/** A server's ErrorResponse as a PgError, to be forwarded as PostgreSQL said it. */
export function pgErrorFromFields(fields: ErrorFields): PgError {
  const sev = (fields.get('V') ?? fields.get('S') ?? 'ERROR') as Severity;
  const detail = fields.get('D');
  const hint = fields.get('H');
  return new PgError(sev, fields.get('C') ?? 'XX000', fields.get('M') ?? 'unknown server error', {
    ...(detail !== undefined ? { detail } : {}),
    ...(hint !== undefined ? { hint } : {}),
    code: 'GPRXY_SERVER_ERROR',
  });
}

/** Error texts may quote outside input (a token claim, a server's words): a NUL is shown as U+FFFD, never sent. */
function noNul(s: string): string {
  return s.includes('\0') ? s.replaceAll('\0', '\uFFFD') : s;
}

export function encodeError(err: PgError, type: number = B.ErrorResponse): Buffer {
  const w = new MessageWriter(128);
  w.byte(0x53).cstring(noNul(err.severity)); // S
  w.byte(0x56).cstring(noNul(err.severity)); // V
  w.byte(0x43).cstring(noNul(err.sqlState)); // C
  w.byte(0x4d).cstring(noNul(err.message)); // M
  if (err.detail !== undefined) w.byte(0x44).cstring(noNul(err.detail));
  if (err.hint !== undefined) w.byte(0x48).cstring(noNul(err.hint));
  return w.byte(0).finish(type);
}

export function encodeNotice(message: string, severity: Severity = 'NOTICE'): Buffer {
  return encodeError(new PgError(severity, '00000', message), B.NoticeResponse);
}
