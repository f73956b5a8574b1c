import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ConfigError } from "../../config/index.js";
import { etcdOptions, type EtcdSettings } from "./settings.js";

describe("etcd settings", () => {
  let dir: string;
  const base: EtcdSettings = {
    etcdEndpoints: ["http://127.0.0.1:2379"],
    etcdCaFile: "",
    etcdCertFile: "",
    etcdKeyFile: "",
    etcdUsername: "root",
    etcdPassword: "from-config",
    etcdPasswordFile: "",
  };
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-etcd-settings-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("reads the password from etcd-password-file's first line, over etcd-password", async () => {
    const file = join(dir, "password");
    await writeFile(file, "s3cret with spaces\nignored\n", { mode: 0o600 });
    assert.equal(etcdOptions({ ...base, etcdPasswordFile: file }).password, "s3cret with spaces");
    assert.equal(etcdOptions(base).password, "from-config");
  });

  it("refuses a missing or empty password file, naming the setting", async () => {
    const empty = join(dir, "empty");
    await writeFile(empty, "\n");
    for (const f of [join(dir, "missing"), empty])
      assert.throws(
        () => etcdOptions({ ...base, etcdPasswordFile: f }),
        (e: unknown) => e instanceof ConfigError && e.key === "etcd-password-file" && e.message.includes(JSON.stringify(f)),
      );
  });

  it("takes a client certificate with no username: the certificate is the identity", () => {
    const opts = etcdOptions({
      ...base,
      etcdEndpoints: ["https://10.0.0.1:2379", "https://10.0.0.2:2379"],
      etcdCaFile: "/pki/ca.crt",
      etcdCertFile: "/pki/node.crt",
      etcdKeyFile: "/pki/node.key",
      etcdUsername: "",
    });
    assert.deepEqual(opts, {
      endpoints: ["https://10.0.0.1:2379", "https://10.0.0.2:2379"],
      tls: { caFile: "/pki/ca.crt", certFile: "/pki/node.crt", keyFile: "/pki/node.key" },
    });
  });

  it("refuses settings that would run with less security than asked, naming the key", () => {
    const tls = { ...base, etcdUsername: "", etcdEndpoints: ["https://127.0.0.1:2379"], etcdCaFile: "/pki/ca.crt" };
    const cases: [Partial<EtcdSettings>, string][] = [
      [{ etcdCertFile: "/pki/node.crt" }, "etcd-key-file"],
      [{ etcdKeyFile: "/pki/node.key" }, "etcd-cert-file"],
      [{ etcdCaFile: "", etcdCertFile: "/pki/node.crt", etcdKeyFile: "/pki/node.key" }, "etcd-ca-file"],
      [{ etcdEndpoints: ["https://127.0.0.1:2379", "http://127.0.0.1:2381"] }, "etcd-endpoints"],
    ];
    for (const [change, key] of cases)
      assert.throws(
        () => etcdOptions({ ...tls, ...change }),
        (e: unknown) => e instanceof ConfigError && e.key === key && e.message.startsWith(`${key}: `),
        key,
      );
  });
});
