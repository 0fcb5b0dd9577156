// Row counts from CommandComplete tags, as the audit trail records them.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { tagRows } from './query-tracker.ts';

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
