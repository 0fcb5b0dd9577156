// Byte-fixture tests for framer.ts: StartupFramer, MessageFramer and the relay's StreamScanner.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PgError } from './errors.ts';
import {
  MAX_AUTH_MESSAGE,
  MAX_STARTUP_PACKET,
  MessageFramer,
  printable,
  Scan,
  StartupFramer,
  StreamScanner,
  scanPolicy,
} from './framer.ts';
import {
  auth,
  backendKeyData,
  cancelRequest,
  chunked,
  commandComplete,
  dataRow,
  dataRowHeader,
  everySplit,
  header,
  msg,
  parameterStatus,
  query,
  readyForQuery,
  splitAt,
  sslRequest,
  startup,
  terminate,
  untyped,
} from './testing/builders.ts';
import { expectedScan, prng, RecordingHandler } from './testing/scan.ts';

function isPgError(sqlState: string, code?: string) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof PgError, `expected PgError, got ${String(err)}`);
    assert.equal(err.sqlState, sqlState);
    if (code !== undefined) assert.equal(err.code, code);
    return true;
  };
}

function drainStartup(f: StartupFramer): Buffer[] {
  const out: Buffer[] = [];
  for (let b = f.next(); b !== null; b = f.next()) out.push(b);
  return out;
}

function drainMessages(f: MessageFramer): { type: number; body: Buffer }[] {
  const out: { type: number; body: Buffer }[] = [];
  for (let m = f.next(); m !== null; m = f.next()) out.push(m);
  return out;
}

// ---------------------------------------------------------------- StartupFramer

test('StartupFramer: a whole packet gives its body (request code first)', () => {
  const pkt = startup({ user: 'alice', database: 'app' });
  const f = new StartupFramer();
  assert.equal(f.next(), null);
  f.push(pkt);
  const body = f.next();
  assert.deepEqual(body, pkt.subarray(4));
  assert.equal(f.next(), null);
  assert.equal(f.pending, 0);
});

test('StartupFramer: a packet split at every byte position', () => {
  const pkt = startup({ user: 'alice', database: 'app', application_name: 'psql' });
  for (const [a, b] of everySplit(pkt)) {
    const f = new StartupFramer();
    f.push(a);
    const early = f.next();
    if (a.length < pkt.length) assert.equal(early, null, `split at ${a.length}`);
    f.push(b);
    const got = early ?? f.next();
    assert.deepEqual(got, pkt.subarray(4), `split at ${a.length}`);
    assert.equal(f.pending, 0);
  }
});

test('StartupFramer: byte by byte', () => {
  const pkt = startup({ user: 'u' });
  const f = new StartupFramer();
  const got: Buffer[] = [];
  for (const byte of pkt) {
    f.push(Buffer.from([byte]));
    got.push(...drainStartup(f));
  }
  assert.deepEqual(got, [pkt.subarray(4)]);
});

test('StartupFramer: two packets (and the start of a third) in one chunk', () => {
  const a = sslRequest();
  const b = startup({ user: 'bob' });
  const c = cancelRequest(42);
  const f = new StartupFramer();
  f.push(Buffer.concat([a, b, c.subarray(0, 7)]));
  assert.deepEqual(drainStartup(f), [a.subarray(4), b.subarray(4)]);
  assert.equal(f.pending, 7);
  f.push(c.subarray(7));
  assert.deepEqual(drainStartup(f), [c.subarray(4)]);
});

test('StartupFramer: the body handed out is a copy, not a view of the input', () => {
  const pkt = startup({ user: 'alice' });
  const f = new StartupFramer();
  f.push(pkt);
  const body = f.next()!;
  assert.notEqual(body.buffer, pkt.buffer);
  pkt.fill(0);
  assert.equal(body.readInt32BE(0), 196608);
});

test('StartupFramer: drain() hands back what follows the packet and empties the queue', () => {
  const f = new StartupFramer();
  const extra = Buffer.from('extra');
  f.push(Buffer.concat([sslRequest(), extra]));
  assert.notEqual(f.next(), null);
  assert.equal(f.pending, 5);
  assert.deepEqual(f.drain(), extra);
  assert.equal(f.pending, 0);
  assert.deepEqual(f.drain(), Buffer.alloc(0));
  assert.equal(f.next(), null);
});

