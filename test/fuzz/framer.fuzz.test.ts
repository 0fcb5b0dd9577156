// Time-boxed fast-check properties over src/protocol: framers, the relay scanner and the decoders on hostile bytes.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import fc from 'fast-check';
import {
  decodeAuthentication,
  decodeBackendKeyData,
  decodeErrorFields,
  decodeParameterStatus,
  decodeReadyForQuery,
  encodeError,
  encodeParameterStatus,
  pgErrorFromFields,
} from '../../src/protocol/backend.ts';
import { PgError, type Severity } from '../../src/protocol/errors.ts';
import { MessageFramer, Scan, StartupFramer, StreamScanner } from '../../src/protocol/framer.ts';
import {
  CANCEL_REQUEST_CODE,
  decodePassword,
  decodeSaslInitialResponse,
  decodeStartupPacket,
  encodeStartupMessage,
  GSSENC_REQUEST_CODE,
  PROTOCOL_3_0,
  SSL_REQUEST_CODE,
} from '../../src/protocol/frontend.ts';
import { own } from '../../src/protocol/testing/builders.ts';
import { expectedScan, RecordingHandler } from '../../src/protocol/testing/scan.ts';

/** Total budget for this file (default 5 s), shared by the properties below. */
const FUZZ_SECONDS = Number(process.env['FUZZ_SECONDS'] ?? 5) || 5;
/** A run that makes no progress this long after its property's time limit is stuck in a loop. */
const STALL_MS = 10_000;
/** Worker start-up (tsx compiles this file again in the worker), generous for a busy 2-core CI box. */
const START_MS = 60_000;

type PropertyFactory = () => fc.IProperty<unknown>;
const properties = new Map<string, PropertyFactory>();

/**
 * Declares a property. They run in a worker thread so that a decoder stuck in an endless synchronous loop fails the
 * test (the watchdog terminates the worker) instead of hanging the whole run.
 */
function fuzz(name: string, make: () => fc.IProperty<unknown>): void {
  properties.set(name, make);
}

/** Only PgError may escape a decoder or framer. */
function onlyPgError(fn: () => void): PgError | null {
  try {
    fn();
    return null;
  } catch (e) {
    if (e instanceof PgError) return e;
    throw e;
  }
}

/** Records every Buffer.alloc/allocUnsafe size requested while `fn` runs. */
function allocations<T>(fn: () => T): { result: T; sizes: number[] } {
  const sizes: number[] = [];
  const alloc = Buffer.alloc;
  const allocUnsafe = Buffer.allocUnsafe;
  Buffer.alloc = ((size: number, ...rest: never[]) => {
    sizes.push(size);
    return alloc.call(Buffer, size, ...rest);
  }) as typeof Buffer.alloc;
  Buffer.allocUnsafe = ((size: number) => {
    sizes.push(size);
    return allocUnsafe.call(Buffer, size);
  }) as typeof Buffer.allocUnsafe;
  try {
    return { result: fn(), sizes };
  } finally {
    Buffer.alloc = alloc;
    Buffer.allocUnsafe = allocUnsafe;
  }
}

/** Cuts `buf` at the given (unsorted, possibly out of range) positions into chunks with their own ArrayBuffers. */
function cut(buf: Buffer, positions: number[]): Buffer[] {
  const cuts = [...new Set(positions.map((p) => (buf.length === 0 ? 0 : p % (buf.length + 1))))].sort(
    (a, b) => a - b,
  );
  const out: Buffer[] = [];
  let prev = 0;
  for (const c of [...cuts, buf.length]) {
    out.push(own(buf.subarray(prev, c)));
    prev = c;
  }
  return out;
}

/** What a string becomes after a trip through UTF-8 (lone surrogates turn into U+FFFD). */
const utf8 = (s: string) => Buffer.from(s, 'utf8').toString('utf8');

const be32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(v | 0, 0);
  return b;
};

/** Bytes that look like message bodies: NULs and letters are common, so C strings and terminators occur. */
const bodyBytes = (maxLength: number) =>
  fc.oneof(
    fc.uint8Array({ maxLength }),
    fc
      .array(fc.constantFrom(0, 0, 0x41, 0x53, 0x61, 0xc3, 0xa9, 0xff), { maxLength })
      .map((a) => Uint8Array.from(a)),
  );

