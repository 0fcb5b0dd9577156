// Password secrets: parsing pg_authid strings (SCRAM-SHA-256, md5, plaintext) and pgbouncer userlist.txt, making verifiers.
import {
  defaultRandom,
  hmacSha256,
  type KeyCache,
  MAX_PBKDF2_ITERATIONS,
  md5Hex,
  type Random,
  safeEqual,
  saltedPassword,
  scramKeys,
  sha256,
} from './crypto.ts';
import { saslprep } from './saslprep.ts';
import { fromBase64, SCRAM_KEY_LENGTH } from './scram-common.ts';

export type ScramSecret = {
  kind: 'scram-sha-256';
  iterations: number;
  salt: Buffer;
  storedKey: Buffer;
  serverKey: Buffer;
  /** Set on mock secrets for unknown users: the exchange runs normally and always fails. */
  mock?: true;
};
export type Md5Secret = { kind: 'md5'; hash: string };
export type PlainSecret = { kind: 'plain'; password: string };
export type Secret = ScramSecret | Md5Secret | PlainSecret;

export const DEFAULT_SCRAM_ITERATIONS = 4096;
const SCRAM_PREFIX = 'SCRAM-SHA-256$';
const MD5_HASH = /^md5[0-9a-f]{32}$/;
const SCRAM_FORMAT = /^SCRAM-SHA-256\$([^:$]*):([^:$]*)\$([^:$]*):([^:$]*)$/;
const DIGITS = /^[1-9][0-9]{0,9}$/;

/** True for a stored md5 secret: 'md5' + 32 lowercase hex digits (PostgreSQL's test; anything else is plaintext). */
export function isMd5Hash(s: string): boolean {
  return MD5_HASH.test(s);
}

function badScram(what: string): Error {
  return new Error(`malformed SCRAM-SHA-256 secret: ${what}`);
}

/**
 * Parses a stored secret as PostgreSQL keeps it in pg_authid.rolpassword:
 * `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64), `md5` + 32 hex digits, else plaintext.
 * A string that starts like a SCRAM secret but is malformed throws (the message never includes the secret).
 */
export function parseSecret(s: string): Secret {
  if (isMd5Hash(s)) return { kind: 'md5', hash: s };
  if (!s.startsWith(SCRAM_PREFIX)) return { kind: 'plain', password: s };
  const m = SCRAM_FORMAT.exec(s);
  if (!m) throw badScram('expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>');
  const [, iterText = '', saltText, storedText, serverText] = m;
  const iterations = DIGITS.test(iterText) ? Number(iterText) : 0;
  if (iterations < 1 || iterations > MAX_PBKDF2_ITERATIONS) throw badScram('invalid iteration count');
  const salt = fromBase64(saltText);
  if (!salt || salt.length === 0) throw badScram('invalid salt');
  const storedKey = fromBase64(storedText);
  const serverKey = fromBase64(serverText);
  if (storedKey?.length !== SCRAM_KEY_LENGTH) throw badScram('invalid StoredKey');
  if (serverKey?.length !== SCRAM_KEY_LENGTH) throw badScram('invalid ServerKey');
  return { kind: 'scram-sha-256', iterations, salt, storedKey, serverKey };
}

/** The pg_authid string for a SCRAM secret. */
export function formatScramSecret(secret: ScramSecret): string {
  const b64 = (b: Buffer) => b.toString('base64');
  return `${SCRAM_PREFIX}${secret.iterations}:${b64(secret.salt)}$${b64(secret.storedKey)}:${b64(secret.serverKey)}`;
}

export function formatSecret(secret: Secret): string {
  if (secret.kind === 'scram-sha-256') return formatScramSecret(secret);
  return secret.kind === 'md5' ? secret.hash : secret.password;
}

/** Reads the `"..."` field starting at s[i]; `""` inside is a quote. Returns [value, index after it]. */
function quoted(s: string, i: number): [string, number] | undefined {
  if (s[i] !== '"') return undefined;
  let value = '';
  for (let j = i + 1; j < s.length; j++) {
    if (s[j] !== '"') value += s[j];
    else if (s[j + 1] === '"') {
      value += '"';
      j++;
    } else return [value, j + 1];
  }
  return undefined;
}

/**
 * Parses pgbouncer's userlist.txt: one `"user" "secret"` per line, `""` escapes a quote, blank lines and lines
 * starting with `;` or `#` are skipped, anything after the second field is ignored. A later line for the same user
 * replaces an earlier one. Throws on a bad line, naming its number and never its content.
 */
