// Token logins vs SCRAM logins through gprxy, over TLS: `pgbench -C -S` (a new connection and login for every
// transaction) at 8 clients, sslmode=require against a self-signed certificate made for the run, with
//   - SCRAM-SHA-256: the role `bench` (PostgreSQL's default 4096 iterations) and `bench_fast` (1 iteration: the
//     client's PBKDF2 taken out), as bench/login.ts, but over TLS;
//   - an OIDC access token as the password: HBA method `oidc`, a token of the local issuer (src/dev/oidc.ts, the
//     one `gprxy dev` runs) got once through the device flow and reused for every login (`PGPASSWORD=<token>`),
//     the issuer's JWKS fetched by gprxy and cached (fetches counted).
// One gprxy process serves all three (session pooling, pool size 8 per database and login), runs alternate, and the
// ratio token/SCRAM is the median of per-round ratios. Rewrites the <!-- bench-token-login:begin/end --> block of
// docs/BENCHMARKS.md.
//
// Environment: BENCH_SECONDS (default 15), BENCH_ROUNDS (default 2), BENCH_WARMUP (seconds, default 3),
// BENCH_SCALE (default 10), BENCH_CLIENTS (default 8), BENCH_GPRXY_DIR, BENCH_GPRXY_LOG, BENCH_KEEP=1,
// BENCH_NO_DOC=1 (as bench/pgbench.ts).
import {
  BENCH_USER,
  cleanup,
  envInt,
  fmt,
  gprxyMetrics,
  installSignalHandlers,
  loadAverage,
  machineInfo,
  makeRoot,
  markdownTable,
  median,
  type PgbenchResult,
  pairedRatio,
  pgbenchArgs,
  printFailure,
  ratioText,
  runMain,
  runPgbench,
  startDatabase,
  startGprxy,
  textTable,
  writeGeneratedBlock,
} from './harness.ts';
import { IDENTITY, prepareTokenLogins, SSO_ROLE } from './sso.ts';

/** 1-iteration SCRAM verifier: libpq's client-side key derivation then costs next to nothing. */
const FAST_USER = 'bench_fast';

interface Kind {
  key: 'scram' | 'scram-fast' | 'token';
  label: string;
  user: string;
  password: string;
}

