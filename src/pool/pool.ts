// Pool per (database, user): idle servers, FIFO waiters with deadlines, size/reserve/min limits, idle timeout and
// lifetime, login-retry back-off; PoolRegistry holds the pools and the per-database/per-user connection caps.
// No sockets here: servers come from an injected connect function.
import type { PoolSettings } from '../config/schema.ts';
import { PgError } from '../protocol/errors.ts';
import { PoolStats } from './stats.ts';

export interface PooledServer {
  readonly id: number;
  readonly createdAt: number;
  lastUsedAt: number;
  readonly closed: boolean;
  close(reason: string): void;
  onClosed(fn: (s: this) => void): void;
}

export interface PoolKey {
  database: string;
  user: string;
}

export type Clock = () => number;

/** Called once: with a lease, or with the error that ended the wait. */
export type LeaseCallback<S extends PooledServer> = (err: PgError | null, lease: Lease<S> | null) => void;

interface Waiter<S extends PooledServer> {
  done: LeaseCallback<S>;
  since: number;
  /** When query_wait_timeout runs out: monotonic (performance.now), like setTimeout, immune to clock steps. */
  deadline: number;
}

/** A server lent to one client. Release exactly once: reusable servers go back to the pool, others are closed. */
export class Lease<S extends PooledServer> {
  private released = false;
  constructor(
    readonly server: S,
    private readonly pool: Pool<S>,
  ) {}

  release(reusable: boolean, reason = 'not reusable'): void {
    if (this.released) return;
    this.released = true;
    this.pool.giveBack(this.server, reusable, reason);
  }
}

export type PooledServerState = 'active' | 'idle';

export interface PoolCounts {
  active: number;
  idle: number;
  connecting: number;
  waiting: number;
}

export class Pool<S extends PooledServer> {
  private readonly idle: S[] = [];
  private readonly active = new Set<S>();
  private connecting = 0;
  private readonly waiters: Waiter<S>[] = [];
  /** One timer for all waiters, armed for the earliest deadline (a timer per wait costs more than the wait). */
  private waitTimer: NodeJS.Timeout | undefined;
  /** The deadline the timer is armed for. */
  private waitTimerAt = Infinity;
  /**
   * A server given to a waiter can come straight back (a client that left while waiting releases it at once):
   * servers placed while a placement runs wait here and are handed on by the outer loop, so a chain of such
   * waiters costs iterations, not stack frames.
   */
  private placing = false;
  private readonly toPlace: S[] = [];
  private lastFailure: { error: PgError; at: number } | undefined;
  /** The parameters a server reports at login, cached from the pool's first server (transaction-mode logins). */
  welcome: ReadonlyMap<string, string> | undefined;
  private closedForGood = false;
  readonly stats = new PoolStats();
  /** Servers to close when they come back (RECONNECT, KILL) instead of going idle. */
  private readonly closeNeeded = new Set<S>();

  constructor(
    readonly key: PoolKey,
    public settings: PoolSettings,
    private readonly connect: () => Promise<S>,
    private readonly registry: PoolRegistry<S>,
    private readonly now: Clock = Date.now,
  ) {}

  get counts(): PoolCounts {
    return {
      active: this.active.size,
      idle: this.idle.length,
      connecting: this.connecting,
      waiting: this.waiters.length,
    };
  }

  /** The servers this pool holds, with their pool-side state (admin console, API). */
  servers(): { server: S; state: PooledServerState; closeNeeded: boolean }[] {
    const out: { server: S; state: PooledServerState; closeNeeded: boolean }[] = [];
    for (const s of this.active)
      out.push({ server: s, state: 'active', closeNeeded: this.closeNeeded.has(s) });
    for (const s of this.idle) out.push({ server: s, state: 'idle', closeNeeded: false });
    return out;
  }

  /** How long the oldest waiting client has waited, ms (0 when nobody waits). */
  get maxWaitMs(): number {
    const w = this.waiters[0];
    return w ? Math.max(0, this.now() - w.since) : 0;
  }

  get paused(): boolean {
    return this.registry.isPaused(this.key.database);
  }

  /** Servers that exist or are being opened: what counts against the limits. */
  get total(): number {
    return this.active.size + this.idle.length + this.connecting;
  }

