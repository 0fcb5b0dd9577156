// A cheap scan of simple-query and Parse text for the session state transaction pooling cannot carry: first
// keywords and a few function names, no SQL parser. Decides pinning, recorded SETs and statement-cache resets.

export type PinReason =
  | 'prepare'
  | 'listen'
  | 'temp_table'
  | 'advisory_lock'
  | 'declare_with_hold'
  | 'set_role'
  | 'session_authorization'
  | 'set_in_transaction'
  | 'set_in_multi_statement'
  | 'load';

export interface SqlEffects {
  /** Untrackable session state: the client must keep its server. */
  pin?: PinReason;
  /** A standalone `SET name = value` / `RESET name` / `RESET ALL` that can be recorded and replayed. */
  setting?: { name: string; value: string } | { reset: string } | { resetAll: true };
  /** DISCARD ALL / DEALLOCATE ALL: the client's prepared statements are gone. */
  dropsStatements?: 'all';
  /** DEALLOCATE name. */
  deallocate?: string;
}

/** Strips leading whitespace and comments; returns the index of the first token. */
function skipSpace(sql: string, i: number): number {
  const n = sql.length;
  while (i < n) {
    const c = sql.charCodeAt(i);
    if (c === 32 || (c >= 9 && c <= 13)) i++;
    else if (c === 45 && sql.charCodeAt(i + 1) === 45) {
      const e = sql.indexOf('\n', i);
      i = e < 0 ? n : e + 1;
    } else if (c === 47 && sql.charCodeAt(i + 1) === 42) {
      const e = sql.indexOf('*/', i + 2);
      i = e < 0 ? n : e + 2;
    } else break;
  }
  return i;
}

const WORD = /[A-Za-z_][A-Za-z0-9_$]*/y;

/** The first `count` keywords, upper-cased. */
export function firstWords(sql: string, count: number): string[] {
  const out: string[] = [];
  let i = 0;
  while (out.length < count) {
    i = skipSpace(sql, i);
    WORD.lastIndex = i;
    const m = WORD.exec(sql);
    if (!m) break;
    out.push(m[0].toUpperCase());
    i = WORD.lastIndex;
  }
  return out;
}

/** True when the text holds more than one statement (a `;` followed by more than whitespace/comments). */
export function isMultiStatement(sql: string): boolean {
  let i = sql.indexOf(';');
  while (i >= 0) {
    if (skipSpace(sql, i + 1) < sql.length) {
      // A ';' inside a quoted string or dollar-quoted body is a false positive; that only over-pins.
      return true;
    }
    i = sql.indexOf(';', i + 1);
  }
  return false;
}

const SET_RE =
  /^\s*SET\s+(?:SESSION\s+)?("?[A-Za-z_][A-Za-z0-9_$.]*"?)\s*(?:=|\s+TO\s+)\s*([\s\S]*?)\s*;?\s*$/i;
const RESET_RE = /^\s*RESET\s+("?[A-Za-z_][A-Za-z0-9_$.]*"?)\s*;?\s*$/i;

/**
 * Scans one simple Query or Parse text. `inTransaction` is the client's status before it runs: a SET inside a
 * transaction block outlives it only if committed, which a scan cannot know, so it pins.
 */
export function scanSql(sql: string, inTransaction: boolean): SqlEffects {
  const words = firstWords(sql, 4);
  const w0 = words[0];
  const lower = sql.length < 65536 ? sql.toLowerCase() : '';
  const fx: SqlEffects = {};
  if (lower.includes('advisory_lock') && /pg_(try_)?advisory_lock(_shared)?\s*\(/.test(lower)) {
    fx.pin = 'advisory_lock';
  }
  switch (w0) {
    case 'PREPARE':
      fx.pin = 'prepare';
      break;
    case 'LISTEN':
      fx.pin = 'listen';
      break;
    case 'LOAD':
      fx.pin = 'load';
      break;
    case 'CREATE':
      if (
        words[1] === 'TEMP' ||
        words[1] === 'TEMPORARY' ||
        (words[1] === 'LOCAL' && words[2]?.startsWith('TEMP'))
      ) {
        fx.pin = 'temp_table';
      } else if ((words[1] === 'GLOBAL' || words[1] === 'UNLOGGED') && words[2]?.startsWith('TEMP')) {
        fx.pin = 'temp_table';
      }
      break;
    case 'DECLARE':
      if (/\bwith\s+hold\b/.test(lower)) fx.pin = 'declare_with_hold';
      break;
    case 'DISCARD':
      if (words[1] === 'ALL') fx.dropsStatements = 'all';
      break;
    case 'DEALLOCATE': {
      const name = words[1] === 'PREPARE' ? words[2] : words[1];
      if (name === 'ALL') fx.dropsStatements = 'all';
      else if (name) fx.deallocate = name.toLowerCase();
      break;
    }
    case 'SET':
    case 'RESET':
      scanSet(sql, words, inTransaction, fx);
      break;
  }
  if (
    !fx.pin &&
    w0 !== 'SET' &&
    w0 !== 'RESET' &&
    isMultiStatement(sql) &&
    /(^|;)\s*(set|reset)\s/i.test(sql)
  ) {
    fx.pin = 'set_in_multi_statement';
  }
  return fx;
}

function scanSet(sql: string, words: string[], inTransaction: boolean, fx: SqlEffects): void {
  const w1 = words[1];
  if (w1 === 'LOCAL' || w1 === 'TRANSACTION' || (w1 === 'SESSION' && words[2] === 'CHARACTERISTICS')) return;
  if (w1 === 'ROLE' || (w1 === 'SESSION' && words[2] === 'ROLE')) {
    fx.pin = 'set_role';
    return;
  }
  if (w1 === 'SESSION' && words[2] === 'AUTHORIZATION') {
    fx.pin = 'session_authorization';
    return;
  }
  if (isMultiStatement(sql)) {
    fx.pin = 'set_in_multi_statement';
    return;
  }
  if (inTransaction) {
    fx.pin = 'set_in_transaction';
    return;
  }
  if (words[0] === 'RESET') {
    if (w1 === 'ALL') {
      fx.setting = { resetAll: true };
      return;
    }
    const m = RESET_RE.exec(sql);
    if (m) fx.setting = { reset: normalizeName(m[1]!) };
    else fx.pin = 'set_in_multi_statement';
    return;
  }
  const m = SET_RE.exec(sql);
  if (m && m[2] !== '') fx.setting = { name: normalizeName(m[1]!), value: m[2]! };
  else fx.pin = 'set_in_multi_statement';
}

function normalizeName(n: string): string {
  return n.startsWith('"') ? n.slice(1, -1) : n.toLowerCase();
}
