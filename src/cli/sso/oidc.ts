// The CLI's OIDC client (openid-client): issuer discovery, authorization code + PKCE with a loopback redirect,
// the device flow (RFC 8628), silent refresh. Refresh tokens go to the issuer's token endpoint only, never to gprxy.
import * as oc from 'openid-client';
import { listenForCallback } from '../../net/callback.ts';
import type { Credential, Profile, Store } from './store.ts';

const BASE_SCOPE = 'openid email offline_access';

function isLoopbackHost(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
}

function isAzure(issuer: string): boolean {
  const host = new URL(issuer).hostname;
  return host.endsWith('.microsoftonline.com') || host === 'sts.windows.net';
}

/** Discovery from `<issuer>/.well-known/openid-configuration`; plain http only for a loopback issuer. */
export async function discover(profile: Profile): Promise<oc.Configuration> {
  const url = new URL(profile.issuer);
  const insecure = url.protocol === 'http:';
  if (insecure && !isLoopbackHost(url.hostname)) {
    throw new Error(`issuer ${profile.issuer} is not https (plain http is only accepted on loopback)`);
  }
  return oc.discovery(url, profile.client_id, undefined, oc.None(), {
    ...(insecure ? { execute: [oc.allowInsecureRequests] } : {}),
    timeout: 15,
  });
}

/** Request parameters for the API audience, in the dialect the issuer understands. */
export function requestParams(profile: Profile): Record<string, string> {
  const scopes = new Set(`${BASE_SCOPE} ${profile.scope ?? ''}`.split(/\s+/).filter(Boolean));
  const params: Record<string, string> = {};
  const aud = profile.audience;
  if (aud) {
    if (isAzure(profile.issuer)) {
      // Azure AD v2 has no audience parameter: the API is named by a `<application id URI>/.default` scope.
      const uri = /^[a-z][a-z0-9+.-]*:/i.test(aud) ? aud : `api://${aud}`;
      scopes.add(`${uri.replace(/\/$/, '')}/.default`);
    } else {
      params.audience = aud; // Auth0 and others
      if (/^[a-z][a-z0-9+.-]*:/i.test(aud)) params.resource = aud; // RFC 8707
    }
  }
  params.scope = [...scopes].join(' ');
  return params;
}