  acquire(): Promise<Lease<S>> {
    return new Promise((resolve, reject) => {
      const lease = this.lease((err, l) => (err ? reject(err) : resolve(l!)));
      if (lease) resolve(lease);
    });
  }

  /**
   * A lease at once when a server is idle (returned; `later` is never called), else undefined and `later` is called
   * once, with a lease or with the error that ended the wait. No promise on the hot path.
   */
  lease(later: LeaseCallback<S>): Lease<S> | undefined {
    if (this.closedForGood) {
      later(PgError.shuttingDown(), null);
      return undefined;
    }
    const s = this.paused ? undefined : this.takeIdle();
    if (s) return this.lend(s, 0);
    const failure = this.recentFailure();
    if (failure && this.total === 0) {
      later(failure, null);
      return undefined;
    }
    const since = this.now();
    const deadline = performance.now() + this.settings.query_wait_timeout;
    this.waiters.push({ done: later, since, deadline });
    // A reload may have shortened query_wait_timeout: an earlier deadline than the armed one re-arms.
    if (deadline < this.waitTimerAt) this.disarmWaitTimer();
    this.armWaitTimer();
    this.grow();
    return undefined;
  }

  private armWaitTimer(): void {
    if (this.waitTimer !== undefined || this.waiters.length === 0) return;
    let first = Infinity;
    for (const w of this.waiters) first = Math.min(first, w.deadline);
    this.waitTimerAt = first;
    // setTimeout takes at most 2^31-1 ms; a longer wait re-arms when that fires.
    const delay = Math.min(2 ** 31 - 1, Math.max(1, Math.ceil(first - performance.now())));
    this.waitTimer = setTimeout(() => this.expireWaiters(), delay);
  }

  /** The queue drained: no timer should keep the process awake for deadlines nobody has any more. */
  private disarmWaitTimer(): void {
    if (this.waitTimer === undefined) return;
    clearTimeout(this.waitTimer);
    this.waitTimer = undefined;
    this.waitTimerAt = Infinity;
  }

  /** Waiters past query_wait_timeout get 53300; the timer is re-armed for the next deadline. */
  private expireWaiters(): void {
    this.waitTimer = undefined;
    this.waitTimerAt = Infinity;
    const now = performance.now();
    const expired = this.waiters.filter((w) => w.deadline <= now);
    if (expired.length) {
      const kept = this.waiters.filter((w) => w.deadline > now);
      this.waiters.length = 0;
      this.waiters.push(...kept);
    }
    for (const w of expired) {
      w.done(
        new PgError('FATAL', '53300', 'timed out waiting for a server connection (query_wait_timeout)', {
          code: 'GPRXY_QUERY_WAIT_TIMEOUT',
          detail: `all ${this.total} servers of pool ${this.key.database}/${this.key.user} stayed busy`,
        }),
        null,
      );
    }
    this.armWaitTimer();
  }

  private takeIdle(): S | undefined {
    const now = this.now();
    for (;;) {
      const s = this.idle.pop(); // LIFO: the most recently used server is warmest
      if (!s) return undefined;
      if (s.closed) continue;
      if (this.settings.server_lifetime > 0 && now - s.createdAt > this.settings.server_lifetime) {
        s.close('server_lifetime');
        continue;
      }
      return s;
    }
  }

  private lend(s: S, waitMs: number): Lease<S> {
    this.active.add(s);
    s.lastUsedAt = this.now();
    this.stats.leases++;
    this.stats.waitMs += waitMs;
    this.stats.wait.observe(waitMs);
    return new Lease(s, this);
  }

  private recentFailure(): PgError | undefined {
    const f = this.lastFailure;
    if (f && this.now() - f.at < this.settings.server_login_retry) return f.error;
    return undefined;
  }

  /** Room for one more server: pool size (plus reserve for a client waiting past reserve_pool_timeout), caps. */
  private mayOpen(): boolean {
    const st = this.settings;
    let cap = st.default_pool_size;
    const oldest = this.waiters[0];
    if (st.reserve_pool_size > 0 && oldest && this.now() - oldest.since >= st.reserve_pool_timeout) {
      cap += st.reserve_pool_size;
    }
    return this.total < cap && this.registry.underCaps(this.key, st);
  }

