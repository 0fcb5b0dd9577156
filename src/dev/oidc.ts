// The local OIDC issuer for `gprxy dev` and tests: a real, certified provider (the oidc-provider package) on a
// loopback port, with demo users, one public native client (`gprxy-cli`: PKCE, authorization code, refresh token,
// device code) and JWT access tokens for the audience gprxy carrying email, email_verified and groups.
// An auto-approve switch completes device and browser logins as one user without anyone clicking.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import Provider, {
  type Configuration,
  type JWK,
  type KoaContextWithOIDC,
  type UnknownObject,
} from 'oidc-provider';

export interface DemoUser {
  email: string;
  name: string;
  groups: string[];
}

export const DEMO_USERS: readonly DemoUser[] = [
  { email: 'alice@example.com', name: 'Alice (DBA)', groups: ['dba'] },
  { email: 'bob@example.com', name: 'Bob (analyst)', groups: ['analyst'] },
];

export const CLI_CLIENT_ID = 'gprxy-cli';

export interface LocalIssuerOptions {
  host?: string;
  /** 0 (default) lets the kernel pick; a busy port falls back to 0. */
  port?: number;
  /** The `aud` of access tokens (default `gprxy`). */
  audience?: string;
  /** The resource indicator used when a client asks for none (default `urn:<audience>`). */
  resource?: string;
  /** Complete every device and browser login as this user, with no page to click through (tests). */
  autoApprove?: string;
  users?: readonly DemoUser[];
  /** Access token lifetime in seconds (default 3600). */
  accessTokenTtl?: number;
  /** Keep the signing key in this file (0600) so restarts keep verifying earlier tokens; else a fresh key. */
  keyFile?: string;
  onLog?: (line: string) => void;
}

export interface LocalIssuer {
  /** The issuer URL exactly as in the discovery document (`iss` of every token), without a trailing slash. */
  issuer: string;
  port: number;
  clientId: string;
  audience: string;
  resource: string;
  users: readonly DemoUser[];
  /** Turns auto-approve on (as `email`) or off. */
  setAutoApprove(email: string | undefined): void;
  /** Approves a pending device login (the user code shown to the user) as `email`. */
  approveDevice(userCode: string, email: string): Promise<void>;
  stop(): Promise<void>;
}

const SCOPES = ['openid', 'offline_access', 'email', 'groups'];

function signingKey(keyFile: string | undefined): JWK {
  if (keyFile && existsSync(keyFile)) return JSON.parse(readFileSync(keyFile, 'utf8')) as JWK;
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = {
    ...(privateKey.export({ format: 'jwk' }) as JWK),
    kid: randomBytes(8).toString('hex'),
    alg: 'RS256',
    use: 'sig',
  };
  if (keyFile) writeFileSync(keyFile, JSON.stringify(jwk), { mode: 0o600 });
  return jwk;
}

function listenOn(server: http.Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException) => {
      if (port !== 0 && e.code === 'EADDRINUSE') {
        server.listen({ host, port: 0 });
        return;
      }
      reject(e);
    };
    server.on('error', onError);
    server.once('listening', () => {
      server.off('error', onError);
      resolve();
    });
    server.listen({ host, port });
  });
}

const esc = (s: string) =>
  s.replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] ?? c,
  );

