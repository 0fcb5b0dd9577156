// `gprxy login | logout | status | token`: SSO for people. Login runs the browser flow (authorization code + PKCE,
// loopback redirect) or the device flow, stores tokens in ~/.gprxy/credentials (0600); `token` prints a valid
// access token, refreshing silently, for `PGPASSWORD=$(gprxy token)`.
import { spawn } from 'node:child_process';
import { parseArgs } from 'node:util';
import {
  accessTokenClaims,
  freshCredential,
  isFresh,
  LoginRequired,
  loginBrowser,
  loginDevice,
  revoke,
} from './sso/oidc.ts';
import { type Profile, Store } from './sso/store.ts';

const SSL_MODES = ['disable', 'prefer', 'require', 'verify-ca', 'verify-full'] as const;

function openBrowser(url: string): void {
  const cmd =
    process.platform === 'darwin'
      ? ['open', url]
      : process.platform === 'win32'
        ? ['cmd', '/c', 'start', '', url]
        : process.env.DISPLAY || process.env.WAYLAND_DISPLAY
          ? ['xdg-open', url]
          : undefined;
  if (!cmd) return;
  try {
    const child = spawn(cmd[0]!, cmd.slice(1), { stdio: 'ignore', detached: true });
    child.on('error', () => undefined);
    child.unref();
  } catch {
    // no browser opener: the URL is printed anyway
  }
}

export async function loginCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      device: { type: 'boolean', default: false },
      profile: { type: 'string' },
      issuer: { type: 'string' },
      'client-id': { type: 'string' },
      audience: { type: 'string' },
      scope: { type: 'string' },
      'identity-claim': { type: 'string' },
      host: { type: 'string' },
      port: { type: 'string' },
      sslmode: { type: 'string' },
      sslrootcert: { type: 'string' },
      'no-browser': { type: 'boolean', default: false },
      /** A fixed loopback port for the redirect (issuers that match ports exactly); default: any free port. */
      'callback-port': { type: 'string' },
    },
  });
  const store = Store.fromEnv(process.env);
  const name = store.profileName(values.profile);
  const saved = store.profile(name);
  if (values.sslmode && !(SSL_MODES as readonly string[]).includes(values.sslmode)) {
    throw new Error(`--sslmode must be one of ${SSL_MODES.join(', ')}`);
  }
  const issuer = (values.issuer ?? saved?.issuer)?.replace(/\/+$/, '');
  const clientId = values['client-id'] ?? saved?.client_id;
  if (!issuer || !clientId) {
    process.stderr.write(
      `gprxy login: profile "${name}" needs --issuer and --client-id the first time, e.g.\n` +
        '  gprxy login --issuer https://login.example.com --client-id gprxy-cli --audience gprxy\n',
    );
    return 2;
  }
  const profile: Profile = {
    ...saved,
    issuer,
    client_id: clientId,
    ...(values.audience !== undefined ? { audience: values.audience } : {}),
    ...(values.scope !== undefined ? { scope: values.scope } : {}),
    ...(values['identity-claim'] !== undefined ? { identity_claim: values['identity-claim'] } : {}),
    ...(values.host !== undefined ? { host: values.host } : {}),
    ...(values.port !== undefined ? { port: Number(values.port) } : {}),
    ...(values.sslmode !== undefined ? { sslmode: values.sslmode as Profile['sslmode'] } : {}),
    ...(values.sslrootcert !== undefined ? { sslrootcert: values.sslrootcert } : {}),
  };
  const out = {
    say: (line: string) => process.stderr.write(`${line}\n`),
    openBrowser: values['no-browser'] ? () => undefined : openBrowser,
  };
  const callbackPort = values['callback-port'] !== undefined ? Number(values['callback-port']) : undefined;
  const cred = values.device
    ? await loginDevice(profile, out)
    : await loginBrowser(profile, out, callbackPort !== undefined ? { callbackPort } : {});
  store.saveProfile(name, profile);
  store.saveCredential(name, cred);
  process.stdout.write(
    `Logged in as ${cred.identity ?? '(unknown identity)'} at ${issuer} (profile ${name}; token valid until ${new Date(cred.expires_at * 1000).toISOString()})\n`,
  );
  return 0;
}

export async function logoutCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { profile: { type: 'string' } } });
  const store = Store.fromEnv(process.env);
  const name = store.profileName(values.profile);
  const cred = store.credential(name);
  if (!cred) {
    process.stdout.write(`Not logged in (profile ${name}).\n`);
    return 0;
  }
  const profile = store.profile(name);
  const revoked = profile ? await revoke(profile, cred) : false;
  store.saveCredential(name, undefined);
  process.stdout.write(
    `Logged out ${cred.identity ?? ''} (profile ${name})${revoked ? '; the refresh token is revoked at the issuer' : ''}.\n`,
  );
  return 0;
}

function duration(sec: number): string {
  const s = Math.max(0, Math.round(sec));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}

export async function statusCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { profile: { type: 'string' }, json: { type: 'boolean', default: false } },
  });
  const store = Store.fromEnv(process.env);
  const name = store.profileName(values.profile);
  const profile = store.profile(name);
  const cred = store.credential(name);
  if (!profile || !cred) {
    process.stderr.write(`Not logged in (profile ${name}): run \`gprxy login\`.\n`);
    return 1;
  }
  const claims = accessTokenClaims(cred) ?? {};
  const now = Date.now() / 1000;
  const info = {
    profile: name,
    identity: cred.identity ?? null,
    issuer: cred.issuer,
    client_id: cred.client_id,
    audience: claims.aud ?? profile.audience ?? null,
    groups: claims.groups ?? claims.roles ?? null,
    expires_at: new Date(cred.expires_at * 1000).toISOString(),
    expired: cred.expires_at <= now,
    refreshable: Boolean(cred.refresh_token),
    proxy: `${profile.host ?? '127.0.0.1'}:${profile.port ?? 6432}`,
  };
  if (values.json) {
    process.stdout.write(`${JSON.stringify(info, null, 2)}\n`);
    return 0;
  }
  const when = info.expired
    ? `expired ${duration(now - cred.expires_at)} ago${cred.refresh_token ? ' (a new one is fetched on next use)' : ''}`
    : `valid for ${duration(cred.expires_at - now)}${isFresh(cred) ? '' : ' (refreshed on next use)'}`;
  const lines = [
    `profile:   ${name}`,
    `identity:  ${info.identity ?? '(unknown)'}`,
    `issuer:    ${info.issuer}`,
    `audience:  ${Array.isArray(info.audience) ? info.audience.join(', ') : (info.audience ?? '-')}`,
    ...(Array.isArray(info.groups) ? [`groups:    ${info.groups.join(', ')}`] : []),
    `token:     ${when}, until ${info.expires_at}`,
    `refresh:   ${info.refreshable ? 'yes (kept on this machine only)' : 'no'}`,
    `proxy:     ${info.proxy}`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  return 0;
}

export async function tokenCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { profile: { type: 'string' } } });
  const store = Store.fromEnv(process.env);
  const name = store.profileName(values.profile);
  try {
    const cred = await freshCredential(store, name);
    process.stdout.write(`${cred.access_token}\n`);
    return 0;
  } catch (e) {
    if (e instanceof LoginRequired) {
      process.stderr.write(`gprxy token: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
}
