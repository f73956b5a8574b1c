/*
 * XDR (RFC 4506) as libvirt's rpcgen uses it: big-endian, every item padded to 4 bytes, chars and
 * shorts widened to 4 bytes, optional pointers as a bool followed by the value. The reader checks
 * every length against both the bytes it has and the protocol's maxima before it allocates, so a
 * corrupt or hostile length field is an XdrError, never a 4 GiB Buffer or a silent misparse.
 */

/** REMOTE_STRING_MAX / VIR_NET_MESSAGE_STRING_MAX: the default cap for strings and opaques. */
export const XDR_STRING_MAX = 4194304;

const U32_MAX = 0xffffffff;
const U64_MAX = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;

/** Bad input to the writer or bytes the reader cannot accept (truncated, over a limit, malformed). */
export class XdrError extends Error {
  override readonly name = "XdrError";
}

const pad = (n: number) => (4 - (n % 4)) % 4;

export class XdrWriter {
  private buf: Buffer;
  private pos = 0;

  constructor(initialSize = 256) {
    this.buf = Buffer.alloc(Math.max(initialSize, 16));
  }

  /** Bytes written so far. */
  get length(): number {
    return this.pos;
  }

  private reserve(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = Buffer.alloc(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  u32(v: number): this {
    if (!Number.isInteger(v) || v < 0 || v > U32_MAX) throw new XdrError(`unsigned int out of range: ${v}`);
    this.reserve(4);
    this.buf.writeUInt32BE(v, this.pos);
    this.pos += 4;
    return this;
  }

  i32(v: number): this {
    if (!Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff) throw new XdrError(`int out of range: ${v}`);
    this.reserve(4);
    this.buf.writeInt32BE(v, this.pos);
    this.pos += 4;
    return this;
  }

  u64(v: bigint): this {
    if (v < 0n || v > U64_MAX) throw new XdrError(`unsigned hyper out of range: ${v}`);
    this.reserve(8);
    this.buf.writeBigUInt64BE(v, this.pos);
    this.pos += 8;
    return this;
  }

  i64(v: bigint): this {
    if (v < I64_MIN || v > I64_MAX) throw new XdrError(`hyper out of range: ${v}`);
    this.reserve(8);
    this.buf.writeBigInt64BE(v, this.pos);
    this.pos += 8;
    return this;
  }

  f64(v: number): this {
    this.reserve(8);
    this.buf.writeDoubleBE(v, this.pos);
    this.pos += 8;
    return this;
  }

  bool(v: boolean): this {
    return this.u32(v ? 1 : 0);
  }

  /** string<max>: length, UTF-8 bytes (no NUL), zero padding. */
  string(s: string, max = XDR_STRING_MAX): this {
    return this.opaque(Buffer.from(s, "utf8"), max);
  }

  /** opaque[len]: exactly len bytes and padding, no length word (e.g. a 16-byte UUID). */
  fixedOpaque(b: Uint8Array, len: number): this {
    if (b.length !== len) throw new XdrError(`fixed opaque needs ${len} bytes, got ${b.length}`);
    this.raw(b);
    return this;
  }

  /** opaque<max>: length word, bytes, padding. */
  opaque(b: Uint8Array, max = XDR_STRING_MAX): this {
    if (b.length > max) throw new XdrError(`opaque of ${b.length} bytes exceeds the limit of ${max}`);
    this.u32(b.length);
    this.raw(b);
    return this;
  }

  /** T *name: a bool saying whether the value follows. */
  optional<T>(v: T | undefined, write: (w: XdrWriter, v: T) => void): this {
    this.bool(v !== undefined);
    if (v !== undefined) write(this, v);
    return this;
  }

  /** T name<max>: count, then the elements. */
  array<T>(items: readonly T[], write: (w: XdrWriter, v: T) => void, max = U32_MAX): this {
    if (items.length > max) throw new XdrError(`array of ${items.length} elements exceeds the limit of ${max}`);
    this.u32(items.length);
    for (const item of items) write(this, item);
    return this;
  }

  /** T name[n]: exactly n elements, no count (e.g. char model[32] as 32 ints). */
  fixedArray<T>(items: readonly T[], n: number, write: (w: XdrWriter, v: T) => void): this {
    if (items.length !== n) throw new XdrError(`fixed array needs ${n} elements, got ${items.length}`);
    for (const item of items) write(this, item);
    return this;
  }

  private raw(b: Uint8Array): void {
    const p = pad(b.length);
    this.reserve(b.length + p);
    this.buf.set(b, this.pos);
    // The buffer may hold bytes from before a grow; padding must be zero on the wire.
    this.buf.fill(0, this.pos + b.length, this.pos + b.length + p);
    this.pos += b.length + p;
  }

  /** The encoded bytes (a copy; the writer can be reused or dropped). */
  finish(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.pos));
  }
}

