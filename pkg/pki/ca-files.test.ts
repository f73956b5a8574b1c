// The CA's files: modes, exclusive creation when several servers start at once, and the refusals
// (a readable key, half a CA, a key that is not the certificate's).
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { chmod, mkdtemp, readdir, rm, stat, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CA_CERT_FILE, CA_KEY_FILE, CaFilesError, createCa, loadOrCreateCa } from "./index.js";

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), "hv-pki-"));
  try {
    await fn(join(root, "pki"));
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

const mode = async (p: string) => (await stat(p)).mode & 0o777;

describe("pki ca files", () => {
  it("creates ca.crt 0644 and ca.key 0600 in a 0700 directory, then loads the same CA", () =>
    withDir(async (dir) => {
      const ca = await loadOrCreateCa(dir);
      assert.equal(await mode(dir), 0o700);
      assert.equal(await mode(join(dir, CA_KEY_FILE)), 0o600);
      assert.equal(await mode(join(dir, CA_CERT_FILE)), 0o644);
      assert.deepEqual((await readdir(dir)).sort(), [CA_CERT_FILE, CA_KEY_FILE]);
      const again = await loadOrCreateCa(dir);
      assert.equal(again.certPem, ca.certPem);
    }));

  it("creates exactly one CA when several servers start at once", () =>
    withDir(async (dir) => {
      const all = await Promise.all(Array.from({ length: 6 }, () => loadOrCreateCa(dir)));
      assert.equal(new Set(all.map((c) => c.certPem)).size, 1);
      assert.deepEqual((await readdir(dir)).sort(), [CA_CERT_FILE, CA_KEY_FILE], "no temp file left behind");
    }));

  it("refuses a ca.key readable by group or others", () =>
    withDir(async (dir) => {
      await loadOrCreateCa(dir);
      await chmod(join(dir, CA_KEY_FILE), 0o640);
      await assert.rejects(
        loadOrCreateCa(dir),
        (e) => e instanceof CaFilesError && / mode 0640 lets group or others read this private key/.test(e.message),
      );
    }));

  it("refuses half a CA instead of replacing it", () =>
    withDir(async (dir) => {
      await loadOrCreateCa(dir);
      const key = join(dir, CA_KEY_FILE);
      const cert = join(dir, CA_CERT_FILE);
      await unlink(cert);
      await assert.rejects(
        loadOrCreateCa(dir, { waitForCertMs: 100 }),
        (e) => e instanceof CaFilesError && e.path === cert && /is missing while ca\.key exists/.test(e.message),
      );
      await unlink(key);
      await writeFile(cert, (await createCa()).certPem);
      await assert.rejects(
        loadOrCreateCa(dir),
        (e) => e instanceof CaFilesError && e.path === key && /is missing while ca\.crt exists/.test(e.message),
      );
    }));

  it("refuses a key that is not the certificate's", () =>
    withDir(async (dir) => {
      await loadOrCreateCa(dir);
      await writeFile(join(dir, CA_KEY_FILE), (await createCa()).keyPem, { mode: 0o600 });
      await assert.rejects(
        loadOrCreateCa(dir),
        (e) => e instanceof CaFilesError && /ca key: does not match the ca certificate/.test(e.message),
      );
    }));

  it("honours an aborted signal", () =>
    withDir(async (dir) => {
      await assert.rejects(loadOrCreateCa(dir, { signal: AbortSignal.abort() }), { name: "AbortError" });
    }));
});
