// CPU profile of gprxy under pgbench -S at 64 clients (session pooling by default): runs gprxy with
// `node --cpu-prof --cpu-prof-dir <dir>`, stops it with SIGINT so V8 writes the profile, and prints self time by
// function and by file (bench/cpuprofile.ts).
//
// Environment: BENCH_SECONDS (default 15), BENCH_SCALE (default 10), BENCH_PROFILE_DIR (where the .cpuprofile is
// kept; default a temp dir that is removed unless BENCH_KEEP=1), BENCH_PROFILE_TOP (default 30), BENCH_PERF=1
// (`perf record` gprxy with --perf-basic-prof instead of --cpu-prof: true CPU samples, kernel included),
// BENCH_POOL_MODE (session or transaction; default session), BENCH_TX_POOL_SIZE (transaction mode pool size,
// default 10), BENCH_PROTOCOL (simple, extended or prepared; default simple), BENCH_CLIENTS (default 64; 8 with
// BENCH_LOGIN), BENCH_AUDIT=1 (audit on: a JSON-lines file sink, as bench/audit.ts), BENCH_LOGIN (scram,
// scram-fast or token: profile logins instead, `pgbench -C` over TLS as bench/token-login.ts).
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { type CpuProfile, formatSummary, summarize } from './cpuprofile.ts';
import {
  BENCH_USER,
  cleanup,
  fmt,
  installSignalHandlers,
  makeRoot,
  onCleanup,
  processCpuSplitUs,
  REPO,
  runMain,
  runPgbench,
  startDatabase,
  startGprxy,
} from './harness.ts';
import { IDENTITY, prepareTokenLogins, SSO_ROLE } from './sso.ts';

const FAST_USER = 'bench_fast';