export function parseUserlist(text: string): Map<string, Secret> {
  const users = new Map<string, Secret>();
  const lines = text.split(/\r?\n/);
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n]!;
    const start = line.search(/\S/);
    if (start < 0 || line[start] === ';' || line[start] === '#') continue;
    const user = quoted(line, start);
    const secretStart = user ? line.slice(user[1]).search(/\S/) : -1;
    const secret = user && secretStart >= 0 ? quoted(line, user[1] + secretStart) : undefined;
    if (!user || !secret) throw new Error(`userlist line ${n + 1}: expected "user" "secret"`);
    if (user[0] === '') throw new Error(`userlist line ${n + 1}: empty user name`);
    try {
      users.set(user[0], parseSecret(secret[0]));
    } catch (err) {
      throw new Error(`userlist line ${n + 1}: ${(err as Error).message}`);
    }
  }
  return users;
}

function quote(value: string, what: string): string {
  if (/[\r\n]/.test(value)) throw new Error(`userlist ${what} must not contain a line break`);
  return `"${value.replaceAll('"', '""')}"`;
}

/** One userlist.txt line (without the newline): `"user" "secret"` with quotes doubled. */
export function userlistLine(user: string, secret: string): string {
  return `${quote(user, 'user name')} ${quote(secret, 'secret')}`;
}

/** PostgreSQL's stored md5 secret: 'md5' + md5hex(password + user). */
export function md5Secret(user: string, password: string): string {
  return 'md5' + md5Hex(password + user);
}

export interface ScramVerifierOptions {
  iterations?: number;
  salt?: Buffer;
  random?: Random;
  cache?: KeyCache | null;
}

/** Derives the SCRAM secret for a password (SASLprep'd as PostgreSQL does; see saslprep.ts). */
export async function deriveScramSecret(
  password: string,
  salt: Buffer,
  iterations: number,
  cache?: KeyCache | null,
): Promise<ScramSecret> {
  const { storedKey, serverKey } = scramKeys(
    await saltedPassword(saslprep(password), salt, iterations, cache),
  );
  return { kind: 'scram-sha-256', iterations, salt, storedKey, serverKey };
}

/**
 * A new pg_authid SCRAM-SHA-256 verifier for password (usable in `ALTER ROLE ... PASSWORD '<verifier>'`).
 * Defaults: 4096 iterations, 16 random bytes of salt; not cached unless a cache is passed.
 */
export async function makeScramVerifier(password: string, opts: ScramVerifierOptions = {}): Promise<string> {
  const iterations = opts.iterations ?? DEFAULT_SCRAM_ITERATIONS;
  if (!Number.isInteger(iterations) || iterations < 1 || iterations > MAX_PBKDF2_ITERATIONS) {
    throw new RangeError('invalid SCRAM iteration count');
  }
  const salt = opts.salt ?? (opts.random ?? defaultRandom)(16);
  if (salt.length === 0) throw new RangeError('SCRAM salt must not be empty');
  return formatScramSecret(await deriveScramSecret(password, salt, iterations, opts.cache ?? null));
}

/**
 * The SCRAM secret presented for a user that does not exist: deterministic per (user, nonceKey), so repeated
 * attempts see the same salt, and marked `mock` so ScramServer always fails it. nonceKey should be a stable secret
 * (kept across restarts), otherwise a changing salt tells unknown users apart.
 */
export function mockScramSecret(
  user: string,
  nonceKey: Buffer,
  iterations = DEFAULT_SCRAM_ITERATIONS,
): ScramSecret {
  return {
    kind: 'scram-sha-256',
    iterations,
    salt: hmacSha256(nonceKey, user).subarray(0, 16),
    storedKey: hmacSha256(nonceKey, `StoredKey\0${user}`),
    serverKey: hmacSha256(nonceKey, `ServerKey\0${user}`),
    mock: true,
  };
}

/**
 * Checks a cleartext password (e.g. from AuthenticationCleartextPassword) against a stored secret in constant time.
 * SCRAM derivation is async and cached. Mock secrets never match.
 */
export async function verifyPassword(
  stored: Secret,
  user: string,
  password: string,
  cache?: KeyCache | null,
): Promise<boolean> {
  switch (stored.kind) {
    case 'scram-sha-256': {
      const salted = await saltedPassword(saslprep(password), stored.salt, stored.iterations, cache);
      return safeEqual(scramKeys(salted).storedKey, stored.storedKey) && !stored.mock;
    }
    case 'md5':
      return safeEqual(Buffer.from(md5Secret(user, password)), Buffer.from(stored.hash));
    case 'plain':
      return safeEqual(sha256(password), sha256(stored.password));
  }
}
