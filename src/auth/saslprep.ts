// SASLprep (RFC 4013) of SCRAM passwords the way PostgreSQL applies it: on failure the raw UTF-8 bytes are used.

/*
 * PostgreSQL (src/common/saslprep.c) leaves pure ASCII alone; otherwise it maps non-ASCII spaces to U+0020, drops
 * "commonly mapped to nothing" characters, checks the mapped text for prohibited, unassigned and bidi-invalid
 * characters and returns its NFKC form. Any failure (including an empty result) makes both libpq and the server
 * fall back to the raw password bytes, so SASLprep failing is never an error.
 *
 * Simplifications (documented, deliberate): "unassigned" uses the Unicode version of this Node.js build instead of
 * Unicode 3.2 (RFC 3454 table A.1), and the bidi categories (tables D.1/D.2) are approximated by script: letters of
 * right-to-left scripts are RandALCat, all other letters LCat. The results differ from PostgreSQL only for passwords
 * that mix characters NFKC changes with characters assigned after Unicode 3.2 or with unusual bidi classes.
 */

/** Inclusive code point ranges, flattened: lo, hi, lo, hi, ... */
type Ranges = readonly number[];

// RFC 3454 C.1.2, checked before B.1 as PostgreSQL does (U+200B is in both and becomes a space).
const NON_ASCII_SPACE: Ranges = [
  0xa0, 0xa0, 0x1680, 0x1680, 0x2000, 0x200b, 0x202f, 0x202f, 0x205f, 0x205f, 0x3000, 0x3000,
];
// RFC 3454 B.1.
const MAPPED_TO_NOTHING: Ranges = [
  0xad, 0xad, 0x34f, 0x34f, 0x1806, 0x1806, 0x180b, 0x180d, 0x200c, 0x200d, 0x2060, 0x2060, 0xfe00, 0xfe0f,
  0xfeff, 0xfeff,
];
// RFC 4013 2.3: C.1.2, C.2.1, C.2.2, C.3, C.4 (plane 0; the rest are unassigned), C.5, C.6, C.7, C.8, C.9.
const PROHIBITED: Ranges = [
  0x0, 0x1f, 0x7f, 0xa0, 0x340, 0x341, 0x6dd, 0x6dd, 0x70f, 0x70f, 0x1680, 0x1680, 0x180e, 0x180e, 0x2000,
  0x200f, 0x2028, 0x202f, 0x205f, 0x2063, 0x206a, 0x206f, 0x2ff0, 0x2ffb, 0x3000, 0x3000, 0xd800, 0xdfff,
  0xe000, 0xf8ff, 0xfdd0, 0xfdef, 0xfeff, 0xfeff, 0xfff9, 0xffff, 0x1d173, 0x1d17a, 0xe0001, 0xe0001, 0xe0020,
  0xe007f, 0xf0000, 0x10ffff,
];
const UNASSIGNED = /\p{Cn}/u;
const RTL_SCRIPT =
  /[\p{sc=Hebrew}\p{sc=Arabic}\p{sc=Syriac}\p{sc=Thaana}\p{sc=Nko}\p{sc=Samaritan}\p{sc=Mandaic}\p{sc=Adlam}]/u;
const LETTER = /\p{L}/u;
const ASCII = /^[\0-\x7F]*$/;

function inRanges(cp: number, ranges: Ranges): boolean {
  for (let i = 0; i < ranges.length; i += 2) if (cp >= ranges[i]! && cp <= ranges[i + 1]!) return true;
  return false;
}

function isRandAL(ch: string): boolean {
  return LETTER.test(ch) && RTL_SCRIPT.test(ch);
}

function bidiOk(chars: string[]): boolean {
  if (!chars.some(isRandAL)) return true;
  if (chars.some((ch) => LETTER.test(ch) && !isRandAL(ch))) return false;
  return isRandAL(chars[0]!) && isRandAL(chars[chars.length - 1]!);
}

/** The bytes SCRAM feeds to PBKDF2 for this password: SASLprep output, or the raw UTF-8 bytes when SASLprep fails. */
export function saslprep(password: string): Buffer {
  const raw = Buffer.from(password, 'utf8');
  if (ASCII.test(password)) return raw;
  const mapped: string[] = [];
  for (const ch of password) {
    const cp = ch.codePointAt(0)!;
    if (inRanges(cp, NON_ASCII_SPACE)) mapped.push(' ');
    else if (!inRanges(cp, MAPPED_TO_NOTHING)) mapped.push(ch);
  }
  // PostgreSQL checks the mapped text (before normalization) for prohibited, unassigned and bidi problems.
  const bad = (ch: string) => inRanges(ch.codePointAt(0)!, PROHIBITED) || UNASSIGNED.test(ch);
  if (mapped.length === 0 || mapped.some(bad) || !bidiOk(mapped)) return raw;
  return Buffer.from(mapped.join('').normalize('NFKC'), 'utf8');
}
