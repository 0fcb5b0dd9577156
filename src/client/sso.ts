// SSO login for humans: the OIDC access token arrives as the password (AuthenticationCleartextPassword) or through
// SASL OAUTHBEARER (RFC 7628, as PostgreSQL 18 speaks it); it is verified, mapped to a database login (per_user: the
// person's own provisioned login), and the identity is carried to the server as application_name and gprxy.identity.
import { databaseAllowed, mapIdentity } from '../auth/mapping.ts';
import { type Identity, providerFor, TokenError, verifyToken } from '../auth/oidc/verify.ts';
import type { Config } from '../config/load.ts';
import { encodeAuthCleartext, encodeAuthSasl, encodeAuthSaslContinue } from '../protocol/backend.ts';
import { PgError } from '../protocol/errors.ts';
import { MAX_AUTH_MESSAGE } from '../protocol/framer.ts';
import { decodePassword, decodeSaslInitialResponse, F } from '../protocol/frontend.ts';
import type { AuthChannel } from './auth.ts';
import type { ProxyContext } from './context.ts';

export interface SsoLogin {
  identity: Identity;
  /**
   * The role the person's statements run as: the mapped login (service_account), the mapped role (set_role), or
   * their own provisioned login, a member of the mapped role (per_user).
   */
  role: string;
  /** The role the mapping rules chose. */
  mapped: string;
  method: 'oidc-password' | 'oidc-oauthbearer';
}

export interface SsoRequest {
  user: string;
  database: string;
  exchange: 'password' | 'oauthbearer';
  /** TLS, or loopback with sso.allow_loopback_plain. */
  secureEnough: boolean;
}

async function expectPassword(ch: AuthChannel): Promise<Buffer> {
  const f = await ch.next();
  if (f.type !== F.Password)
    throw PgError.protocolViolation('expected a password message', 'GPRXY_AUTH_PROTOCOL');
  return f.body;
}

/** RFC 7628 client-initial-response: gs2 header, then \x01-separated key=value pairs, ending \x01\x01. */
export function parseOAuthBearer(data: Buffer): { token: string | null } {
  const text = data.toString('utf8');
  const parts = text.split('\x01');
  const gs2 = parts[0] ?? '';
  if (!gs2.startsWith('n,') && !gs2.startsWith('y,')) {
    throw PgError.protocolViolation('malformed OAUTHBEARER message', 'GPRXY_OAUTHBEARER');
  }
  const auth = parts.find((p) => p.startsWith('auth='));
  if (auth === undefined)
    throw PgError.protocolViolation('OAUTHBEARER message without auth', 'GPRXY_OAUTHBEARER');
  const value = auth.slice(5);
  if (value === '') return { token: null };
  const m = /^Bearer\s+([A-Za-z0-9\-._~+/]+=*)$/i.exec(value);
  if (!m) throw PgError.protocolViolation('OAUTHBEARER auth is not a Bearer token', 'GPRXY_OAUTHBEARER');
  return { token: m[1]! };
}

function refused(message: string, code: string): PgError {
  return new PgError('FATAL', '28000', message, { code });
}

export async function ssoLogin(ch: AuthChannel, ctx: ProxyContext, req: SsoRequest): Promise<SsoLogin> {
  const cfg: Config = ctx.config();
  if (!req.secureEnough) {
    throw refused(
      'SSO tokens are accepted only over TLS (connect with sslmode=require)',
      'GPRXY_SSO_NEEDS_TLS',
    );
  }
  if (cfg.sso.providers.length === 0) throw refused('no SSO provider is configured', 'GPRXY_SSO_NO_PROVIDER');
  let token: string;
  if (req.exchange === 'oauthbearer') {
    ch.send(encodeAuthSasl(['OAUTHBEARER']));
    const initial = decodeSaslInitialResponse(await expectPassword(ch));
    if (initial.mechanism !== 'OAUTHBEARER' || initial.data === null) {
      throw PgError.protocolViolation('expected SASL OAUTHBEARER', 'GPRXY_OAUTHBEARER');
    }
    const first = parseOAuthBearer(initial.data);
    if (first.token === null) {
      // Discovery round: tell the client where to get a token (psql 18 then runs its own device flow), wait for
      // its \x01 acknowledgement, and end this attempt.
      const issuer = cfg.sso.providers[0]!.issuer;
      const body = JSON.stringify({
        status: 'invalid_token',
        'openid-configuration': `${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`,
        scope: cfg.sso.scope,
      });
      ch.send(encodeAuthSaslContinue(Buffer.from(body)));
      await expectPassword(ch).catch(() => undefined);
      throw refused(
        'OAuth bearer authentication required: log in with your identity provider',
        'GPRXY_OAUTHBEARER_DISCOVERY',
      );
    }
    token = first.token;
  } else {
    ch.send(encodeAuthCleartext());
    token = decodePassword(await expectPassword(ch));
  }
  if (token.length === 0 || token.length > MAX_AUTH_MESSAGE)
    throw refused('no token was given', 'GPRXY_TOKEN_MISSING');

  let identity: Identity;
  try {
    const provider = providerFor(token, cfg.sso.providers);
    identity = await verifyToken(token, provider, await ctx.keys().forProvider(provider));
  } catch (e) {
    if (e instanceof TokenError) {
      throw new PgError(
        'FATAL',
        '28P01',
        `token authentication failed for user "${req.user}": ${e.message}`,
        {
          code: e.code,
        },
      );
    }
    throw new PgError('FATAL', '28P01', `token authentication failed for user "${req.user}"`, {
      code: 'GPRXY_TOKEN_KEYS_UNAVAILABLE',
    });
  }
  if (req.user !== identity.name && !cfg.sso.aliases.includes(req.user)) {
    throw refused(
      `token identity "${identity.name}" does not match user "${req.user}" (use it, or one of: ${cfg.sso.aliases.join(', ')})`,
      'GPRXY_SSO_USER_MISMATCH',
    );
  }
  const perUser = cfg.sso.backend === 'per_user';
  const mapped = mapIdentity(cfg.sso.mapping, identity);
  if (!mapped) {
    // per_user: a person who no longer maps loses the grants gprxy made and their login is disabled.
    if (perUser) await ctx.perUser.unmapped(identity);
    throw refused(`no SSO mapping rule matches identity "${identity.name}"`, 'GPRXY_SSO_NO_MAPPING');
  }
  if (!databaseAllowed(mapped, req.database)) {
    throw refused(
      `identity "${identity.name}" is not allowed to use database "${req.database}"`,
      'GPRXY_SSO_DATABASE',
    );
  }
  return {
    identity,
    role: perUser ? await ctx.perUser.login(identity, mapped.role, req.database) : mapped.role,
    mapped: mapped.role,
    method: req.exchange === 'oauthbearer' ? 'oidc-oauthbearer' : 'oidc-password',
  };
}
