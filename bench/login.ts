// Login rate: `pgbench -C -S` (a new connection, with a SCRAM-SHA-256 login, for every transaction) at 8 clients
// through gprxy and pgbouncer (session pooling: the server connection is reset and reused), with direct PostgreSQL
// (a new backend per login) as the reference. Rewrites the <!-- bench-login:begin/end --> block of
// docs/BENCHMARKS.md.
//
// Environment: BENCH_SECONDS (default 15), BENCH_ROUNDS (default 1), BENCH_SCALE (default 10),
// BENCH_GPRXY_LOG (default warn), BENCH_KEEP=1, BENCH_NO_DOC=1 (as bench/pgbench.ts).
import {
  cleanup,
  fmt,
  installSignalHandlers,
  loadAverage,
  machineInfo,
  makeRoot,
  markdownTable,
  median,
  type PgbenchResult,
  pgbenchArgs,
  printFailure,
  ratio,
  runMain,
  runPgbench,
  startDatabase,
  startGprxy,
  startPgbouncer,
  type Target,
  textTable,
  writeGeneratedBlock,
} from './harness.ts';

const CLIENTS = 8;
/** A second role whose verifier has 1 iteration: libpq's client-side key derivation then costs next to nothing. */
const FAST_USER = 'bench_fast';

async function main(): Promise<number> {
  installSignalHandlers();
  const seconds = Number(process.env.BENCH_SECONDS || 15);
  const rounds = Math.max(1, Number(process.env.BENCH_ROUNDS || 1));
  const scale = Number(process.env.BENCH_SCALE || 10);
  const loadBefore = loadAverage();
  const root = makeRoot('gprxy-bench-login-');
  const env = await startDatabase(root, scale, [{ name: FAST_USER, iterations: 1 }]);
  const gprxy = await startGprxy(env, { poolSize: CLIENTS });
  const bouncer = await startPgbouncer(env, { poolSize: CLIENTS });
  const targets: Target[] = [{ name: 'direct', port: env.pg.port }, gprxy, ...(bouncer ? [bouncer] : [])];

  const users = env.users;
  // Warm-up (not recorded): fills the pools and lets V8 optimise.
  for (const t of targets) {
    for (const u of users) {
      await runPgbench(t, env.password, { clients: CLIENTS, seconds: 3, connect: true, user: u.name });
    }
  }

  const results: PgbenchResult[] = [];
  let turn = 0;
  for (let round = 0; round < rounds; round++) {
    for (const u of users) {
      const order = targets.map((_, i) => targets[(i + turn) % targets.length]!);
      turn++;
      for (const t of order) {
        const r = await runPgbench(t, env.password, {
          clients: CLIENTS,
          seconds,
          connect: true,
          user: u.name,
        });
        results.push(r);
        process.stdout.write(
          `${t.name.padEnd(9)} -C c=${CLIENTS} ${u.name.padEnd(10)} ` +
            (r.ok
              ? `${fmt(r.tps).padStart(6)} logins/s  connection ${r.connMs?.toFixed(3)} ms  latency ${r.latencyMs.toFixed(3)} ms`
              : 'FAILED') +
            '\n',
        );
        if (!r.ok) printFailure(r, t);
      }
    }
  }

  const agg = (name: string, user: string) => {
    const good = results.filter((r) => r.target === name && r.user === user && r.ok);
    return {
      tps: good.length ? median(good.map((r) => r.tps)) : undefined,
      conn: good.length ? median(good.map((r) => r.connMs ?? Number.NaN)) : undefined,
      cpu: good.length ? median(good.map((r) => r.cpuUsPerTx ?? Number.NaN)) : undefined,
    };
  };
  const rows: string[][] = [
    [
      'SCRAM iterations (role)',
      ...targets.flatMap((t) => [`${t.name} logins/s`, `${t.name} connect ms`]),
      ...(bouncer ? ['gprxy / pgbouncer'] : []),
      'gprxy / direct',
      'gprxy CPU µs/login',
      ...(bouncer ? ['pgbouncer CPU µs/login'] : []),
    ],
  ];
  const cpuText = (v: number | undefined) => (v === undefined || !Number.isFinite(v) ? 'n/a' : fmt(v));
  for (const u of users) {
    const a = Object.fromEntries(targets.map((t) => [t.name, agg(t.name, u.name)]));
    rows.push([
      `${u.iterations} (${u.name})`,
      ...targets.flatMap((t) => {
        const x = a[t.name]!;
        return [
          x.tps === undefined ? 'FAILED' : fmt(x.tps),
          x.conn === undefined || !Number.isFinite(x.conn) ? '—' : x.conn.toFixed(2),
        ];
      }),
      ...(bouncer ? [ratio(a['gprxy']?.tps, a['pgbouncer']?.tps)] : []),
      ratio(a['gprxy']?.tps, a['direct']?.tps),
      cpuText(a['gprxy']?.cpu),
      ...(bouncer ? [cpuText(a['pgbouncer']?.cpu)] : []),
    ]);
  }
  process.stdout.write(`\n${textTable(rows)}\n`);

  const failures = results.filter((r) => !r.ok);
  if (!process.env.BENCH_NO_DOC) {
    const m = machineInfo();
    const cmds = users.map((u) =>
      pgbenchArgs({ port: 0, clients: CLIENTS, seconds, connect: true, user: u.name })
        .join(' ')
        .replace('-p 0', '-p <port>'),
    );
    writeGeneratedBlock(
      'bench-login',
      [
        `### Logins: pgbench -C -S, ${CLIENTS} clients — ${m.date}`,
        '',
        `- Same machine and software as above (${m.nproc} vCPU ${m.cpu}, gprxy ${m.revision}, Node ${m.node}, ${m.postgres}, ${m.pgbouncer}); pgbench, PostgreSQL and the proxy share the ${m.nproc} cores.`,
        `- Every transaction opens a new connection with a SCRAM-SHA-256 login; \`tps\` is then logins per second. libpq derives the salted password on the client side on every login, so with PostgreSQL's default 4096 iterations pgbench's own PBKDF2 competes for the same cores; the role \`${FAST_USER}\` has a 1-iteration verifier to take that cost out and show the proxies' own login path. Proxies: session pooling, pool size ${CLIENTS} per (database, user), verifiers copied from pg_authid, SCRAM pass-through to the server; the server connection is reset (DISCARD ALL) and reused. Direct starts a new backend per login.`,
        `- One 3s warm-up per target and role, then ${rounds} round(s) of ${seconds}s per target and role, targets alternating. 1-minute load average before/after: ${loadBefore} / ${loadAverage()}. Failed runs: ${failures.length}.`,
        '',
        '```sh',
        ...cmds.map((c) => `pgbench ${c}`),
        '```',
        '',
        markdownTable(rows),
        '',
        `Figures are ${rounds > 1 ? 'medians over rounds' : 'single runs'}; ratios are of logins/s. CPU µs/login: the proxy process's user + system time over the run (from /proc) divided by the logins, less sensitive to other load on the machine than logins/s.`,
      ].join('\n'),
    );
    process.stdout.write('\n# wrote docs/BENCHMARKS.md (bench-login block)\n');
  }
  await cleanup();
  return failures.length ? 1 : 0;
}

runMain('login benchmark', main);
