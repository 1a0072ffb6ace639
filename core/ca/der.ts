/**
 * A strict, minimal DER reader and writer: just what the CA needs to reach the signed bytes of
 * a certificate or CSR, and to turn ECDSA signatures between their JWS and X.509 encodings.
 * Everything else about certificates is parsed by @peculiar/x509. Throws RangeError on
 * anything that is not definite-length, minimally encoded DER; callers map that to their code.
 */

export const TAG = {
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  SEQUENCE: 0x30,
} as const;

export interface DerElement {
  /** The identifier octet (single-octet tags only). */
  tag: number;
  /** The whole element: identifier, length and contents. */
  raw: Buffer;
  /** The contents octets. */
  value: Buffer;
}

const MAX_LENGTH_OCTETS = 4; // lengths up to 4 GiB: more than any certificate needs

/** Reads one element at `offset`; returns it and the offset just past it. */
export function readElement(bytes: Buffer, offset = 0): { element: DerElement; next: number } {
  if (offset >= bytes.length) throw new RangeError('DER: unexpected end of data');
  const tag = bytes[offset]!;
  if ((tag & 0x1f) === 0x1f) throw new RangeError('DER: multi-octet tags are not supported');
  let at = offset + 1;
  if (at >= bytes.length) throw new RangeError('DER: missing length');
  const first = bytes[at++]!;
  let length: number;
  if (first < 0x80) {
    length = first;
  } else {
    const count = first & 0x7f;
    if (count === 0) throw new RangeError('DER: indefinite lengths are not DER');
    if (count > MAX_LENGTH_OCTETS) throw new RangeError('DER: length too large');
    if (at + count > bytes.length) throw new RangeError('DER: truncated length');
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + bytes[at + i]!;
    if (bytes[at] === 0 || length < 0x80) throw new RangeError('DER: length not minimally encoded');
    at += count;
  }
  const end = at + length;
  if (end > bytes.length) throw new RangeError('DER: truncated contents');
  return {
    element: { tag, raw: bytes.subarray(offset, end), value: bytes.subarray(at, end) },
    next: end,
  };
}

/** Reads exactly one element filling `bytes`, optionally of a given tag. */
export function readSingle(bytes: Buffer, tag?: number): DerElement {
  const { element, next } = readElement(bytes, 0);
  if (next !== bytes.length) throw new RangeError('DER: trailing data');
  if (tag !== undefined && element.tag !== tag)
    throw new RangeError(
      `DER: expected tag 0x${tag.toString(16)}, got 0x${element.tag.toString(16)}`,
    );
  return element;
}

/** The elements inside a constructed element's contents. */
export function children(element: DerElement): DerElement[] {
  if ((element.tag & 0x20) === 0) throw new RangeError('DER: not a constructed element');
  const items: DerElement[] = [];
  let at = 0;
  while (at < element.value.length) {
    const { element: item, next } = readElement(element.value, at);
    items.push(item);
    at = next;
  }
  return items;
}

/** A non-negative INTEGER's magnitude, without the sign octet; refuses negative or non-minimal ones. */
export function readUnsignedInteger(element: DerElement): Buffer {
  if (element.tag !== TAG.INTEGER) throw new RangeError('DER: expected an INTEGER');
  const value = element.value;
  if (value.length === 0) throw new RangeError('DER: empty INTEGER');
  if (value[0]! & 0x80) throw new RangeError('DER: negative INTEGER');
  if (value.length > 1 && value[0] === 0 && (value[1]! & 0x80) === 0)
    throw new RangeError('DER: INTEGER not minimally encoded');
  return value[0] === 0 && value.length > 1 ? value.subarray(1) : value;
}

/** The contents of a BIT STRING with no unused bits (keys and signatures are whole octets). */
export function readBitString(element: DerElement): Buffer {
  if (element.tag !== TAG.BIT_STRING) throw new RangeError('DER: expected a BIT STRING');
  if (element.value.length === 0 || element.value[0] !== 0)
    throw new RangeError('DER: BIT STRING with unused bits');
  return element.value.subarray(1);
}

/** Dotted text of an OBJECT IDENTIFIER. */
export function readOid(element: DerElement): string {
  if (element.tag !== TAG.OID) throw new RangeError('DER: expected an OBJECT IDENTIFIER');
  const bytes = element.value;
  if (bytes.length === 0) throw new RangeError('DER: empty OBJECT IDENTIFIER');
  const arcs: number[] = [];
  let arc = 0;
  for (let i = 0; i < bytes.length; i++) {
    const byte = bytes[i]!;
    if (arc === 0 && byte === 0x80) throw new RangeError('DER: OID arc not minimally encoded');
    if (arc > Number.MAX_SAFE_INTEGER / 128) throw new RangeError('DER: OID arc too large');
    arc = arc * 128 + (byte & 0x7f);
    if ((byte & 0x80) === 0) {
      arcs.push(arc);
      arc = 0;
    } else if (i === bytes.length - 1) {
      throw new RangeError('DER: truncated OID');
    }
  }
  const head = arcs[0]!;
  const top = head < 40 ? 0 : head < 80 ? 1 : 2;
  return [top, head - top * 40, ...arcs.slice(1)].join('.');
}

export function encodeLength(length: number): Buffer {
  if (length < 0x80) return Buffer.from([length]);
  const octets: number[] = [];
  for (let rest = length; rest > 0; rest = Math.floor(rest / 256)) octets.unshift(rest & 0xff);
  return Buffer.from([0x80 | octets.length, ...octets]);
}

export function encodeElement(tag: number, contents: Buffer): Buffer {
  return Buffer.concat([Buffer.from([tag]), encodeLength(contents.length), contents]);
}

/** A non-negative INTEGER from its big-endian magnitude (leading zeros are dropped). */
export function encodeUnsignedInteger(magnitude: Buffer): Buffer {
  let start = 0;
  while (start < magnitude.length - 1 && magnitude[start] === 0) start++;
  let digits = magnitude.subarray(start);
  if (digits.length === 0) digits = Buffer.from([0]);
  if (digits[0]! & 0x80) digits = Buffer.concat([Buffer.from([0]), digits]);
  return encodeElement(TAG.INTEGER, digits);
}