/** A length that is sometimes right, sometimes off by a little, sometimes wild. */
const lengthFor = (right: number) =>
  fc.oneof(
    { weight: 6, arbitrary: fc.constant(right) },
    { weight: 2, arbitrary: fc.integer({ min: -6, max: 6 }).map((d) => right + d) },
    { weight: 1, arbitrary: fc.integer({ min: -0x80000000, max: 0x7fffffff }) },
  );

/** Startup-phase traffic: one or more plausible packets, or plain noise. */
const startupStream = fc.oneof(
  fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)),
  fc
    .array(
      fc
        .tuple(
          fc.oneof(
            fc.constantFrom(PROTOCOL_3_0, PROTOCOL_3_0 + 2, 2 << 16, SSL_REQUEST_CODE, GSSENC_REQUEST_CODE),
            fc.constant(CANCEL_REQUEST_CODE),
            fc.integer({ min: -0x80000000, max: 0x7fffffff }),
          ),
          bodyBytes(80),
        )
        .chain(([code, body]) =>
          lengthFor(8 + body.length).map((len) => Buffer.concat([be32(len), be32(code), body])),
        ),
      { minLength: 1, maxLength: 4 },
    )
    .map((pkts) => Buffer.concat(pkts)),
);

/** A message type from a small alphabet (so policies hit) or any byte. */
const typeByte = fc.oneof(
  fc.constantFrom(0x44, 0x45, 0x51, 0x53, 0x58, 0x5a, 0x64),
  fc.integer({ min: 0, max: 255 }),
);

/** Typed traffic: messages with mostly-right lengths, or noise. */
const typedStream = fc.oneof(
  fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)),
  fc
    .array(
      fc
        .tuple(typeByte, bodyBytes(60))
        .chain(([t, body]) =>
          lengthFor(4 + body.length).map((len) => Buffer.concat([Buffer.from([t]), be32(len), body])),
        ),
      { minLength: 1, maxLength: 6 },
    )
    .map((m) => Buffer.concat(m)),
);

const cuts = fc.array(fc.nat(), { maxLength: 12 });

/** A random 256-entry policy: each byte PASS, NOTE or INSPECT. */
const randomPolicy = fc
  .uint8Array({ minLength: 256, maxLength: 256 })
  .map((a) => Uint8Array.from(a, (v) => (v < 100 ? Scan.PASS : v < 170 ? Scan.NOTE : Scan.INSPECT)));

fuzz('StartupFramer + decodeStartupPacket throw only PgError and never hand out more than the cap', () => {
  return fc.property(startupStream, cuts, fc.integer({ min: 8, max: 200 }), (stream, positions, max) => {
    const f = new StartupFramer(max);
    const chunks = cut(stream, positions);
    const { sizes } = allocations(() =>
      onlyPgError(() => {
        for (const chunk of chunks) {
          f.push(chunk);
          // Each packet is >= 8 bytes, so more iterations than that means next() is not making progress.
          for (let i = 0; i <= stream.length / 8 + 1; i++) {
            const body = f.next();
            if (body === null) break;
            assert.ok(
              body.length >= 4 && body.length <= max - 4,
              `packet body ${body.length} over cap ${max}`,
            );
            onlyPgError(() => decodeStartupPacket(body));
            assert.ok(i < stream.length / 8, 'next() loops');
          }
        }
      }),
    );
    for (const s of sizes) assert.ok(s <= max, `allocated ${s} > ${max}`);
  });
});

fuzz('MessageFramer throws only PgError, never hands out a body over max, never allocates beyond it', () => {
  return fc.property(typedStream, cuts, fc.integer({ min: 0, max: 80 }), (stream, positions, max) => {
    const f = new MessageFramer(max);
    const chunks = cut(stream, positions);
    let seen = 0;
    const { sizes } = allocations(() =>
      onlyPgError(() => {
        for (const chunk of chunks) {
          f.push(chunk);
          for (;;) {
            const m = f.next();
            if (m === null) break;
            assert.ok(m.body.length <= max, `body ${m.body.length} over cap ${max}`);
            seen += 5 + m.body.length;
            assert.ok(seen <= stream.length, 'next() hands out more bytes than were pushed');
          }
        }
      }),
    );
    for (const s of sizes) assert.ok(s <= max + 5, `allocated ${s} > ${max + 5}`);
  });
});

