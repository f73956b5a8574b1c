// The tar index against archives GNU tar writes (ustar, pax and gnu long names) and against
// broken and hostile ones built byte by byte.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { InvalidSpecError } from "../driver/index.js";
import { TarIndex } from "./tar.js";

const run = promisify(execFile);
let dir: string;
const longDir = `blobs/${"d".repeat(60)}/${"e".repeat(60)}`;
const files: Record<string, Buffer> = {
  "oci-layout": Buffer.from('{"imageLayoutVersion":"1.0.0"}'),
  "index.json": Buffer.from('{"schemaVersion":2}'),
  "blobs/sha256/empty": Buffer.alloc(0),
  "blobs/sha256/big": Buffer.alloc(70_000, 7),
  [`${longDir}/long-file-name`]: Buffer.from("long"),
};

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "hv-tar-"));
  const src = join(dir, "src");
  for (const [p, data] of Object.entries(files)) {
    await mkdir(join(src, p, ".."), { recursive: true });
    await writeFile(join(src, p), data);
  }
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A header block with a valid checksum for `name`, type `type`, `size` bytes. */
function header(name: string, size: number, type = "0"): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, "utf8");
  h.write("0000644\0", 100);
  h.write("0000000\0", 108);
  h.write("0000000\0", 116);
  h.write(size.toString(8).padStart(11, "0") + "\0", 124);
  h.write("00000000000\0", 136);
  h.write(type, 156);
  h.write("ustar\0" + "00", 257);
  h.fill(32, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, "0") + "\0 ", 148);
  return h;
}

describe("TarIndex", () => {
  for (const format of ["ustar", "pax", "gnu"] as const) {
    it(`indexes every regular file of a ${format} archive and reads it back`, async () => {
      const file = join(dir, `${format}.tar`);
      // ustar cannot hold the long path: it gets the short files only.
      const names = Object.keys(files).filter((p) => format !== "ustar" || p.length <= 100);
      await run("tar", [`--format=${format}`, "-cf", file, "-C", join(dir, "src"), ...names]);
      const t = await TarIndex.open(file);
      try {
        assert.deepEqual([...t.entries.keys()].sort(), [...names].sort());
        for (const n of names) assert.deepEqual(await t.read(n, 1 << 20), files[n], n);
        const big = t.get("blobs/sha256/big")!;
        assert.deepEqual(await t.readRange(big, 69_990, 100), Buffer.alloc(10, 7), "a range is cut at the entry's end");
        assert.equal(t.get("./index.json")?.size, files["index.json"]!.length, "./ prefixes are ignored");
        await assert.rejects(t.read("missing"), /missing is missing/);
        await assert.rejects(t.read("blobs/sha256/big", 1000), /over the 1000-byte limit/);
      } finally {
        await t.close();
      }
    });
  }

  it("refuses what is not a tar archive, a corrupt header, a truncated file, and a path that climbs out", async () => {
    const notTar = join(dir, "not.tar");
    await writeFile(notTar, Buffer.alloc(4096, 0x41));
    const corrupt = join(dir, "corrupt.tar");
    const good = Buffer.concat([header("a", 3), Buffer.from("abc"), Buffer.alloc(509), Buffer.alloc(1024)]);
    const bad = Buffer.from(good);
    bad[0] = 0x62; // the name changes, the checksum does not
    await writeFile(corrupt, bad);
    const truncated = join(dir, "truncated.tar");
    await writeFile(truncated, Buffer.concat([header("a", 100_000), Buffer.alloc(512)]));
    const climb = join(dir, "climb.tar");
    await writeFile(climb, Buffer.concat([header("../../etc/passwd", 1), Buffer.alloc(512), Buffer.alloc(1024)]));
    const empty = join(dir, "empty.tar");
    await writeFile(empty, Buffer.alloc(1024));

    const refused = async (file: string, re: RegExp) =>
      assert.rejects(TarIndex.open(file), (e: unknown) => e instanceof InvalidSpecError && re.test(e.message));
    await refused(notTar, /not a tar archive \(bad (header checksum|number)/);
    await refused(corrupt, /bad header checksum at offset 0/);
    await refused(truncated, /runs past the end of the file/);
    await refused(climb, /climbs out of the archive/);
    await refused(empty, /no entries/);

    const fine = join(dir, "fine.tar");
    await writeFile(fine, good);
    const t = await TarIndex.open(fine);
    assert.equal((await t.read("a")).toString(), "abc");
    await t.close();
    // The same archive cut inside its data: refused, not read short.
    await truncate(fine, 512 + 2);
    await refused(fine, /runs past the end/);
    assert.equal((await readFile(fine)).length, 514);
  });
});
