// auth_query: client secrets read from PostgreSQL itself (pg_authid or a SECURITY DEFINER function) over a
// dedicated connection as auth.user, cached with a TTL (and a shorter negative TTL), one query per user in flight.
import { parseSecret, type Secret } from '../auth/verifiers.ts';
import { PgError } from '../protocol/errors.ts';
import type { ServerConnection } from '../server/connection.ts';

export const DEFAULT_AUTH_QUERY =
  'SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname = $1 AND rolcanlogin';

export interface AuthQueryOptions {
  sql: string;
  ttlMs: number;
  negativeTtlMs: number;
  now?: () => number;
  /** Where a failed lookup's reason goes (the client only hears that the lookup failed). */
  onFailure?: (reason: string) => void;
}

export class AuthQuery {
  private conn: ServerConnection | null = null;
  private connecting: Promise<ServerConnection> | null = null;
  /** Queries run one at a time on the one connection. */
  private chain: Promise<unknown> = Promise.resolve();
  private readonly cache = new Map<string, { secret: Secret | undefined; expires: number }>();
  private readonly inflight = new Map<string, Promise<Secret | undefined>>();
  private readonly now: () => number;

  constructor(
    private readonly connect: () => Promise<ServerConnection>,
    private readonly opts: AuthQueryOptions,
  ) {
    this.now = opts.now ?? Date.now;
  }

  /** The user's secret, or undefined for no such login role, NOLOGIN, no password, or VALID UNTIL in the past. */
  lookup(user: string): Promise<Secret | undefined> {
    const hit = this.cache.get(user);
    if (hit && hit.expires > this.now()) return Promise.resolve(hit.secret);
    let p = this.inflight.get(user);
    if (!p) {
      p = this.fetch(user).finally(() => this.inflight.delete(user));
      this.inflight.set(user, p);
    }
    return p;
  }

  private async fetch(user: string): Promise<Secret | undefined> {
    const run = this.chain.then(async () => {
      const conn = await this.connection();
      return conn.queryRows(this.opts.sql, [user]);
    });
    this.chain = run.catch(() => undefined);
    let result: Awaited<typeof run>;
    try {
      result = await run;
    } catch (e) {
      this.drop();
      throw this.failed(e instanceof PgError ? `${e.sqlState} ${e.message}` : String(e));
    }
    if (result instanceof PgError) {
      if (result.fatal) this.drop();
      throw this.failed(`${result.sqlState} ${result.message}`);
    }
    const row = result.rows[0];
    let secret: Secret | undefined;
    const stored = row?.[1];
    if (typeof stored === 'string' && stored !== '') {
      try {
        secret = parseSecret(stored);
      } catch {
        secret = undefined; // an unparseable verifier cannot authenticate anyone
      }
    }
    const ttl = secret ? this.opts.ttlMs : this.opts.negativeTtlMs;
    this.cache.set(user, { secret, expires: this.now() + ttl });
    if (this.cache.size > 100_000) this.cache.clear();
    return secret;
  }

  private async connection(): Promise<ServerConnection> {
    if (this.conn && !this.conn.closed) return this.conn;
    this.connecting ??= this.connect().then(
      (c) => {
        this.conn = c;
        this.connecting = null;
        return c;
      },
      (e: unknown) => {
        this.connecting = null;
        throw e;
      },
    );
    return this.connecting;
  }

  private drop(): void {
    this.conn?.close('auth_query failed');
    this.conn = null;
  }

  /** Forgets cached secrets (reload) and closes the connection. */
  close(): void {
    this.cache.clear();
    this.drop();
  }

  private failed(reason: string): PgError {
    this.opts.onFailure?.(reason);
    return new PgError('FATAL', '08006', 'authentication lookup failed', { code: 'GPRXY_AUTH_QUERY_FAILED' });
  }
}