fuzz('StreamScanner on hostile bytes: only PgError, bounded assembly, output a prefix of the input', () => {
  return fc.property(
    typedStream,
    cuts,
    randomPolicy,
    fc.integer({ min: 0, max: 80 }),
    (stream, positions, policy, max) => {
      const chunks = cut(stream, positions);
      const inputs = new Set<ArrayBufferLike>(chunks.map((c) => c.buffer));
      const h = new RecordingHandler();
      const s = new StreamScanner(policy, max, h);
      const { sizes } = allocations(() =>
        onlyPgError(() => {
          for (const c of chunks) s.push(c);
        }),
      );
      // Nothing dropped, so everything forwarded is the input, in order, up to where it stopped.
      const out = h.output();
      assert.ok(out.equals(stream.subarray(0, out.length)), 'forwarded bytes are not a prefix of the input');
      for (const m of h.inspected) {
        assert.equal(policy[m.type], Scan.INSPECT, 'onMessage for a non-INSPECT type');
        assert.ok(m.body.length <= max, `inspected body ${m.body.length} over maxInspect ${max}`);
      }
      for (const [t] of h.notes) assert.equal(policy[t], Scan.NOTE, 'onNote for a non-NOTE type');
      for (const b of h.forwarded) {
        if (inputs.has(b.buffer)) continue;
        // Not a view of an input chunk: the re-emitted 5-byte header, or an assembled INSPECT message.
        if (b.length === 5) continue;
        assert.equal(policy[b[0]!], Scan.INSPECT, 'a copied forward that is not an INSPECT message');
        assert.ok(b.length <= max + 5, `assembled ${b.length} over maxInspect`);
      }
      for (const n of sizes) assert.ok(n <= max + 5, `scanner allocated ${n} > maxInspect + 5`);
    },
  );
});

fuzz('StreamScanner gives the same answer for any chunking of the same bytes', () => {
  return fc.property(
    typedStream,
    cuts,
    randomPolicy,
    fc.integer({ min: 0, max: 80 }),
    (stream, positions, policy, max) => {
      const drop = (_t: number, body: Buffer) => body.length % 3 === 0;
      const once = new RecordingHandler(drop);
      const e1 = onlyPgError(() => new StreamScanner(policy, max, once).push(own(stream)));
      const split = new RecordingHandler(drop);
      const s = new StreamScanner(policy, max, split);
      const e2 = onlyPgError(() => {
        for (const c of cut(stream, positions)) s.push(c);
      });
      assert.equal(e2?.code, e1?.code);
      assert.deepEqual(
        split.inspected.map((m) => [m.type, m.body]),
        once.inspected.map((m) => [m.type, m.body]),
      );
      assert.deepEqual(split.notes, once.notes);
      if (e1 === null) {
        // Same bytes out, except the tail that the split run is still holding (partial header/INSPECT message).
        assert.ok(split.output().equals(once.output().subarray(0, split.forwardedBytes)));
        if (s.atBoundary) assert.ok(split.output().equals(once.output()));
      }
    },
  );
});

/** A valid message stream: [type, body] pairs over a small alphabet, some empty, a few large. */
const validMessages = fc.array(
  fc.tuple(
    fc.constantFrom(0x44, 0x45, 0x51, 0x53, 0x58, 0x5a, 0x64, 0x00, 0xff),
    fc.oneof(
      { weight: 4, arbitrary: fc.uint8Array({ maxLength: 24 }) },
      { weight: 1, arbitrary: fc.constant(new Uint8Array(0)) },
      { weight: 1, arbitrary: fc.integer({ min: 100, max: 3000 }).map((n) => new Uint8Array(n).fill(0x5a)) },
    ),
  ),
  { maxLength: 20 },
);

function encodeStream(msgs: [number, Uint8Array][]): Buffer {
  return Buffer.concat(
    msgs.map(([t, body]) => {
      const m = Buffer.alloc(5 + body.length);
      m[0] = t;
      m.writeInt32BE(4 + body.length, 1);
      m.set(body, 5);
      return m;
    }),
  );
}

