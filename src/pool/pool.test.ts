// Pool and PoolRegistry behaviour with in-memory servers: lending, FIFO waiters, timeouts, caps, reserve, upkeep.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { POOL_DEFAULTS, type PoolSettings } from '../config/schema.ts';
import { PgError } from '../protocol/errors.ts';
import { type Lease, type PooledServer, PoolRegistry } from './pool.ts';

let ids = 1;
class FakeServer implements PooledServer {
  readonly id = ids++;
  lastUsedAt: number;
  closed = false;
  closeReason = '';
  private listeners: ((s: this) => void)[] = [];
  constructor(readonly createdAt: number) {
    this.lastUsedAt = createdAt;
  }
  close(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.closeReason = reason;
    for (const l of this.listeners) l(this);
  }
  onClosed(fn: (s: this) => void): void {
    this.listeners.push(fn);
  }
}

function setup(over: Partial<PoolSettings> = {}, connect?: () => Promise<FakeServer>) {
  let now = 1_000_000;
  const clock = () => now;
  const made: FakeServer[] = [];
  const registry = new PoolRegistry<FakeServer>(clock);
  const settings = { ...POOL_DEFAULTS, ...over };
  const pool = registry.getOrCreate(
    { database: 'db', user: 'u' },
    settings,
    connect ??
      (async () => {
        const s = new FakeServer(now);
        made.push(s);
        return s;
      }),
  );
  return { pool, registry, made, advance: (ms: number) => (now += ms), settings };
}

const tick = () => new Promise((r) => setImmediate(r));

test('a released server is lent again, LIFO; a non-reusable one is closed', async () => {
  const { pool, made } = setup();
  const a = await pool.acquire();
  const b = await pool.acquire();
  assert.equal(made.length, 2);
  a.release(true);
  b.release(true);
  const c = await pool.acquire();
  assert.equal(c.server, b.server, 'most recently used first');
  c.release(false, 'dirty');
  assert.equal(b.server.closed, true);
  assert.equal(b.server.closeReason, 'dirty');
  assert.deepEqual(pool.counts, { active: 0, idle: 1, connecting: 0, waiting: 0 });
});

test('waiters are served first-in first-out when servers come back', async () => {
  const { pool } = setup({ default_pool_size: 1 });
  const first = await pool.acquire();
  const order: number[] = [];
  const w1 = pool.acquire().then((l) => {
    order.push(1);
    return l;
  });
  const w2 = pool.acquire().then((l) => {
    order.push(2);
    return l;
  });
  await tick();
  assert.equal(pool.counts.waiting, 2);
  first.release(true);
  const l1 = await w1;
  l1.release(true);
  const l2 = await w2;
  assert.deepEqual(order, [1, 2]);
  assert.equal(l2.server, first.server);
});

test('query_wait_timeout rejects a waiting client with 53300', async () => {
  const { pool } = setup({ default_pool_size: 1, query_wait_timeout: 30 });
  await pool.acquire();
  await assert.rejects(
    pool.acquire(),
    (e: PgError) => e.sqlState === '53300' && /query_wait_timeout/.test(e.message),
  );
  assert.equal(pool.counts.waiting, 0);
});

test('max_db_connections caps servers across pools of one database', async () => {
  const registry = new PoolRegistry<FakeServer>();
  const settings = { ...POOL_DEFAULTS, max_db_connections: 1, query_wait_timeout: 50 };
  const connect = async () => new FakeServer(Date.now());
  const p1 = registry.getOrCreate({ database: 'db', user: 'a' }, settings, connect);
  const p2 = registry.getOrCreate({ database: 'db', user: 'b' }, settings, connect);
  const l1 = await p1.acquire();
  const waiting = p2.acquire();
  await tick();
  assert.equal(p2.counts.connecting, 0, 'no room for a second server on db');
  l1.release(false);
  const l2 = await waiting;
  assert.ok(l2.server);
});