async function main(): Promise<number> {
  installSignalHandlers();
  const seconds = envInt('BENCH_SECONDS', 15);
  const rounds = Math.max(1, envInt('BENCH_ROUNDS', 2));
  const warmup = envInt('BENCH_WARMUP', 3);
  const scale = envInt('BENCH_SCALE', 10);
  const clients = Math.max(1, envInt('BENCH_CLIENTS', 8));
  const loadBefore = loadAverage();
  const root = makeRoot('gprxy-bench-token-');
  const env = await startDatabase(root, scale, [{ name: FAST_USER, iterations: 1 }, SSO_ROLE]);
  const sso = await prepareTokenLogins(root, [BENCH_USER, FAST_USER]);
  const { token } = sso;

  const gprxy = await startGprxy(env, {
    poolSize: clients,
    adminHttp: true,
    // TLS only: SCRAM for the application roles, a token (`oidc`) for everyone else.
    ...sso.proxy,
  });

  const kinds: Kind[] = [
    { key: 'scram', label: 'SCRAM-SHA-256, 4096 iterations', user: BENCH_USER, password: env.password },
    { key: 'scram-fast', label: 'SCRAM-SHA-256, 1 iteration', user: FAST_USER, password: env.password },
    { key: 'token', label: 'OIDC access token as the password', user: IDENTITY, password: token },
  ];
  const run = (k: Kind, secs: number) =>
    runPgbench(gprxy, k.password, {
      clients,
      seconds: secs,
      connect: true,
      user: k.user,
      sslmode: 'require',
    });

  let tokenWarmupTx = 0;
  if (warmup > 0) {
    for (const k of kinds) {
      const r = await run(k, warmup);
      if (k.key === 'token' && r.ok) tokenWarmupTx = r.transactions;
      process.stdout.write(`# warm-up ${k.key}: ${r.ok ? `${fmt(r.tps)} logins/s` : 'FAILED'}\n`);
      if (!r.ok) {
        printFailure(r, gprxy, `gprxy ${k.key}`);
        throw new Error(`warm-up of ${k.key} failed`);
      }
    }
  }
  const jwksAfterWarmup = sso.jwksFetches();

  const results = new Map<Kind['key'], PgbenchResult[]>(kinds.map((k) => [k.key, []]));
  for (let round = 0; round < rounds; round++) {
    // Rotated per round, so no kind always runs first (drift, caches).
    const order = kinds.map((_, i) => kinds[(i + round) % kinds.length]!);
    for (const k of order) {
      const r = await run(k, seconds);
      results.get(k.key)!.push(r);
      process.stdout.write(
        `round ${round + 1} ${k.key.padEnd(10)} -C c=${clients} ` +
          (r.ok
            ? `${fmt(r.tps).padStart(6)} logins/s  connection ${r.connMs?.toFixed(3)} ms  ${r.cpuUsPerTx?.toFixed(0)} µs CPU/login`
            : 'FAILED') +
          '\n',
      );
      if (!r.ok) printFailure(r, gprxy, `gprxy ${k.key}`);
    }
  }
  const loadAfter = loadAverage();

  // The logins really took the paths they were meant to: gprxy's own counters by method.
  const metrics = await gprxyMetrics(gprxy);
  const loginsBy = (method: string) => metrics.get(`gprxy_logins_total{method="${method}",result="ok"}`) ?? 0;
  const oidcLogins = loginsBy('oidc-password');
  const scramLogins = loginsBy('scram-sha-256');
  const failedLogins = [...metrics]
    .filter(([k]) => k.startsWith('gprxy_logins_total{') && k.includes('result="failed"'))
    .reduce((s, [, v]) => s + v, 0);
  const tokenTx = tokenWarmupTx + results.get('token')!.reduce((s, r) => s + (r.ok ? r.transactions : 0), 0);

  const cell = (key: Kind['key']) => {
    const good = results.get(key)!.filter((r) => r.ok);
    return {
      tps: median(good.map((r) => r.tps)),
      min: Math.min(...good.map((r) => r.tps)),
      max: Math.max(...good.map((r) => r.tps)),
      conn: median(good.map((r) => r.connMs ?? Number.NaN)),
      cpu: median(good.map((r) => r.cpuUsPerTx ?? Number.NaN)),
      failed: results.get(key)!.length - good.length,
    };
  };
  const tokenVsScram = pairedRatio(results.get('token')!, results.get('scram')!);
  const tokenVsFast = pairedRatio(results.get('token')!, results.get('scram-fast')!);
  const cpuVsScram = pairedRatio(results.get('token')!, results.get('scram')!, (r) => r.cpuUsPerTx);
  const cpuVsFast = pairedRatio(results.get('token')!, results.get('scram-fast')!, (r) => r.cpuUsPerTx);
  const rows: string[][] = [
    [
      'login (role)',
      'logins/s',
      'connect ms',
      'gprxy CPU µs/login',
      'token / this (logins/s)',
      'token / this (CPU µs/login)',
    ],
  ];
  for (const k of kinds) {
    const c = cell(k.key);
    const spread = rounds > 1 && Number.isFinite(c.tps) ? ` (${fmt(c.min)}–${fmt(c.max)})` : '';
    rows.push([
      `${k.label} (${k.user})`,
      Number.isFinite(c.tps)
        ? `${fmt(c.tps)}${spread}${c.failed ? ` [${c.failed} failed run(s)]` : ''}`
        : 'FAILED',
      Number.isFinite(c.conn) ? c.conn.toFixed(2) : '—',
      Number.isFinite(c.cpu) ? fmt(c.cpu) : 'n/a',
      k.key === 'token' ? '—' : ratioText(k.key === 'scram' ? tokenVsScram : tokenVsFast),
      k.key === 'token' ? '—' : ratioText(k.key === 'scram' ? cpuVsScram : cpuVsFast),
    ]);
  }
  const met = Number.isFinite(tokenVsScram) && tokenVsScram >= 1;
  process.stdout.write(
    `\n${textTable(rows)}\n\ntoken / SCRAM (4096) logins/s: ${ratioText(tokenVsScram)} (target >= 1.00x: ${met ? 'met' : 'missed'}); ` +
      `token / SCRAM (1 iteration): ${ratioText(tokenVsFast)}\n` +
      `gprxy logins: ${fmt(oidcLogins)} oidc-password, ${fmt(scramLogins)} scram-sha-256, ${fmt(failedLogins)} failed; ` +
      `JWKS fetches: ${sso.jwksFetches()} (${jwksAfterWarmup} by the end of the warm-up)\n` +
      `load average before: ${loadBefore}, after: ${loadAfter}\n`,
  );

  const failures = [...results.values()].flat().filter((r) => !r.ok);
  if (!process.env.BENCH_NO_DOC) {
    const m = machineInfo();
    const cmd = (k: Kind) =>
      `PGSSLMODE=require PGPASSWORD=${k.key === 'token' ? '<token>' : '<password>'} pgbench ${pgbenchArgs({
        port: 0,
        clients,
        seconds,
        connect: true,
        user: k.user,
      })
        .join(' ')
        .replace('-p 0', '-p <port>')}`;
    writeGeneratedBlock(
      'bench-token-login',
      [
        `### Logins over TLS: OIDC access token vs SCRAM-SHA-256, pgbench -C -S, ${clients} clients — ${m.date}`,
        '',
        `- Same machine as above (${m.nproc} vCPU ${m.cpu}; gprxy ${m.revision}, Node ${m.node}, ${m.postgres}, ${m.pgbench}); pgbench, PostgreSQL and gprxy share the ${m.nproc} cores. gprxy only (pgbouncer has no token logins).`,
        `- One gprxy process, \`listen.tls\` with a self-signed EC P-256 certificate made for the run, HBA \`hostssl\` lines: \`scram-sha-256\` for \`${BENCH_USER}\` and \`${FAST_USER}\`, \`oidc\` for everyone else. Clients: \`PGSSLMODE=require\` (TLS, certificate not verified), every transaction a new connection: TLS handshake, then the login; \`tps\` is logins per second. Session pooling, pool size ${clients} per (database, login); the server connection is reset (DISCARD ALL) and reused.`,
        `- SCRAM: verifiers copied from pg_authid, SCRAM pass-through to the server. \`${BENCH_USER}\` has PostgreSQL's default 4096 iterations (libpq's PBKDF2 runs in pgbench on every login, on the same cores); \`${FAST_USER}\` has 1 iteration and shows gprxy's own cost. Token: one access token of the local OIDC issuer (src/dev/oidc.ts, as in \`gprxy dev\`; RS256, ${token.length} bytes) for \`${IDENTITY}\` (group \`dba\`), got once by the device flow and sent as the password on every login (\`PGPASSWORD=<token>\`, AuthenticationCleartextPassword inside TLS); gprxy verifies its signature and claims on each login and maps it to the login \`${SSO_ROLE.name}\` (service_account), whose server sessions get \`application_name\` and \`gprxy.identity\` set. The issuer's JWKS was fetched ${sso.jwksFetches()} time(s) in the whole run (cached by gprxy; \`jwks_uri\` pointed at a counting copy).`,
        `- ${warmup > 0 ? `One ${warmup}s warm-up per login kind, then ` : ''}${rounds} round(s) of ${seconds}s per login kind, order rotated per round. Figures are medians over rounds (min–max in brackets); ratios are medians of per-round ratios. 1-minute load average before/after: ${loadBefore} / ${loadAfter}. Failed runs: ${failures.length}; gprxy counted ${fmt(oidcLogins)} oidc-password logins, ${fmt(scramLogins)} scram-sha-256 logins and ${fmt(failedLogins)} failed logins; pgbench completed ${fmt(tokenTx)} token transactions, warm-up included (it also opens one set-up connection per run, and the logins in flight when a run ends are not counted as transactions).`,
        '',
        '```sh',
        ...kinds.map(cmd),
        '```',
        '',
        markdownTable(rows),
        '',
        `**Token logins / SCRAM logins (4096 iterations): ${ratioText(tokenVsScram)}** (target: at least 1.00x — ${met ? 'met' : 'missed'}); against the 1-iteration role: ${ratioText(tokenVsFast)}. CPU µs/login: gprxy's user + system time over the run (from /proc) divided by the logins.`,
        '',
        `Reproduce: \`BENCH_SECONDS=${seconds} BENCH_ROUNDS=${rounds} npm run bench:token-login\`.`,
      ].join('\n'),
    );
    process.stdout.write('\n# wrote docs/BENCHMARKS.md (bench-token-login block)\n');
  }
  await cleanup();
  return failures.length ? 1 : 0;
}

runMain('token login benchmark', main);
