// Running totals and latency histograms of one pool (traffic, queries, transactions, waits, prepared statements):
// what SHOW STATS, the JSON API and /metrics read. Plain numbers and fixed bucket arrays, updated on the hot path
// without allocating or publishing anything; readers take them at scrape time.

/** Histogram upper bounds in seconds (Prometheus `le`), shared by every latency histogram gprxy exports. */
export const SECONDS_BUCKETS: readonly number[] = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
];

const BOUNDS_MS = SECONDS_BUCKETS.map((s) => s * 1000);

/** Cumulative-on-read histogram: per-bucket counts (the last slot is +Inf), the sum in ms and the count. */
export class LatencyHistogram {
  /** Upper bounds in seconds (shared). */
  readonly bounds = SECONDS_BUCKETS;
  /** counts[i]: observations <= SECONDS_BUCKETS[i] and above the bound before; the last slot: above every bound. */
  readonly counts = new Float64Array(BOUNDS_MS.length + 1);
  sumMs = 0;
  count = 0;

  observe(ms: number): void {
    let i = 0;
    while (i < BOUNDS_MS.length && ms > BOUNDS_MS[i]!) i++;
    this.counts[i]!++;
    this.sumMs += ms;
    this.count++;
  }
}

export class PoolStats {
  /** Servers lent to clients (pgbouncer's server assignments; one per transaction in transaction mode). */
  leases = 0;
  /** Sum of client waits for a server, ms. */
  waitMs = 0;
  /** Servers opened and closed. */
  opened = 0;
  closed = 0;
  /** Bytes relayed from clients to servers and back (pgbouncer's total_received / total_sent). */
  received = 0;
  sent = 0;
  /** Requests answered by a ReadyForQuery (a simple Query, or an extended sequence up to its Sync), and their time. */
  queries = 0;
  queryMs = 0;
  /** Transactions (a ReadyForQuery 'I' ending work, autocommit statements included), and their time. */
  xacts = 0;
  xactMs = 0;
  /** Parse messages from clients, Parse messages that reached a server, Bind messages. */
  clientParses = 0;
  serverParses = 0;
  binds = 0;
  /** Named prepared statements a server already had (hit) or had to be prepared on first (miss; transaction mode). */
  preparedHits = 0;
  preparedMisses = 0;
  readonly wait = new LatencyHistogram();
  readonly query = new LatencyHistogram();
  readonly xact = new LatencyHistogram();
}

/**
 * One client's request and transaction clock: `request()` when the client sends work, `ready()` at each
 * ReadyForQuery meant for it. A query runs from the first unanswered request to its ReadyForQuery; a transaction
 * from the first request after idle to a ReadyForQuery 'I'.
 */
export class RequestClock {
  private queryStart = 0;
  private xactStart = 0;

  constructor(private readonly stats: PoolStats) {}

  request(): void {
    if (this.queryStart !== 0) return;
    const t = performance.now();
    this.queryStart = t;
    if (this.xactStart === 0) this.xactStart = t;
  }

  /** `status`: the ReadyForQuery status byte (0x49 'I' idle, 0x54 'T' in a transaction, 0x45 'E' failed). */
  ready(status: number, more: boolean): void {
    const qs = this.queryStart;
    if (qs === 0) return;
    const t = performance.now();
    const st = this.stats;
    const q = t - qs;
    st.queries++;
    st.queryMs += q;
    st.query.observe(q);
    // Pipelined requests: the next one has been waiting since this answer.
    this.queryStart = more ? t : 0;
    if (status === 0x49 && this.xactStart !== 0) {
      const x = t - this.xactStart;
      st.xacts++;
      st.xactMs += x;
      st.xact.observe(x);
      this.xactStart = more ? t : 0;
    }
  }
}