test('reserve_pool_size lets a client that waited reserve_pool_timeout get an extra server', async () => {
  const { pool, advance, made } = setup({
    default_pool_size: 1,
    reserve_pool_size: 1,
    reserve_pool_timeout: 1000,
  });
  await pool.acquire();
  const waiting = pool.acquire();
  await tick();
  assert.equal(made.length, 1);
  advance(1500);
  pool.maintain(false);
  const l = await waiting;
  assert.equal(made.length, 2);
  assert.notEqual(l.server, made[0]);
});

test('a failed server login is given to waiting clients and repeated fast during server_login_retry', async () => {
  let attempts = 0;
  const err = new PgError('FATAL', '3D000', 'database "nope" does not exist');
  const { pool, advance } = setup({ server_login_retry: 1000 }, async () => {
    attempts++;
    throw err;
  });
  await assert.rejects(pool.acquire(), (e: PgError) => e === err);
  await assert.rejects(pool.acquire(), (e: PgError) => e === err);
  assert.equal(attempts, 1, 'no new attempt within server_login_retry');
  advance(1001);
  await assert.rejects(pool.acquire(), (e: PgError) => e === err);
  assert.equal(attempts, 2);
});

test('upkeep closes idle servers past server_idle_timeout (beyond min_pool_size) and past server_lifetime', async () => {
  const { pool, advance, made } = setup({
    server_idle_timeout: 100,
    min_pool_size: 1,
    server_lifetime: 10_000,
  });
  const a = await pool.acquire();
  const b = await pool.acquire();
  a.release(true);
  b.release(true);
  advance(200);
  pool.maintain(true);
  assert.equal(made.filter((s) => s.closed).length, 1, 'one kept for min_pool_size');
  advance(20_000);
  pool.maintain(false);
  assert.equal(made.filter((s) => !s.closed).length, 0, 'lifetime closes the rest');
});

test('min_pool_size is filled by upkeep when the pool has a credential', async () => {
  const { pool, made } = setup({ min_pool_size: 3 });
  pool.maintain(true);
  await tick();
  assert.equal(made.length, 3);
  assert.equal(pool.counts.idle, 3);
});

test('a server closing while idle is forgotten; shutdown rejects waiters with 57P01', async () => {
  const { pool, made } = setup({ default_pool_size: 1 });
  const l = await pool.acquire();
  l.release(true);
  made[0]!.close('server went away');
  assert.equal(pool.counts.idle, 0);
  const held = await pool.acquire();
  const waiting = pool.acquire();
  await tick();
  pool.shutdown();
  await assert.rejects(waiting, (e: PgError) => e.sqlState === '57P01');
  held.release(true);
  assert.equal(held.server.closed, true, 'a server returned after shutdown is closed');
});

test('a server handed through thousands of waiters that give it straight back does not grow the stack', async () => {
  const { pool } = setup({ default_pool_size: 1 });
  const first = await pool.acquire();
  let served = 0;
  let last: Lease<FakeServer> | null = null;
  const n = 20_000;
  for (let i = 0; i < n; i++) {
    // Waiters whose client has left: each releases the lease at once, inside the pool's hand-over.
    pool.lease((err, lease) => {
      assert.equal(err, null);
      served++;
      if (i === n - 1) last = lease;
      else lease!.release(true);
    });
  }
  first.release(true);
  assert.equal(served, n);
  assert.ok(last, 'the last waiter holds the server');
  assert.equal(pool.counts.waiting, 0);
});

test('a shorter query_wait_timeout after a reload applies to the next waiter at once', async () => {
  const { pool, settings } = setup({ default_pool_size: 1, query_wait_timeout: 60_000 });
  const held = await pool.acquire();
  const slow = pool.acquire();
  pool.settings = { ...settings, query_wait_timeout: 30 };
  const t0 = performance.now();
  await assert.rejects(pool.acquire(), (e: PgError) => e.sqlState === '53300');
  assert.ok(performance.now() - t0 < 5000, 'expired on the new, shorter timeout');
  assert.equal(pool.counts.waiting, 1, 'the first waiter keeps its own deadline');
  held.release(true);
  (await slow).release(true);
});