  /** Opens servers while clients wait and limits allow. */
  grow(): void {
    if (this.paused) return;
    while (this.waiters.length > this.connecting && this.mayOpen() && !this.recentFailure()) this.open();
  }

  private open(): void {
    this.connecting++;
    this.connect().then(
      (s) => {
        this.connecting--;
        this.lastFailure = undefined;
        this.stats.opened++;
        s.onClosed(() => this.forget(s));
        this.registry.opened(this.key);
        this.place(s);
      },
      (err: unknown) => {
        this.connecting--;
        const error =
          err instanceof PgError ? err : PgError.serverGone(`could not connect to server: ${String(err)}`);
        this.lastFailure = { error, at: this.now() };
        // Nobody can be served soon: tell the waiters what the server said rather than let them time out.
        if (this.total === 0) {
          this.disarmWaitTimer();
          for (const w of this.waiters.splice(0)) w.done(error, null);
        }
        this.registry.failed(this.key, error);
      },
    );
  }

  /** A server became available: the first waiter gets it, else it goes idle. */
  private place(s: S): void {
    this.toPlace.push(s);
    if (this.placing) return;
    this.placing = true;
    try {
      for (let next = this.toPlace.shift(); next; next = this.toPlace.shift()) this.placeOne(next);
    } finally {
      this.placing = false;
    }
  }

  private placeOne(s: S): void {
    if (this.closedForGood) {
      s.close('pool closed');
      return;
    }
    const w = this.paused ? undefined : this.waiters.shift();
    if (w) {
      if (this.waiters.length === 0) this.disarmWaitTimer();
      w.done(null, this.lend(s, this.now() - w.since));
      return;
    }
    this.idle.push(s);
  }

  giveBack(s: S, reusable: boolean, reason: string): void {
    this.active.delete(s);
    if (this.closeNeeded.delete(s)) {
      s.close('reconnect');
      return;
    }
    if (!reusable || s.closed) {
      s.close(reason);
      return;
    }
    if (this.settings.server_lifetime > 0 && this.now() - s.createdAt > this.settings.server_lifetime) {
      s.close('server_lifetime');
      return;
    }
    s.lastUsedAt = this.now();
    this.place(s);
  }

  private forget(s: S): void {
    this.stats.closed++;
    this.closeNeeded.delete(s);
    this.active.delete(s);
    const i = this.idle.indexOf(s);
    if (i >= 0) this.idle.splice(i, 1);
    this.registry.closed(this.key);
    this.grow();
  }

  /** Periodic upkeep: idle timeout beyond min_pool_size, lifetime, min_pool_size, reserve, waiting clients. */
  maintain(canPrefill: boolean): void {
    const now = this.now();
    const st = this.settings;
    for (const s of [...this.idle]) {
      const tooOld = st.server_lifetime > 0 && now - s.createdAt > st.server_lifetime;
      const idleTooLong = st.server_idle_timeout > 0 && now - s.lastUsedAt > st.server_idle_timeout;
      if (tooOld || (idleTooLong && this.total > st.min_pool_size))
        s.close(tooOld ? 'server_lifetime' : 'server_idle_timeout');
    }
    if (canPrefill && !this.paused) {
      while (
        this.total < Math.min(st.min_pool_size, st.default_pool_size) &&
        this.registry.underCaps(this.key, st)
      ) {
        if (this.recentFailure()) break;
        this.open();
      }
    }
    this.grow();
  }

  /** Closes idle servers now (RECONNECT, shutdown); active ones close when released. */
  closeIdle(reason: string): void {
    for (const s of this.idle.splice(0)) s.close(reason);
  }

  /** RECONNECT: idle servers close now, active ones when released; new servers open as needed. */
  reconnect(reason = 'reconnect'): void {
    for (const s of this.active) this.closeNeeded.add(s);
    this.closeIdle(reason);
  }

  /** After RESUME: serve the clients that queued while paused. */
  resumed(): void {
    if (this.paused) return;
    // Idle servers go through place(): one loop hands them to the waiters, without nesting (see `placing`).
    for (;;) {
      if (this.waiters.length <= this.toPlace.length) break;
      const s = this.takeIdle();
      if (!s) break;
      this.place(s);
    }
    this.grow();
  }

