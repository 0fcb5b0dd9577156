// Statement tracking for the audit trail: pairs what a client sends (Query; Parse/Bind/Execute/Sync) with what
// the server answers (CommandComplete, ErrorResponse, COPY, ReadyForQuery) and publishes one QueryEvent per simple
// Query or extended Execute. Used only while someone subscribes to query events.
import type { QueryEvent, TypedChannel } from '../events.ts';

type Entry =
  | {
      kind: 'simple' | 'extended';
      sql: string;
      params: (string | null)[] | undefined;
      startedAt: number;
      t0: number;
      rows: number | null;
      copy: 'in' | 'out' | undefined;
      /** CommandComplete (or an empty query) arrived: the statement ran, whatever comes after. */
      completed: boolean;
    }
  | { kind: 'sync' };

/** Rows from a CommandComplete tag ("SELECT 5", "INSERT 0 3", "COPY 10"); null for tags without a count. */
export function tagRows(tag: string): number | null {
  // The count is the last word; a scan from the end instead of a regex (this runs once per audited statement).
  let i = tag.length;
  while (i > 0 && tag.charCodeAt(i - 1) >= 48 && tag.charCodeAt(i - 1) <= 57) i--;
  if (i === tag.length || (i > 0 && tag.charCodeAt(i - 1) !== 32)) return null;
  const sp = tag.indexOf(' ');
  const verb = sp < 0 ? tag : tag.slice(0, sp);
  return ROW_COUNT_TAGS.has(verb) ? Number(tag.slice(i)) : null;
}

const ROW_COUNT_TAGS = new Set(['INSERT', 'SELECT', 'UPDATE', 'DELETE', 'MERGE', 'COPY', 'FETCH', 'MOVE']);

export class QueryTracker {
  private readonly pending: Entry[] = [];
  /** Named statements' SQL (client names). */
  private readonly statements = new Map<string, string>();
  private unnamed = '';
  /** Portal name -> SQL and parameters, from Bind. */
  private readonly portals = new Map<string, { sql: string; params: (string | null)[] | undefined }>();

  constructor(
    private readonly session: number,
    private readonly channel: TypedChannel<QueryEvent>,
    readonly logParameters: boolean,
  ) {}

  private open(kind: 'simple' | 'extended', sql: string, params?: (string | null)[]): void {
    this.pending.push({
      kind,
      sql,
      params,
      startedAt: Date.now(),
      t0: performance.now(),
      rows: null,
      copy: undefined,
      completed: false,
    });
  }

  // Client side
  query(sql: string): void {
    this.open('simple', sql);
  }

  parse(name: string, sql: string): void {
    if (name === '') this.unnamed = sql;
    else this.statements.set(name, sql);
  }

  bind(portal: string, statement: string, params: (string | null)[] | undefined): void {
    const sql = statement === '' ? this.unnamed : (this.statements.get(statement) ?? '');
    this.portals.set(portal, { sql, params });
  }

  execute(portal: string): void {
    const p = this.portals.get(portal);
    this.open('extended', p?.sql ?? '', p?.params);
  }

  sync(): void {
    this.pending.push({ kind: 'sync' });
  }

  // Server side
  commandComplete(tag: string): void {
    const head = this.pending[0];
    if (!head || head.kind === 'sync') return;
    head.rows = tagRows(tag) ?? head.rows;
    head.completed = true;
    if (head.kind === 'extended') this.finish();
  }

  /** PortalSuspended or EmptyQueryResponse end an Execute without a tag. */
  executeDone(): void {
    const head = this.pending[0];
    if (!head || head.kind === 'sync') return;
    head.completed = true;
    if (head.kind === 'extended') this.finish();
  }

  copy(direction: 'in' | 'out'): void {
    const head = this.pending[0];
    if (head && head.kind !== 'sync') head.copy = direction;
  }

  error(sqlstate: string, message: string): void {
    const head = this.pending[0];
    if (!head || head.kind === 'sync') return;
    if (head.kind === 'extended') {
      this.finish(sqlstate, message);
      // The server skips the rest of the extended sequence up to Sync: those Executes never ran.
      while (this.pending[0] && this.pending[0].kind !== 'sync') this.pending.shift();
    } else {
      // A simple Query's statements stop at the error; the record ends at ReadyForQuery.
      this.finishLater = { sqlstate, message };
    }
  }

  private finishLater: { sqlstate: string; message: string } | undefined;

  ready(): void {
    const head = this.pending[0];
    if (!head) return;
    if (head.kind === 'sync') {
      this.pending.shift();
      return;
    }
    if (head.kind === 'simple') {
      const e = this.finishLater;
      this.finishLater = undefined;
      this.finish(e?.sqlstate, e?.message);
    }
  }

