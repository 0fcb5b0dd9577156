// Secrets in config values: `file:/path` (the file's content) and `enc:...` (AES-256-GCM under a master key from
// GPRXY_MASTER_KEY or GPRXY_MASTER_KEY_FILE). Errors name the key, never the value.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';

export class SecretError extends Error {}

export type Env = Readonly<Record<string, string | undefined>>;

/** The master key: 32 bytes, given as base64 or hex in GPRXY_MASTER_KEY, or in the file GPRXY_MASTER_KEY_FILE. */
export function masterKey(env: Env): Buffer {
  let text = env.GPRXY_MASTER_KEY;
  if (text === undefined && env.GPRXY_MASTER_KEY_FILE) {
    try {
      text = readFileSync(env.GPRXY_MASTER_KEY_FILE, 'utf8');
    } catch {
      throw new SecretError('cannot read GPRXY_MASTER_KEY_FILE');
    }
  }
  if (text === undefined) throw new SecretError('enc: values need GPRXY_MASTER_KEY or GPRXY_MASTER_KEY_FILE');
  const t = text.trim();
  const key = /^[0-9a-fA-F]{64}$/.test(t) ? Buffer.from(t, 'hex') : Buffer.from(t, 'base64');
  if (key.length !== 32) throw new SecretError('the master key must be 32 bytes (base64 or hex)');
  return key;
}

export function encryptSecret(plain: string, key: Buffer): string {
  const iv = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', key, iv);
  const body = Buffer.concat([c.update(plain, 'utf8'), c.final()]);
  return `enc:${Buffer.concat([iv, c.getAuthTag(), body]).toString('base64')}`;
}

export function decryptSecret(value: string, key: Buffer): string {
  const raw = Buffer.from(value.slice(4), 'base64');
  if (raw.length < 28) throw new SecretError('malformed enc: value');
  const d = createDecipheriv('aes-256-gcm', key, raw.subarray(0, 12));
  d.setAuthTag(raw.subarray(12, 28));
  try {
    return Buffer.concat([d.update(raw.subarray(28)), d.final()]).toString('utf8');
  } catch {
    throw new SecretError('enc: value does not decrypt with this master key');
  }
}

/** Resolves one secret value; plain values pass through. */
export function resolveSecret(value: string, env: Env, baseDir: string): string {
  if (value.startsWith('file:')) {
    const path = value.slice(5);
    try {
      return readFileSync(isAbsolute(path) ? path : resolve(baseDir, path), 'utf8').replace(/\r?\n$/, '');
    } catch {
      throw new SecretError(`cannot read ${path}`);
    }
  }
  if (value.startsWith('enc:')) return decryptSecret(value, masterKey(env));
  return value;
}
