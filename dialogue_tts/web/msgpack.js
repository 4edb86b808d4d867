// The msgpack subset the dialogue-tts protocol uses (protocol/PROTOCOL.md): nil, bool,
// integers, float64 (float32 decoded too), str, bin, arrays and maps with string keys.
// Tested byte for byte against protocol/vectors.json (tests/test_web.py).

/** Numbers under these keys are always floats on the wire; every other integer is an int. */
export const FLOAT_FIELDS = new Set(["rate", "pitch", "volume", "duration", "gap", "pause"]);

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

class ByteWriter {
  constructor() {
    this.bytes = new Uint8Array(256);
    this.view = new DataView(this.bytes.buffer);
    this.length = 0;
  }

  reserve(count) {
    if (this.length + count <= this.bytes.length) return;
    let size = this.bytes.length * 2;
    while (size < this.length + count) size *= 2;
    const bigger = new Uint8Array(size);
    bigger.set(this.bytes.subarray(0, this.length));
    this.bytes = bigger;
    this.view = new DataView(bigger.buffer);
  }

  u8(value) { this.reserve(1); this.view.setUint8(this.length, value); this.length += 1; }
  u16(value) { this.reserve(2); this.view.setUint16(this.length, value); this.length += 2; }
  u32(value) { this.reserve(4); this.view.setUint32(this.length, value); this.length += 4; }
  i8(value) { this.reserve(1); this.view.setInt8(this.length, value); this.length += 1; }
  i16(value) { this.reserve(2); this.view.setInt16(this.length, value); this.length += 2; }
  i32(value) { this.reserve(4); this.view.setInt32(this.length, value); this.length += 4; }
  u64(value) { this.reserve(8); this.view.setBigUint64(this.length, value); this.length += 8; }
  i64(value) { this.reserve(8); this.view.setBigInt64(this.length, value); this.length += 8; }
  f64(value) { this.reserve(8); this.view.setFloat64(this.length, value); this.length += 8; }

  raw(bytes) {
    this.reserve(bytes.length);
    this.bytes.set(bytes, this.length);
    this.length += bytes.length;
  }

  result() { return this.bytes.slice(0, this.length); }
}

/** Encode ``value`` as msgpack: integers in their smallest form, keys in insertion order. */
export function encode(value) {
  const writer = new ByteWriter();
  writeValue(writer, value, false);
  return writer.result();
}

function writeValue(writer, value, asFloat) {
  if (value === null || value === undefined) writer.u8(0xc0);
  else if (value === false) writer.u8(0xc2);
  else if (value === true) writer.u8(0xc3);
  else if (typeof value === "number") {
    if (!asFloat && Number.isSafeInteger(value)) writeInteger(writer, BigInt(value));
    else { writer.u8(0xcb); writer.f64(value); }
  } else if (typeof value === "bigint") writeInteger(writer, value);
  else if (typeof value === "string") writeString(writer, value);
  else if (value instanceof Uint8Array || value instanceof ArrayBuffer) {
    writeBinary(writer, value instanceof ArrayBuffer ? new Uint8Array(value) : value);
  } else if (Array.isArray(value)) {
    writeLength(writer, value.length, 0x90, 0x0f, 0xdc, 0xdd);
    for (const item of value) writeValue(writer, item, false);
  } else if (typeof value === "object") {
    const keys = Object.keys(value).filter((key) => value[key] !== undefined);
    writeLength(writer, keys.length, 0x80, 0x0f, 0xde, 0xdf);
    for (const key of keys) {
      writeString(writer, key);
      writeValue(writer, value[key], FLOAT_FIELDS.has(key) && typeof value[key] === "number");
    }
  } else throw new TypeError(`msgpack cannot encode a ${typeof value}`);
}

function writeInteger(writer, value) {
  if (value >= 0n) {
    if (value <= 0x7fn) writer.u8(Number(value));
    else if (value <= 0xffn) { writer.u8(0xcc); writer.u8(Number(value)); }
    else if (value <= 0xffffn) { writer.u8(0xcd); writer.u16(Number(value)); }
    else if (value <= 0xffffffffn) { writer.u8(0xce); writer.u32(Number(value)); }
    else if (value <= 0xffffffffffffffffn) { writer.u8(0xcf); writer.u64(value); }
    else throw new RangeError("integer too large for msgpack");
  } else if (value >= -32n) writer.i8(Number(value));
  else if (value >= -0x80n) { writer.u8(0xd0); writer.i8(Number(value)); }
  else if (value >= -0x8000n) { writer.u8(0xd1); writer.i16(Number(value)); }
  else if (value >= -0x80000000n) { writer.u8(0xd2); writer.i32(Number(value)); }
  else if (value >= -0x8000000000000000n) { writer.u8(0xd3); writer.i64(value); }
  else throw new RangeError("integer too small for msgpack");
}

