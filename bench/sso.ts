// Token logins for the benchmarks (bench/token-login.ts, bench/profile.ts with BENCH_LOGIN=token): the local OIDC
// issuer of `gprxy dev` (src/dev/oidc.ts), one access token got through its device flow, the issuer's JWKS served
// from this process with a fetch counter, a self-signed certificate, and the gprxy options that go with them
// (`listen.tls`, HBA `hostssl` lines: SCRAM for the named roles, `oidc` for everyone else, `sso:` with one mapping).
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { loginDevice } from '../src/cli/sso/oidc.ts';
import { startLocalIssuer } from '../src/dev/oidc.ts';
import { BENCH_DB, makeSelfSignedCert, onCleanup, type ProxyOptions } from './harness.ts';

/** The database login SSO identities map to (service_account): pass it to startDatabase() as an extra role. */
export const SSO_ROLE = { name: 'bench_sso', iterations: 4096 };
/** The local issuer's demo user in group `dba`. */
export const IDENTITY = 'alice@example.com';

export interface TokenSetup {
  /** The access token: the password of every token login. */
  token: string;
  issuer: string;
  /** How many times gprxy has fetched the issuer's keys so far. */
  jwksFetches(): number;
  /** TLS, HBA and `sso:` for startGprxy(). */
  proxy: Required<Pick<ProxyOptions, 'tls' | 'hba' | 'extraConfig'>>;
}

/**
 * The issuer's JWKS served from this process with a request counter: gprxy's provider gets `jwks_uri` pointing here,
 * so the number of key fetches over a run shows that the keys are cached, not fetched per login.
 */
async function countingJwks(issuer: string): Promise<{ url: string; fetches: () => number }> {
  const disco = (await (await fetch(`${issuer}/.well-known/openid-configuration`)).json()) as {
    jwks_uri: string;
  };
  const jwks = await (await fetch(disco.jwks_uri)).text();
  let fetches = 0;
  const server = http.createServer((req, res) => {
    if (req.url !== '/jwks') {
      res.writeHead(404);
      res.end();
      return;
    }
    fetches++;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(jwks);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  onCleanup(
    () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks`, fetches: () => fetches };
}

/** Issuer, token, certificate and gprxy options; `scramUsers` keep SCRAM-SHA-256 (over TLS). */
export async function prepareTokenLogins(root: string, scramUsers: string[]): Promise<TokenSetup> {
  // Tokens outlive any run; alice is logged in without a click.
  const issuer = await startLocalIssuer({ autoApprove: IDENTITY, accessTokenTtl: 6 * 3600 });
  onCleanup(() => issuer.stop());
  const jwks = await countingJwks(issuer.issuer);
  const cred = await loginDevice(
    { issuer: issuer.issuer, client_id: issuer.clientId, audience: issuer.audience },
    { say: () => undefined, openBrowser: () => undefined },
  );
  const token = cred.access_token;
  const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8')) as {
    aud?: unknown;
    groups?: unknown;
  };
  process.stdout.write(
    `# token from ${issuer.issuer} for ${cred.identity}: ${token.length} bytes, aud ${JSON.stringify(claims.aud)}, groups ${JSON.stringify(claims.groups)}\n`,
  );
  return {
    token,
    issuer: issuer.issuer,
    jwksFetches: jwks.fetches,
    proxy: {
      tls: makeSelfSignedCert(root),
      hba: [
        ...(scramUsers.length
          ? [`hostssl ${BENCH_DB} ${scramUsers.join(',')} 127.0.0.1/32 scram-sha-256`]
          : []),
        `hostssl ${BENCH_DB} all 127.0.0.1/32 oidc`,
        '',
      ].join('\n'),
      extraConfig: [
        'sso:',
        '  providers:',
        `    - { name: local, issuer: ${JSON.stringify(issuer.issuer)}, audience: ${issuer.audience}, jwks_uri: ${JSON.stringify(jwks.url)} }`,
        '  mapping:',
        `    - { match: { group: dba }, role: ${SSO_ROLE.name}, databases: [${BENCH_DB}] }`,
      ],
    },
  };
}