  shutdown(): void {
    this.closedForGood = true;
    this.disarmWaitTimer();
    for (const w of this.waiters.splice(0)) w.done(PgError.shuttingDown(), null);
    this.closeIdle('shutdown');
  }
}

/** All pools, keyed by database and user, and the caps that span pools (max_db_connections, max_user_connections). */
export class PoolRegistry<S extends PooledServer> {
  private readonly pools = new Map<string, Pool<S>>();
  private readonly perDb = new Map<string, number>();
  private readonly perUser = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  /** PAUSE: the whole proxy (`*`) or databases by name. */
  private readonly pausedDbs = new Set<string>();

  constructor(
    private readonly now: Clock = Date.now,
    private readonly onFailure: (key: PoolKey, err: PgError) => void = () => undefined,
  ) {}

  isPaused(database: string): boolean {
    return this.pausedDbs.size > 0 && (this.pausedDbs.has('*') || this.pausedDbs.has(database));
  }

  /** PAUSE [db]: new leases wait (logins and transactions queue); servers in use finish and come back. */
  pause(database = '*'): void {
    this.pausedDbs.add(database);
  }

  /** RESUME [db]: lifts a PAUSE (or KILL) and serves whoever queued meanwhile. */
  resume(database = '*'): void {
    this.pausedDbs.delete(database);
    for (const p of this.pools.values()) p.resumed();
  }

  pausedDatabases(): string[] {
    return [...this.pausedDbs];
  }

  get(key: PoolKey): Pool<S> | undefined {
    return this.pools.get(poolId(key));
  }

  getOrCreate(key: PoolKey, settings: PoolSettings, connect: () => Promise<S>): Pool<S> {
    const id = poolId(key);
    let p = this.pools.get(id);
    if (!p) {
      p = new Pool(key, settings, connect, this, this.now);
      this.pools.set(id, p);
    } else {
      p.settings = settings;
    }
    return p;
  }

  all(): Pool<S>[] {
    return [...this.pools.values()];
  }

  underCaps(key: PoolKey, st: PoolSettings): boolean {
    if (
      st.max_db_connections > 0 &&
      (this.perDb.get(key.database) ?? 0) + this.connectingFor('db', key) >= st.max_db_connections
    ) {
      return false;
    }
    if (
      st.max_user_connections > 0 &&
      (this.perUser.get(key.user) ?? 0) + this.connectingFor('user', key) >= st.max_user_connections
    ) {
      return false;
    }
    return true;
  }

  private connectingFor(kind: 'db' | 'user', key: PoolKey): number {
    let n = 0;
    for (const p of this.pools.values()) {
      if (kind === 'db' ? p.key.database === key.database : p.key.user === key.user) n += p.counts.connecting;
    }
    return n;
  }

  opened(key: PoolKey): void {
    this.perDb.set(key.database, (this.perDb.get(key.database) ?? 0) + 1);
    this.perUser.set(key.user, (this.perUser.get(key.user) ?? 0) + 1);
  }

  closed(key: PoolKey): void {
    this.perDb.set(key.database, Math.max(0, (this.perDb.get(key.database) ?? 0) - 1));
    this.perUser.set(key.user, Math.max(0, (this.perUser.get(key.user) ?? 0) - 1));
    // A freed slot may unblock pools of the same database or user.
    for (const p of this.pools.values()) {
      if (p.key.database === key.database || p.key.user === key.user) p.grow();
    }
  }

  failed(key: PoolKey, err: PgError): void {
    this.onFailure(key, err);
  }

  /** Starts periodic maintenance; `canPrefill(key)` says whether the pool has credentials to open servers. */
  startMaintenance(intervalMs: number, canPrefill: (key: PoolKey) => boolean): void {
    this.timer = setInterval(() => {
      for (const p of this.pools.values()) p.maintain(canPrefill(p.key));
    }, intervalMs);
    this.timer.unref();
  }

  shutdown(): void {
    if (this.timer) clearInterval(this.timer);
    for (const p of this.pools.values()) p.shutdown();
  }
}

function poolId(key: PoolKey): string {
  return `${key.database}\u0000${key.user}`;
}
