// Auth crypto primitives: SHA-256/HMAC/MD5 helpers, constant-time compare, async PBKDF2 with a bounded key cache, AuthError.
import { createHash, createHmac, pbkdf2, randomBytes, timingSafeEqual } from 'node:crypto';

/** Injected randomness: n random bytes. */
export type Random = (n: number) => Buffer;
export const defaultRandom: Random = (n) => randomBytes(n);

/** An internal authentication failure with a stable GPRXY_* code. Messages never carry secret material. */
export class AuthError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'AuthError';
    this.code = code;
  }
}

export function sha256(data: Buffer | string): Buffer {
  return createHash('sha256').update(data).digest();
}

export function hmacSha256(key: Buffer, data: Buffer | string): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

export function md5Hex(data: Buffer | string): string {
  return createHash('md5').update(data).digest('hex');
}

export function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.allocUnsafe(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! ^ (b[i] ?? 0);
  return out;
}

/** Constant-time equality for equal lengths; a length mismatch returns false at once (lengths are not secret). */
export function safeEqual(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * Bounded in-memory cache of derived keys, least recently used evicted first. It holds promises, so concurrent
 * derivations of the same key share one PBKDF2 run; a failed derivation is not kept.
 */
export class KeyCache {
  readonly #max: number;
  readonly #entries = new Map<string, Promise<Buffer>>();

  constructor(maxEntries = 1000) {
    this.#max = Math.max(1, Math.floor(maxEntries));
  }

  get size(): number {
    return this.#entries.size;
  }

  clear(): void {
    this.#entries.clear();
  }

  /** The cached value for key, or compute() stored under it. Each caller gets its own copy of the bytes. */
  async get(key: string, compute: () => Promise<Buffer>): Promise<Buffer> {
    let entry = this.#entries.get(key);
    if (entry) {
      this.#entries.delete(key);
      this.#entries.set(key, entry);
    } else {
      const created = compute();
      entry = created;
      this.#entries.set(key, created);
      if (this.#entries.size > this.#max) this.#entries.delete(this.#entries.keys().next().value!);
      created.catch(() => {
        if (this.#entries.get(key) === created) this.#entries.delete(key);
      });
    }
    return Buffer.from(await entry);
  }
}

/** Process-wide SaltedPassword cache (1000 entries). */
export const defaultKeyCache = new KeyCache(1000);

function pbkdf2Sha256(password: Buffer, salt: Buffer, iterations: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    pbkdf2(password, salt, iterations, 32, 'sha256', (err, key) => (err ? reject(err) : resolve(key)));
  });
}

function lengthPrefixed(b: Buffer): Buffer[] {
  const len = Buffer.allocUnsafe(4);
  len.writeUInt32BE(b.length);
  return [len, b];
}

/** Largest iteration count PBKDF2 accepts here (PostgreSQL stores it as an int). */
export const MAX_PBKDF2_ITERATIONS = 0x7fffffff;

/**
 * SCRAM SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, iterations), computed on the libuv thread pool so the
 * event loop never blocks. `password` is the already SASLprep'd bytes. Cached under a hash of (password, salt,
 * iterations) unless `cache` is null.
 */
export function saltedPassword(
  password: Buffer,
  salt: Buffer,
  iterations: number,
  cache: KeyCache | null = defaultKeyCache,
): Promise<Buffer> {
  if (!Number.isInteger(iterations) || iterations < 1 || iterations > MAX_PBKDF2_ITERATIONS) {
    return Promise.reject(new AuthError('GPRXY_SCRAM_ITERATIONS', 'invalid SCRAM iteration count'));
  }
  if (!cache) return pbkdf2Sha256(password, salt, iterations);
  const iter = Buffer.allocUnsafe(4);
  iter.writeUInt32BE(iterations);
  const key = sha256(Buffer.concat([...lengthPrefixed(password), ...lengthPrefixed(salt), iter])).toString(
    'base64',
  );
  return cache.get(key, () => pbkdf2Sha256(password, salt, iterations));
}

export interface ScramKeys {
  clientKey: Buffer;
  storedKey: Buffer;
  serverKey: Buffer;
}

/** ClientKey, StoredKey = H(ClientKey) and ServerKey from a SaltedPassword (RFC 5802 section 3). */
export function scramKeys(salted: Buffer): ScramKeys {
  const clientKey = hmacSha256(salted, 'Client Key');
  return { clientKey, storedKey: sha256(clientKey), serverKey: hmacSha256(salted, 'Server Key') };
}