test('StartupFramer: length < 8 is a protocol violation, as soon as the length is in', () => {
  for (const len of [-1, 0, 4, 7, -2147483648]) {
    const f = new StartupFramer();
    f.push(untyped(Buffer.alloc(0), len));
    assert.throws(() => f.next(), isPgError('08P01', 'GPRXY_BAD_STARTUP_LENGTH'), `len ${len}`);
  }
  // Split length word: still detected once the 4 bytes are in.
  const f = new StartupFramer();
  const bad = untyped(Buffer.alloc(0), 7);
  f.push(bad.subarray(0, 3));
  assert.equal(f.next(), null);
  f.push(bad.subarray(3));
  assert.throws(() => f.next(), isPgError('08P01', 'GPRXY_BAD_STARTUP_LENGTH'));
});

test('StartupFramer: length over the max is refused without waiting for the body', () => {
  const f = new StartupFramer();
  f.push(untyped(Buffer.alloc(0), MAX_STARTUP_PACKET + 1));
  assert.throws(() => f.next(), isPgError('08P01', 'GPRXY_BAD_STARTUP_LENGTH'));
  const g = new StartupFramer();
  g.push(untyped(Buffer.alloc(0), 0x7fffffff));
  assert.throws(() => g.next(), isPgError('08P01', 'GPRXY_BAD_STARTUP_LENGTH'));
  // A custom max; exactly max is fine.
  const h = new StartupFramer(100);
  h.push(untyped(Buffer.alloc(96, 1)));
  assert.equal(h.next()?.length, 96);
  h.push(untyped(Buffer.alloc(97, 1)));
  assert.throws(() => h.next(), isPgError('08P01', 'GPRXY_BAD_STARTUP_LENGTH'));
});

test('StartupFramer: the smallest packet (8 bytes) and one at the default max', () => {
  const f = new StartupFramer();
  f.push(sslRequest());
  assert.equal(f.next()?.length, 4);
  const big = untyped(Buffer.alloc(MAX_STARTUP_PACKET - 4, 7));
  f.push(big);
  assert.equal(f.next()?.length, MAX_STARTUP_PACKET - 4);
});

// ---------------------------------------------------------------- MessageFramer

const loginStream = Buffer.concat([
  auth(0),
  parameterStatus('server_version', '17.2'),
  parameterStatus('client_encoding', 'UTF8'),
  backendKeyData(1234),
  msg('X'),
  readyForQuery('I'),
]);

function framesOf(stream: Buffer): { type: number; body: Buffer }[] {
  const out: { type: number; body: Buffer }[] = [];
  for (let pos = 0; pos < stream.length; ) {
    const len = stream.readInt32BE(pos + 1);
    out.push({ type: stream[pos]!, body: stream.subarray(pos + 5, pos + 1 + len) });
    pos += 1 + len;
  }
  return out;
}

test('MessageFramer: a stream split at every byte position', () => {
  const want = framesOf(loginStream);
  for (const [a, b] of everySplit(loginStream)) {
    const f = new MessageFramer();
    f.push(a);
    const got = drainMessages(f);
    f.push(b);
    got.push(...drainMessages(f));
    assert.deepEqual(got, want, `split at ${a.length}`);
    assert.equal(f.pending, 0);
  }
});

test('MessageFramer: byte by byte and in random chunkings', () => {
  const want = framesOf(loginStream);
  const rnd = prng(7);
  for (let round = 0; round < 50; round++) {
    const f = new MessageFramer();
    const got: { type: number; body: Buffer }[] = [];
    for (let pos = 0; pos < loginStream.length; ) {
      const k = round === 0 ? 1 : 1 + Math.floor(rnd() * 12);
      f.push(loginStream.subarray(pos, pos + k));
      got.push(...drainMessages(f));
      pos += k;
    }
    assert.deepEqual(got, want);
  }
});

test('MessageFramer: an empty-body message (len 4)', () => {
  const f = new MessageFramer();
  f.push(terminate());
  const m = f.next();
  assert.equal(m?.type, 0x58);
  assert.equal(m?.body.length, 0);
});

