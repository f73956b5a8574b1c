// The committed api/gen/ must be exactly what `make proto` produces from api/proto/, and the
// protos must pass `buf lint`: a stale or hand-edited generated file fails here.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../../../", import.meta.url));
const buf = join(root, "node_modules/.bin/buf");

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? files(p) : [p];
  });
}

describe("api/gen", () => {
  it("passes buf lint", () => {
    execFileSync(buf, ["lint"], { cwd: root, stdio: "pipe" });
  });

  it("matches what buf generate produces now", () => {
    const out = mkdtempSync(join(tmpdir(), "hv-proto-"));
    try {
      execFileSync(buf, ["generate", "-o", out], { cwd: root, stdio: "pipe" });
      const fresh = files(join(out, "api/gen"))
        .map((f) => relative(join(out, "api/gen"), f))
        .sort();
      const committed = files(join(root, "api/gen"))
        .map((f) => relative(join(root, "api/gen"), f))
        .sort();
      assert.deepEqual(committed, fresh, "generated file set differs: run make proto");
      for (const f of fresh) {
        assert.equal(
          readFileSync(join(root, "api/gen", f), "utf8"),
          readFileSync(join(out, "api/gen", f), "utf8"),
          `${f} is stale: run make proto`,
        );
      }
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});
