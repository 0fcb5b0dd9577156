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
  | 'load'
  /** An SSO set_role session in a session-mode pool: it keeps its server like any session-mode client. */
  | 'sso_session';

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

/**
 * Necessary for the lower-cased text to contain "advisory_lock": no character but "Y", "_" and "L" (and
 * themselves) lower-cases to anything holding "y", "_" or "l" (checked over all of Unicode), so "y_l" in the
 * lower-cased text comes from one of these pairs in the original.
 */
const ADVISORY_HINT = /[yY]_[lL]/;

const SET_RE =
  /^\s*SET\s+(?:SESSION\s+)?("?[A-Za-z_][A-Za-z0-9_$.]*"?)\s*(?:=|\s+TO\s+)\s*([\s\S]*?)\s*;?\s*$/i;
const RESET_RE = /^\s*RESET\s+("?[A-Za-z_][A-Za-z0-9_$.]*"?)\s*;?\s*$/i;

/**
 * Scans one simple Query or Parse text. `inTransaction` is the client's status before it runs: a SET inside a
 * transaction block outlives it only if committed, which a scan cannot know, so it pins.
 */
export function scanSql(sql: string, inTransaction: boolean): SqlEffects {
  // Every simple Query and Parse of a transaction-mode client comes through here: the common statement costs one
  // keyword and two substring tests; lower-casing and the other keywords only when a rule may apply.
  const w0 = firstWords(sql, 1)[0];
  const fx: SqlEffects = {};
  if (ADVISORY_HINT.test(sql)) {
    const lower = sql.length < 65536 ? sql.toLowerCase() : '';
    if (lower.includes('advisory_lock') && /pg_(try_)?advisory_lock(_shared)?\s*\(/.test(lower)) {
      fx.pin = 'advisory_lock';
    }
  }
  let words: string[] = [];
  switch (w0) {
    case 'CREATE':
    case 'DISCARD':
    case 'DEALLOCATE':
    case 'SET':
    case 'RESET':
      words = firstWords(sql, 4);
      break;
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
    case 'DECLARE': {
      const lower = sql.length < 65536 ? sql.toLowerCase() : '';
      if (/\bwith\s+hold\b/.test(lower)) fx.pin = 'declare_with_hold';
      break;
    }
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