test('MessageFramer: over-max is refused as soon as the header is complete', () => {
  const f = new MessageFramer(100);
  const h = header('p', 4 + 101);
  f.push(h.subarray(0, 4));
  assert.equal(f.next(), null);
  f.push(h.subarray(4));
  assert.throws(() => f.next(), isPgError('08P01', 'GPRXY_MESSAGE_TOO_LARGE'));
  // The huge declared length is never allocated: only the header was buffered.
  assert.equal(f.pending, 5);

  const g = new MessageFramer();
  g.push(header('p', 0x7fffffff));
  assert.throws(() => g.next(), isPgError('08P01', 'GPRXY_MESSAGE_TOO_LARGE'));
  const g2 = new MessageFramer();
  g2.push(header('p', MAX_AUTH_MESSAGE + 5));
  assert.throws(() => g2.next(), isPgError('08P01', 'GPRXY_MESSAGE_TOO_LARGE'));
});

test('MessageFramer: exactly max body bytes is accepted', () => {
  const f = new MessageFramer(100);
  const m = msg('p', Buffer.alloc(100, 3));
  f.push(m.subarray(0, 50));
  assert.equal(f.next(), null);
  f.push(m.subarray(50));
  assert.equal(f.next()?.body.length, 100);
});

test('MessageFramer: length < 4 is a protocol violation', () => {
  for (const len of [3, 0, -1, -2147483648]) {
    const f = new MessageFramer();
    f.push(header('Q', len));
    assert.throws(() => f.next(), isPgError('08P01', 'GPRXY_BAD_LENGTH'), `len ${len}`);
  }
});

test('MessageFramer: the frame body is a copy of the input', () => {
  const q = query('select 1');
  const f = new MessageFramer();
  f.push(q);
  const m = f.next()!;
  assert.notEqual(m.body.buffer, q.buffer);
  q.fill(0);
  assert.equal(m.body.toString('latin1'), 'select 1\0');
});

test('printable: printable ASCII as itself, the rest as hex', () => {
  assert.equal(printable(0x51), 'Q');
  assert.equal(printable(0), '0x0');
  assert.equal(printable(0xff), '0xff');
  assert.equal(printable(0x7f), '0x7f');
});

// ---------------------------------------------------------------- StreamScanner

/** Backend-ish policy: C Z E inspected, D noted; S N K T... pass. X (empty body) inspected too. */
const policy = scanPolicy({
  C: Scan.INSPECT,
  Z: Scan.INSPECT,
  E: Scan.INSPECT,
  X: Scan.INSPECT,
  D: Scan.NOTE,
});
/** Drops every 'E' and ReadyForQuery 'T'. */
const drop = (type: number, body: Buffer) => type === 0x45 || (type === 0x5a && body[0] === 0x54);

const relayStream = Buffer.concat([
  msg('T', Buffer.from('rowdesc-bytes')),
  dataRow(3),
  dataRow(0),
  msg('X'),
  commandComplete('SELECT 2'),
  readyForQuery('T'),
  msg('X'),
  msg('X'),
  msg('E', Buffer.from('Serror\0\0')),
  parameterStatus('TimeZone', 'UTC'),
  readyForQuery('I'),
  msg('X'),
]);

function scanChunks(chunks: Buffer[], maxInspect = 1024, flushFirst = false): RecordingHandler {
  const h = new RecordingHandler(drop);
  const s = new StreamScanner(policy, maxInspect, h);
  if (flushFirst) h.scanner = s;
  for (const c of chunks) s.push(c);
  assert.ok(s.atBoundary, 'ends at a boundary');
  return h;
}

/** A compact, comparable summary of what the scanner reported (deepEqual on thousands of splits is slow). */
function summary(
  out: Buffer,
  notes: [number, number][],
  inspected: { type: number; body: Buffer }[],
): string {
  return [
    out.toString('hex'),
    notes.map(([t, l]) => `${t}:${l}`).join(','),
    inspected.map((m) => `${m.type}:${m.body.toString('hex')}`).join(','),
  ].join('|');
}

const wantCache = new Map<Buffer, string>();

