// Row counts from CommandComplete tags, as the audit trail records them.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { QueryEvent, TypedChannel } from '../events.ts';
import { QueryTracker, tagRows } from './query-tracker.ts';

function tracker() {
  const events: QueryEvent[] = [];
  const channel: TypedChannel<QueryEvent> = {
    name: 'test',
    hasSubscribers: true,
    publish: (e) => events.push(e),
    subscribe() {},
    unsubscribe() {},
  };
  return { t: new QueryTracker(1, channel, false), events };
}

test('tagRows reads the count of row-returning and row-changing commands only', () => {
  const cases: [string, number | null][] = [
    ['SELECT 5', 5],
    ['SELECT 0', 0],
    ['INSERT 0 3', 3],
    ['UPDATE 12', 12],
    ['DELETE 1', 1],
    ['MERGE 7', 7],
    ['COPY 10000', 10000],
    ['FETCH 2', 2],
    ['MOVE 4', 4],
    ['CREATE TABLE', null],
    ['BEGIN', null],
    ['SET', null],
    ['SELECT', null],
    ['DISCARD ALL', null],
    ['LISTEN', null],
    ['CLOSE CURSOR', null],
    ['SELECTX 5', null],
    ['GRANT 5', null],
    ['', null],
  ];
  for (const [tag, rows] of cases) assert.equal(tagRows(tag), rows, tag);
});

test('a session that ends before ReadyForQuery still records its statements with what is known', () => {
  // The server's ErrorResponse arrived but the client left before its ReadyForQuery.
  const a = tracker();
  a.t.query('SELECT 1/0');
  a.t.error('22012', 'division by zero');
  a.t.end();
  assert.equal(a.events.length, 1);
  assert.equal(a.events[0]!.sql, 'SELECT 1/0');
  assert.equal(a.events[0]!.sqlstate, '22012');

  // Completed (CommandComplete), no ReadyForQuery yet: ok, with its rows.
  const b = tracker();
  b.t.query('SELECT 1');
  b.t.commandComplete('SELECT 1');
  b.t.query('SELECT pg_sleep(10)');
  b.t.end();
  assert.deepEqual(
    b.events.map((e) => [e.sql, e.rows, e.sqlstate]),
    [
      ['SELECT 1', 1, undefined],
      ['SELECT pg_sleep(10)', null, '08006'],
    ],
  );

  // Nothing pending: nothing recorded; a normal ReadyForQuery leaves nothing for end().
  const c = tracker();
  c.t.query('SELECT 2');
  c.t.commandComplete('SELECT 1');
  c.t.ready();
  c.t.end();
  assert.equal(c.events.length, 1);
});
