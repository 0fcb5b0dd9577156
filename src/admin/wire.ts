// Result-set messages the admin console writes: RowDescription (text columns), DataRow, CommandComplete.
import { B } from '../protocol/backend.ts';
import { MessageWriter } from '../protocol/wire.ts';

const TEXT_OID = 25;

export function encodeRowDescription(columns: readonly string[]): Buffer {
  const w = new MessageWriter(32 * columns.length + 8).int16(columns.length);
  for (const name of columns) {
    // table oid, column attno, type oid, type size, type modifier, format (text)
    w.cstring(name).int32(0).int16(0).int32(TEXT_OID).int16(-1).int32(-1).int16(0);
  }
  return w.finish(B.RowDescription);
}

export function encodeDataRow(values: readonly (string | null)[]): Buffer {
  const w = new MessageWriter(64).int16(values.length);
  for (const v of values) {
    if (v === null) {
      w.int32(-1);
      continue;
    }
    const b = Buffer.from(v, 'utf8');
    w.int32(b.length).bytes(b);
  }
  return w.finish(B.DataRow);
}

export function encodeCommandComplete(tag: string): Buffer {
  return new MessageWriter(16).cstring(tag).finish(B.CommandComplete);
}
