// Frontend (client -> server) messages the proxy reads from clients or writes to servers: startup packets,
// CancelRequest, password/SASL messages, Query, Terminate.
import { PgError } from './errors.ts';
import { BodyReader, MessageWriter } from './wire.ts';

export const PROTOCOL_3_0 = 196608; // 3 << 16
export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
export const CANCEL_REQUEST_CODE = 80877102;

export type StartupPacket =
  | { kind: 'ssl' }
  | { kind: 'gssenc' }
  | { kind: 'cancel'; pid: number; secret: Buffer }
  | { kind: 'startup'; major: number; minor: number; params: Map<string, string> };

/** Decodes a startup-phase packet body (request code first, length already stripped). */
export function decodeStartupPacket(body: Buffer): StartupPacket {
  const r = new BodyReader(body);
  const code = r.int32();
  if (code === SSL_REQUEST_CODE) return { kind: 'ssl' };
  if (code === GSSENC_REQUEST_CODE) return { kind: 'gssenc' };
  if (code === CANCEL_REQUEST_CODE) {
    const pid = r.int32();
    const secret = Buffer.from(r.rest());
    if (secret.length < 4 || secret.length > 256) {
      throw PgError.protocolViolation('invalid cancel request', 'GPRXY_BAD_CANCEL');
    }
    return { kind: 'cancel', pid, secret };
  }
  const major = code >>> 16;
  const minor = code & 0xffff;
  if (major !== 3) {
    throw new PgError(
      'FATAL',
      '0A000',
      `unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.0`,
      { code: 'GPRXY_PROTOCOL_VERSION' },
    );
  }
  const params = new Map<string, string>();
  for (;;) {
    const name = r.cstring();
    if (name === '') break;
    const value = r.cstring();
    params.set(name, value);
  }
  if (r.remaining !== 0)
    throw PgError.protocolViolation('invalid startup packet layout', 'GPRXY_BAD_STARTUP');
  return { kind: 'startup', major, minor, params };
}

export function encodeStartupMessage(params: Iterable<[string, string]>): Buffer {
  const w = new MessageWriter();
  w.int32(0).int32(PROTOCOL_3_0);
  for (const [k, v] of params) w.cstring(k).cstring(v);
  w.byte(0);
  return w.finishUntyped();
}

export function encodeSSLRequest(): Buffer {
  return new MessageWriter().int32(0).int32(SSL_REQUEST_CODE).finishUntyped();
}

export function encodeCancelRequest(pid: number, secret: Buffer): Buffer {
  return new MessageWriter().int32(0).int32(CANCEL_REQUEST_CODE).int32(pid).bytes(secret).finishUntyped();
}

/** PasswordMessage: the password (or token) as a C string. */
export function decodePassword(body: Buffer): string {
  const r = new BodyReader(body);
  const pw = r.cstring();
  if (r.remaining !== 0)
    throw PgError.protocolViolation('invalid password packet', 'GPRXY_BAD_PASSWORD_PACKET');
  return pw;
}

export function encodePassword(password: string): Buffer {
  return new MessageWriter().cstring(password).finish(0x70);
}

export interface SaslInitialResponse {
  mechanism: string;
  data: Buffer | null;
}

export function decodeSaslInitialResponse(body: Buffer): SaslInitialResponse {
  const r = new BodyReader(body);
  const mechanism = r.cstring();
  const len = r.int32();
  if (len === -1) {
    if (r.remaining !== 0) throw PgError.protocolViolation('invalid SASL initial response', 'GPRXY_BAD_SASL');
    return { mechanism, data: null };
  }
  if (len < 0 || len !== r.remaining) {
    throw PgError.protocolViolation('invalid SASL initial response length', 'GPRXY_BAD_SASL');
  }
  return { mechanism, data: Buffer.from(r.rest()) };
}

export function encodeSaslInitialResponse(mechanism: string, data: Buffer): Buffer {
  return new MessageWriter().cstring(mechanism).int32(data.length).bytes(data).finish(0x70);
}

export function encodeSaslResponse(data: Buffer): Buffer {
  return new MessageWriter().bytes(data).finish(0x70);
}

export function encodeQuery(sql: string): Buffer {
  return new MessageWriter().cstring(sql).finish(0x51);
}

/**
 * One parameterized statement in the extended protocol, unnamed statement and portal, text parameters and
 * results: Parse, Bind, Execute, Sync.
 */
export function encodeExtendedQuery(sql: string, params: readonly (string | null)[]): Buffer {
  const parse = new MessageWriter().cstring('').cstring(sql).int16(0).finish(F.Parse);
  const bind = new MessageWriter().cstring('').cstring('').int16(0).int16(params.length);
  for (const p of params) {
    if (p === null) bind.int32(-1);
    else {
      const b = Buffer.from(p, 'utf8');
      bind.int32(b.length).bytes(b);
    }
  }
  bind.int16(0);
  const execute = new MessageWriter(16).cstring('').int32(0).finish(F.Execute);
  return Buffer.concat([parse, bind.finish(F.Bind), execute, SYNC]);
}

export const TERMINATE = Buffer.from([0x58, 0, 0, 0, 4]);
export const SYNC = Buffer.from([0x53, 0, 0, 0, 4]);

/** Frontend message type bytes. */
export const F = {
  Query: 0x51, // Q
  Parse: 0x50, // P
  Bind: 0x42, // B
  Describe: 0x44, // D
  Execute: 0x45, // E
  Sync: 0x53, // S
  Flush: 0x48, // H
  Close: 0x43, // C
  Terminate: 0x58, // X
  CopyData: 0x64, // d
  CopyDone: 0x63, // c
  CopyFail: 0x66, // f
  FunctionCall: 0x46, // F
  Password: 0x70, // p (PasswordMessage, SASLInitialResponse, SASLResponse)
} as const;