function assertScan(h: RecordingHandler, stream: Buffer, label: string): void {
  let want = wantCache.get(stream);
  if (want === undefined) {
    const e = expectedScan(stream, policy, drop);
    want = summary(e.output, e.notes, e.inspected);
    wantCache.set(stream, want);
  }
  assert.equal(summary(h.output(), h.notes, h.inspected), want, label);
  for (const b of h.forwarded) assert.ok(b.length > 0, `no empty forwards, ${label}`);
}

test('StreamScanner: one chunk', () => {
  assertScan(scanChunks([relayStream]), relayStream, 'one chunk');
});

test('StreamScanner: every split in two, and byte by byte', () => {
  for (const [a, b] of everySplit(relayStream)) assertScan(scanChunks([a, b]), relayStream, `at ${a.length}`);
  assertScan(scanChunks(chunked(relayStream, 1)), relayStream, 'byte by byte');
});

test('StreamScanner: every split in three (short stream: PASS, NOTE, kept/dropped and empty INSPECT)', () => {
  const short = Buffer.concat([
    dataRow(1),
    msg('X'),
    readyForQuery('T'),
    msg('E', Buffer.from('e')),
    query('q'),
  ]);
  const n = short.length;
  for (let i = 0; i <= n; i++) {
    for (let j = i; j <= n; j++) {
      assertScan(scanChunks(splitAt(short, [i, j])), short, `at ${i},${j}`);
    }
  }
});

test('StreamScanner: random chunkings', () => {
  const rnd = prng(1);
  for (let round = 0; round < 300; round++) {
    const cuts: number[] = [];
    for (let p = Math.floor(rnd() * 9); p < relayStream.length; p += Math.floor(rnd() * 9)) cuts.push(p);
    assertScan(scanChunks(splitAt(relayStream, cuts)), relayStream, `round ${round}`);
  }
});

test('StreamScanner: after flushBefore(), every byte before an inspected message has been forwarded', () => {
  const want = expectedScan(relayStream, policy, drop);
  const check = (h: RecordingHandler, label: string) =>
    assert.deepEqual(
      h.inspected.map((m) => m.forwardedBefore),
      want.inspected.map((m) => m.forwardedBefore),
      label,
    );
  check(scanChunks([relayStream], 1024, true), 'one chunk');
  for (const [a, b] of everySplit(relayStream)) check(scanChunks([a, b], 1024, true), `at ${a.length}`);
});

test('StreamScanner: without a flush, a chunk with no dropped message goes out as one forward', () => {
  const stream = Buffer.concat([dataRow(3), msg('X'), dataRow(2)]);
  const h = new RecordingHandler(() => false);
  new StreamScanner(scanPolicy({ X: Scan.INSPECT }), 1024, h).push(stream);
  assert.equal(h.forwarded.length, 1);
  assert.equal(h.forwarded[0]!.length, stream.length);
});

test('StreamScanner: flushThrough() lets a handler write its own bytes right after a kept message', () => {
  const x = msg('X');
  const before = dataRow(2);
  const after = dataRow(1);
  const extra = Buffer.from('inserted');
  for (const chunks of [
    [Buffer.concat([before, x, after])],
    [Buffer.concat([before, x.subarray(0, 3)]), Buffer.concat([x.subarray(3), after])],
  ]) {
    const out: Buffer[] = [];
    let s: StreamScanner | undefined;
    const handler = {
      onNote: () => undefined,
      onMessage: () => {
        s!.flushThrough();
        out.push(extra);
        return false;
      },
      forward: (b: Buffer) => out.push(Buffer.from(b)),
    };
    s = new StreamScanner(scanPolicy({ X: Scan.INSPECT }), 1024, handler);
    for (const c of chunks) s.push(c);
    assert.deepEqual(Buffer.concat(out), Buffer.concat([before, x, extra, after]));
  }
});

test('StreamScanner: forwarded buffers are views of the input chunks when nothing is split', () => {
  const h = scanChunks([relayStream]);
  for (const b of h.forwarded) assert.equal(b.buffer, relayStream.buffer);
});