function writeString(writer, text) {
  const bytes = utf8Encoder.encode(text);
  if (bytes.length <= 31) writer.u8(0xa0 | bytes.length);
  else if (bytes.length <= 0xff) { writer.u8(0xd9); writer.u8(bytes.length); }
  else if (bytes.length <= 0xffff) { writer.u8(0xda); writer.u16(bytes.length); }
  else { writer.u8(0xdb); writer.u32(bytes.length); }
  writer.raw(bytes);
}

function writeBinary(writer, bytes) {
  if (bytes.length <= 0xff) { writer.u8(0xc4); writer.u8(bytes.length); }
  else if (bytes.length <= 0xffff) { writer.u8(0xc5); writer.u16(bytes.length); }
  else { writer.u8(0xc6); writer.u32(bytes.length); }
  writer.raw(bytes);
}

function writeLength(writer, length, fixBase, fixMax, code16, code32) {
  if (length <= fixMax) writer.u8(fixBase | length);
  else if (length <= 0xffff) { writer.u8(code16); writer.u16(length); }
  else { writer.u8(code32); writer.u32(length); }
}

/** Decode one msgpack value that fills ``bytes`` exactly; throws on anything else. */
export function decode(bytes) {
  const data = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const reader = {
    data,
    view: new DataView(data.buffer, data.byteOffset, data.byteLength),
    offset: 0,
  };
  const value = readValue(reader, 0);
  if (reader.offset !== data.length) throw new Error("extra bytes after the msgpack value");
  return value;
}

const MAX_DEPTH = 64;

function take(reader, count) {
  if (reader.offset + count > reader.data.length) throw new Error("truncated msgpack");
  const start = reader.offset;
  reader.offset += count;
  return start;
}

function readValue(reader, depth) {
  if (depth > MAX_DEPTH) throw new Error("msgpack nested too deeply");
  const { view } = reader;
  const code = view.getUint8(take(reader, 1));
  if (code <= 0x7f) return code;
  if (code >= 0xe0) return code - 0x100;
  if ((code & 0xf0) === 0x80) return readMap(reader, code & 0x0f, depth);
  if ((code & 0xf0) === 0x90) return readArray(reader, code & 0x0f, depth);
  if ((code & 0xe0) === 0xa0) return readString(reader, code & 0x1f);
  switch (code) {
    case 0xc0: return null;
    case 0xc2: return false;
    case 0xc3: return true;
    case 0xc4: return readBinary(reader, view.getUint8(take(reader, 1)));
    case 0xc5: return readBinary(reader, view.getUint16(take(reader, 2)));
    case 0xc6: return readBinary(reader, view.getUint32(take(reader, 4)));
    case 0xca: return view.getFloat32(take(reader, 4));
    case 0xcb: return view.getFloat64(take(reader, 8));
    case 0xcc: return view.getUint8(take(reader, 1));
    case 0xcd: return view.getUint16(take(reader, 2));
    case 0xce: return view.getUint32(take(reader, 4));
    case 0xcf: return toNumber(view.getBigUint64(take(reader, 8)));
    case 0xd0: return view.getInt8(take(reader, 1));
    case 0xd1: return view.getInt16(take(reader, 2));
    case 0xd2: return view.getInt32(take(reader, 4));
    case 0xd3: return toNumber(view.getBigInt64(take(reader, 8)));
    case 0xd9: return readString(reader, view.getUint8(take(reader, 1)));
    case 0xda: return readString(reader, view.getUint16(take(reader, 2)));
    case 0xdb: return readString(reader, view.getUint32(take(reader, 4)));
    case 0xdc: return readArray(reader, view.getUint16(take(reader, 2)), depth);
    case 0xdd: return readArray(reader, view.getUint32(take(reader, 4)), depth);
    case 0xde: return readMap(reader, view.getUint16(take(reader, 2)), depth);
    case 0xdf: return readMap(reader, view.getUint32(take(reader, 4)), depth);
    default: throw new Error(`msgpack type 0x${code.toString(16)} is not used by the protocol`);
  }
}

/** A 64-bit integer as a Number when exact, else as a BigInt. */
function toNumber(value) {
  const number = Number(value);
  return Number.isSafeInteger(number) ? number : value;
}

function readString(reader, length) {
  const start = take(reader, length);
  return utf8Decoder.decode(reader.data.subarray(start, start + length));
}

function readBinary(reader, length) {
  const start = take(reader, length);
  return reader.data.slice(start, start + length);
}

function readArray(reader, length, depth) {
  const items = [];
  for (let index = 0; index < length; index += 1) items.push(readValue(reader, depth + 1));
  return items;
}

function readMap(reader, length, depth) {
  const map = {};
  for (let index = 0; index < length; index += 1) {
    const key = readValue(reader, depth + 1);
    if (typeof key !== "string") throw new Error("msgpack map keys must be strings");
    // defineProperty: a "__proto__" key is data, never the object's prototype.
    Object.defineProperty(map, key, {
      value: readValue(reader, depth + 1), enumerable: true, writable: true, configurable: true,
    });
  }
  return map;
}
