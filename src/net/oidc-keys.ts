// Issuer discovery and JWKS for token validation: /.well-known/openid-configuration -> jwks_uri, keys cached and
// refetched on an unknown kid (rate-limited by a cooldown), stale key sets dropped after a maximum age.
import { createRemoteJWKSet, type JWTVerifyGetKey } from 'jose';
import type { SsoProvider } from '../config/schema.ts';

export interface KeyResolvers {
  /** The key resolver for a provider (discovery runs once, then the JWKS is cached). */
  forProvider(p: SsoProvider): Promise<JWTVerifyGetKey>;
}

export function discoveryUrl(issuer: string): string {
  return `${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`;
}

export function createKeyResolvers(
  opts: { cooldownMs?: number; maxAgeMs?: number; timeoutMs?: number } = {},
): KeyResolvers {
  const cache = new Map<string, Promise<JWTVerifyGetKey>>();
  const make = async (p: SsoProvider): Promise<JWTVerifyGetKey> => {
    let jwksUri = p.jwks_uri;
    if (!jwksUri) {
      const res = await fetch(discoveryUrl(p.issuer), {
        signal: AbortSignal.timeout(opts.timeoutMs ?? 5000),
      });
      if (!res.ok) throw new Error(`discovery for ${p.name} answered ${res.status}`);
      const doc = (await res.json()) as { issuer?: string; jwks_uri?: string };
      if (doc.issuer !== p.issuer) throw new Error(`discovery for ${p.name} names another issuer`);
      if (!doc.jwks_uri) throw new Error(`discovery for ${p.name} has no jwks_uri`);
      jwksUri = doc.jwks_uri;
    }
    return createRemoteJWKSet(new URL(jwksUri), {
      cooldownDuration: opts.cooldownMs ?? 30_000,
      cacheMaxAge: opts.maxAgeMs ?? 600_000,
      timeoutDuration: opts.timeoutMs ?? 5000,
    });
  };
  return {
    forProvider(p) {
      const key = `${p.issuer}\u0000${p.jwks_uri ?? ''}`;
      let r = cache.get(key);
      if (!r) {
        r = make(p);
        // A failed discovery is retried at the next login rather than cached.
        r.catch(() => cache.delete(key));
        cache.set(key, r);
      }
      return r;
    },
  };
}
