// Test helpers for StreamScanner: a recording ScanHandler and an independent reference model of what it must do.
import type { ScanHandler } from '../framer.ts';

export interface Inspected {
  type: number;
  body: Buffer;
  /** Bytes forwarded before onMessage was called for this message. */
  forwardedBefore: number;
}

/** Records everything a StreamScanner hands out. `drop(type, body)` decides onMessage's answer. */
export class RecordingHandler implements ScanHandler {
  readonly forwarded: Buffer[] = [];
  readonly notes: [number, number][] = [];
  readonly inspected: Inspected[] = [];
  forwardedBytes = 0;

  /** When set, onMessage first asks the scanner to flush what precedes the message (as a writing handler must). */
  scanner: { flushBefore(): void } | undefined;

  constructor(private readonly drop: (type: number, body: Buffer) => boolean = () => false) {}

  onNote(type: number, length: number): void {
    this.notes.push([type, length]);
  }

  onMessage(type: number, body: Buffer): boolean {
    this.scanner?.flushBefore();
    // The body may be a view into the caller's chunk: copy it, as a real handler must.
    this.inspected.push({ type, body: Buffer.from(body), forwardedBefore: this.forwardedBytes });
    return this.drop(type, body);
  }

  forward(bytes: Buffer): void {
    this.forwarded.push(bytes);
    this.forwardedBytes += bytes.length;
  }

  output(): Buffer {
    return Buffer.concat(this.forwarded);
  }
}

export interface ExpectedScan {
  output: Buffer;
  notes: [number, number][];
  inspected: Inspected[];
}

/**
 * Reference model: walks a stream of whole, valid messages and says what the scanner must report.
 * `policy[type]`: 0 PASS, 1 NOTE, 2 INSPECT.
 */
export function expectedScan(
  stream: Buffer,
  policy: Uint8Array,
  drop: (type: number, body: Buffer) => boolean,
): ExpectedScan {
  const kept: Buffer[] = [];
  const notes: [number, number][] = [];
  const inspected: Inspected[] = [];
  let out = 0;
  let pos = 0;
  while (pos < stream.length) {
    const type = stream[pos]!;
    const len = stream.readInt32BE(pos + 1);
    const frame = stream.subarray(pos, pos + 1 + len);
    const p = policy[type] ?? 0;
    let dropped = false;
    if (p === 2) {
      const body = frame.subarray(5);
      inspected.push({ type, body: Buffer.from(body), forwardedBefore: out });
      dropped = drop(type, body);
    } else if (p === 1) {
      notes.push([type, len]);
    }
    if (!dropped) {
      kept.push(frame);
      out += frame.length;
    }
    pos += 1 + len;
  }
  return { output: Buffer.concat(kept), notes, inspected };
}

/** A small deterministic PRNG (mulberry32) for reproducible random chunkings in unit tests. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
