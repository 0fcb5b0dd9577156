// `npm run bench`: pgbench select-only throughput side by side, in one run on this machine: direct PostgreSQL vs
// gprxy vs pgbouncer, in session pooling (pool as large as the client count) and in transaction pooling (64 clients
// over 10 servers), 8 and 64 clients, simple and extended protocol, plus -M prepared through gprxy in transaction
// mode. Prints tables and rewrites the generated block of docs/BENCHMARKS.md (between <!-- bench:begin/end -->).
//
// Environment: BENCH_SECONDS (per run, default 15), BENCH_ROUNDS (default 1), BENCH_WARMUP (seconds per target,
// default 5), BENCH_SCALE (pgbench -i -s, default 10), BENCH_TX_POOL_SIZE (transaction mode default_pool_size,
// default 10), BENCH_GPRXY_LOG (gprxy log level, default warn), BENCH_KEEP=1 keeps the temp dir (logs, configs),
// BENCH_NO_DOC=1 leaves docs/BENCHMARKS.md alone.
import {
  BENCH_DB,
  BENCH_USER,
  cleanup,
  envInt,
  fmt,
  installSignalHandlers,
  lastLines,
  loadAverage,
  machineInfo,
  makeRoot,
  markdownTable,
  median,
  type PgbenchResult,
  type PoolMode,
  pairedRatio,
  pgbenchArgs,
  printFailure,
  ratioText,
  runMain,
  runPgbench,
  startDatabase,
  startGprxy,
  startPgbouncer,
  type Target,
  textTable,
  writeGeneratedBlock,
} from './harness.ts';

type Protocol = 'simple' | 'extended' | 'prepared';

/** One pgbench workload; every target that supports it runs it, direct PostgreSQL included. */
interface Scenario {
  clients: number;
  mode: Protocol;
}

const SCENARIOS: Scenario[] = [
  { clients: 8, mode: 'simple' },
  { clients: 64, mode: 'simple' },
  { clients: 64, mode: 'extended' },
  { clients: 64, mode: 'prepared' },
];
/** Session pooling: every client gets its own server, so the relay's per-message cost is measured. */
const SESSION_POOL_SIZE = Math.max(...SCENARIOS.map((s) => s.clients));

/** A target's key in the results: `direct`, `gprxy/session`, `pgbouncer/transaction`... */
function keyOf(t: { name: string; poolMode?: PoolMode }): string {
  return t.poolMode ? `${t.name}/${t.poolMode}` : t.name;
}

/**
 * -M prepared runs direct and through gprxy in transaction mode only: pgbouncer 1.18 (Debian 12) has no
 * max_prepared_statements (1.21+), so named statements break in its transaction mode; session-mode -M prepared
 * is left out to keep the run short (it is the extended protocol with fewer Parse messages).
 */
function runs(t: Target, sc: Scenario): boolean {
  if (sc.mode !== 'prepared') return true;
  return t.name === 'direct' || (t.name === 'gprxy' && t.poolMode === 'transaction');
}