test('StreamScanner: empty-body INSPECT messages at chunk ends and with split headers', () => {
  const x = msg('X');
  const cases: Buffer[][] = [
    [x],
    [x, x],
    [Buffer.concat([dataRow(1), x]), x],
    [x.subarray(0, 1), x.subarray(1)],
    [x.subarray(0, 4), x.subarray(4)],
    [Buffer.concat([dataRow(1), x.subarray(0, 2)]), Buffer.concat([x.subarray(2), x])],
    [x.subarray(0, 3), x.subarray(3), Buffer.concat([x, x.subarray(0, 1)]), x.subarray(1)],
  ];
  for (const [i, chunks] of cases.entries()) {
    const stream = Buffer.concat(chunks);
    const h = scanChunks(chunks);
    assertScan(h, stream, `case ${i}`);
    assert.ok(h.inspected.every((m) => m.type === 0x58 && m.body.length === 0));
  }
});

test('StreamScanner: a dropped empty-body message is dropped wherever it is split', () => {
  const s2 = scanPolicy({ X: Scan.INSPECT });
  const x = msg('X');
  const q = query('select 1');
  const stream = Buffer.concat([q, x, q]);
  for (const [a, b] of everySplit(stream)) {
    const h = new RecordingHandler(() => true);
    const s = new StreamScanner(s2, 0, h);
    s.push(a);
    s.push(b);
    assert.deepEqual(h.output(), Buffer.concat([q, q]), `at ${a.length}`);
    assert.equal(h.inspected.length, 1);
  }
});

test('StreamScanner: a 20 MB PASS DataRow in 64 KiB chunks is forwarded as views, not copied', () => {
  const size = 20 * 1024 * 1024;
  const p = scanPolicy({ C: Scan.INSPECT, Z: Scan.INSPECT });
  const head = Buffer.concat([readyForQuery('T'), dataRowHeader(size)]);
  const tail = Buffer.concat([commandComplete('SELECT 1'), readyForQuery('I')]);
  // One allocation (never from the shared pool); the chunks are views of it, like socket reads would be.
  const stream = Buffer.alloc(head.length + size + tail.length, 0x62);
  head.copy(stream, 0);
  tail.copy(stream, head.length + size);
  for (const firstChunk of [64 * 1024, 8]) {
    // firstChunk 8: the DataRow header (at offset 6) straddles the first two chunks.
    const chunks = [stream.subarray(0, firstChunk)];
    for (let i = firstChunk; i < stream.length; i += 64 * 1024)
      chunks.push(stream.subarray(i, i + 64 * 1024));
    const h = new RecordingHandler();
    const s = new StreamScanner(p, 1024, h);
    const before = process.memoryUsage().arrayBuffers;
    for (const c of chunks) s.push(c);
    const grown = process.memoryUsage().arrayBuffers - before;
    assert.ok(grown < 1024 * 1024, `scanner allocated ${grown} bytes`);
    // Forwarded == input, checked piece by piece: views must sit exactly at their offset in the input.
    let off = 0;
    let copies = 0;
    for (const b of h.forwarded) {
      if (b.buffer === stream.buffer) {
        assert.equal(b.byteOffset - stream.byteOffset, off);
      } else {
        copies++;
        assert.equal(b.length, 5, 'only the re-emitted split header may be a copy');
        assert.ok(b.equals(stream.subarray(off, off + 5)));
      }
      off += b.length;
    }
    assert.equal(off, stream.length);
    assert.equal(copies, firstChunk === 8 ? 1 : 0);
    assert.ok(h.forwarded.length < chunks.length + 8, 'about one forward per chunk');
    assert.deepEqual(h.notes, []);
    assert.deepEqual(
      h.inspected.map((m) => String.fromCharCode(m.type)),
      ['Z', 'C', 'Z'],
    );
    assert.ok(s.atBoundary);
  }
});

test('StreamScanner: NOTE reports (type, length) once per message and never buffers it', () => {
  const p = scanPolicy({ D: Scan.NOTE });
  const h = new RecordingHandler();
  const s = new StreamScanner(p, 0, h);
  const big = dataRowHeader(1000);
  s.push(big.subarray(0, 3));
  assert.equal(s.atBoundary, false);
  s.push(big.subarray(3));
  assert.deepEqual(h.notes, [[0x44, 1010]]);
  s.push(Buffer.alloc(999));
  assert.equal(s.atBoundary, false);
  s.push(Buffer.alloc(1));
  assert.ok(s.atBoundary);
  assert.equal(h.forwardedBytes, 11 + 1000);
});

