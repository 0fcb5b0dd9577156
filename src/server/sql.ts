// SQL text that gprxy itself sends to servers: literal quoting that is correct whatever standard_conforming_strings is.

/** An escape-string literal: backslashes and quotes doubled, so no value can end the literal early. */
export function literal(s: string): string {
  return `E'${s.replaceAll('\\', '\\\\').replaceAll("'", "''")}'`;
}
