/*
 * A reader of the tar archives images come in (ustar, with pax and GNU long names), by index:
 * one pass over the headers records where each regular file's bytes are, so blobs are then read
 * (or streamed) straight from the file without unpacking the archive anywhere.
 *
 *   [512-byte header][data, padded to 512] … [two zero blocks]
 *
 * Every header's checksum is verified; a short, corrupt or hostile archive is an InvalidSpecError
 * naming the offset, never a crash or a read outside the file.
 */
import { open, type FileHandle } from "node:fs/promises";
import { InvalidSpecError } from "../driver/index.js";

const BLOCK = 512;

export interface TarEntry {
  /** Path in the archive, "./" and leading "/" removed. */
  path: string;
  /** Offset of the file's first byte in the archive. */
  offset: number;
  size: number;
}

export class TarIndex {
  private constructor(
    readonly file: string,
    readonly entries: ReadonlyMap<string, TarEntry>,
    private readonly fh: FileHandle,
  ) {}

  static async open(file: string): Promise<TarIndex> {
    const fh = await open(file, "r");
    try {
      const { size } = await fh.stat();
      return new TarIndex(file, await readHeaders(fh, size), fh);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  get(path: string): TarEntry | undefined {
    return this.entries.get(normalize(path));
  }

  /** The whole file, for small ones (JSON documents). */
  async read(path: string, max = 16 << 20): Promise<Buffer> {
    const e = this.get(path);
    if (!e) throw new InvalidSpecError(`image archive: ${path} is missing`);
    if (e.size > max) throw new InvalidSpecError(`image archive: ${path} is ${e.size} bytes, over the ${max}-byte limit for it`);
    const buf = Buffer.alloc(e.size);
    await this.fh.read(buf, 0, e.size, e.offset);
    return buf;
  }

  /** `length` bytes of an entry from `from`, for streaming a large blob in chunks. */
  async readRange(entry: TarEntry, from: number, length: number): Promise<Buffer> {
    const n = Math.max(0, Math.min(length, entry.size - from));
    const buf = Buffer.alloc(n);
    if (n > 0) await this.fh.read(buf, 0, n, entry.offset + from);
    return buf;
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

function normalize(p: string): string {
  return p.replace(/^(\.\/|\/)+/, "");
}

async function readHeaders(fh: FileHandle, size: number): Promise<Map<string, TarEntry>> {
  const entries = new Map<string, TarEntry>();
  const header = Buffer.alloc(BLOCK);
  let pos = 0;
  let longName: string | undefined;
  let paxPath: string | undefined;
  let zeros = 0;
  while (pos + BLOCK <= size) {
    await fh.read(header, 0, BLOCK, pos);
    if (header.every((b) => b === 0)) {
      if (++zeros === 2) break;
      pos += BLOCK;
      continue;
    }
    zeros = 0;
    checkChecksum(header, pos);
    const type = String.fromCharCode(header[156]!);
    const entrySize = octal(header, 124, 12, pos);
    const dataAt = pos + BLOCK;
    if (dataAt + entrySize > size)
      throw new InvalidSpecError(`image archive: entry at offset ${pos} runs past the end of the file (truncated?)`);
    if (type === "L" || type === "x") {
      if (entrySize > 1 << 20) throw new InvalidSpecError(`image archive: extended header at offset ${pos} is ${entrySize} bytes`);
      const data = Buffer.alloc(entrySize);
      await fh.read(data, 0, entrySize, dataAt);
      if (type === "L") longName = cstring(data, 0, entrySize);
      else paxPath = paxValue(data, "path", pos) ?? paxPath;
    } else if (type === "0" || type === "\0" || type === "7") {
      const prefix = cstring(header, 345, 155);
      const name = paxPath ?? longName ?? (prefix ? `${prefix}/${cstring(header, 0, 100)}` : cstring(header, 0, 100));
      const path = normalize(name);
      if (path.split("/").includes(".."))
        throw new InvalidSpecError(`image archive: entry ${JSON.stringify(name)} climbs out of the archive`);
      entries.set(path, { path, offset: dataAt, size: entrySize });
      longName = paxPath = undefined;
    } else {
      // Directories, links and the rest carry no blob; their long names are used up.
      longName = paxPath = undefined;
    }
    pos = dataAt + Math.ceil(entrySize / BLOCK) * BLOCK;
  }
  // Archives without the two closing zero blocks are common enough (some writers stop early).
  if (entries.size === 0) throw new InvalidSpecError("image archive: not a tar archive (no entries)");
  return entries;
}

function checkChecksum(h: Buffer, pos: number): void {
  const stored = octal(h, 148, 8, pos);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : h[i]!;
  if (sum !== stored) throw new InvalidSpecError(`image archive: not a tar archive (bad header checksum at offset ${pos})`);
}

function octal(h: Buffer, at: number, len: number, pos: number): number {
  // GNU base-256 for sizes over 8 GiB: the high bit of the first byte is set.
  if (h[at]! & 0x80) {
    let v = 0;
    for (let i = at + 1; i < at + len; i++) v = v * 256 + h[i]!;
    return v;
  }
  const s = cstring(h, at, len).trim();
  if (s === "") return 0;
  if (!/^[0-7]+$/.test(s))
    throw new InvalidSpecError(`image archive: not a tar archive (bad number ${JSON.stringify(s)} at offset ${pos + at})`);
  return parseInt(s, 8);
}

function cstring(b: Buffer, at: number, len: number): string {
  const end = b.indexOf(0, at);
  return b.toString("utf8", at, end < 0 || end > at + len ? at + len : end);
}

/** A pax record set is "<len> <key>=<value>\n" repeated. */
function paxValue(data: Buffer, key: string, pos: number): string | undefined {
  let i = 0;
  let found: string | undefined;
  while (i < data.length) {
    const space = data.indexOf(0x20, i);
    if (space < 0) break;
    const len = Number(data.toString("ascii", i, space));
    if (!Number.isInteger(len) || len <= 0 || i + len > data.length)
      throw new InvalidSpecError(`image archive: bad pax header at offset ${pos}`);
    const record = data.toString("utf8", space + 1, i + len - 1);
    const eq = record.indexOf("=");
    if (eq > 0 && record.slice(0, eq) === key) found = record.slice(eq + 1);
    i += len;
  }
  return found;
}