fuzz('StreamScanner round trip: forwarded == input minus dropped, in order, for any chunking', () => {
  return fc.property(
    validMessages,
    cuts,
    randomPolicy,
    fc.array(fc.boolean(), { minLength: 1, maxLength: 8 }),
    (msgs, positions, policy, drops) => {
      const stream = encodeStream(msgs);
      // The i-th inspected message is dropped if drops[i % n]; the model and the scanner count the same way.
      const dropper = () => {
        let i = 0;
        return () => drops[i++ % drops.length]!;
      };
      const want = expectedScan(stream, policy, dropper());
      const h = new RecordingHandler(dropper());
      const s = new StreamScanner(policy, 3000, h);
      h.scanner = s; // ordering as a writing handler sees it: flushBefore() first
      for (const c of cut(stream, positions)) s.push(c);
      assert.ok(s.atBoundary);
      assert.ok(h.output().equals(want.output), 'forwarded bytes');
      assert.deepEqual(h.notes, want.notes);
      assert.deepEqual(
        h.inspected.map((m) => [m.type, m.body, m.forwardedBefore]),
        want.inspected.map((m) => [m.type, m.body, m.forwardedBefore]),
      );
      for (const b of h.forwarded) assert.ok(b.length > 0, 'empty forward');
    },
  );
});

fuzz('MessageFramer round trip on valid streams for any chunking', () => {
  return fc.property(validMessages, cuts, (msgs, positions) => {
    const stream = encodeStream(msgs);
    const f = new MessageFramer(3000);
    const got: [number, Uint8Array][] = [];
    for (const c of cut(stream, positions)) {
      f.push(c);
      for (let m = f.next(); m !== null; m = f.next()) got.push([m.type, new Uint8Array(m.body)]);
    }
    assert.equal(f.pending, 0);
    assert.deepEqual(
      got,
      msgs.map(([t, b]) => [t, new Uint8Array(b)]),
    );
  });
});

fuzz('decoders throw only PgError on any body; encoders round trip', () => {
  const decoders: ((b: Buffer) => unknown)[] = [
    decodeAuthentication,
    decodeErrorFields,
    (b) => pgErrorFromFields(decodeErrorFields(b)),
    decodeSaslInitialResponse,
    decodePassword,
    decodeBackendKeyData,
    decodeParameterStatus,
    decodeReadyForQuery,
    decodeStartupPacket,
  ];
  const auth = fc
    .tuple(fc.constantFrom(0, 3, 5, 10, 11, 12, 7), bodyBytes(40))
    .map(([code, rest]) => Buffer.concat([be32(code), rest]));
  const sasl = fc
    .tuple(bodyBytes(20), fc.integer({ min: -3, max: 30 }), bodyBytes(30))
    .map(([mech, len, data]) => Buffer.concat([mech, Buffer.from([0]), be32(len), data]));
  const anyBody = fc.oneof(
    bodyBytes(100).map((a) => Buffer.from(a)),
    auth,
    sasl,
  );
  // Any code points, lone surrogates and NUL included (fc.string's 'binary' unit costs a second to set up).
  const text = fc
    .array(
      fc.oneof(
        fc.integer({ min: 0, max: 0x7f }),
        fc.constant(0),
        fc.integer({ min: 0x80, max: 0xffff }),
        fc.integer({ min: 0x10000, max: 0x10ffff }),
      ),
      { maxLength: 40 },
    )
    .map((cps) => String.fromCodePoint(...cps));
  const severity = fc.constantFrom<Severity>('ERROR', 'FATAL', 'PANIC', 'WARNING', 'NOTICE');
  return fc.property(
    anyBody,
    severity,
    text,
    fc.option(text, { nil: undefined }),
    fc.array(fc.tuple(text, text), { maxLength: 4 }),
    (body, sev, message, detail, params) => {
      for (const d of decoders) onlyPgError(() => d(body));
      // ErrorResponse round trip, whatever the text (a NUL must not break the frame).
      const e = new PgError(sev, '42000', message, detail === undefined ? {} : { detail });
      const enc = encodeError(e);
      assert.equal(enc.readInt32BE(1), enc.length - 1);
      const back = pgErrorFromFields(decodeErrorFields(enc.subarray(5)));
      assert.equal(back.severity, sev);
      assert.equal(back.sqlState, '42000');
      assert.equal(back.message, utf8(message.replaceAll('\0', '\uFFFD')));
      // ParameterStatus and StartupMessage round trip for NUL-free names; with a NUL the encoder refuses.
      for (const [k, v] of params) {
        const err = onlyPgError(() => {
          const ps = encodeParameterStatus(k, v);
          const [k2, v2] = decodeParameterStatus(ps.subarray(5));
          assert.deepEqual([k2, v2], [utf8(k), utf8(v)]);
        });
        assert.equal(err !== null, k.includes('\0') || v.includes('\0'));
      }
      const named = params.filter(([k]) => k !== '');
      const err = onlyPgError(() => {
        const pkt = encodeStartupMessage(named);
        const d = decodeStartupPacket(pkt.subarray(4));
        assert.equal(d.kind, 'startup');
        if (d.kind === 'startup')
          assert.deepEqual(d.params, new Map(named.map(([k, v]) => [utf8(k), utf8(v)])));
      });
      assert.equal(
        err !== null,
        named.some(([k, v]) => k.includes('\0') || v.includes('\0')),
      );
    },
  );
});