async function main(): Promise<number> {
  installSignalHandlers();
  const seconds = envInt('BENCH_SECONDS', 15);
  const rounds = Math.max(1, envInt('BENCH_ROUNDS', 1));
  const warmup = envInt('BENCH_WARMUP', 5);
  const scale = envInt('BENCH_SCALE', 10);
  const txPoolSize = Math.max(1, envInt('BENCH_TX_POOL_SIZE', 10));

  const loadBefore = loadAverage();
  const root = makeRoot('gprxy-bench-');
  const env = await startDatabase(root, scale);
  const gprxy = await startGprxy(env, { poolSize: SESSION_POOL_SIZE });
  const bouncer = await startPgbouncer(env, { poolSize: SESSION_POOL_SIZE });
  const gprxyTx = await startGprxy(env, { poolSize: txPoolSize, poolMode: 'transaction', name: 'gprxy-tx' });
  const bouncerTx = await startPgbouncer(env, {
    poolSize: txPoolSize,
    poolMode: 'transaction',
    name: 'pgbouncer-tx',
  });
  const targets: Target[] = [
    { name: 'direct', port: env.pg.port },
    gprxy,
    ...(bouncer ? [bouncer] : []),
    gprxyTx,
    ...(bouncerTx ? [bouncerTx] : []),
  ];
  process.stdout.write(
    `# targets: ${targets.map((t) => `${keyOf(t)}=127.0.0.1:${t.port}`).join(', ')}; ${seconds}s per run, ${rounds} round(s)\n`,
  );

  if (warmup > 0) {
    // Not recorded: fills the pools (64 servers in session mode, all of them in transaction mode) and lets V8
    // optimise gprxy's hot path.
    for (const t of targets) {
      const r = await runPgbench(t, env.password, { clients: SESSION_POOL_SIZE, seconds: warmup });
      process.stdout.write(`# warm-up ${keyOf(t)}: ${r.ok ? `${fmt(r.tps)} tps` : 'FAILED'}\n`);
      if (!r.ok) printFailure(r, t, keyOf(t));
    }
  }

  const results: PgbenchResult[] = [];
  let turn = 0;
  for (let round = 0; round < rounds; round++) {
    for (const sc of SCENARIOS) {
      // Rotate the order per scenario and round so no target always runs first (drift, thermal, cache).
      const eligible = targets.filter((t) => runs(t, sc));
      const order = eligible.map((_, i) => eligible[(i + turn) % eligible.length]!);
      turn++;
      for (const t of order) {
        const r = await runPgbench(t, env.password, { clients: sc.clients, seconds, mode: sc.mode });
        results.push(r);
        process.stdout.write(
          `${keyOf(t).padEnd(21)} c=${String(sc.clients).padStart(2)} ${sc.mode.padEnd(8)} ` +
            (r.ok
              ? `${fmt(r.tps).padStart(7)} tps  ${r.latencyMs.toFixed(3)} ms` +
                (r.cpuUsPerTx === undefined ? '' : `  ${r.cpuUsPerTx.toFixed(1)} µs/tx`)
              : `FAILED (failed transactions: ${r.failed})`) +
            '\n',
        );
        if (!r.ok) printFailure(r, t, keyOf(t));
      }
    }
  }

  const hasBouncer = bouncer !== undefined;
  const runsOf = (sc: Scenario, key: string) =>
    results
      .filter((r) => keyOf({ name: r.target, ...(r.poolMode ? { poolMode: r.poolMode } : {}) }) === key)
      .filter((r) => r.clients === sc.clients && r.mode === sc.mode);
  const cell = (sc: Scenario, key: string) => {
    const rs = runsOf(sc, key);
    const good = rs.filter((r) => r.ok);
    return {
      ran: rs.length > 0,
      tps: good.length ? median(good.map((r) => r.tps)) : undefined,
      lat: good.length ? median(good.map((r) => r.latencyMs)) : undefined,
      cpu: good.length ? median(good.map((r) => r.cpuUsPerTx ?? Number.NaN)) : undefined,
      min: Math.min(...good.map((r) => r.tps)),
      max: Math.max(...good.map((r) => r.tps)),
      errors: rs.length - good.length,
    };
  };
  /** Median over rounds of the per-round ratio: runs of one round are adjacent in time, so drift cancels. */
  const paired = (sc: Scenario, a: string, b: string, pick: (r: PgbenchResult) => number | undefined) =>
    ratioText(pairedRatio(runsOf(sc, a), runsOf(sc, b), pick));
  const tpsText = (sc: Scenario, key: string) => {
    const c = cell(sc, key);
    if (!c.ran) return '—';
    if (c.tps === undefined) return 'FAILED';
    const spread = rounds > 1 ? ` (${fmt(c.min)}–${fmt(c.max)})` : '';
    return `${fmt(c.tps)}${spread}${c.errors ? ` [${c.errors} failed run(s)]` : ''}`;
  };
  const latText = (sc: Scenario, key: string) => {
    const l = cell(sc, key).lat;
    return l === undefined ? '—' : l.toFixed(3);
  };
  const cpuText = (sc: Scenario, key: string) => {
    const c = cell(sc, key);
    if (!c.ran) return '—';
    return c.cpu === undefined || !Number.isFinite(c.cpu) ? 'n/a' : c.cpu.toFixed(1);
  };

  /** The tps table of one pool mode: direct, gprxy, pgbouncer side by side. */
  const tpsTable = (mode: PoolMode) => {
    const g = `gprxy/${mode}`;
    const b = `pgbouncer/${mode}`;
    const rows: string[][] = [
      [
        'clients / protocol',
        'direct tps',
        'direct latency ms',
        'gprxy tps',
        'gprxy latency ms',
        ...(hasBouncer ? ['pgbouncer tps', 'pgbouncer latency ms', 'gprxy / pgbouncer'] : []),
        'gprxy / direct',
      ],
    ];
    for (const sc of SCENARIOS) {
      if (!targets.some((t) => keyOf(t) === g && runs(t, sc))) continue;
      const bouncerRuns = targets.some((t) => keyOf(t) === b && runs(t, sc));
      rows.push([
        `${sc.clients} / ${sc.mode}`,
        tpsText(sc, 'direct'),
        latText(sc, 'direct'),
        tpsText(sc, g),
        latText(sc, g),
        ...(hasBouncer
          ? [
              bouncerRuns ? tpsText(sc, b) : 'not run (1.18)',
              bouncerRuns ? latText(sc, b) : '—',
              bouncerRuns ? paired(sc, g, b, (r) => r.tps) : '—',
            ]
          : []),
        paired(sc, g, 'direct', (r) => r.tps),
      ]);
    }
    return rows;
  };
  const cpuRows: string[][] = [
    [
      'pool mode',
      'clients / protocol',
      'gprxy CPU µs/tx',
      ...(hasBouncer ? ['pgbouncer CPU µs/tx', 'gprxy / pgbouncer'] : []),
    ],
  ];
  for (const mode of ['session', 'transaction'] as const) {
    const g = `gprxy/${mode}`;
    const b = `pgbouncer/${mode}`;
    for (const sc of SCENARIOS) {
      if (!targets.some((t) => keyOf(t) === g && runs(t, sc))) continue;
      const bouncerRuns = targets.some((t) => keyOf(t) === b && runs(t, sc));
      cpuRows.push([
        mode,
        `${sc.clients} / ${sc.mode}`,
        cpuText(sc, g),
        ...(hasBouncer ? [cpuText(sc, b), bouncerRuns ? paired(sc, g, b, (r) => r.cpuUsPerTx) : '—'] : []),
      ]);
    }
  }
  const sessionRows = tpsTable('session');
  const txRows = tpsTable('transaction');
  const loadAfter = loadAverage();
  process.stdout.write(
    `\nsession pooling\n${textTable(sessionRows)}\n\ntransaction pooling\n${textTable(txRows)}\n\n${textTable(cpuRows)}\n\nload average before: ${loadBefore}, after: ${loadAfter}\n`,
  );

  const failures = results.filter((r) => !r.ok);
  const failedTx = results.reduce((s, r) => s + (Number.isFinite(r.failed) ? r.failed : 0), 0);

  if (!process.env.BENCH_NO_DOC) {
    const m = machineInfo();
    const commands = SCENARIOS.map((sc) =>
      pgbenchArgs({ port: 0, clients: sc.clients, seconds, mode: sc.mode })
        .join(' ')
        .replace('-p 0', '-p <port>'),
    );
    const body = [
      `### pgbench -S (select-only), session and transaction pooling — ${m.date}`,
      '',
      `- Machine: ${m.nproc} vCPU (${m.cpu}), ${m.memory} RAM, Linux ${m.kernel}. **pgbench, PostgreSQL and the proxy share these ${m.nproc} cores**, so a proxy's CPU is taken from PostgreSQL and pgbench: absolute figures are low and the ratios are the point.`,
      `- Software: gprxy ${m.revision}, Node ${m.node}, ${m.postgres}, ${m.pgbench}, ${m.pgbouncer}.`,
      `- Data: \`pgbench -i -s ${scale}\` (direct), PostgreSQL with shared_buffers=512MB, fsync=off, max_connections=300.`,
      `- Proxies: four processes running side by side, gprxy and pgbouncer each in **session pooling** with default_pool_size ${SESSION_POOL_SIZE} (every client gets a server) and in **transaction pooling** with default_pool_size ${txPoolSize} (64 clients share ${txPoolSize} servers: the point of transaction pooling); max_client_conn 1000, SCRAM-SHA-256 client logins against the verifier copied from pg_authid (both log in to PostgreSQL by SCRAM pass-through), loopback TCP, no TLS. gprxy: \`node bin/gprxy.js start\`, log_level ${process.env.BENCH_GPRXY_LOG ?? 'warn'}, one process (one core at most). pgbouncer: one process, run as the \`postgres\` OS user.`,
      `- -M prepared (named prepared statements) runs directly and through gprxy in transaction mode only: pgbouncer keeps prepared statements across transaction-mode servers only from 1.21 on (\`max_prepared_statements\`), and this machine has Debian 12's ${m.pgbouncer}, where named statements fail as soon as a client lands on another server.`,
      `- Procedure: one ${warmup}s warm-up at ${SESSION_POOL_SIZE} clients per target (not recorded), then ${rounds} round(s) of every scenario, ${seconds}s per run, targets alternating (order rotated per scenario; the direct runs are shared by both tables). Figures are ${rounds > 1 ? 'medians over rounds (min–max tps in brackets); ratios are the median of per-round ratios (runs of one round are adjacent in time)' : 'single runs'}; \`tps\` excludes the initial connection time. 1-minute load average before/after: ${loadBefore} / ${loadAfter}. Failed transactions: ${failedTx}${failures.length ? `; failed runs: ${failures.length} (see below)` : ''}.`,
      "- Commands (`PGPASSWORD` set, `PGSSLMODE=disable`; `-p` is the target's port):",
      '',
      '```sh',
      ...commands.map((c) => `pgbench ${c}`),
      '```',
      '',
      '**Session pooling** (pool size = clients):',
      '',
      markdownTable(sessionRows),
      '',
      `**Transaction pooling** (pool size ${txPoolSize}):`,
      '',
      markdownTable(txRows),
      '',
      `Proxy CPU per transaction (user + system time of the proxy process from /proc over the run, divided by pgbench's transactions; far less sensitive to other load on the machine than tps):`,
      '',
      markdownTable(cpuRows),
      ...(failures.length
        ? [
            '',
            '**Failed runs:**',
            '',
            ...failures.map(
              (f) =>
                `- ${keyOf({ name: f.target, ...(f.poolMode ? { poolMode: f.poolMode } : {}) })} c=${f.clients} ${f.mode}: ${f.failed} failed transactions; pgbench said: \`${lastLines(f.output, 3).replaceAll('`', "'").replaceAll('\n', ' / ')}\``,
            ),
          ]
        : []),
      '',
      `Reproduce: \`BENCH_SECONDS=${seconds}${rounds > 1 ? ` BENCH_ROUNDS=${rounds}` : ''} npm run bench\` (needs \`pgbench\` and \`/usr/sbin/pgbouncer\`: \`apt-get install -y postgresql-client pgbouncer\`).`,
    ].join('\n');
    writeGeneratedBlock('bench', body);
    process.stdout.write(`\n# wrote docs/BENCHMARKS.md (${BENCH_USER}@${BENCH_DB})\n`);
  }
  await cleanup();
  return failures.length ? 1 : 0;
}

runMain('benchmark', main);
