// 10,000 idle clients: opens BENCH_IDLE_CLIENTS (default 10,000) authenticated client connections (SCRAM-SHA-256,
// transaction pooling, pool size 10) to gprxy and then to pgbouncer, one proxy at a time, and reports each proxy's
// resident memory (VmRSS from /proc/<pid>/status) before and with the idle clients, plus checks that active clients
// are still served while they are open: a short `pgbench -S` through the proxy (compared with a run without idle
// clients) and a query on a sample of the idle connections. Rewrites the <!-- bench-idle:begin/end --> block of
// docs/BENCHMARKS.md.
//
// The client side is this process: raw wire protocol over plain net.Sockets (a few KB each), SCRAM through
// src/auth/scram-client.ts (the salted password is derived once and cached). The file-descriptor limit is raised
// by re-running this script under `ulimit -n` (needs root or a high hard limit); the proxies inherit it.
//
// Environment: BENCH_IDLE_CLIENTS (default 10000), BENCH_SECONDS (active pgbench run, default 10),
// BENCH_IDLE_CONCURRENCY (logins in flight, default 200), BENCH_IDLE_SETTLE (seconds to wait before reading RSS,
// default 5), BENCH_SCALE (default 10), BENCH_GPRXY_LOG, BENCH_KEEP=1, BENCH_NO_DOC=1 (as bench/pgbench.ts),
// BENCH_IDLE_HEAPSNAPSHOT=<dir>: gprxy runs with --heapsnapshot-signal=SIGUSR2 and writes a heap snapshot into <dir>
// once the idle clients are open (after the RSS reading; open it in Chrome DevTools' Memory tab).
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import net from 'node:net';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ScramClient } from '../src/auth/scram-client.ts';
import { AuthCode, B, decodeAuthentication, decodeErrorFields } from '../src/protocol/backend.ts';
import { MessageFramer } from '../src/protocol/framer.ts';
import {
  encodeQuery,
  encodeSaslInitialResponse,
  encodeSaslResponse,
  encodeStartupMessage,
  TERMINATE,
} from '../src/protocol/frontend.ts';
import {
  BENCH_DB,
  BENCH_USER,
  cleanup,
  envInt,
  fmt,
  installSignalHandlers,
  loadAverage,
  machineInfo,
  makeRoot,
  markdownTable,
  type PgbenchResult,
  processCpuUs,
  runMain,
  runPgbench,
  sleep,
  startDatabase,
  startGprxy,
  startPgbouncer,
  type Target,
  tail,
  textTable,
  writeGeneratedBlock,
} from './harness.ts';

const POOL_SIZE = 10;
const ACTIVE_CLIENTS = 8;
const SAMPLE_QUERIES = 100;

/** The soft limit on open files of this process (from /proc/self/limits). */
function openFilesLimit(): number {
  const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  if (!m) return 1024;
  return m[1] === 'unlimited' ? Number.MAX_SAFE_INTEGER : Number(m[1]);
}

/**
 * Node cannot raise its own RLIMIT_NOFILE: re-run this script under `ulimit -n` when the limit is too low for the
 * idle clients (this process holds one socket per client, the proxy one more). Returns the child's exit code, or
 * undefined when the limit is already high enough.
 */
function ensureFileLimit(needed: number): number | undefined {
  if (openFilesLimit() >= needed) return undefined;
  if (process.env.BENCH_IDLE_REEXEC) {
    throw new Error(`open-files limit still ${openFilesLimit()} after ulimit -n ${needed}`);
  }
  process.stdout.write(`# raising the open-files limit to ${needed} (ulimit -n) and running again\n`);
  const r = spawnSync(
    'sh',
    [
      '-c',
      `ulimit -n ${needed} && exec "$@"`,
      'sh',
      process.execPath,
      ...process.execArgv,
      fileURLToPath(import.meta.url),
    ],
    { stdio: 'inherit', env: { ...process.env, BENCH_IDLE_REEXEC: '1' } },
  );
  if (r.status === null) return 1;
  return r.status;
}

/** VmRSS and VmHWM (peak) of a process, in KiB. */
function memoryKiB(pid: number): { rss: number; hwm: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rss: kib('VmRSS'), hwm: kib('VmHWM') };
}

const mib = (kib: number) => kib / 1024;

