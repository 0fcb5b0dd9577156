// Prepared statements across servers: client statement names -> server names derived from query text and
// parameter types; rewriting of Parse/Bind/Describe/Close name fields; a per-server LRU of what each server holds.
import { createHash } from 'node:crypto';
import { BodyReader, MessageWriter } from '../protocol/wire.ts';

/** Server-side name for a statement: the same text and parameter types give the same name on every server. */
export function serverStatementName(parseBodyAfterName: Buffer): string {
  return `gprxy_${createHash('sha1').update(parseBodyAfterName).digest('base64url').slice(0, 22)}`;
}

export interface ParsedParse {
  name: string;
  /** Everything after the name field: query text, parameter count and types. */
  rest: Buffer;
  query: string;
}

export function readParse(body: Buffer): ParsedParse {
  const r = new BodyReader(body);
  const name = r.cstring();
  const rest = Buffer.from(r.rest());
  const query = new BodyReader(rest).cstring();
  return { name, rest, query };
}

/** The query text of a Parse whose name is empty (body[0] === 0): readParse(body).query without copying. */
export function readUnnamedParseQuery(body: Buffer): string {
  const r = new BodyReader(body);
  r.cstring();
  return r.cstring();
}

export function encodeParse(name: string, rest: Buffer): Buffer {
  return new MessageWriter(rest.length + name.length + 8).cstring(name).bytes(rest).finish(0x50);
}

/** Bind: portal name, statement name, then the rest (formats, parameters, result formats) unchanged. */
export function readBind(body: Buffer): { portal: string; statement: string; restOffset: number } {
  const r = new BodyReader(body);
  const portal = r.cstring();
  const statement = r.cstring();
  return { portal, statement, restOffset: body.length - r.remaining };
}

export function encodeBind(portal: string, statement: string, body: Buffer, restOffset: number): Buffer {
  const rest = body.subarray(restOffset);
  return new MessageWriter(rest.length + portal.length + statement.length + 8)
    .cstring(portal)
    .cstring(statement)
    .bytes(rest)
    .finish(0x42);
}

/** Describe or Close: a kind byte ('S' statement, 'P' portal) and a name. */
export function readTarget(body: Buffer): { kind: number; name: string } {
  const r = new BodyReader(body);
  return { kind: r.byte(), name: r.cstring() };
}

export function encodeTarget(type: number, kind: number, name: string): Buffer {
  return new MessageWriter(name.length + 8).byte(kind).cstring(name).finish(type);
}