function decodeJwtPayload(token: string | undefined): Record<string, unknown> | undefined {
  const part = token?.split('.')[1];
  if (!part) return undefined;
  try {
    return JSON.parse(Buffer.from(part, 'base64url').toString('utf8')) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

/** The token's claims when it is a JWT (read, not verified: gprxy verifies; the CLI only displays). */
export function accessTokenClaims(cred: Credential): Record<string, unknown> | undefined {
  return decodeJwtPayload(cred.access_token);
}

/** The person: the profile's identity claim, else email, preferred_username, upn, sub (access token first). */
export function identityOf(
  profile: Pick<Profile, 'identity_claim'>,
  accessToken: string,
  idToken?: string,
): string | undefined {
  const names = profile.identity_claim
    ? [profile.identity_claim]
    : ['email', 'preferred_username', 'upn', 'sub'];
  for (const claims of [decodeJwtPayload(accessToken), decodeJwtPayload(idToken)]) {
    if (!claims) continue;
    for (const n of names) {
      const v = claims[n];
      if (typeof v === 'string' && v) return v;
    }
  }
  return undefined;
}

function toCredential(profile: Profile, tokens: oc.TokenEndpointResponse, previous?: Credential): Credential {
  const now = Math.floor(Date.now() / 1000);
  const claims = decodeJwtPayload(tokens.access_token);
  const exp =
    typeof tokens.expires_in === 'number'
      ? now + tokens.expires_in
      : typeof claims?.exp === 'number'
        ? claims.exp
        : now + 300;
  const idToken = tokens.id_token ?? previous?.id_token;
  const refresh = tokens.refresh_token ?? previous?.refresh_token;
  const identity = identityOf(profile, tokens.access_token, idToken) ?? previous?.identity;
  return {
    issuer: profile.issuer,
    client_id: profile.client_id,
    access_token: tokens.access_token,
    expires_at: exp,
    obtained_at: now,
    ...(refresh ? { refresh_token: refresh } : {}),
    ...(idToken ? { id_token: idToken } : {}),
    ...(tokens.scope ? { scope: tokens.scope } : {}),
    ...(identity ? { identity } : {}),
  };
}

export interface LoginOutput {
  /** Messages for the person (stderr: stdout stays clean for scripts). */
  say(line: string): void;
  openBrowser(url: string): void;
}

export async function loginDevice(profile: Profile, out: LoginOutput): Promise<Credential> {
  const config = await discover(profile);
  const da = await oc.initiateDeviceAuthorization(config, requestParams(profile));
  out.say(`To sign in, open ${da.verification_uri} and enter the code ${da.user_code}`);
  if (da.verification_uri_complete) out.say(`(or open ${da.verification_uri_complete})`);
  out.say('Waiting for the sign-in to complete ...');
  const tokens = await oc.pollDeviceAuthorizationGrant(config, da);
  return toCredential(profile, tokens);
}

export async function loginBrowser(
  profile: Profile,
  out: LoginOutput,
  opts: { callbackPort?: number; timeoutMs?: number } = {},
): Promise<Credential> {
  const config = await discover(profile);
  const verifier = oc.randomPKCECodeVerifier();
  const challenge = await oc.calculatePKCECodeChallenge(verifier);
  const state = oc.randomState();
  const cb = await listenForCallback(
    '/callback',
    '<!DOCTYPE html><html><body><h1>Signed in</h1><p>You can close this page and go back to your terminal.</p></body></html>',
    opts.timeoutMs ?? 300_000,
    opts.callbackPort ?? 0,
  );
  try {
    const url = oc.buildAuthorizationUrl(config, {
      ...requestParams(profile),
      redirect_uri: cb.redirectUri,
      code_challenge: challenge,
      code_challenge_method: 'S256',
      state,
    });
    out.say(`Opening your browser to sign in. If it does not open, visit:\n\n  ${url.href}\n`);
    out.openBrowser(url.href);
    const back = await cb.result;
    const tokens = await oc.authorizationCodeGrant(config, back, {
      pkceCodeVerifier: verifier,
      expectedState: state,
    });
    return toCredential(profile, tokens);
  } finally {
    cb.close();
  }
}

/** Seconds before expiry at which a token counts as stale: a quarter of its life, at most a minute. */
function margin(cred: Credential): number {
  return Math.min(60, Math.max(0, (cred.expires_at - cred.obtained_at) / 4));
}

export function isFresh(cred: Credential, nowSec = Date.now() / 1000): boolean {
  return cred.expires_at - margin(cred) > nowSec;
}

export class LoginRequired extends Error {}

/**
 * A valid access token for the profile: the stored one while fresh, else one from the refresh token (under the
 * credentials lock, re-reading first in case another process refreshed meanwhile).
 */
export async function freshCredential(store: Store, profileName: string): Promise<Credential> {
  const profile = store.profile(profileName);
  const hint = `run \`gprxy login${profileName === 'default' ? '' : ` --profile ${profileName}`}\``;
  if (!profile) throw new LoginRequired(`no profile "${profileName}" in ${store.configPath}: ${hint}`);
  const cred = store.credential(profileName);
  if (!cred) throw new LoginRequired(`not logged in: ${hint}`);
  if (isFresh(cred)) return cred;
  return store.withLock(async () => {
    const current = store.credential(profileName);
    if (!current) throw new LoginRequired(`not logged in: ${hint}`);
    if (isFresh(current)) return current;
    if (!current.refresh_token) throw new LoginRequired(`the token has expired: ${hint}`);
    const config = await discover(profile);
    let tokens: oc.TokenEndpointResponse;
    try {
      const { scope, resource } = requestParams(profile);
      tokens = await oc.refreshTokenGrant(config, current.refresh_token, {
        ...(resource ? { resource } : {}),
        ...(isAzure(profile.issuer) && scope ? { scope } : {}),
      });
    } catch (e) {
      throw new LoginRequired(`the session has ended (${(e as Error).message}): ${hint}`);
    }
    const next = toCredential(profile, tokens, current);
    store.saveCredential(profileName, next);
    return next;
  });
}

/** Revokes the refresh token at the issuer when it offers revocation (best effort). */
export async function revoke(profile: Profile, cred: Credential): Promise<boolean> {
  if (!cred.refresh_token) return false;
  try {
    const config = await discover(profile);
    if (!config.serverMetadata().revocation_endpoint) return false;
    await oc.tokenRevocation(config, cred.refresh_token, { token_type_hint: 'refresh_token' });
    return true;
  } catch {
    return false;
  }
}
