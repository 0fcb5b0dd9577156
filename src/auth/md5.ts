// MD5 password authentication (AuthenticationMD5Password): computing the response and verifying it in constant time.
import { md5Hex, safeEqual } from './crypto.ts';
import { isMd5Hash, md5Secret, type Secret } from './verifiers.ts';

/**
 * 'md5' + md5hex(md5hex(password + user) + salt). Accepts the plaintext password or the stored 'md5...' secret
 * (which is that inner hash), so gprxy can answer a server's MD5 challenge knowing only the stored secret. As in
 * PostgreSQL, a plaintext password that looks exactly like an md5 secret is taken as one.
 */
export function md5Response(user: string, passwordOrSecret: string, salt: Buffer): string {
  const stored = isMd5Hash(passwordOrSecret) ? passwordOrSecret : md5Secret(user, passwordOrSecret);
  return 'md5' + md5Hex(Buffer.concat([Buffer.from(stored.slice(3)), salt]));
}

/** Checks a client's PasswordMessage for an MD5 challenge in constant time. SCRAM secrets cannot verify MD5. */
export function verifyMd5(stored: Secret, user: string, salt: Buffer, clientResponse: string): boolean {
  if (stored.kind === 'scram-sha-256') return false;
  const expected = md5Response(user, stored.kind === 'md5' ? stored.hash : stored.password, salt);
  return safeEqual(Buffer.from(expected), Buffer.from(clientResponse));
}