export class XdrReader {
  private pos: number;

  constructor(
    private readonly buf: Buffer,
    offset = 0,
  ) {
    this.pos = offset;
  }

  get offset(): number {
    return this.pos;
  }

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  private need(n: number, what: string): void {
    if (this.remaining < n) throw new XdrError(`truncated ${what}: need ${n} bytes at offset ${this.pos}, have ${this.remaining}`);
  }

  u32(): number {
    this.need(4, "unsigned int");
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  i32(): number {
    this.need(4, "int");
    const v = this.buf.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  u64(): bigint {
    this.need(8, "unsigned hyper");
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  i64(): bigint {
    this.need(8, "hyper");
    const v = this.buf.readBigInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  f64(): number {
    this.need(8, "double");
    const v = this.buf.readDoubleBE(this.pos);
    this.pos += 8;
    return v;
  }

  /**
   * Strict 0 or 1. glibc's xdr_bool takes any nonzero as true, but a daemon only ever sends 0/1,
   * so anything else means we are reading at the wrong offset, and failing here says so early.
   */
  bool(): boolean {
    const at = this.pos;
    const v = this.u32();
    if (v > 1) throw new XdrError(`bool at offset ${at} is ${v}, not 0 or 1`);
    return v === 1;
  }

  string(max = XDR_STRING_MAX): string {
    return this.opaque(max).toString("utf8");
  }

  fixedOpaque(len: number): Buffer {
    this.need(len + pad(len), `fixed opaque[${len}]`);
    const b = Buffer.from(this.buf.subarray(this.pos, this.pos + len));
    this.pos += len + pad(len);
    return b;
  }

  opaque(max = XDR_STRING_MAX): Buffer {
    const at = this.pos;
    const len = this.u32();
    if (len > max) throw new XdrError(`length ${len} at offset ${at} exceeds the limit of ${max}`);
    return this.fixedOpaque(len);
  }

  optional<T>(read: (r: XdrReader) => T): T | undefined {
    return this.bool() ? read(this) : undefined;
  }

  array<T>(read: (r: XdrReader) => T, max = U32_MAX): T[] {
    const at = this.pos;
    const n = this.u32();
    if (n > max) throw new XdrError(`array count ${n} at offset ${at} exceeds the limit of ${max}`);
    // Every XDR item is at least 4 bytes: a count the remaining bytes cannot hold is corrupt.
    this.need(n * 4, `array of ${n} elements`);
    const out: T[] = [];
    for (let i = 0; i < n; i++) out.push(read(this));
    return out;
  }

  fixedArray<T>(n: number, read: (r: XdrReader) => T): T[] {
    const out: T[] = [];
    for (let i = 0; i < n; i++) out.push(read(this));
    return out;
  }

  /** Throws when bytes are left over: a reply longer than its struct means the layout is wrong. */
  end(): void {
    if (this.remaining !== 0) throw new XdrError(`${this.remaining} unexpected trailing bytes at offset ${this.pos}`);
  }
}
