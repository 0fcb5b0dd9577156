// Abuse limits for logins: token buckets of failed logins per client address and per user with a growing delay
// once a bucket is empty, and a cap on startups per second. Pure: the clock is injected.

export interface BucketSpec {
  /** Failures allowed in a burst before delays start. */
  burst: number;
  /** Failures forgiven per second. */
  refillPerSecond: number;
}

export interface LoginLimitOptions {
  perAddress: BucketSpec;
  perUser: BucketSpec;
  /** First delay once a bucket is empty; doubles per further failure up to maxDelayMs. */
  baseDelayMs: number;
  maxDelayMs: number;
  now?: () => number;
}

interface Bucket {
  tokens: number;
  at: number;
  /** Failures while empty: the delay's exponent. */
  over: number;
}

class Buckets {
  private readonly map = new Map<string, Bucket>();
  constructor(
    private readonly spec: BucketSpec,
    private readonly now: () => number,
  ) {}

  private refill(key: string): Bucket {
    const t = this.now();
    let b = this.map.get(key);
    if (!b) {
      b = { tokens: this.spec.burst, at: t, over: 0 };
      if (this.map.size > 50_000) this.prune(t);
      this.map.set(key, b);
      return b;
    }
    const gained = ((t - b.at) / 1000) * this.spec.refillPerSecond;
    if (gained > 0) {
      b.tokens = Math.min(this.spec.burst, b.tokens + gained);
      if (b.tokens >= 1) b.over = 0;
      b.at = t;
    }
    return b;
  }

  /** Failures beyond the burst so far (0: within limits). */
  overBy(key: string): number {
    const b = this.refill(key);
    return b.tokens >= 1 ? 0 : b.over + 1;
  }

  fail(key: string): void {
    const b = this.refill(key);
    if (b.tokens >= 1) b.tokens -= 1;
    else b.over++;
  }

  forgive(key: string): void {
    this.map.delete(key);
  }

  private prune(t: number): void {
    for (const [k, b] of this.map) {
      if (b.tokens + ((t - b.at) / 1000) * this.spec.refillPerSecond >= this.spec.burst) this.map.delete(k);
    }
  }
}

export class LoginLimiter {
  private readonly byAddress: Buckets;
  private readonly byUser: Buckets;

  constructor(private readonly opts: LoginLimitOptions) {
    const now = opts.now ?? Date.now;
    this.byAddress = new Buckets(opts.perAddress, now);
    this.byUser = new Buckets(opts.perUser, now);
  }

  /** How long to hold this login before serving it (0 within limits), and which limit applies. */
  delay(address: string, user: string): { ms: number; limit?: 'address' | 'user' } {
    const a = this.byAddress.overBy(address);
    const u = this.byUser.overBy(user);
    const over = Math.max(a, u);
    if (over === 0) return { ms: 0 };
    const ms = Math.min(this.opts.maxDelayMs, this.opts.baseDelayMs * 2 ** Math.min(over - 1, 20));
    return { ms, limit: a >= u ? 'address' : 'user' };
  }

  failed(address: string, user: string): void {
    this.byAddress.fail(address);
    this.byUser.fail(user);
  }

  /** A success clears the address's record (a user who mistyped a few times is not held back afterwards). */
  succeeded(address: string): void {
    this.byAddress.forgive(address);
  }
}

/** A cap on new connections per second (0: no cap). */
export class StartupRate {
  private tokens: number;
  private at: number;
  constructor(
    private readonly perSecond: number,
    private readonly now: () => number = Date.now,
  ) {
    this.tokens = perSecond;
    this.at = now();
  }

  allow(): boolean {
    if (this.perSecond <= 0) return true;
    const t = this.now();
    this.tokens = Math.min(this.perSecond, this.tokens + ((t - this.at) / 1000) * this.perSecond);
    this.at = t;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}