/** One authenticated idle client: the raw protocol up to the first ReadyForQuery, then nothing. */
function openClient(port: number, password: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.setNoDelay(true);
    const framer = new MessageFramer(64 * 1024);
    let scram: ScramClient | undefined;
    let settled = false;
    const fail = (e: Error) => {
      if (settled) return;
      settled = true;
      s.destroy();
      reject(e);
    };
    s.on('error', fail);
    s.on('close', () => fail(new Error('closed during login')));
    s.once('connect', () =>
      s.write(
        encodeStartupMessage([
          ['user', BENCH_USER],
          ['database', BENCH_DB],
        ]),
      ),
    );
    const onData = async (chunk: Buffer) => {
      try {
        framer.push(chunk);
        for (let f = framer.next(); f !== null; f = framer.next()) {
          if (f.type === B.Authentication) {
            const req = decodeAuthentication(f.body);
            if (req.code === AuthCode.SASL) {
              scram = new ScramClient({ password });
              s.write(encodeSaslInitialResponse('SCRAM-SHA-256', scram.clientFirst()));
            } else if (req.code === AuthCode.SASLContinue && 'data' in req && scram) {
              // The server waits for this answer: no further bytes arrive while it is computed.
              s.write(encodeSaslResponse(await scram.serverFirst(req.data)));
            } else if (req.code === AuthCode.SASLFinal && 'data' in req && scram) {
              scram.serverFinal(req.data);
            } else if (req.code !== AuthCode.Ok) {
              throw new Error(`unexpected authentication request ${req.code}`);
            }
          } else if (f.type === B.ErrorResponse) {
            throw new Error(decodeErrorFields(f.body).get('M') ?? 'login failed');
          } else if (f.type === B.ReadyForQuery) {
            settled = true;
            s.removeAllListeners('data');
            s.removeAllListeners('close');
            s.removeAllListeners('error');
            s.on('error', () => undefined);
            resolve(s);
            return;
          }
        }
      } catch (e) {
        fail(e as Error);
      }
    };
    s.on('data', (chunk: Buffer) => void onData(chunk));
  });
}