// ---------------------------------------------------------------- harness: properties run in a watched worker

interface Job {
  name: string;
  ms: number;
  seed: number;
}
type Outcome = { name: string; ok: true; runs: number } | { name: string; ok: false; message: string };

if (isMainThread) {
  const deadline = performance.now() + FUZZ_SECONDS * 1000 * 0.9;
  const seed = Number(process.env['FUZZ_SEED']) || Math.floor(Math.random() * 0x7fffffff);
  /** Runs started in the current property, written by the worker, read when it is stuck. */
  const progress = new Int32Array(new SharedArrayBuffer(4));
  let worker: Promise<Worker> | null = null;

  const startWorker = (): Promise<Worker> => {
    // The worker does not inherit the tsx loader: register it there before importing this file.
    const tsx = import.meta.resolve('tsx/esm/api');
    const boot = `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(import.meta.url)}); })`;
    const w = new Worker(boot, { eval: true, workerData: { progress: progress.buffer } });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('fuzz worker did not start')), START_MS);
      w.once('message', () => {
        clearTimeout(timer);
        resolve(w);
      });
      w.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  };

  const runIn = (w: Worker, job: Job): Promise<Outcome> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const n = Atomics.load(progress, 0);
        void w.terminate();
        worker = null;
        reject(
          new Error(
            `"${job.name}" made no progress for ${STALL_MS} ms past its ${job.ms} ms budget: run ${n} never ended ` +
              `(an endless loop?). Replay: fc.assert(property, { seed: ${job.seed}, path: "${n - 1}" }), or FUZZ_SEED=${seed}.`,
          ),
        );
      }, job.ms + STALL_MS);
      const done = (fn: () => void) => {
        clearTimeout(timer);
        w.off('message', onMessage);
        w.off('error', onError);
        fn();
      };
      const onMessage = (o: Outcome) => done(() => resolve(o));
      const onError = (e: Error) =>
        done(() => {
          worker = null;
          reject(e);
        });
      w.on('message', onMessage);
      w.on('error', onError);
      w.postMessage(job);
    });

  const names = [...properties.keys()];
  for (const [i, name] of names.entries()) {
    test(`fuzz: ${name}`, async () => {
      worker ??= startWorker();
      const w = await worker;
      const ms = Math.max(100, Math.floor((deadline - performance.now()) / (names.length - i)));
      const outcome = await runIn(w, { name, ms, seed: seed + i });
      if (!outcome.ok) assert.fail(`${outcome.message}\nFUZZ_SEED=${seed} replays this file's inputs.`);
    });
  }
  after(async () => {
    const w = await worker?.catch(() => null);
    await w?.terminate();
  });
} else {
  const progress = new Int32Array((workerData as { progress: SharedArrayBuffer }).progress);
  parentPort!.on('message', (job: Job) => {
    const make = properties.get(job.name)!;
    Atomics.store(progress, 0, 0);
    let outcome: Outcome;
    try {
      // The time limit ends the property early and counts as a pass; numRuns only makes sure the clock is what
      // stops it. (Plugin form of interruptAfterTimeLimit + markInterruptAsFailure: false.)
      const details = fc.check(make(), {
        numRuns: 10_000_000,
        seed: job.seed,
        plugins: [
          fc.interruptAfterTimeLimit(job.ms, { failOnInterrupt: false }),
          fc.beforeEach(() => {
            Atomics.add(progress, 0, 1);
          }),
        ],
      });
      outcome = details.failed
        ? { name: job.name, ok: false, message: fc.defaultReportMessage(details) ?? 'failed' }
        : { name: job.name, ok: true, runs: details.numRuns };
    } catch (e) {
      outcome = {
        name: job.name,
        ok: false,
        message: e instanceof Error ? (e.stack ?? e.message) : String(e),
      };
    }
    parentPort!.postMessage(outcome);
  });
  parentPort!.postMessage('ready');
}
