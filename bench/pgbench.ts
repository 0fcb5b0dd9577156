// `npm run bench`: pgbench select-only throughput side by side, in one run on this machine: direct PostgreSQL vs
// gprxy vs pgbouncer (session pooling, same pool size, SCRAM logins), 8 and 64 clients, simple and extended protocol.
// Prints a table and rewrites the generated block of docs/BENCHMARKS.md (between <!-- bench:begin/end -->).
//
// Environment: BENCH_SECONDS (per run, default 15), BENCH_ROUNDS (default 1), BENCH_WARMUP (seconds per target,
// default 5), BENCH_SCALE (pgbench -i -s, default 10), BENCH_GPRXY_LOG (gprxy log level, default warn),
// BENCH_KEEP=1 keeps the temp dir (logs, configs), BENCH_NO_DOC=1 leaves docs/BENCHMARKS.md alone.
import {
  BENCH_DB,
  BENCH_USER,
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
  runPgbench,
  startDatabase,
  startGprxy,
  startPgbouncer,
  type Target,
  tail,
  textTable,
  writeGeneratedBlock,
} from './harness.ts';

interface Scenario {
  clients: number;
  mode: 'simple' | 'extended';
}

const SCENARIOS: Scenario[] = [
  { clients: 8, mode: 'simple' },
  { clients: 64, mode: 'simple' },
  { clients: 64, mode: 'extended' },
];
const POOL_SIZE = Math.max(...SCENARIOS.map((s) => s.clients));

