// Audit sinks: JSON lines to stdout or a file (size-based rotation), and a PostgreSQL table (created if missing,
// batched multi-row INSERTs with bind parameters over a dedicated connection, reconnecting after failures).
import { type FileHandle, open, rename, stat } from 'node:fs/promises';
import { AUDIT_LINE, type AuditSink } from './queue.ts';

export class JsonLinesSink implements AuditSink {
  readonly name: string;
  private size = 0;
  /** The file, open for appending between batches (reopened after a rotation, a failed write, or a move). */
  private file: FileHandle | undefined;
  /** The open file's inode: when the path names another file (logrotate moved or deleted ours), reopen. */
  private ino = -1;

  constructor(
    /** A file path, or undefined for stdout. */
    private readonly path: string | undefined,
    private readonly maxBytes = 100 * 1024 * 1024,
    private readonly keep = 5,
  ) {
    this.name = path ? `file:${path}` : 'stdout';
  }

  async write(records: readonly object[]): Promise<void> {
    let text = '';
    for (const r of records) text += `${(r as { [AUDIT_LINE]?: string })[AUDIT_LINE] ?? JSON.stringify(r)}\n`;
    if (!this.path) {
      process.stdout.write(text);
      return;
    }
    const bytes = Buffer.from(text);
    if (this.file) {
      const now = await stat(this.path).then(
        (st) => st.ino,
        () => -1,
      );
      if (now !== this.ino) await this.closeFile();
    }
    if (!this.file) await this.openFile();
    if (this.size > 0 && this.size + bytes.length > this.maxBytes) await this.rotate();
    try {
      // appendFile on the handle writes the whole buffer (a short write continues), so no line is cut.
      await this.file!.appendFile(bytes);
    } catch (e) {
      // The batch is retried by the queue; reopen then (the disk may have been full, the file replaced).
      await this.closeFile();
      throw e;
    }
    this.size += bytes.length;
  }

  /** audit.jsonl -> audit.jsonl.1 -> ... -> audit.jsonl.<keep> (the oldest is overwritten). */
  private async rotate(): Promise<void> {
    const p = this.path!;
    await this.closeFile();
    for (let i = this.keep - 1; i >= 1; i--)
      await rename(`${p}.${i}`, `${p}.${i + 1}`).catch(() => undefined);
    await rename(p, `${p}.1`).catch(() => undefined);
    await this.openFile();
  }

  private async openFile(): Promise<void> {
    const f = await open(this.path!, 'a', 0o640);
    const st = await f.stat();
    this.file = f;
    this.ino = st.ino;
    this.size = st.size;
  }

  private async closeFile(): Promise<void> {
    const f = this.file;
    this.file = undefined;
    await f?.close().catch(() => undefined);
  }

  async close(): Promise<void> {
    await this.closeFile();
  }
}

/** What the PostgreSQL sink needs from a server connection. */
export interface SqlConnection {
  readonly closed: boolean;
  queryRows(sql: string, params: readonly (string | null)[]): Promise<{ rows: (string | null)[][] } | Error>;
  close(reason: string): void;
}

export const AUDIT_COLUMNS = [
  'ts',
  'event',
  'session',
  'identity',
  'auth_method',
  'database',
  'backend_role',
  'client_addr',
  'application_name',
  'statement',
  'duration_ms',
  'rows',
  'outcome',
  'sqlstate',
  'detail',
] as const;

const IDENT = /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$/;

export class PostgresSink implements AuditSink {
  readonly name: string;
  private conn: SqlConnection | null = null;
  private ready = false;

  constructor(
    private readonly connect: () => Promise<SqlConnection>,
    private readonly table: string,
    private readonly writeTimeoutMs = 5000,
  ) {
    if (!IDENT.test(table)) throw new Error(`audit table name "${table}" is not a plain identifier`);
    this.name = `postgres:${table}`;
  }

  private async connection(): Promise<SqlConnection> {
    if (this.conn && !this.conn.closed) return this.conn;
    this.ready = false;
    this.conn = await this.connect();
    return this.conn;
  }

  private async run(c: SqlConnection, sql: string, params: (string | null)[]): Promise<void> {
    // A server that stops answering must not hold the queue forever: give up on the connection after a while.
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        c.close('audit write timed out');
        reject(new Error('audit write timed out'));
      }, this.writeTimeoutMs);
    });
    const r = await Promise.race([c.queryRows(sql, params), timeout]).finally(() => clearTimeout(timer));
    if (r instanceof Error) {
      if ((r as Error & { fatal?: boolean }).fatal) c.close('audit sink error');
      throw r;
    }
  }

  async write(records: readonly object[]): Promise<void> {
    let c: SqlConnection;
    try {
      c = await Promise.race([
        this.connection(),
        new Promise<never>((_, reject) =>
          setTimeout(() => reject(new Error('connect timed out')), this.writeTimeoutMs).unref(),
        ),
      ]);
    } catch (e) {
      throw new Error(`audit table unreachable: ${(e as Error).message}`);
    }
    if (!this.ready) {
      await this.run(
        c,
        `CREATE TABLE IF NOT EXISTS ${this.table} (
           ts timestamptz NOT NULL, event text NOT NULL, session bigint, identity text, auth_method text,
           database text, backend_role text, client_addr text, application_name text, statement text,
           duration_ms double precision, rows bigint, outcome text, sqlstate text, detail jsonb)`,
        [],
      );
      this.ready = true;
    }
    // One INSERT per batch, every value a bind parameter (no record text is ever spliced into SQL).
    const n = AUDIT_COLUMNS.length;
    const values: string[] = [];
    const params: (string | null)[] = [];
    for (const r of records as Record<string, unknown>[]) {
      const row: string[] = [];
      for (let i = 0; i < n; i++) {
        const col = AUDIT_COLUMNS[i]!;
        const v = r[col];
        params.push(
          v === undefined || v === null ? null : typeof v === 'object' ? JSON.stringify(v) : String(v),
        );
        row.push(`$${params.length}`);
      }
      values.push(`(${row.join(', ')})`);
    }
    await this.run(
      c,
      `INSERT INTO ${this.table} (${AUDIT_COLUMNS.join(', ')}) VALUES ${values.join(', ')}`,
      params,
    );
  }

  async close(): Promise<void> {
    this.conn?.close('audit closed');
    this.conn = null;
  }
}
