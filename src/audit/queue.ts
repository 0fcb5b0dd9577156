// The bounded queue between the proxy and one audit sink: records wait here while the sink writes them in batches
// (a sink that is down keeps its records and retries); when full, `drop` counts and discards new records, `block`
// tells the caller to hold client reads until there is room. Records are written `flushDelayMs` after the first
// one of a batch (or at once when a batch is full): one sink write per batch, not per statement.

export type OverflowPolicy = 'block' | 'drop';

/**
 * A record's JSON line, when its producer built it already (statement records are serialised by hand from
 * pre-serialised session fields); a symbol key, so JSON.stringify and the table sink's columns never see it.
 */
export const AUDIT_LINE: unique symbol = Symbol('gprxy.audit.line');

export interface AuditSink {
  readonly name: string;
  /** Writes a batch; rejects to have the same batch retried later (records are kept). */
  write(records: readonly object[]): Promise<void>;
  close(): Promise<void>;
}

export class AuditQueue {
  private readonly items: object[] = [];
  private flushing: Promise<void> | null = null;
  private waiters: (() => void)[] = [];
  dropped = 0;
  written = 0;
  private timer: NodeJS.Timeout | undefined;
  /** A flush is scheduled (flushDelayMs after the first record since the last one). */
  private scheduled: NodeJS.Timeout | undefined;
  private closing = false;
  /** The last write failed: retries come from the retry timer only, not from every new record. */
  private failing = false;
  private readonly flushSoon = () => {
    this.scheduled = undefined;
    void this.flush();
  };

  constructor(
    readonly sink: AuditSink,
    private readonly capacity: number,
    readonly policy: OverflowPolicy,
    private readonly onSinkError: (sink: string, err: Error) => void,
    private readonly batchSize = 500,
    retryMs = 1000,
    private readonly flushDelayMs = 10,
  ) {
    this.timer = setInterval(() => void this.flush(), retryMs);
    this.timer.unref();
  }

  get depth(): number {
    return this.items.length;
  }

  get full(): boolean {
    return this.items.length >= this.capacity;
  }

  /** Adds a record; false when it was dropped (policy drop, queue full). */
  push(record: object): boolean {
    if (this.full && this.policy === 'drop') {
      this.dropped++;
      if (this.dropped === 1 || this.dropped % 1000 === 0) {
        this.onSinkError(this.sink.name, new Error(`queue full: ${this.dropped} records dropped so far`));
      }
      return false;
    }
    this.items.push(record);
    if (this.flushing) return true; // the flush in progress schedules what is left when it ends
    this.schedule();
    return true;
  }

  /** A full batch is written now; a partial one flushDelayMs after it was started, to let it fill. */
  private schedule(): void {
    if (this.failing || this.closing) return;
    if (this.items.length >= this.batchSize) {
      if (this.scheduled) clearTimeout(this.scheduled);
      this.scheduled = undefined;
      queueMicrotask(this.flushSoon);
    } else if (!this.scheduled && this.items.length > 0) {
      this.scheduled = setTimeout(this.flushSoon, this.flushDelayMs);
      this.scheduled.unref();
    }
  }

  /** Resolves when there is room again (policy block: the session pauses its client until then). */
  room(): Promise<void> {
    if (!this.full) return Promise.resolve();
    return new Promise((res) => this.waiters.push(res));
  }

  /** Writes what is queued, batch by batch, to the sink; a failing sink keeps the batch for the next try. */
  flush(): Promise<void> {
    if (this.flushing) return this.flushing;
    if (this.items.length === 0) return Promise.resolve();
    // `.finally` runs after the assignment below even when drain() settles at once (a stale settled promise left
    // in `flushing` would stop every later flush).
    this.flushing = this.drain().finally(() => {
      this.flushing = null;
      // Records that came during the write: a new batch, on the same clock as any other (not a write per record).
      this.schedule();
    });
    return this.flushing;
  }

  private async drain(): Promise<void> {
    while (this.items.length > 0) {
      const batch = this.items.slice(0, this.batchSize);
      try {
        await this.sink.write(batch);
      } catch (e) {
        this.failing = true;
        this.onSinkError(this.sink.name, e as Error);
        return; // kept, retried by the timer
      }
      this.failing = false;
      this.items.splice(0, batch.length);
      this.written += batch.length;
      if (!this.full) for (const w of this.waiters.splice(0)) w();
      // Whole batches go on at once; a partial one waits to fill (see schedule()).
      if (this.items.length < this.batchSize) return;
    }
  }

  /** Graceful shutdown: everything queued is written (or the deadline passes), then sinks close. */
  async close(deadlineMs = 10_000): Promise<void> {
    this.closing = true;
    clearInterval(this.timer);
    if (this.scheduled) clearTimeout(this.scheduled);
    this.scheduled = undefined;
    const end = Date.now() + deadlineMs;
    while (this.items.length > 0 && Date.now() < end) {
      const before = this.items.length;
      await this.flush();
      // A sink that makes no progress at shutdown will not make any: report what is lost instead of hanging.
      if (this.items.length === before) break;
    }
    if (this.items.length > 0)
      this.onSinkError(this.sink.name, new Error(`${this.items.length} records not written at shutdown`));
    await this.sink.close().catch(() => undefined);
    for (const w of this.waiters.splice(0)) w();
  }
}