test('StreamScanner: INSPECT over maxInspect is refused as soon as the header is in', () => {
  const p = scanPolicy({ Q: Scan.INSPECT });
  const over = header('Q', 4 + 101);
  for (const [a, b] of everySplit(over)) {
    const h = new RecordingHandler();
    const s = new StreamScanner(p, 100, h);
    assert.throws(
      () => {
        s.push(a);
        s.push(b);
      },
      isPgError('08P01', 'GPRXY_MESSAGE_TOO_LARGE'),
      `at ${a.length}`,
    );
  }
  // Exactly maxInspect is fine, split or not.
  const ok = msg('Q', Buffer.alloc(100, 0x41));
  for (const [a, b] of everySplit(ok)) {
    const h = new RecordingHandler();
    const s = new StreamScanner(p, 100, h);
    s.push(a);
    s.push(b);
    assert.equal(h.inspected[0]?.body.length, 100);
    assert.deepEqual(h.output(), ok);
  }
  // A PASS type of any size is not capped.
  const h = new RecordingHandler();
  new StreamScanner(p, 100, h).push(header('D', 0x7fffffff));
  assert.equal(h.forwardedBytes, 5);
});

test('StreamScanner: length < 4 is a protocol violation (whole or split header, any policy)', () => {
  for (const type of ['Q', 'D', 'N']) {
    const p = scanPolicy({ Q: Scan.INSPECT, N: Scan.NOTE });
    for (const len of [3, 0, -1, -2147483648]) {
      const bad = Buffer.concat([query('x'), header(type, len)]);
      for (const [a, b] of everySplit(bad)) {
        const s = new StreamScanner(p, 1024, new RecordingHandler());
        assert.throws(
          () => {
            s.push(a);
            s.push(b);
          },
          isPgError('08P01', 'GPRXY_BAD_LENGTH'),
          `${type} len ${len} at ${a.length}`,
        );
      }
    }
  }
});

test('StreamScanner: an INSPECT body whole inside a chunk is a view of it; a split one is assembled', () => {
  const p = scanPolicy({ Q: Scan.INSPECT });
  const q = query('select 1');
  let seen: Buffer | undefined;
  const h = new RecordingHandler();
  const s = new StreamScanner(p, 1024, {
    onNote: () => {},
    onMessage: (t, body) => {
      seen = body;
      return h.onMessage(t, body);
    },
    forward: (b) => h.forward(b),
  });
  s.push(q);
  assert.equal(seen?.buffer, q.buffer);
  s.push(q.subarray(0, 7));
  s.push(q.subarray(7));
  assert.equal(seen?.toString('latin1'), 'select 1\0');
  assert.deepEqual(h.output(), Buffer.concat([q, q]));
});

test('StreamScanner: atBoundary tracks partial headers, skipped bodies and partial INSPECT messages', () => {
  const p = scanPolicy({ Q: Scan.INSPECT });
  const s = new StreamScanner(p, 1024, new RecordingHandler());
  assert.ok(s.atBoundary);
  const q = query('select 1');
  s.push(q.subarray(0, 2));
  assert.equal(s.atBoundary, false);
  s.push(q.subarray(2, 8));
  assert.equal(s.atBoundary, false);
  s.push(q.subarray(8));
  assert.ok(s.atBoundary);
  s.push(dataRow(4).subarray(0, 7));
  assert.equal(s.atBoundary, false);
  s.push(dataRow(4).subarray(7));
  assert.ok(s.atBoundary);
  s.push(Buffer.alloc(0));
  assert.ok(s.atBoundary);
});

test('scanPolicy: one entry per type byte, default PASS', () => {
  const p = scanPolicy({ Q: Scan.INSPECT, D: Scan.NOTE });
  assert.equal(p.length, 256);
  assert.equal(p[0x51], Scan.INSPECT);
  assert.equal(p[0x44], Scan.NOTE);
  assert.equal(p[0x58], Scan.PASS);
});
