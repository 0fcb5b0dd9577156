// StatementCache: the named statements one server holds, least recently used first (max_prepared_statements).

/** What one server has prepared, least recently used first. */
export class StatementCache {
  private readonly names = new Map<string, true>();
  /** Statements whose plan PostgreSQL refused after DDL: still on the server, to be closed before re-preparing. */
  readonly stale = new Set<string>();

  constructor(public max: number) {}

  has(name: string): boolean {
    return this.names.has(name);
  }

  /** Marks a statement used (most recent). */
  touch(name: string): void {
    if (this.names.delete(name)) this.names.set(name, true);
  }

  add(name: string): void {
    this.names.delete(name);
    this.names.set(name, true);
  }

  delete(name: string): void {
    this.names.delete(name);
  }

  clear(): void {
    this.names.clear();
    this.stale.clear();
  }

  /** Names to Close so one more fits, oldest first; they are removed from the cache. */
  evictFor(incoming: number): string[] {
    const out: string[] = [];
    for (const name of this.names.keys()) {
      if (this.names.size - out.length + incoming <= this.max) break;
      out.push(name);
    }
    for (const n of out) this.names.delete(n);
    return out;
  }

  get size(): number {
    return this.names.size;
  }
}
