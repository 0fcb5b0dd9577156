// Login limits with an injected clock: burst, growing delay, refill, per-user budget, startup cap.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LoginLimiter, StartupRate } from './limits.ts';

function limiter() {
  let now = 0;
  const l = new LoginLimiter({
    perAddress: { burst: 3, refillPerSecond: 1 },
    perUser: { burst: 10, refillPerSecond: 1 },
    baseDelayMs: 100,
    maxDelayMs: 1000,
    now: () => now,
  });
  return { l, tick: (ms: number) => (now += ms) };
}

test('failures within the burst cost nothing; beyond it the delay doubles up to the cap', () => {
  const { l } = limiter();
  for (let i = 0; i < 3; i++) {
    assert.equal(l.delay('1.1.1.1', 'u').ms, 0);
    l.failed('1.1.1.1', 'u');
  }
  const delays: number[] = [];
  for (let i = 0; i < 6; i++) {
    delays.push(l.delay('1.1.1.1', 'u').ms);
    l.failed('1.1.1.1', 'u');
  }
  assert.deepEqual(delays, [100, 200, 400, 800, 1000, 1000]);
  assert.equal(l.delay('1.1.1.1', 'u').limit, 'address');
  assert.equal(l.delay('2.2.2.2', 'other').ms, 0, 'another address and user are not affected');
});

test('time refills the budget; a success clears the address', () => {
  const { l, tick } = limiter();
  for (let i = 0; i < 5; i++) l.failed('a', 'u');
  assert.ok(l.delay('a', 'u').ms > 0);
  tick(2000);
  assert.equal(l.delay('a', 'u').ms, 0);
  for (let i = 0; i < 5; i++) l.failed('a', 'u');
  l.succeeded('a');
  assert.equal(l.delay('a', 'u').ms, 0);
});

test('many addresses against one user hit the per-user budget', () => {
  const { l } = limiter();
  for (let i = 0; i < 11; i++) l.failed(`10.0.0.${i}`, 'admin');
  const d = l.delay('10.9.9.9', 'admin');
  assert.ok(d.ms > 0);
  assert.equal(d.limit, 'user');
});

test('startups per second', () => {
  let now = 0;
  const r = new StartupRate(2, () => now);
  assert.deepEqual([r.allow(), r.allow(), r.allow()], [true, true, false]);
  now += 500;
  assert.equal(r.allow(), true);
  assert.equal(new StartupRate(0).allow(), true);
});