async function main(): Promise<number> {
  installSignalHandlers();
  const seconds = Number(process.env.BENCH_SECONDS || 15);
  const scale = Number(process.env.BENCH_SCALE || 10);
  const login = process.env.BENCH_LOGIN as 'scram' | 'scram-fast' | 'token' | undefined;
  if (login !== undefined && !['scram', 'scram-fast', 'token'].includes(login))
    throw new Error('BENCH_LOGIN must be scram, scram-fast or token');
  const clients = Number(process.env.BENCH_CLIENTS || (login ? 8 : 64));
  const poolMode = process.env.BENCH_POOL_MODE === 'transaction' ? 'transaction' : 'session';
  const poolSize = poolMode === 'transaction' ? Number(process.env.BENCH_TX_POOL_SIZE || 10) : clients;
  const protocol = (process.env.BENCH_PROTOCOL || 'simple') as 'simple' | 'extended' | 'prepared';
  if (!['simple', 'extended', 'prepared'].includes(protocol))
    throw new Error('BENCH_PROTOCOL must be simple, extended or prepared');
  const root = makeRoot('gprxy-profile-');
  const profDir = resolve(process.env.BENCH_PROFILE_DIR ?? join(root, 'prof'));
  mkdirSync(profDir, { recursive: true });
  const env = await startDatabase(root, scale, login ? [{ name: FAST_USER, iterations: 1 }, SSO_ROLE] : []);
  // Logins: TLS, HBA and the local OIDC issuer exactly as bench/token-login.ts sets them up, for every kind.
  const sso = login ? await prepareTokenLogins(root, [BENCH_USER, FAST_USER]) : undefined;
  const usePerf = Boolean(process.env.BENCH_PERF);
  const auditFile = join(root, 'audit.jsonl');
  const gprxy = await startGprxy(env, {
    poolSize,
    poolMode,
    ...(sso?.proxy ?? {}),
    ...(process.env.BENCH_AUDIT
      ? {
          extraConfig: [
            ...(sso?.proxy.extraConfig ?? []),
            'audit:',
            `  sinks: [{ type: file, path: ${JSON.stringify(auditFile)} }]`,
          ],
        }
      : {}),
    // perf alone: V8's sampler would otherwise show up in perf's samples.
    nodeFlags: usePerf ? ['--perf-basic-prof'] : ['--cpu-prof', '--cpu-prof-dir', profDir],
  });
  if (usePerf) onCleanup(() => rmSync(`/tmp/perf-${gprxy.pid}.map`, { force: true }));
  const pgbench = (secs: number) =>
    runPgbench(gprxy, login === 'token' ? sso!.token : env.password, {
      clients,
      seconds: secs,
      mode: protocol,
      ...(login
        ? {
            connect: true,
            sslmode: 'require' as const,
            user: login === 'token' ? IDENTITY : login === 'scram-fast' ? FAST_USER : BENCH_USER,
          }
        : {}),
    });
  const warm = await pgbench(5);
  process.stdout.write(`# warm-up: ${warm.ok ? `${fmt(warm.tps)} tps` : 'FAILED'}\n`);
  const perfData = join(profDir, 'perf.data');
  // BENCH_PERF=1: also `perf record` the gprxy process over the measured run (CPU samples, kernel included).
  const perf = usePerf
    ? spawn('perf', ['record', '-F', '999', '-g', '-o', perfData, '-p', String(gprxy.pid)], {
        stdio: 'ignore',
      })
    : undefined;
  const before = processCpuSplitUs(gprxy.pid!);
  const r = await pgbench(seconds);
  const after = processCpuSplitUs(gprxy.pid!);
  if (perf) {
    const done = new Promise((res) => perf.once('close', res));
    perf.kill('SIGINT');
    await done;
  }
  process.stdout.write(
    `# pool_mode ${poolMode}, pool size ${poolSize}${process.env.BENCH_AUDIT ? ', audit on (file sink)' : ''}${login ? `, ${login} logins over TLS` : ''}; ${r.command}: ${r.ok ? `${fmt(r.tps)} tps, ${r.latencyMs.toFixed(3)} ms` : `FAILED\n${r.output}`}\n`,
  );
  if (before && after && r.transactions > 0) {
    const per = (x: number) => (x / r.transactions).toFixed(1);
    process.stdout.write(
      `# gprxy CPU per transaction: user ${per(after.user - before.user)} µs, system ${per(after.sys - before.sys)} µs\n`,
    );
  }
  await gprxy.stop();
  if (!usePerf) {
    // One profile per thread (the main thread and tsx's module-loader worker): report the busiest.
    const files = readdirSync(profDir).filter((f) => f.endsWith('.cpuprofile'));
    if (files.length === 0) throw new Error(`no .cpuprofile written in ${profDir}`);
    const summaries = files.map((f) => {
      const profile = JSON.parse(readFileSync(join(profDir, f), 'utf8')) as CpuProfile;
      return { file: join(profDir, f), s: summarize(profile, REPO) };
    });
    summaries.sort((a, b) => b.s.totalMs - b.s.idleMs - (a.s.totalMs - a.s.idleMs));
    const main = summaries[0]!;
    process.stdout.write(
      `# ${main.file} (main thread; includes start-up, the 5s warm-up and the measured run)\n` +
        `# note: V8 samples wall-clock time; on an oversubscribed machine time spent runnable-but-preempted is\n` +
        `# charged to whatever was on the stack (often the socket write that woke the peer)\n` +
        `${formatSummary(main.s, Number(process.env.BENCH_PROFILE_TOP || 30))}\n`,
    );
  }
  if (perf) {
    const report = (sort: string) =>
      execFileSync(
        'perf',
        ['report', '-i', perfData, '--no-children', '--sort', sort, '--stdio', '-g', 'none'],
        {
          encoding: 'utf8',
          stdio: ['ignore', 'pipe', 'ignore'],
        },
      )
        .split('\n')
        .filter((l) => l.trim() && !l.startsWith('#'));
    process.stdout.write(
      `\n# perf: CPU samples of the gprxy process during the measured run, by object\n${report('dso').slice(0, 8).join('\n')}\n` +
        `\n# perf: top symbols (JS: = JIT-compiled JavaScript)\n${report('sym').slice(0, 40).join('\n')}\n`,
    );
  }
  await cleanup();
  return r.ok ? 0 : 1;
}

runMain('profile', main);
