// Test entry (`npm test`): starts one embedded PostgreSQL for the whole run, then Node's test runner over the
// unit, fuzz and integration tests with that server's address in the environment; stops it afterwards.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEmbeddedPostgres } from '../src/dev/postgres.ts';

const root = mkdtempSync(join(tmpdir(), 'gprxy-test-'));
chmodSync(root, 0o755); // PostgreSQL runs as a `postgres` user when we are root
const logDir = join(root, 'logs');
mkdirSync(logDir);
const password = randomBytes(12).toString('hex');
const logs: string[] = [];
const pg = await startEmbeddedPostgres({
  dataDir: join(root, 'pgdata'),
  password,
  settings: { fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off', max_connections: 300 },
  onLog: (l) => logs.push(l),
});
process.stdout.write(`# PostgreSQL for tests on 127.0.0.1:${pg.port}\n`);

/** Every `*.test.ts` under src/ and test/ (Node 20's runner does not expand globs itself). */
function testFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return e.name === 'node_modules' ? [] : testFiles(path);
    return e.name.endsWith('.test.ts') && !e.name.startsWith('_') ? [path] : [];
  });
}

/**
 * No secret in any log line at any level: every password the tests made (registered by the harness) and any
 * SCRAM verifier text is searched for in the logs of every in-process proxy of the run.
 */
function scanLogsForSecrets(): number {
  const secretsFile = join(logDir, 'secrets.txt');
  const secrets = existsSync(secretsFile)
    ? [
        ...new Set(
          readFileSync(secretsFile, 'utf8')
            .split('\n')
            .filter((x) => x.length >= 6),
        ),
      ]
    : [];
  secrets.push(password, 'SCRAM-SHA-256$');
  const logs = readdirSync(logDir).filter((f) => f.endsWith('.jsonl'));
  let lines = 0;
  const found: string[] = [];
  for (const f of logs) {
    const text = readFileSync(join(logDir, f), 'utf8');
    lines += text.split('\n').length;
    for (const s of secrets) if (text.includes(s)) found.push(`${f}: a secret of ${s.length} characters`);
  }
  if (found.length) {
    process.stdout.write(
      `# secret scan: FOUND secrets in logs\n${found.map((f) => `#   ${f}`).join('\n')}\n`,
    );
    return 1;
  }
  process.stdout.write(
    `# secret scan: ${lines} log lines of ${logs.length} proxies, ${secrets.length} secrets: none found\n`,
  );
  return 0;
}

const args = process.argv.slice(2);
const files = args.length ? args : [...testFiles('src'), ...testFiles('test')].sort();
const child = spawn(
  process.execPath,
  [
    '--import',
    'tsx',
    '--test',
    '--test-concurrency=2',
    '--test-timeout=120000',
    ...(process.env.TEST_PATTERN ? [`--test-name-pattern=${process.env.TEST_PATTERN}`] : []),
    ...files,
  ],
  {
    stdio: 'inherit',
    env: {
      ...process.env,
      GPRXY_TEST_PGHOST: pg.host,
      GPRXY_TEST_PGPORT: String(pg.port),
      GPRXY_TEST_PGUSER: pg.superuser,
      GPRXY_TEST_PGPASSWORD: password,
      GPRXY_TEST_LOGDIR: logDir,
    },
  },
);
let code: number = await new Promise((res) => child.on('close', (c) => res(c ?? 1)));
code = scanLogsForSecrets() || code;
await pg.stop().catch(() => undefined);
if (code !== 0 && process.env.GPRXY_TEST_PGLOG) process.stdout.write(logs.join('\n'));
rmSync(root, { recursive: true, force: true });
process.exit(code);