  /**
   * The session ended (the client left, or the server went) with statements still waiting for their
   * ReadyForQuery: each is recorded with what is known, so the trail never loses a statement that reached the
   * server. One that neither completed nor failed is recorded as cut off (08006).
   */
  end(): void {
    while (this.pending.length > 0) {
      const head = this.pending[0]!;
      if (head.kind === 'sync') {
        this.pending.shift();
        continue;
      }
      const failed = this.finishLater;
      this.finishLater = undefined;
      if (failed) this.finish(failed.sqlstate, failed.message);
      else if (head.completed) this.finish();
      else this.finish('08006', 'the session ended before the statement completed');
    }
  }

  private finish(sqlstate?: string, message?: string): void {
    const e = this.pending.shift();
    if (!e || e.kind === 'sync') return;
    if (!this.channel.hasSubscribers) return;
    // One shape for every event (absent fields undefined), no spreads: this runs once per audited statement.
    const ev: QueryEvent = {
      session: this.session,
      sql: e.sql,
      kind: e.kind,
      params: this.logParameters ? e.params : undefined,
      startedAt: e.startedAt,
      durationMs: performance.now() - e.t0,
      rows: e.rows,
      copy: e.copy,
      sqlstate: sqlstate || undefined,
      message: sqlstate ? (message ?? '') : undefined,
    };
    this.channel.publish(ev);
  }
}

/** Bind's parameter values as text (binary-format values are shown as <binary N bytes>), from the body's rest. */
export function bindParams(body: Buffer, restOffset: number, max = 1024): (string | null)[] | undefined {
  try {
    let pos = restOffset;
    const nFormats = body.readInt16BE(pos);
    pos += 2;
    const formats: number[] = [];
    for (let i = 0; i < nFormats; i++, pos += 2) formats.push(body.readInt16BE(pos));
    const n = body.readInt16BE(pos);
    pos += 2;
    const out: (string | null)[] = [];
    for (let i = 0; i < n && i < max; i++) {
      const len = body.readInt32BE(pos);
      pos += 4;
      if (len < 0) {
        out.push(null);
        continue;
      }
      const binary = (nFormats === 1 ? formats[0] : formats[i]) === 1;
      out.push(binary ? `<binary ${len} bytes>` : body.toString('utf8', pos, pos + len));
      pos += len;
    }
    return out;
  } catch {
    return undefined;
  }
}

function cstringAt(body: Buffer, pos: number): [string, number] {
  const end = body.indexOf(0, pos);
  if (end < 0) return ['', body.length];
  return [body.toString('utf8', pos, end), end + 1];
}

/** Feeds a client message (Q, P, B, E; S is a NOTE) to the tracker. */
export function trackClientMessage(t: QueryTracker, type: number, body: Buffer): void {
  switch (type) {
    case 0x51: {
      // Query: the text up to its terminating NUL (no tuple, unlike cstringAt)
      const end = body.indexOf(0);
      t.query(body.toString('utf8', 0, end < 0 ? body.length : end));
      break;
    }
    case 0x50: {
      // Parse
      const [name, p] = cstringAt(body, 0);
      t.parse(name, cstringAt(body, p)[0]);
      break;
    }
    case 0x42: {
      // Bind
      const [portal, p1] = cstringAt(body, 0);
      const [statement, p2] = cstringAt(body, p1);
      t.bind(portal, statement, t.logParameters ? bindParams(body, p2) : undefined);
      break;
    }
    case 0x45: // Execute
      t.execute(cstringAt(body, 0)[0]);
      break;
    case 0x53: // Sync
      t.sync();
      break;
  }
}

/** Feeds a server reply to the tracker. */
export function trackServerMessage(t: QueryTracker, type: number, body: Buffer): void {
  switch (type) {
    case 0x43: // CommandComplete
      t.commandComplete(cstringAt(body, 0)[0]);
      break;
    case 0x45: {
      // ErrorResponse: C (SQLSTATE) and M (message) fields
      let code = '';
      let msg = '';
      let i = 0;
      while (i < body.length && body[i] !== 0) {
        const [v, next] = cstringAt(body, i + 1);
        if (body[i] === 0x43) code = v;
        else if (body[i] === 0x4d) msg = v;
        i = next;
      }
      t.error(code, msg);
      break;
    }
    case 0x5a: // ReadyForQuery
      t.ready();
      break;
    case 0x47: // CopyInResponse
      t.copy('in');
      break;
    case 0x48: // CopyOutResponse
      t.copy('out');
      break;
    case 0x73: // PortalSuspended
    case 0x49: // EmptyQueryResponse
      t.executeDone();
      break;
  }
}
