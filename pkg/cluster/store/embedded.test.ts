// The conformance suite on EmbeddedStore, plus what only an embedded store has: its files.
import assert from "node:assert/strict";
import { appendFile, chmod, mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { runStoreConformance } from "./conformance.js";
import { openEmbeddedStore, type EmbeddedStore } from "./embedded.js";
import { CompactedError, StoreError } from "./errors.js";
import type { Store } from "./store.js";

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

runStoreConformance("embedded", async () => {
  const dir = await mkdtemp(join(tmpdir(), "hv-embedded-"));
  const opened: Store[] = [await openEmbeddedStore(dir)];
  return {
    store: opened[0]!,
    reopen: async () => {
      const s = await openEmbeddedStore(dir);
      opened.push(s);
      return s;
    },
    cleanup: async () => {
      for (const s of opened) await s.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
});

describe("embedded store files", () => {
  let root: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), "hv-embedded-files-"));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  let n = 0;
  const fresh = () => join(root, String(++n));

  it("keeps its directory 0700 and its files 0600, also those an older version left readable", async () => {
    const dir = fresh();
    let s = await openEmbeddedStore(dir, { snapshotEvery: 2 });
    for (let i = 0; i < 5; i++) await s.put(`/k${i}`, enc("secret"));
    await s.close();
    await chmod(dir, 0o755);
    for (const f of await readdir(dir)) await chmod(join(dir, f), 0o644);
    s = await openEmbeddedStore(dir, { snapshotEvery: 2 });
    await s.put("/k9", enc("secret"));
    const modes = { [dir]: (await stat(dir)).mode & 0o777 };
    for (const f of await readdir(dir)) modes[f] = (await stat(join(dir, f))).mode & 0o777;
    await s.close();
    assert.deepEqual(
      Object.entries(modes).filter(([, m]) => m !== 0o600),
      [[dir, 0o700]],
      `modes: ${JSON.stringify(Object.fromEntries(Object.entries(modes).map(([k, m]) => [k, m.toString(8)])))}`,
    );
    assert.ok(Object.keys(modes).length >= 3, "the snapshot, the log and the lock were looked at");
  });

  it("keeps the revision across a restart, also after deletes", async () => {
    const dir = fresh();
    let s = await openEmbeddedStore(dir);
    await s.put("/a", enc("1"));
    await s.put("/b", enc("2"));
    const rev = await s.put("/a", enc("3"));
    await s.delete("/b");
    await s.close();
    s = await openEmbeddedStore(dir);
    assert.equal(await s.revision(), rev + 1);
    assert.equal(await s.get("/b"), undefined);
    assert.equal(await s.put("/c", enc("4")), rev + 2);
    await s.close();
  });

  it("recovers from a torn last record, keeping every acknowledged write", async () => {
    const dir = fresh();
    let s = await openEmbeddedStore(dir);
    await s.put("/a", enc("1"));
    const rev = await s.put("/b", enc("2"));
    await s.close();
    const wal = join(dir, "wal.log");
    const good = (await stat(wal)).size;
    // A crash in the middle of appending: a header promising more bytes than made it to disk.
    const torn = Buffer.alloc(12);
    torn.writeUInt32LE(500, 0);
    await appendFile(wal, torn);
    s = await openEmbeddedStore(dir);
    assert.equal(await s.revision(), rev);
    assert.equal(dec((await s.get("/b"))!.value), "2");
    assert.equal((await stat(wal)).size, good, "the torn tail was cut off");
    assert.equal(await s.put("/c", enc("3")), rev + 1, "writes continue after recovery");
    await s.close();
    s = await openEmbeddedStore(dir);
    assert.equal(dec((await s.get("/c"))!.value), "3");
    await s.close();
  });

  it("drops a last record cut short or with a bad checksum", async () => {
    const dir = fresh();
    let s = await openEmbeddedStore(dir);
    const r1 = await s.put("/a", enc("1"));
    await s.put("/a", enc("2"));
    await s.close();
    const wal = join(dir, "wal.log");
    const full = await readFile(wal);
    // Cut the second record in half: only the first write survives.
    await truncate(wal, full.length - 5);
    s = await openEmbeddedStore(dir);
    assert.equal(await s.revision(), r1);
    assert.equal(dec((await s.get("/a"))!.value), "1");
    const r2 = await s.put("/a", enc("3"));
    await s.close();
    // Flip a payload byte of the last record: its checksum no longer matches.
    const bytes = await readFile(wal);
    bytes[bytes.length - 2] = bytes[bytes.length - 2]! ^ 0xff;
    await writeFile(wal, bytes);
    s = await openEmbeddedStore(dir);
    assert.equal(await s.revision(), r2 - 1);
    assert.equal(dec((await s.get("/a"))!.value), "1");
    await s.close();
  });

  it("snapshots the log and recovers from snapshot plus log", async () => {
    const dir = fresh();
    let s: EmbeddedStore = await openEmbeddedStore(dir, { snapshotEvery: 10 });
    const lease = await s.grantLease(60);
    await s.put("/leased", enc("l"), { lease });
    let rev = 0;
    for (let i = 0; i < 25; i++) rev = await s.put(`/k/${i % 7}`, enc(String(i)));
    await s.close();
    const snap = JSON.parse(await readFile(join(dir, "snapshot.json"), "utf8")) as { revision: number };
    assert.ok(snap.revision > 0 && snap.revision <= rev);
    s = await openEmbeddedStore(dir, { snapshotEvery: 10 });
    assert.equal(await s.revision(), rev);
    const kvs = (await s.range("/k/")).kvs;
    assert.equal(kvs.length, 7);
    assert.equal(dec(kvs[3]!.value), "24");
    assert.equal(kvs[3]!.modRevision, rev);
    assert.equal((await s.get("/leased"))!.lease, lease);
    assert.ok((await s.leaseTimeToLive(lease)) > 0);
    // History before the snapshot is gone after the restart; a watch from there must re-list.
    await assert.rejects(
      (async () => {
        for await (const _ of s.watch("/", { fromRevision: 1, signal: AbortSignal.timeout(5000) })) break;
      })(),
      CompactedError,
    );
    await s.close();
  });

  it("keeps watch history across a restart as far as the log goes", async () => {
    const dir = fresh();
    let s = await openEmbeddedStore(dir);
    const r1 = await s.put("/h/a", enc("1"));
    const r2 = await s.put("/h/b", enc("2"));
    await s.close();
    s = await openEmbeddedStore(dir);
    const seen: number[] = [];
    for await (const b of s.watch("/h/", { fromRevision: r1, signal: AbortSignal.timeout(5000) })) {
      seen.push(b.revision);
      if (b.revision === r2) break;
    }
    assert.deepEqual(seen, [r1, r2]);
    await s.close();
  });

  it("bounds watch history to historyLimit revisions", async () => {
    const dir = fresh();
    const s = await openEmbeddedStore(dir, { historyLimit: 5 });
    let rev = 0;
    for (let i = 0; i < 10; i++) rev = await s.put("/x", enc(String(i)));
    await assert.rejects(
      (async () => {
        for await (const _ of s.watch("/", { fromRevision: rev - 5, signal: AbortSignal.timeout(5000) })) break;
      })(),
      CompactedError,
    );
    const first: number[] = [];
    for await (const b of s.watch("/", { fromRevision: rev - 4, signal: AbortSignal.timeout(5000) })) {
      first.push(b.revision);
      if (b.revision === rev) break;
    }
    assert.deepEqual(first, [rev - 4, rev - 3, rev - 2, rev - 1, rev]);
    await s.close();
  });

  it("refuses a second open of the same directory", async () => {
    const dir = fresh();
    const s = await openEmbeddedStore(dir);
    await assert.rejects(openEmbeddedStore(dir), StoreError);
    await s.close();
    const again = await openEmbeddedStore(dir);
    await again.close();
  });
});
