// OIDC access-token validation (jose) against an injected key resolver: issuer, audience, algorithms allowlist
// (never `none`, never HMAC), time claims with skew; claims -> Identity. No I/O here: keys come from the resolver.
import { decodeJwt, errors, type JWTPayload, type JWTVerifyGetKey, jwtVerify } from 'jose';
import type { SsoProvider } from '../../config/schema.ts';

export interface Identity {
  /** What audit and mapping call the person: the configured identity claim (email, upn, oid, sub...). */
  name: string;
  provider: string;
  issuer: string;
  subject: string;
  email: string | undefined;
  groups: string[];
  roles: string[];
  /** Expiry, ms since epoch. */
  expiresAt: number;
}

/** Why a token was refused: a stable code for logs, and a message safe for the client (never the token). */
export class TokenError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'TokenError';
  }
}

/** Reads a claim by name; names with dots or slashes (Auth0's `https://example.com/groups`) are taken whole. */
function claim(payload: JWTPayload, name: string): unknown {
  return (payload as Record<string, unknown>)[name];
}

function strings(v: unknown): string[] {
  if (Array.isArray(v)) return v.filter((x): x is string => typeof x === 'string');
  if (typeof v === 'string') return [v];
  return [];
}

/** The provider whose issuer the (unverified) token names; the signature check that follows decides. */
export function providerFor(token: string, providers: readonly SsoProvider[]): SsoProvider {
  let iss: unknown;
  try {
    iss = decodeJwt(token).iss;
  } catch {
    throw new TokenError('GPRXY_TOKEN_MALFORMED', 'what was sent is not a valid access token (a JWT)');
  }
  const p = providers.find((x) => x.issuer === iss);
  if (!p) throw new TokenError('GPRXY_TOKEN_ISSUER', 'the token is from an issuer gprxy does not trust');
  return p;
}

export async function verifyToken(
  token: string,
  provider: SsoProvider,
  keys: JWTVerifyGetKey,
  now: Date = new Date(),
): Promise<Identity> {
  let payload: JWTPayload;
  try {
    ({ payload } = await jwtVerify(token, keys, {
      issuer: provider.issuer,
      audience: provider.audience,
      algorithms: provider.algorithms,
      clockTolerance: Math.round(provider.clock_skew / 1000),
      currentDate: now,
      requiredClaims: ['exp'],
    }));
  } catch (e) {
    throw mapJoseError(e);
  }
  if (provider.tenant !== undefined && claim(payload, 'tid') !== provider.tenant) {
    throw new TokenError('GPRXY_TOKEN_TENANT', 'the token is from another tenant');
  }
  const names = claim(payload, '_claim_names') as Record<string, unknown> | undefined;
  if (names && typeof names === 'object' && provider.groups_claim in names) {
    throw new TokenError(
      'GPRXY_TOKEN_GROUP_OVERAGE',
      'the token carries too many groups to list them (group overage): assign app roles to the users and map on roles',
    );
  }
  const name = claim(payload, provider.identity_claim);
  if (typeof name !== 'string' || name === '') {
    throw new TokenError('GPRXY_TOKEN_NO_IDENTITY', `the token has no "${provider.identity_claim}" claim`);
  }
  const email = typeof payload.email === 'string' ? payload.email : undefined;
  if (
    provider.identity_claim === 'email' &&
    provider.require_verified_email &&
    provider.tenant === undefined
  ) {
    if (claim(payload, 'email_verified') !== true) {
      throw new TokenError('GPRXY_TOKEN_EMAIL_UNVERIFIED', 'the token’s email is not verified');
    }
  }
  return {
    name,
    provider: provider.name,
    issuer: provider.issuer,
    subject: typeof payload.sub === 'string' ? payload.sub : '',
    email,
    groups: strings(claim(payload, provider.groups_claim)),
    roles: strings(claim(payload, provider.roles_claim)),
    expiresAt: (payload.exp ?? 0) * 1000,
  };
}

function mapJoseError(e: unknown): TokenError {
  if (e instanceof errors.JWTExpired)
    return new TokenError('GPRXY_TOKEN_EXPIRED', 'the token has expired: log in again');
  if (e instanceof errors.JWTClaimValidationFailed) {
    const c = e.claim;
    if (c === 'nbf' || c === 'iat')
      return new TokenError('GPRXY_TOKEN_NOT_YET_VALID', 'the token is not valid yet');
    if (c === 'aud') return new TokenError('GPRXY_TOKEN_AUDIENCE', 'the token is for another audience');
    if (c === 'iss')
      return new TokenError('GPRXY_TOKEN_ISSUER', 'the token is from an issuer gprxy does not trust');
    return new TokenError('GPRXY_TOKEN_CLAIM', `the token's ${c} claim is not acceptable`);
  }
  if (e instanceof errors.JOSEAlgNotAllowed) {
    return new TokenError('GPRXY_TOKEN_ALG', 'the token is signed with an algorithm gprxy does not accept');
  }
  if (e instanceof errors.JWKSNoMatchingKey)
    return new TokenError('GPRXY_TOKEN_KID', 'the token’s signing key is unknown');
  if (e instanceof errors.JWSSignatureVerificationFailed) {
    return new TokenError('GPRXY_TOKEN_SIGNATURE', 'the token’s signature does not verify');
  }
  if (e instanceof errors.JWKSTimeout || !(e instanceof errors.JOSEError)) {
    return new TokenError('GPRXY_TOKEN_KEYS_UNAVAILABLE', 'the issuer’s keys could not be fetched');
  }
  return new TokenError('GPRXY_TOKEN_INVALID', 'the token is not valid');
}
