// Audit throughput: pgbench -S (simple and -M extended) at 8 and 64 clients through two gprxy processes running side
// by side, one with audit off and one with audit on (a JSON-lines file sink, `audit.sinks: [{ type: file }]`), runs
// alternating, ratio on/off per round. After every audited run it waits for the queue to drain and checks that the
// file got one `query` record per pgbench transaction (and reports records dropped by a full queue). Rewrites the
// <!-- bench-audit:begin/end --> block of docs/BENCHMARKS.md.
//
// Environment: BENCH_SECONDS (default 15), BENCH_ROUNDS (default 2), BENCH_WARMUP (seconds, default 5), BENCH_SCALE
// (default 10), BENCH_POOL_MODE (session or transaction; default session), BENCH_TX_POOL_SIZE (transaction mode
// pool size, default 10), BENCH_GPRXY_DIR, BENCH_GPRXY_LOG, BENCH_KEEP=1, BENCH_NO_DOC=1 (as bench/pgbench.ts).
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import {
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
  type PoolMode,
  pairedRatio,
  pgbenchArgs,
  printFailure,
  processCpuUs,
  ratioText,
  runMain,
  runPgbench,
  sleep,
  startDatabase,
  startGprxy,
  type Target,
  textTable,
  writeGeneratedBlock,
} from './harness.ts';

type Protocol = 'simple' | 'extended';
interface Scenario {
  clients: number;
  mode: Protocol;
}
const SCENARIOS: Scenario[] = [
  { clients: 8, mode: 'simple' },
  { clients: 8, mode: 'extended' },
  { clients: 64, mode: 'simple' },
  { clients: 64, mode: 'extended' },
];
const TARGET_RATIO = 0.9;
/** No rotation during the run: every record of a run is in the one file. */
const NO_ROTATION = 1024 ** 4;

/** What the audit file got for one run. */
interface AuditCount {
  /** `query` records of pgbench's transaction statement (`SELECT abalance FROM pgbench_accounts ...`). */
  selects: number;
  /** Other `query` records: pgbench's set-up statements (count(*), vacuum, truncate). */
  otherQueries: number;
  logins: number;
  disconnects: number;
  /** Records not of those kinds, or lines that do not parse. */
  other: number;
  bytes: number;
  /** gprxy_audit_dropped_total over the run. */
  dropped: number;
  /** gprxy_audit_queue_depth when pgbench ended. */
  depthAtEnd: number;
  /** How long the queue took to drain after pgbench ended, ms. */
  drainMs: number;
}

interface Run extends PgbenchResult {
  audit: boolean;
  /** The proxy's CPU per transaction including the audit writes that finished after pgbench ended. */
  cpuUsPerTxDrained?: number;
  count?: AuditCount;
}

function readFrom(path: string, offset: number): string {
  if (!existsSync(path)) return '';
  const size = statSync(path).size;
  if (size <= offset) return '';
  const buf = Buffer.alloc(size - offset);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, buf, 0, buf.length, offset);
  } finally {
    closeSync(fd);
  }
  return buf.toString('utf8');
}

function countRecords(text: string): Omit<AuditCount, 'dropped' | 'depthAtEnd' | 'drainMs'> {
  const c = { selects: 0, otherQueries: 0, logins: 0, disconnects: 0, other: 0, bytes: text.length };
  for (const line of text.split('\n')) {
    if (line === '') continue;
    let r: { event?: string; statement?: string };
    try {
      r = JSON.parse(line) as typeof r;
    } catch {
      c.other++;
      continue;
    }
    if (r.event === 'query') {
      if (r.statement?.includes('FROM pgbench_accounts')) c.selects++;
      else c.otherQueries++;
    } else if (r.event === 'login') c.logins++;
    else if (r.event === 'disconnect') c.disconnects++;
    else c.other++;
  }
  return c;
}

const metric = (m: Map<string, number>, name: string) => m.get(name) ?? 0;

