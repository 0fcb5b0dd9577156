// `gprxy dev`: the embedded default. Starts PostgreSQL from npm, a demo database and role, a local OIDC issuer
// with demo users (SSO mapped to service-account roles), and gprxy on 127.0.0.1:6432 (or the next free port);
// prints how to connect; Ctrl-C stops all three.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfigFile } from '../config/load.ts';
import { type LocalIssuer, startLocalIssuer } from '../dev/oidc.ts';
import { defaultStateDir, prepareDev, writeDevConfig } from '../dev/setup.ts';
import { createLogger } from '../log/logger.ts';
import { startProxy } from '../main.ts';

/** The first port from `from` that is free on 127.0.0.1, else whatever the kernel gives. */
async function pickPort(from: number, tries = 20): Promise<number> {
  for (let p = from; p < from + tries; p++) {
    if (await canListen(p)) return p;
  }
  return 0;
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen({ host: '127.0.0.1', port }, () => s.close(() => resolve(true)));
  });
}

/** The issuer's port from the last run, tried first so logged-in profiles stay valid across restarts. */
function lastIssuerPort(stateDir: string): number {
  const f = join(stateDir, 'oidc.port');
  const p = existsSync(f) ? Number(readFileSync(f, 'utf8').trim()) : 0;
  return Number.isInteger(p) && p > 0 && p < 65536 ? p : 0;
}

export async function devCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      'state-dir': { type: 'string', default: defaultStateDir() },
      port: { type: 'string', default: '6432' },
      'log-level': { type: 'string', default: 'info' },
      /** Tests: complete every SSO login as this demo user with nothing to click. */
      'auto-approve': { type: 'string' },
      /** Access token lifetime of the local issuer, in seconds. */
      'token-ttl': { type: 'string', default: '3600' },
    },
  });
  const stateDir = values['state-dir'];
  process.stderr.write(`gprxy dev: starting PostgreSQL (state in ${stateDir}) ...\n`);
  const state = await prepareDev(stateDir, () => undefined);
  let issuer: LocalIssuer;
  try {
    issuer = await startLocalIssuer({
      port: lastIssuerPort(stateDir),
      keyFile: join(stateDir, 'oidc-signing-key.json'),
      accessTokenTtl: Number(values['token-ttl']),
      ...(values['auto-approve'] ? { autoApprove: values['auto-approve'] } : {}),
      onLog: (line) => process.stderr.write(`gprxy dev: ${line}\n`),
    });
  } catch (e) {
    await state.pg.stop().catch(() => undefined);
    throw e;
  }
  writeFileSync(join(stateDir, 'oidc.port'), `${issuer.port}\n`);
  const port = await pickPort(Number(values.port));
  writeDevConfig(state, port, issuer.issuer);
  const config = loadConfigFile(state.configPath, {});
  const log = createLogger({ level: values['log-level'], pretty: Boolean(process.stdout.isTTY) });
  let proxy: Awaited<ReturnType<typeof startProxy>>;
  try {
    proxy = await startProxy(config, log);
  } catch (e) {
    await issuer.stop();
    await state.pg.stop().catch(() => undefined);
    throw e;
  }
  const { user, password, database } = state.demo;
  const url = `postgresql://${user}:${password}@127.0.0.1:${proxy.port}/${database}`;
  process.stdout.write(
    [
      '',
      `gprxy dev is ready: gprxy on 127.0.0.1:${proxy.port}, PostgreSQL ${state.pg.host}:${state.pg.port} (embedded)`,
      '',
      `  psql "${url}"`,
      '',
      `  connection URL: ${url}`,
      `  config: ${state.configPath}`,
      '',
      `SSO: a local OIDC issuer at ${issuer.issuer} with demo users alice@example.com (group dba -> ${state.sso.dba})`,
      `and bob@example.com (group analyst -> ${state.sso.analyst}, database demo only). Log in as yourself:`,
      '',
      `  gprxy login --device --issuer ${issuer.issuer} --client-id ${issuer.clientId} --audience ${issuer.audience} --port ${proxy.port}`,
      '  gprxy psql -d demo',
      '',
      values['auto-approve']
        ? `  (auto-approve: every login completes as ${values['auto-approve']})`
        : '  (open the printed link, enter the code, pick a demo user)',
      '',
      'Press Ctrl-C to stop.',
      '',
    ].join('\n'),
  );

  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = async () => {
      if (stopping) return;
      stopping = true;
      process.stderr.write('\ngprxy dev: stopping ...\n');
      await proxy.shutdown({ graceful: false });
      await issuer.stop();
      await state.pg.stop().catch(() => undefined);
      resolve(0);
    };
    process.on('SIGINT', () => void stop());
    process.on('SIGTERM', () => void stop());
  });
}