/** Opens `n` idle clients with at most `concurrency` logins in flight. */
async function openClients(
  port: number,
  password: string,
  n: number,
  concurrency: number,
): Promise<net.Socket[]> {
  const sockets: net.Socket[] = [];
  let next = 0;
  let lastReport = Date.now();
  const worker = async () => {
    while (next < n) {
      next++;
      sockets.push(await openClient(port, password));
      if (Date.now() - lastReport > 5000) {
        lastReport = Date.now();
        process.stdout.write(`#   ${sockets.length} clients open\n`);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  return sockets;
}

/** `SELECT 1` on a socket that is idle at ReadyForQuery; resolves with whether a row and ReadyForQuery came back. */
function queryOn(s: net.Socket): Promise<boolean> {
  return new Promise((resolve) => {
    const framer = new MessageFramer(64 * 1024);
    let row = false;
    const done = (ok: boolean) => {
      clearTimeout(timer);
      s.removeListener('data', onData);
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), 30_000);
    const onData = (chunk: Buffer) => {
      try {
        framer.push(chunk);
        for (let f = framer.next(); f !== null; f = framer.next()) {
          if (f.type === B.DataRow) row = true;
          else if (f.type === B.ErrorResponse) return done(false);
          else if (f.type === B.ReadyForQuery) return done(row);
        }
      } catch {
        done(false);
      }
    };
    s.on('data', onData);
    s.write(encodeQuery('SELECT 1'));
  });
}

interface TargetFigures {
  target: Target;
  before: { rss: number; hwm: number };
  idle: { rss: number; hwm: number };
  afterActive: { rss: number; hwm: number };
  openSeconds: number;
  loginCpuUs: number;
  idleCpuUsPerSec: number;
  closedWhileIdle: number;
  sampleOk: number;
  sampleTotal: number;
  baseline: PgbenchResult;
  loaded: PgbenchResult;
}

/** SIGUSR2 to a process started with --heapsnapshot-signal; resolves when the new snapshot file stops growing. */
async function heapSnapshot(pid: number, dir: string): Promise<string | undefined> {
  const before = new Set(readdirSync(dir));
  process.kill(pid, 'SIGUSR2');
  let last = -1;
  for (let i = 0; i < 600; i++) {
    await sleep(1000);
    const file = readdirSync(dir).find((f) => f.endsWith('.heapsnapshot') && !before.has(f));
    if (!file) continue;
    const size = statSync(join(dir, file)).size;
    if (size > 0 && size === last) return join(dir, file);
    last = size;
  }
  return undefined;
}

async function measure(
  target: Target,
  password: string,
  opts: { clients: number; seconds: number; concurrency: number; settle: number; snapshotDir?: string },
): Promise<TargetFigures> {
  const pid = target.pid!;
  const name = target.name;
  // Warm: fill the pool, load and optimise the hot code; then the reference run without idle clients.
  await runPgbench(target, password, { clients: 64, seconds: 3 });
  const baseline = await runPgbench(target, password, { clients: ACTIVE_CLIENTS, seconds: opts.seconds });
  process.stdout.write(
    `# ${name}: pgbench -c ${ACTIVE_CLIENTS} without idle clients: ${baseline.ok ? `${fmt(baseline.tps)} tps` : 'FAILED'}\n`,
  );
  await sleep(opts.settle * 1000);
  const before = memoryKiB(pid);
  process.stdout.write(`# ${name}: RSS ${mib(before.rss).toFixed(1)} MiB; opening ${opts.clients} clients\n`);
  const cpu0 = processCpuUs(pid) ?? 0;
  const t0 = Date.now();
  const sockets = await openClients(target.port, password, opts.clients, opts.concurrency);
  const openSeconds = (Date.now() - t0) / 1000;
  const cpu1 = processCpuUs(pid) ?? 0;
  let closedWhileIdle = 0;
  for (const s of sockets) s.once('close', () => closedWhileIdle++);
  process.stdout.write(`# ${name}: ${sockets.length} clients open after ${openSeconds.toFixed(1)} s\n`);
  await sleep(opts.settle * 1000);
  const cpu2 = processCpuUs(pid) ?? 0;
  const idle = memoryKiB(pid);
  process.stdout.write(
    `# ${name}: RSS ${mib(idle.rss).toFixed(1)} MiB with ${sockets.length} idle clients (peak ${mib(idle.hwm).toFixed(1)} MiB)\n`,
  );
  if (opts.snapshotDir && target.name === 'gprxy') {
    const file = await heapSnapshot(pid, opts.snapshotDir);
    process.stdout.write(`# ${name}: heap snapshot ${file ?? 'not written'}\n`);
  }
  // Active clients while the idle ones stay open: pgbench, then a query on a sample of the idle connections.
  const loaded = await runPgbench(target, password, { clients: ACTIVE_CLIENTS, seconds: opts.seconds });
  process.stdout.write(
    `# ${name}: pgbench -c ${ACTIVE_CLIENTS} with idle clients: ${loaded.ok ? `${fmt(loaded.tps)} tps` : 'FAILED'}\n`,
  );
  const step = Math.max(1, Math.floor(sockets.length / SAMPLE_QUERIES));
  const sample = sockets.filter((_, i) => i % step === 0).slice(0, SAMPLE_QUERIES);
  const answers = await Promise.all(sample.map((s) => queryOn(s)));
  const sampleOk = answers.filter(Boolean).length;
  process.stdout.write(`# ${name}: SELECT 1 on ${sample.length} idle clients: ${sampleOk} answered\n`);
  const afterActive = memoryKiB(pid);
  // Close them all (Terminate, then FIN) and give the proxy a moment.
  for (const s of sockets) {
    s.removeAllListeners('close');
    s.end(TERMINATE);
  }
  await sleep(2000);
  for (const s of sockets) s.destroy();
  return {
    target,
    before,
    idle,
    afterActive,
    openSeconds,
    loginCpuUs: (cpu1 - cpu0) / Math.max(1, sockets.length),
    idleCpuUsPerSec: (cpu2 - cpu1) / opts.settle,
    closedWhileIdle,
    sampleOk,
    sampleTotal: sample.length,
    baseline,
    loaded,
  };
}

async function main(): Promise<number> {
  const clients = envInt('BENCH_IDLE_CLIENTS', 10_000);
  const code = ensureFileLimit(clients + 10_000);
  if (code !== undefined) return code;
  installSignalHandlers();
  const seconds = envInt('BENCH_SECONDS', 10);
  const concurrency = Math.max(1, envInt('BENCH_IDLE_CONCURRENCY', 200));
  const settle = envInt('BENCH_IDLE_SETTLE', 5);
  const scale = envInt('BENCH_SCALE', 10);
  const loadBefore = loadAverage();
  const root = makeRoot('gprxy-bench-idle-');
  const env = await startDatabase(root, scale);
  const maxClientConn = clients + 1000;
  const snapshotDir = process.env.BENCH_IDLE_HEAPSNAPSHOT
    ? resolve(process.env.BENCH_IDLE_HEAPSNAPSHOT)
    : undefined;
  if (snapshotDir) mkdirSync(snapshotDir, { recursive: true });
  const gprxy = await startGprxy(env, {
    poolSize: POOL_SIZE,
    poolMode: 'transaction',
    maxClientConn,
    ...(snapshotDir
      ? { nodeFlags: ['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${snapshotDir}`] }
      : {}),
  });
  const bouncer = await startPgbouncer(env, { poolSize: POOL_SIZE, poolMode: 'transaction', maxClientConn });
  const targets: Target[] = [gprxy, ...(bouncer ? [bouncer] : [])];
  const figures: TargetFigures[] = [];
  for (const t of targets) {
    figures.push(
      await measure(t, env.password, {
        clients,
        seconds,
        concurrency,
        settle,
        ...(snapshotDir ? { snapshotDir } : {}),
      }),
    );
  }

  const rows: string[][] = [
    [
      'proxy',
      'RSS before, MiB',
      `RSS with ${fmt(clients)} idle clients, MiB`,
      'per idle client, KiB',
      'peak RSS (VmHWM), MiB',
      'logins/s (CPU µs/login)',
      `pgbench -c ${ACTIVE_CLIENTS} tps without / with idle clients`,
      `SELECT 1 on idle clients`,
    ],
  ];
  for (const f of figures) {
    rows.push([
      f.target.name,
      mib(f.before.rss).toFixed(1),
      mib(f.idle.rss).toFixed(1),
      ((f.idle.rss - f.before.rss) / clients).toFixed(1),
      mib(Math.max(f.idle.hwm, f.afterActive.hwm)).toFixed(1),
      `${fmt(clients / f.openSeconds)} (${fmt(f.loginCpuUs)})`,
      `${f.baseline.ok ? fmt(f.baseline.tps) : 'FAILED'} / ${f.loaded.ok ? fmt(f.loaded.tps) : 'FAILED'}`,
      `${f.sampleOk}/${f.sampleTotal} answered`,
    ]);
  }
  process.stdout.write(`\n${textTable(rows)}\n`);
  const problems = figures.flatMap((f) => [
    ...(f.closedWhileIdle ? [`${f.target.name}: ${f.closedWhileIdle} idle clients were closed`] : []),
    ...(f.sampleOk < f.sampleTotal
      ? [`${f.target.name}: ${f.sampleTotal - f.sampleOk} idle clients did not answer`]
      : []),
    ...(!f.baseline.ok || !f.loaded.ok ? [`${f.target.name}: a pgbench run failed`] : []),
  ]);
  for (const p of problems) process.stdout.write(`PROBLEM: ${p}\n`);
  for (const f of figures) {
    if (!f.loaded.ok) process.stdout.write(`--- ${f.target.name} pgbench:\n${f.loaded.output}\n`);
    if (problems.length && f.target.logFile)
      process.stdout.write(`--- ${f.target.name} log (tail):\n${tail(f.target.logFile)}\n`);
  }

  if (!process.env.BENCH_NO_DOC) {
    const m = machineInfo();
    const g = figures.find((f) => f.target.name === 'gprxy')!;
    const b = figures.find((f) => f.target.name === 'pgbouncer');
    writeGeneratedBlock(
      'bench-idle',
      [
        `### ${fmt(clients)} idle clients, transaction pooling — ${m.date}`,
        '',
        `- Same machine and software as above (${m.nproc} vCPU ${m.cpu}, ${m.memory} RAM, gprxy ${m.revision}, Node ${m.node}, ${m.postgres}, ${m.pgbouncer}).`,
        `- Each proxy in transaction pooling with default_pool_size ${POOL_SIZE}, max_client_conn ${fmt(maxClientConn)}, log_level ${process.env.BENCH_GPRXY_LOG ?? 'warn'} (gprxy). One proxy at a time: after a warm-up and a reference \`pgbench -S -c ${ACTIVE_CLIENTS} -T ${seconds}\`, ${fmt(clients)} clients log in (SCRAM-SHA-256, raw wire protocol from one Node process, ${concurrency} logins in flight) and stay idle at ReadyForQuery; RSS (VmRSS from /proc/<pid>/status) is read ${settle}s later. Then, with them still open, the same pgbench run and a \`SELECT 1\` on ${SAMPLE_QUERIES} of the idle connections.`,
        `- Open-files limit at least ${clients + 10_000} for the client process and both proxies (raised with \`ulimit -n\` when lower). 1-minute load average before/after: ${loadBefore} / ${loadAverage()}.${problems.length ? ` **Problems:** ${problems.join('; ')}.` : ' No idle client was closed; every sampled idle client answered.'}`,
        '',
        markdownTable(rows),
        '',
        `gprxy with ${fmt(clients)} idle clients: ${mib(g.idle.rss).toFixed(0)} MiB RSS (${fmt((g.idle.rss * 1024) / 1e6)} MB; target: at most 200 MB)${b ? `; pgbouncer ${mib(b.idle.rss).toFixed(0)} MiB` : ''}. The pgbench figures are single ${seconds}s runs on a shared 2-core machine (noise ±15%); idle CPU with the clients open: gprxy ${fmt(g.idleCpuUsPerSec / 1000, 1)} ms/s${b ? `, pgbouncer ${fmt(b.idleCpuUsPerSec / 1000, 1)} ms/s` : ''}.`,
        '',
        `Reproduce: \`node --import tsx bench/idle-clients.ts\` (as root, or with a hard open-files limit above ${clients + 10_000}).`,
      ].join('\n'),
    );
    process.stdout.write('\n# wrote docs/BENCHMARKS.md (bench-idle block)\n');
  }
  await cleanup();
  return problems.length ? 1 : 0;
}

runMain('idle-clients benchmark', main);