/** Waits until the audit queue is empty and the file stopped growing (at most 60 s). */
async function drain(t: Target, path: string): Promise<number> {
  const start = Date.now();
  let last = -1;
  for (;;) {
    const depth = metric(await gprxyMetrics(t), 'gprxy_audit_queue_depth');
    const size = existsSync(path) ? statSync(path).size : 0;
    if (depth === 0 && size === last) return Date.now() - start;
    if (Date.now() - start > 60_000) throw new Error(`audit queue did not drain (depth ${depth})`);
    last = size;
    await sleep(200);
  }
}

async function main(): Promise<number> {
  installSignalHandlers();
  const seconds = envInt('BENCH_SECONDS', 15);
  const rounds = Math.max(1, envInt('BENCH_ROUNDS', 2));
  const warmup = envInt('BENCH_WARMUP', 5);
  const scale = envInt('BENCH_SCALE', 10);
  const poolMode: PoolMode = process.env.BENCH_POOL_MODE === 'transaction' ? 'transaction' : 'session';
  const maxClients = Math.max(...SCENARIOS.map((s) => s.clients));
  const poolSize = poolMode === 'transaction' ? Math.max(1, envInt('BENCH_TX_POOL_SIZE', 10)) : maxClients;

  const loadBefore = loadAverage();
  const root = makeRoot('gprxy-bench-audit-');
  const env = await startDatabase(root, scale);
  const auditFile = join(root, 'audit.jsonl');
  const off = await startGprxy(env, { poolSize, poolMode, name: 'gprxy-audit-off', adminHttp: true });
  const on = await startGprxy(env, {
    poolSize,
    poolMode,
    name: 'gprxy-audit-on',
    adminHttp: true,
    extraConfig: [
      'audit:',
      '  sinks:',
      `    - { type: file, path: ${JSON.stringify(auditFile)}, max_size: ${NO_ROTATION} }`,
    ],
  });
  const targets = [
    { t: off, audit: false, label: 'audit off' },
    { t: on, audit: true, label: 'audit on' },
  ];
  process.stdout.write(
    `# gprxy ${poolMode} pooling, pool size ${poolSize}: audit off on ${off.port}, audit on on ${on.port} (file ${auditFile}); ${seconds}s per run, ${rounds} round(s)\n`,
  );

  if (warmup > 0) {
    for (const x of targets) {
      const r = await runPgbench(x.t, env.password, { clients: maxClients, seconds: warmup });
      process.stdout.write(`# warm-up ${x.label}: ${r.ok ? `${fmt(r.tps)} tps` : 'FAILED'}\n`);
      if (!r.ok) printFailure(r, x.t, `gprxy ${x.label}`);
      if (x.audit) await drain(x.t, auditFile);
    }
  }

  const results: Run[] = [];
  for (let round = 0; round < rounds; round++) {
    for (const [i, sc] of SCENARIOS.entries()) {
      // Which process runs first alternates per scenario and per round.
      const order = (round + i) % 2 === 0 ? targets : [...targets].reverse();
      for (const x of order) {
        const offset = existsSync(auditFile) ? statSync(auditFile).size : 0;
        const before = await gprxyMetrics(x.t);
        const cpuBefore = processCpuUs(x.t.pid!);
        const r = await runPgbench(x.t, env.password, { clients: sc.clients, seconds, mode: sc.mode });
        const end = await gprxyMetrics(x.t);
        const drainMs = x.audit ? await drain(x.t, auditFile) : 0;
        const cpuAfter = processCpuUs(x.t.pid!);
        const after = x.audit ? await gprxyMetrics(x.t) : end;
        const run: Run = {
          ...r,
          audit: x.audit,
          ...(cpuBefore !== undefined && cpuAfter !== undefined && r.transactions > 0
            ? { cpuUsPerTxDrained: (cpuAfter - cpuBefore) / r.transactions }
            : {}),
        };
        if (x.audit) {
          run.count = {
            ...countRecords(readFrom(auditFile, offset)),
            dropped: metric(after, 'gprxy_audit_dropped_total') - metric(before, 'gprxy_audit_dropped_total'),
            depthAtEnd: metric(end, 'gprxy_audit_queue_depth'),
            drainMs,
          };
        }
        results.push(run);
        const c = run.count;
        process.stdout.write(
          `${x.label.padEnd(9)} c=${String(sc.clients).padStart(2)} ${sc.mode.padEnd(8)} ` +
            (r.ok
              ? `${fmt(r.tps).padStart(6)} tps  ${r.latencyMs.toFixed(3)} ms  ${run.cpuUsPerTxDrained?.toFixed(1)} µs/tx`
              : `FAILED (failed transactions: ${r.failed})`) +
            (c
              ? `  | ${fmt(r.transactions)} tx, ${fmt(c.selects)} select records (${c.selects - r.transactions >= 0 ? '+' : ''}${c.selects - r.transactions}), ${c.otherQueries} other queries, ${c.logins} logins, ${c.disconnects} disconnects, dropped ${c.dropped}, queue ${c.depthAtEnd} at end, drained in ${c.drainMs} ms`
              : '') +
            '\n',
        );
        if (!r.ok) printFailure(r, x.t, `gprxy ${x.label}`);
      }
    }
  }
  const loadAfter = loadAverage();

  const runsOf = (sc: Scenario, audit: boolean) =>
    results.filter((r) => r.clients === sc.clients && r.mode === sc.mode && r.audit === audit);
  const med = (rs: Run[], pick: (r: Run) => number | undefined) =>
    median(rs.filter((r) => r.ok).map((r) => pick(r) ?? Number.NaN));
  const tpsText = (rs: Run[]) => {
    const good = rs.filter((r) => r.ok);
    if (good.length === 0) return 'FAILED';
    const spread =
      good.length > 1
        ? ` (${fmt(Math.min(...good.map((r) => r.tps)))}–${fmt(Math.max(...good.map((r) => r.tps)))})`
        : '';
    return `${fmt(med(rs, (r) => r.tps))}${spread}${good.length < rs.length ? ` [${rs.length - good.length} failed]` : ''}`;
  };
  const num = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : 'n/a');
  const rows: string[][] = [
    [
      'clients / protocol',
      'audit off tps',
      'audit on tps',
      'on / off (tps)',
      'off CPU µs/tx',
      'on CPU µs/tx',
      'on / off (CPU)',
      'pgbench transactions (audit on)',
      'audit query records of them',
      'dropped',
    ],
  ];
  const verdicts: { sc: Scenario; ratio: number }[] = [];
  for (const sc of SCENARIOS) {
    const a = runsOf(sc, true);
    const b = runsOf(sc, false);
    const ratio = pairedRatio(a, b);
    verdicts.push({ sc, ratio });
    const tx = a.reduce((s, r) => s + (r.ok ? r.transactions : 0), 0);
    const recs = a.reduce((s, r) => s + (r.ok ? (r.count?.selects ?? 0) : 0), 0);
    const dropped = a.reduce((s, r) => s + (r.count?.dropped ?? 0), 0);
    rows.push([
      `${sc.clients} / ${sc.mode}`,
      tpsText(b),
      tpsText(a),
      ratioText(ratio),
      num(med(b, (r) => r.cpuUsPerTxDrained)),
      num(med(a, (r) => r.cpuUsPerTxDrained)),
      ratioText(pairedRatio(a, b, (r) => (r as Run).cpuUsPerTxDrained)),
      fmt(tx),
      `${fmt(recs)} (${recs - tx >= 0 ? '+' : ''}${fmt(recs - tx)})`,
      fmt(dropped),
    ]);
  }
  const audited = results.filter((r) => r.audit && r.ok && r.count);
  const totalRecords = audited.reduce(
    (s, r) =>
      s + r.count!.selects + r.count!.otherQueries + r.count!.logins + r.count!.disconnects + r.count!.other,
    0,
  );
  const totalBytes = audited.reduce((s, r) => s + r.count!.bytes, 0);
  const otherQueries = audited.reduce((s, r) => s + r.count!.otherQueries, 0);
  const maxDepth = Math.max(0, ...audited.map((r) => r.count!.depthAtEnd));
  const maxDrain = Math.max(0, ...audited.map((r) => r.count!.drainMs));
  const exactRuns = audited.filter((r) => r.count!.selects === r.transactions).length;
  const diffs = audited.map((r) => r.count!.selects - r.transactions);
  const allMet = verdicts.every((v) => Number.isFinite(v.ratio) && v.ratio >= TARGET_RATIO);
  const missed = verdicts.filter((v) => !(v.ratio >= TARGET_RATIO));
  const verdict = allMet
    ? `met in every scenario`
    : `missed in ${missed.map((v) => `${v.sc.clients} / ${v.sc.mode} (${Number.isFinite(v.ratio) ? v.ratio.toFixed(3) : 'n/a'})`).join(', ')}`;
  const check = `${exactRuns} of ${audited.length} audited runs had exactly one \`query\` record per pgbench transaction${exactRuns < audited.length ? ` (differences per run, records − transactions: ${diffs.join(', ')})` : ''}; ${fmt(otherQueries)} further \`query\` records are pgbench's set-up statements (\`select count(*) from pgbench_branches\`, \`vacuum\`, \`truncate\`), plus one \`login\` and one \`disconnect\` record per connection. ${fmt(totalRecords)} records, ${fmt(totalBytes / 1024 / 1024, 1)} MiB in all (${fmt(totalBytes / Math.max(1, totalRecords))} bytes per record); largest queue depth when pgbench ended: ${fmt(maxDepth)} (queue_size 10,000); polled every 200 ms after pgbench ended, the queue was empty and the file complete within ${fmt(maxDrain)} ms.`;
  process.stdout.write(
    `\n${textTable(rows)}\n\ntarget on/off >= ${TARGET_RATIO}: ${verdict}\n${check.replaceAll('`', '')}\nload average before: ${loadBefore}, after: ${loadAfter}\n`,
  );

  const failures = results.filter((r) => !r.ok);
  if (!process.env.BENCH_NO_DOC) {
    const m = machineInfo();
    const cmds = SCENARIOS.map(
      (sc) =>
        `pgbench ${pgbenchArgs({ port: 0, clients: sc.clients, seconds, mode: sc.mode })
          .join(' ')
          .replace('-p 0', '-p <port>')}`,
    );
    writeGeneratedBlock(
      'bench-audit',
      [
        `### Audit on vs off: pgbench -S through gprxy, ${poolMode} pooling — ${m.date}`,
        '',
        `- Same machine as above (${m.nproc} vCPU ${m.cpu}; gprxy ${m.revision}, Node ${m.node}, ${m.postgres}, ${m.pgbench}); pgbench, PostgreSQL and gprxy share the ${m.nproc} cores, and the audit file is on the same disk.`,
        `- Two gprxy processes side by side, identical but for \`audit\`: off (no sinks), and on with one JSON-lines file sink (\`audit.sinks: [{ type: file, path: audit.jsonl, max_size: ${NO_ROTATION} }]\`, no rotation during the run; queue_size 10,000 and on_overflow drop, the defaults). ${poolMode === 'session' ? `Session pooling, pool size ${poolSize}` : `Transaction pooling, pool size ${poolSize}`}; SCRAM-SHA-256 logins (pass-through), loopback TCP, no TLS, log_level ${process.env.BENCH_GPRXY_LOG ?? 'warn'}.`,
        `- ${warmup > 0 ? `One ${warmup}s warm-up at ${maxClients} clients per process, then ` : ''}${rounds} round(s) of every scenario, ${seconds}s per run, the two processes alternating (order swapped per scenario). Figures are medians over rounds (min–max tps in brackets); ratios are medians of per-round ratios. CPU µs/tx: gprxy's user + system time from before the run until the audit file was complete, divided by pgbench's transactions. 1-minute load average before/after: ${loadBefore} / ${loadAfter}. Failed runs: ${failures.length}.`,
        '',
        '```sh',
        ...cmds,
        '```',
        '',
        markdownTable(rows),
        '',
        `**Audit on / off: ${verdict}** (target: at least ${TARGET_RATIO.toFixed(1)}x tps).`,
        '',
        `Records: ${check}`,
        '',
        `Reproduce: \`BENCH_SECONDS=${seconds} BENCH_ROUNDS=${rounds}${poolMode === 'transaction' ? ' BENCH_POOL_MODE=transaction' : ''} npm run bench:audit\`.`,
      ].join('\n'),
    );
    process.stdout.write('\n# wrote docs/BENCHMARKS.md (bench-audit block)\n');
  }
  await cleanup();
  return failures.length ? 1 : 0;
}

runMain('audit benchmark', main);
