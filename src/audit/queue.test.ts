// The audit queue: batches reach the sink in order, a failing sink keeps its records, drop counts, flush on an
// empty queue does not wedge later flushes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AuditQueue, type AuditSink } from './queue.ts';

function sink(fail: () => boolean) {
  const got: object[] = [];
  const s: AuditSink = {
    name: 'mem',
    async write(records) {
      if (fail()) throw new Error('down');
      got.push(...records);
    },
    async close() {},
  };
  return { s, got };
}

test('a flush of an empty queue does not stop later flushes', async () => {
  const { s, got } = sink(() => false);
  const q = new AuditQueue(s, 10, 'drop', () => undefined);
  await q.flush();
  q.push({ n: 1 });
  await q.flush();
  assert.deepEqual(got, [{ n: 1 }]);
  await q.close();
});

test('a failing sink keeps its records until it recovers; a full queue drops and counts', async () => {
  let down = true;
  const errors: string[] = [];
  const { s, got } = sink(() => down);
  const q = new AuditQueue(s, 3, 'drop', (_n, e) => errors.push(e.message));
  for (let i = 0; i < 5; i++) q.push({ i });
  await q.flush();
  assert.equal(q.depth, 3);
  assert.equal(q.dropped, 2);
  assert.ok(errors.includes('down'));
  down = false;
  await q.flush();
  assert.deepEqual(got, [{ i: 0 }, { i: 1 }, { i: 2 }]);
  assert.equal(q.depth, 0);
  await q.close();
});

test('records arriving one by one reach the sink in batches, not a write each', async () => {
  const sizes: number[] = [];
  const s: AuditSink = {
    name: 'disk',
    async write(records) {
      sizes.push(records.length);
      await new Promise((r) => setTimeout(r, 3)); // a write takes a while, as a file write under load does
    },
    async close() {},
  };
  const q = new AuditQueue(s, 10_000, 'drop', () => undefined);
  const t0 = performance.now();
  // 100 records about 1 ms apart: ~100 ms, so ~8 batches at the 10 ms flush delay (+3 ms per write). Records that
  // arrive during a write wait for the next batch instead of being written back to back (~35 writes).
  for (let i = 0; i < 100; i++) {
    q.push({ i });
    await new Promise((r) => setTimeout(r, 1));
  }
  const elapsed = performance.now() - t0;
  await q.close();
  assert.equal(
    sizes.reduce((a, b) => a + b, 0),
    100,
    'every record written',
  );
  // A partial batch waits the 10 ms flush delay after the previous write, so writes are at least 10 ms apart
  // (the last one comes from close()); back to back they would be ~3 ms apart (about 38 for 100 ms).
  const bound = Math.ceil(elapsed / 10) + 2;
  assert.ok(sizes.length <= bound, `${sizes.length} writes for 100 records in ${Math.round(elapsed)} ms`);
});
