// Client authentication driver: runs the exchange gprxy offers (SCRAM-SHA-256, MD5, cleartext, trust) over a
// message channel using the pure step machines in auth/, and says what backend credential the login yields.
import { randomBytes } from 'node:crypto';
import { verifyMd5 } from '../auth/md5.ts';
import { ScramServer } from '../auth/scram-server.ts';
import {
  deriveScramSecret,
  mockScramSecret,
  type ScramSecret,
  type Secret,
  verifyPassword,
} from '../auth/verifiers.ts';
import {
  encodeAuthCleartext,
  encodeAuthMd5,
  encodeAuthSasl,
  encodeAuthSaslContinue,
  encodeAuthSaslFinal,
} from '../protocol/backend.ts';
import { PgError } from '../protocol/errors.ts';
import type { Frame } from '../protocol/framer.ts';
import { decodePassword, decodeSaslInitialResponse, F } from '../protocol/frontend.ts';
import type { BackendCredential } from '../server/connection.ts';

export type AuthType = 'scram-sha-256' | 'md5' | 'plain' | 'trust';

export interface AuthChannel {
  send(bytes: Buffer): void;
  /** The client's next message (rejects when the client goes away or sends garbage). */
  next(): Promise<Frame>;
}

export interface AuthOutcome {
  method: string;
  /** What this login teaches gprxy about logging in to the server as this user, if anything. */
  learned?: BackendCredential;
}

/** SCRAM secrets built from plaintext entries, kept stable per process so the salt does not change per login. */
const plainVerifiers = new Map<string, Promise<ScramSecret>>();
const processSalt = randomBytes(16);

function verifierForPlain(user: string, password: string): Promise<ScramSecret> {
  const key = `${user}\u0000${password}`;
  let v = plainVerifiers.get(key);
  if (!v) {
    v = deriveScramSecret(password, processSalt, 4096);
    if (plainVerifiers.size > 10_000) plainVerifiers.clear();
    plainVerifiers.set(key, v);
  }
  return v;
}

export interface AuthRequest {
  type: AuthType;
  user: string;
  secret: Secret | undefined;
  /** Cleartext may be offered: the connection is TLS, or loopback with allow_cleartext_loopback. */
  cleartextAllowed: boolean;
  mockKey: Buffer;
}

function failed(user: string, method: string): PgError {
  return PgError.passwordFailed(user, method);
}

async function expectPassword(ch: AuthChannel): Promise<Buffer> {
  const f = await ch.next();
  if (f.type !== F.Password) {
    throw PgError.protocolViolation(
      `expected password response, got message type ${f.type}`,
      'GPRXY_AUTH_PROTOCOL',
    );
  }
  return f.body;
}

/** Runs the exchange; resolves on success, throws PgError (28P01 for a wrong password or unknown user). */
export async function authenticateClient(ch: AuthChannel, req: AuthRequest): Promise<AuthOutcome> {
  const { user, secret } = req;
  if (req.type === 'trust') return { method: 'trust' };

  if (req.type === 'plain') {
    if (!req.cleartextAllowed) {
      throw PgError.notAllowed('cleartext password authentication requires TLS', 'GPRXY_CLEARTEXT_NEEDS_TLS');
    }
    ch.send(encodeAuthCleartext());
    const password = decodePassword(await expectPassword(ch));
    if (!secret || password.length === 0 || !(await verifyPassword(secret, user, password))) {
      throw failed(user, 'password');
    }
    return { method: 'password', learned: { kind: 'password', password } };
  }

  // md5 requested and an md5 or plaintext secret: the MD5 exchange. Otherwise SCRAM (like PostgreSQL, which runs
  // SCRAM for an "md5" method when the stored secret is SCRAM).
  if (secret && secret.kind !== 'scram-sha-256' && (req.type === 'md5' || secret.kind === 'md5')) {
    const salt = randomBytes(4);
    ch.send(encodeAuthMd5(salt));
    const response = decodePassword(await expectPassword(ch));
    if (!verifyMd5(secret, user, salt, response)) throw failed(user, 'md5');
    return secret.kind === 'plain'
      ? { method: 'md5', learned: { kind: 'password', password: secret.password } }
      : { method: 'md5', learned: { kind: 'md5', hash: secret.hash } };
  }

  const scramSecret: ScramSecret = !secret
    ? mockScramSecret(user, req.mockKey)
    : secret.kind === 'plain'
      ? await verifierForPlain(user, secret.password)
      : (secret as ScramSecret);
  const server = new ScramServer(scramSecret);
  ch.send(encodeAuthSasl(server.mechanisms()));
  const initial = decodeSaslInitialResponse(await expectPassword(ch));
  if (initial.data === null)
    throw PgError.protocolViolation('SASL initial response without data', 'GPRXY_AUTH_PROTOCOL');
  ch.send(encodeAuthSaslContinue(server.clientFirst(initial.mechanism, initial.data)));
  const final = server.clientFinal(await expectPassword(ch));
  if (!final.ok || !secret) throw failed(user, 'scram-sha-256');
  ch.send(encodeAuthSaslFinal(final.serverFinal));
  if (secret.kind === 'plain')
    return { method: 'scram-sha-256', learned: { kind: 'password', password: secret.password } };
  return {
    method: 'scram-sha-256',
    learned: { kind: 'scram-key', clientKey: final.clientKey, serverKey: scramSecret.serverKey },
  };
}