function envInt(name: string, dflt: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number`);
  return n;
}

async function main(): Promise<number> {
  installSignalHandlers();
  const seconds = envInt('BENCH_SECONDS', 15);
  const rounds = Math.max(1, envInt('BENCH_ROUNDS', 1));
  const warmup = envInt('BENCH_WARMUP', 5);
  const scale = envInt('BENCH_SCALE', 10);

  const loadBefore = loadAverage();
  const root = makeRoot('gprxy-bench-');
  const env = await startDatabase(root, scale);
  const gprxy = await startGprxy(env, { poolSize: POOL_SIZE });
  const bouncer = await startPgbouncer(env, { poolSize: POOL_SIZE });
  const targets: Target[] = [{ name: 'direct', port: env.pg.port }, gprxy, ...(bouncer ? [bouncer] : [])];
  process.stdout.write(
    `# targets: ${targets.map((t) => `${t.name}=127.0.0.1:${t.port}`).join(', ')}; ${seconds}s per run, ${rounds} round(s)\n`,
  );

  if (warmup > 0) {
    // Not recorded: fills both pools to 64 servers and lets V8 optimise gprxy's hot path.
    for (const t of targets) {
      const r = await runPgbench(t, env.password, { clients: POOL_SIZE, seconds: warmup });
      process.stdout.write(`# warm-up ${t.name}: ${r.ok ? `${fmt(r.tps)} tps` : 'FAILED'}\n`);
      if (!r.ok) reportFailure(r, t);
    }
  }

  const results: PgbenchResult[] = [];
  let turn = 0;
  for (let round = 0; round < rounds; round++) {
    for (const sc of SCENARIOS) {
      // Rotate the order per scenario and round so no target always runs first (drift, thermal, cache).
      const order = targets.map((_, i) => targets[(i + turn) % targets.length]!);
      turn++;
      for (const t of order) {
        const r = await runPgbench(t, env.password, { clients: sc.clients, seconds, mode: sc.mode });
        results.push(r);
        process.stdout.write(
          `${t.name.padEnd(9)} c=${String(sc.clients).padStart(2)} ${sc.mode.padEnd(8)} ` +
            (r.ok
              ? `${fmt(r.tps).padStart(7)} tps  ${r.latencyMs.toFixed(3)} ms`
              : `FAILED (failed transactions: ${r.failed})`) +
            '\n',
        );
        if (!r.ok) reportFailure(r, t);
      }
    }
  }

  const names = targets.map((t) => t.name);
  const hasBouncer = names.includes('pgbouncer');
  const runsOf = (sc: Scenario, name: string) =>
    results.filter((r) => r.target === name && r.clients === sc.clients && r.mode === sc.mode);
  const cell = (sc: Scenario, name: string) => {
    const rs = runsOf(sc, name);
    const good = rs.filter((r) => r.ok);
    return {
      tps: good.length ? median(good.map((r) => r.tps)) : undefined,
      lat: good.length ? median(good.map((r) => r.latencyMs)) : undefined,
      cpu: good.length ? median(good.map((r) => r.cpuUsPerTx ?? Number.NaN)) : undefined,
      min: Math.min(...good.map((r) => r.tps)),
      max: Math.max(...good.map((r) => r.tps)),
      errors: rs.length - good.length,
    };
  };
  /** Median over rounds of the per-round ratio: runs of one round are adjacent in time, so drift cancels. */
  const pairedRatio = (
    sc: Scenario,
    a: string,
    b: string,
    pick: (r: PgbenchResult) => number | undefined,
  ) => {
    const ra = runsOf(sc, a);
    const rb = runsOf(sc, b);
    const ratios: number[] = [];
    for (let i = 0; i < Math.min(ra.length, rb.length); i++) {
      const x = ra[i]!;
      const y = rb[i]!;
      const vx = pick(x);
      const vy = pick(y);
      if (x.ok && y.ok && vx !== undefined && vy !== undefined && vy > 0) ratios.push(vx / vy);
    }
    const m = median(ratios);
    return Number.isFinite(m) ? `${m.toFixed(2)}x` : 'n/a';
  };
  const tpsRows: string[][] = [
    [
      'clients / protocol',
      ...names.flatMap((n) => [`${n} tps`, `${n} latency ms`]),
      ...(hasBouncer ? ['gprxy / pgbouncer'] : []),
      'gprxy / direct',
    ],
  ];
  const cpuRows: string[][] = [
    [
      'clients / protocol',
      'gprxy CPU µs/tx',
      ...(hasBouncer ? ['pgbouncer CPU µs/tx', 'gprxy / pgbouncer'] : []),
    ],
  ];
  for (const sc of SCENARIOS) {
    const cells = Object.fromEntries(names.map((n) => [n, cell(sc, n)]));
    const tpsText = (n: string) => {
      const c = cells[n]!;
      if (c.tps === undefined) return 'FAILED';
      const spread = rounds > 1 ? ` (${fmt(c.min)}–${fmt(c.max)})` : '';
      return `${fmt(c.tps)}${spread}${c.errors ? ` [${c.errors} failed run(s)]` : ''}`;
    };
    const label = `${sc.clients} / ${sc.mode}`;
    tpsRows.push([
      label,
      ...names.flatMap((n) => [tpsText(n), cells[n]!.lat === undefined ? '—' : cells[n]!.lat!.toFixed(3)]),
      ...(hasBouncer ? [pairedRatio(sc, 'gprxy', 'pgbouncer', (r) => r.tps)] : []),
      pairedRatio(sc, 'gprxy', 'direct', (r) => r.tps),
    ]);
    const cpuText = (n: string) => {
      const v = cells[n]?.cpu;
      return v === undefined || !Number.isFinite(v) ? 'n/a' : v.toFixed(1);
    };
    cpuRows.push([
      label,
      cpuText('gprxy'),
      ...(hasBouncer
        ? [cpuText('pgbouncer'), pairedRatio(sc, 'gprxy', 'pgbouncer', (r) => r.cpuUsPerTx)]
        : []),
    ]);
  }
  const loadAfter = loadAverage();
  process.stdout.write(
    `\n${textTable(tpsRows)}\n\n${textTable(cpuRows)}\n\nload average before: ${loadBefore}, after: ${loadAfter}\n`,
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
      `### pgbench -S (select-only), session pooling — ${m.date}`,
      '',
      `- Machine: ${m.nproc} vCPU (${m.cpu}), ${m.memory} RAM, Linux ${m.kernel}. **pgbench, PostgreSQL and the proxy share these ${m.nproc} cores**, so a proxy's CPU is taken from PostgreSQL and pgbench: absolute figures are low and the ratios are the point.`,
      `- Software: gprxy ${m.revision}, Node ${m.node}, ${m.postgres}, ${m.pgbench}, ${m.pgbouncer}.`,
      `- Data: \`pgbench -i -s ${scale}\` (direct), PostgreSQL with shared_buffers=512MB, fsync=off, max_connections=300.`,
      `- Proxies: pool_mode session, default_pool_size ${POOL_SIZE} (every client gets a server), max_client_conn 1000, SCRAM-SHA-256 client logins against the verifier copied from pg_authid (both log in to PostgreSQL by SCRAM pass-through), loopback TCP, no TLS. gprxy: \`node bin/gprxy.js start\`, log_level ${process.env.BENCH_GPRXY_LOG ?? 'warn'}, one process (one core at most). pgbouncer: one process, run as the \`postgres\` OS user.`,
      `- Procedure: one ${warmup}s warm-up at ${POOL_SIZE} clients per target (not recorded), then ${rounds} round(s) of every scenario, ${seconds}s per run, targets alternating (order rotated per scenario). Figures are ${rounds > 1 ? 'medians over rounds (min–max tps in brackets); ratios are the median of per-round ratios (runs of one round are adjacent in time)' : 'single runs'}; \`tps\` excludes the initial connection time. 1-minute load average before/after: ${loadBefore} / ${loadAfter}. Failed transactions: ${failedTx}${failures.length ? `; failed runs: ${failures.length} (see below)` : ''}.`,
      "- Commands (`PGPASSWORD` set, `PGSSLMODE=disable`; `-p` is the target's port):",
      '',
      '```sh',
      ...commands.map((c) => `pgbench ${c}`),
      '```',
      '',
      markdownTable(tpsRows),
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
                `- ${f.target} c=${f.clients} ${f.mode}: ${f.failed} failed transactions; pgbench said: \`${lastLines(f.output, 3).replaceAll('`', "'").replaceAll('\n', ' / ')}\``,
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

function lastLines(text: string, n: number): string {
  return text.trimEnd().split('\n').slice(-n).join('\n');
}

function reportFailure(r: PgbenchResult, t: Target): void {
  process.stdout.write(
    `--- pgbench output (${t.name}, c=${r.clients}, ${r.mode}):\n${lastLines(r.output, 25)}\n`,
  );
  if (t.logFile) process.stdout.write(`--- ${t.name} log (tail):\n${tail(t.logFile)}\n`);
}

main().then(
  (code) => process.exit(code),
  async (e: Error) => {
    process.stderr.write(`benchmark failed: ${e.stack ?? e.message}\n`);
    await cleanup();
    process.exit(1);
  },
);
