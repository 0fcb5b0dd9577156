// SCRAM-SHA-256 message helpers shared by the server and client step machines (the RFC 5802 grammar we need).
import type { Random } from './crypto.ts';

export const SCRAM_SHA_256 = 'SCRAM-SHA-256';
export const SCRAM_SHA_256_PLUS = 'SCRAM-SHA-256-PLUS';
export const CHANNEL_BINDING_TYPE = 'tls-server-end-point';
/** Largest SCRAM message accepted from a peer (ours are about 200 bytes). */
export const MAX_SCRAM_MESSAGE = 8192;
/** Random bytes in a nonce, as PostgreSQL (SCRAM_RAW_NONCE_LEN). */
export const NONCE_BYTES = 18;
export const SCRAM_KEY_LENGTH = 32;

const utf8 = new TextDecoder('utf-8', { fatal: true });
const PRINTABLE = /^[\x21-\x2B\x2D-\x7E]+$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const EXTENSION = /^[A-Za-z]=/;

/** Message bytes as text; undefined when empty, too long, not UTF-8 or containing NUL. */
export function messageText(data: Buffer): string | undefined {
  if (data.length === 0 || data.length > MAX_SCRAM_MESSAGE || data.includes(0)) return undefined;
  try {
    return utf8.decode(data);
  } catch {
    return undefined;
  }
}

/** RFC 5802 `printable`: ASCII 0x21-0x7E except ','. Nonces must be made of these. */
export function isPrintable(s: string): boolean {
  return PRINTABLE.test(s);
}

/** Strict, padded base64; undefined when s is not exactly that. */
export function fromBase64(s: string | undefined): Buffer | undefined {
  return s !== undefined && BASE64.test(s) ? Buffer.from(s, 'base64') : undefined;
}

/** The value of `name=value`, or undefined when field is missing or names another attribute. */
export function attr(field: string | undefined, name: string): string | undefined {
  return field !== undefined && field[0] === name && field[1] === '=' ? field.slice(2) : undefined;
}

/** Optional trailing extension attributes (`x=...`) are allowed and ignored, as PostgreSQL does. */
export function areExtensions(fields: string[]): boolean {
  return fields.every((f) => EXTENSION.test(f));
}

export function makeNonce(random: Random): string {
  return random(NONCE_BYTES).toString('base64');
}