function page(title: string, body: string): string {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${esc(title)}</title>
<style>body{font-family:sans-serif;max-width:28em;margin:3em auto}button{display:block;width:100%;margin:.5em 0;padding:.6em;font-size:1em}code{font-size:1.4em}</style>
</head><body><h1>${esc(title)}</h1>${body}<p><small>gprxy dev: local OIDC issuer (demo users only)</small></p></body></html>`;
}

function readForm(req: http.IncomingMessage): Promise<URLSearchParams> {
  return new Promise((resolve, reject) => {
    let data = '';
    req.setEncoding('utf8');
    req.on('data', (d: string) => {
      data += d;
      if (data.length > 10_000) req.destroy(new Error('form too large'));
    });
    req.on('end', () => resolve(new URLSearchParams(data)));
    req.on('error', reject);
  });
}

export async function startLocalIssuer(opts: LocalIssuerOptions = {}): Promise<LocalIssuer> {
  const host = opts.host ?? '127.0.0.1';
  const audience = opts.audience ?? 'gprxy';
  const resource = opts.resource ?? `urn:${audience}`;
  const users = opts.users ?? DEMO_USERS;
  const ttl = opts.accessTokenTtl ?? 3600;
  const log = opts.onLog ?? (() => undefined);
  const userByEmail = (email: string) => users.find((u) => u.email === email.toLowerCase());
  let autoApprove: string | undefined;
  const setAutoApprove = (email: string | undefined) => {
    if (email && !userByEmail(email)) throw new Error(`auto-approve: ${email} is not a demo user`);
    autoApprove = email;
  };
  setAutoApprove(opts.autoApprove);

  // Listen first: the issuer URL carries the port the kernel chose.
  let handler: http.RequestListener = (_req, res) => {
    res.writeHead(503);
    res.end();
  };
  const server = http.createServer((req, res) => handler(req, res));
  await listenOn(server, host, opts.port ?? 0);
  const port = (server.address() as AddressInfo).port;
  const issuer = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;

  const resourceServer = {
    audience,
    accessTokenFormat: 'jwt' as const,
    accessTokenTTL: ttl,
    scope: 'openid email groups',
    jwt: { sign: { alg: 'RS256' as const } },
  };

  const configuration: Configuration = {
    clients: [
      {
        client_id: CLI_CLIENT_ID,
        client_name: 'gprxy CLI',
        application_type: 'native',
        token_endpoint_auth_method: 'none',
        grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
        response_types: ['code'],
        // RFC 8252 7.3: for a native client a loopback redirect matches on any port.
        redirect_uris: ['http://127.0.0.1/callback'],
      },
    ],
    jwks: { keys: [signingKey(opts.keyFile)] },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    scopes: SCOPES,
    claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'], profile: ['name'] },
    pkce: { required: () => true },
    clientBasedCORS: () => false,
    async findAccount(_ctx, sub) {
      const u = userByEmail(sub);
      if (!u) return undefined;
      return {
        accountId: u.email,
        claims: () => ({
          sub: u.email,
          email: u.email,
          email_verified: true,
          groups: u.groups,
          name: u.name,
        }),
      };
    },
    async extraTokenClaims(_ctx, token) {
      const accountId = (token as { accountId?: string }).accountId;
      const u = accountId ? userByEmail(accountId) : undefined;
      if (!u) return undefined;
      return { email: u.email, email_verified: true, groups: [...u.groups] } satisfies UnknownObject;
    },
    // A first-party CLI: every login gets the grant it asks for, no consent page.
    async loadExistingGrant(ctx) {
      const grantId =
        ctx.oidc.result?.consent?.grantId ?? ctx.oidc.session?.grantIdFor(ctx.oidc.client!.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const accountId = ctx.oidc.session?.accountId;
      if (!accountId) return undefined;
      return fullGrant(ctx.oidc.provider, accountId, ctx.oidc.client!.clientId);
    },
    issueRefreshToken: (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    expiresWithSession: () => false,
    ttl: {
      AccessToken: ttl,
      DeviceCode: 600,
      Interaction: 600,
      Session: 86_400,
      Grant: 14 * 86_400,
      RefreshToken: 14 * 86_400,
      IdToken: 3600,
      AuthorizationCode: 60,
    },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },
      revocation: {
        enabled: true,
        // A public client revokes only its own tokens.
        allowedPolicy: (_ctx, client, token) => token.clientId === client.clientId,
      },
      deviceFlow: {
        enabled: true,
        charset: 'base-20',
        mask: '****-****',
        userCodeInputSource: async (ctx, form, _out, err) => {
          ctx.body = page(
            'Sign in to gprxy',
            `${err ? '<p>That code is not valid. Try again.</p>' : '<p>Enter the code shown in your terminal.</p>'}${form}<button type="submit" form="op.deviceInputForm">Continue</button>`,
          );
        },
        userCodeConfirmSource: async (ctx, form, _client, _info, userCode) => {
          ctx.body = page(
            'Confirm device',
            `<p>Is this the code shown in your terminal?</p><p><code>${esc(userCode)}</code></p>${form}<button type="submit" form="op.deviceConfirmForm">Continue</button>`,
          );
        },
        successSource: async (ctx) => {
          ctx.body = page('Signed in', '<p>You can close this page and go back to your terminal.</p>');
        },
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: (_ctx, _client, oneOf) => (oneOf?.length ? (oneOf[0] ?? resource) : resource),
        useGrantedResource: () => true,
        getResourceServerInfo: () => resourceServer,
      },
    },
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = page(
        'Error',
        `<p>${esc(String(out.error))}: ${esc(String(out.error_description ?? ''))}</p>`,
      );
    },
  };

  const provider = new Provider(issuer, configuration);
  provider.on('server_error', (_ctx: unknown, err: Error) => log(`oidc: server error: ${err.message}`));

  async function fullGrant(p: Provider, accountId: string, clientId: string) {
    const grant = new p.Grant({ accountId, clientId });
    grant.addOIDCScope(SCOPES.join(' '));
    grant.addOIDCClaims(['email', 'email_verified', 'groups', 'name']);
    grant.addResourceScope(resource, resourceServer.scope);
    await grant.save();
    return grant;
  }

  async function approveDevice(userCode: string, email: string): Promise<void> {
    const u = userByEmail(email);
    if (!u) throw new Error(`${email} is not a demo user`);
    const normalized = userCode.toUpperCase().replace(/\W/g, '');
    const code = await provider.DeviceCode.findByUserCode(normalized);
    if (!code) throw new Error('no pending device login with that code');
    const grant = await fullGrant(provider, u.email, code.clientId ?? CLI_CLIENT_ID);
    const params = (code.params ?? {}) as { scope?: string; resource?: string | string[] };
    const asked = (params.scope ?? 'openid').split(' ').filter((s) => SCOPES.includes(s));
    const wanted = Array.isArray(params.resource) ? params.resource[0] : params.resource;
    Object.assign(code, {
      accountId: u.email,
      grantId: grant.jti,
      authTime: Math.floor(Date.now() / 1000),
      scope: [...new Set(['openid', ...asked, ...resourceServer.scope.split(' ')])].join(' '),
      resource: wanted ?? resource,
    });
    await code.save();
    log(`oidc: device login ${normalized} approved as ${u.email}`);
  }

  // The device authorization answer: poll every second (a local issuer), and approve at once when asked to.
  provider.use(async (ctx: KoaContextWithOIDC, next: () => Promise<void>) => {
    await next();
    if (ctx.oidc?.route !== 'device_authorization' || ctx.status !== 200) return;
    const body = ctx.body as { user_code?: string; interval?: number };
    body.interval = 1;
    if (autoApprove && body.user_code) await approveDevice(body.user_code, autoApprove);
  });

  const callback = provider.callback();

  async function interaction(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const details = await provider.interactionDetails(req, res);
    const path = (req.url ?? '').split('?')[0] ?? '';
    if (details.prompt.name === 'login') {
      let email = autoApprove;
      if (!email && req.method === 'POST' && path.endsWith('/login')) {
        email = (await readForm(req)).get('email') ?? undefined;
      }
      const u = email ? userByEmail(email) : undefined;
      if (!u) {
        const buttons = users
          .map(
            (x) =>
              `<button name="email" value="${esc(x.email)}">${esc(x.email)} — groups: ${esc(x.groups.join(', '))}</button>`,
          )
          .join('');
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
        res.end(
          page(
            'Sign in to gprxy',
            `<p>Choose a demo user:</p><form method="post" action="/interaction/${esc(details.uid)}/login">${buttons}</form>`,
          ),
        );
        return;
      }
      await provider.interactionFinished(
        req,
        res,
        { login: { accountId: u.email } },
        {
          mergeWithLastSubmission: false,
        },
      );
      return;
    }
    // consent: a first-party client gets what it asked for.
    const accountId = details.session?.accountId;
    if (!accountId) throw new Error('consent without a login');
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId, clientId: String(details.params.client_id) });
    if (!grant) throw new Error('grant not found');
    const missing = details.prompt.details as {
      missingOIDCScope?: string[];
      missingOIDCClaims?: string[];
      missingResourceScopes?: Record<string, string[]>;
    };
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [ind, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(ind, scopes.join(' '));
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }

  handler = (req, res) => {
    if (req.url?.startsWith('/interaction/')) {
      interaction(req, res).catch((e: Error) => {
        log(`oidc: interaction failed: ${e.message}`);
        if (!res.headersSent) res.writeHead(400, { 'content-type': 'text/html; charset=utf-8' });
        res.end(page('Sign-in failed', `<p>${esc(e.message)}</p>`));
      });
      return;
    }
    void callback(req, res);
  };

  return {
    issuer,
    port,
    clientId: CLI_CLIENT_ID,
    audience,
    resource,
    users,
    setAutoApprove,
    approveDevice,
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
