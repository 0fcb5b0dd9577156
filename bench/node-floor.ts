// How much of gprxy's CPU per transaction is the Node.js runtime itself: pgbench -S at 8 clients directly, through
// a bare Node byte pipe (bench/node-pipe.mjs: no parsing, pooling or auth), through gprxy and through pgbouncer
// (session pooling), with each process's user and system CPU per transaction from /proc. Rewrites the
// <!-- bench-floor:begin/end --> block of docs/BENCHMARKS.md.
//
// Environment: BENCH_SECONDS (default 10), BENCH_ROUNDS (default 3), BENCH_CLIENTS (default 8), BENCH_SCALE
// (default 10), BENCH_NO_DOC=1, BENCH_KEEP=1.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import {
  cleanup,
  envInt,
  fmt,
  installSignalHandlers,
  loadAverage,
  machineInfo,
  makeRoot,
  markdownTable,
  median,
  onCleanup,
  processCpuSplitUs,
  REPO,
  runMain,
  runPgbench,
  startDatabase,
  startGprxy,
  startPgbouncer,
  type Target,
  textTable,
  writeGeneratedBlock,
} from './harness.ts';

interface Sample {
  tps: number;
  user: number;
  sys: number;
}

/** The pipe, started on a free port; resolves with its port and pid. */
async function startPipe(pgPort: number): Promise<{ port: number; pid: number }> {
  const child = spawn(process.execPath, [join(REPO, 'bench', 'node-pipe.mjs'), String(pgPort)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  onCleanup(async () => {
    child.kill();
  });
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
    child.once('exit', (c) => reject(new Error(`node-pipe exited (${c}) before listening`)));
  });
  return { port, pid: child.pid! };
}

async function main(): Promise<number> {
  installSignalHandlers();
  const seconds = envInt('BENCH_SECONDS', 10);
  const rounds = Math.max(1, envInt('BENCH_ROUNDS', 3));
  const clients = envInt('BENCH_CLIENTS', 8);
  const loadBefore = loadAverage();
  const root = makeRoot('gprxy-bench-floor-');
  const env = await startDatabase(root, envInt('BENCH_SCALE', 10));
  const pipe = await startPipe(env.pg.port);
  const gprxy = await startGprxy(env, { poolSize: clients });
  const bouncer = await startPgbouncer(env, { poolSize: clients });
  const targets: { label: string; target: Target }[] = [
    { label: 'direct', target: { name: 'direct', port: env.pg.port } },
    { label: 'Node byte pipe', target: { name: 'direct', port: pipe.port, pid: pipe.pid } },
    { label: 'gprxy', target: gprxy },
    ...(bouncer ? [{ label: 'pgbouncer', target: bouncer }] : []),
  ];
  for (const { target } of targets) await runPgbench(target, env.password, { clients, seconds: 3 });

  const samples = new Map<string, Sample[]>(targets.map((t) => [t.label, []]));
  let failed = 0;
  for (let round = 0; round < rounds; round++) {
    const order = targets.map((_, i) => targets[(i + round) % targets.length]!);
    for (const { label, target } of order) {
      const before = target.pid === undefined ? undefined : processCpuSplitUs(target.pid);
      const r = await runPgbench(target, env.password, { clients, seconds });
      const after = target.pid === undefined ? undefined : processCpuSplitUs(target.pid);
      if (!r.ok) failed++;
      const n = Math.max(1, r.transactions);
      samples.get(label)!.push({
        tps: r.tps,
        user: before && after ? (after.user - before.user) / n : Number.NaN,
        sys: before && after ? (after.sys - before.sys) / n : Number.NaN,
      });
      process.stdout.write(`# round ${round + 1} ${label}: ${fmt(r.tps)} tps\n`);
    }
  }

  const bouncerTps = bouncer ? median(samples.get('pgbouncer')!.map((s) => s.tps)) : Number.NaN;
  const rows = [
    ['target', 'tps', 'user CPU µs/tx', 'system CPU µs/tx', 'total CPU µs/tx', 'tps / pgbouncer'],
    ...targets.map(({ label }) => {
      const s = samples.get(label)!;
      const user = median(s.map((x) => x.user));
      const sys = median(s.map((x) => x.sys));
      const tps = median(s.map((x) => x.tps));
      const cpu = (v: number) => (Number.isNaN(v) ? '—' : fmt(v, 1));
      return [
        label,
        fmt(tps),
        cpu(user),
        cpu(sys),
        cpu(user + sys),
        Number.isNaN(bouncerTps) ? '—' : `${(tps / bouncerTps).toFixed(2)}x`,
      ];
    }),
  ];
  process.stdout.write(`${textTable(rows)}\n`);
  const m = machineInfo();
  await cleanup();
  if (process.env.BENCH_NO_DOC) return failed ? 1 : 0;
  writeGeneratedBlock(
    'bench-floor',
    [
      `### The Node.js floor: a bare byte pipe vs gprxy vs pgbouncer, pgbench -S, ${clients} clients — ${m.date}`,
      '',
      `- Same machine as above (${m.nproc} vCPU ${m.cpu}; gprxy ${m.revision}, Node ${m.node}, ${m.postgres}, ${m.pgbouncer}); pgbench, PostgreSQL and the proxies share the ${m.nproc} cores.`,
      '- `Node byte pipe`: bench/node-pipe.mjs, one PostgreSQL connection per client and nothing else (no parsing, pooling, authentication or TLS), `noDelay` like gprxy: what any Node.js relay pays before doing any work. gprxy and pgbouncer: session pooling, pool size = clients, SCRAM logins.',
      `- One 3s warm-up per target, then ${rounds} round(s) of ${seconds}s per target, order rotated; medians. CPU: the process's user and system time from /proc over the run divided by pgbench's transactions. 1-minute load average before/after: ${loadBefore} / ${loadAverage()}. Failed runs: ${failed}.`,
      '',
      markdownTable(rows),
      '',
      'Reproduce: `node --import tsx bench/node-floor.ts`.',
    ].join('\n'),
  );
  return failed ? 1 : 0;
}

runMain('bench/node-floor.ts', main);
