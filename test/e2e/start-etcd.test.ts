// scripts/start-etcd.sh in TLS mode, as a developer runs it: https on loopback with
// --client-cert-auth, healthy by its own check (also after a restart with auth on), and etcd then
// takes the server's certificate as root and refuses a client without one; and the same on the
// files `hypervisor-server init` makes (what `make etcd` runs).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { enableAuth, ETCD_SERVER_USER, openEtcdStore } from "../../pkg/cluster/etcd/index.js";
import { PermissionDeniedError, type Store } from "../../pkg/cluster/store/index.js";
import { keys } from "../../pkg/cluster/state/index.js";
import { makeTestCa, type TestCa } from "../support/pki.js";
import { identityOf } from "../../pkg/pki/index.js";
import { binPath, freePort, repoRoot } from "../support/procs.js";

const run = promisify(execFile);

describe("scripts/start-etcd.sh with a pki dir", { timeout: 120_000 }, () => {
  let ca: TestCa;
  let data: string;
  let port: number;
  const opened: Store[] = [];
  const start = async () =>
    (await run("bash", [join(repoRoot, "scripts/start-etcd.sh"), String(port), data, ca.dir], { timeout: 60_000 })).stdout.trim();
  const stop = () => run("bash", [join(repoRoot, "scripts/stop-etcd.sh"), data], { timeout: 60_000 });

  before(async () => {
    ca = await makeTestCa();
    await ca.issue("etcd-server", { server: true, ips: ["127.0.0.1"] });
    data = await mkdtemp(join(tmpdir(), "hv-start-etcd-"));
    port = await freePort();
  });
  after(async () => {
    for (const s of opened) await s.close();
    await stop().catch(() => undefined);
    await rm(data, { recursive: true, force: true });
    await ca.remove();
  });

  it("serves https with client certificates, and stays healthy by its check once auth is on", async () => {
    const endpoint = await start();
    assert.equal(endpoint, `https://127.0.0.1:${port}`);
    const server = await openEtcdStore({ endpoints: [endpoint], tls: { caFile: ca.caFile, ...(await ca.issue(ETCD_SERVER_USER)) } });
    opened.push(server);
    await enableAuth(server);
    await server.put(keys.cluster, new TextEncoder().encode("id"));

    const noCert = await openEtcdStore({ endpoints: [endpoint], tls: { caFile: ca.caFile } });
    opened.push(noCert);
    await assert.rejects(noCert.get(keys.cluster), PermissionDeniedError);

    // Restarted with auth on: the script's health check still passes, and the data is there.
    await stop();
    assert.equal(await start(), endpoint);
    assert.equal(new TextDecoder().decode((await server.get(keys.cluster))?.value), "id");
  });

  it("refuses a pki dir without etcd's certificate, naming the file", async () => {
    const empty = await mkdtemp(join(tmpdir(), "hv-empty-pki-"));
    try {
      await assert.rejects(
        run("bash", [join(repoRoot, "scripts/start-etcd.sh"), String(await freePort()), join(empty, "data"), empty]),
        (e: unknown) => (e as { code?: number; stderr?: string }).code === 2 && /ca\.crt is missing/.test((e as { stderr: string }).stderr),
      );
    } finally {
      await rm(empty, { recursive: true, force: true });
    }
  });

  it("runs on what `hypervisor-server init` makes: the CA, etcd's certificate and the servers' etcd identity", async () => {
    const dir = await mkdtemp(join(tmpdir(), "hv-init-"));
    const initPort = await freePort();
    const endpoint = `https://127.0.0.1:${initPort}`;
    const init = () =>
      run(process.execPath, [binPath("hypervisor-server"), "init", "--data-dir", dir, "--etcd-endpoints", endpoint], { timeout: 60_000 });
    const etcdDir = join(dir, "pki", "etcd");
    try {
      assert.match((await init()).stdout, /issued etcd-server\.crt, etcd-server\.key, hypervisor-server\.crt, hypervisor-server\.key/);
      assert.equal((await stat(join(dir, "pki", "ca.key"))).mode & 0o777, 0o600);
      assert.equal((await stat(etcdDir)).mode & 0o777, 0o700);
      for (const f of ["etcd-server.key", "hypervisor-server.key"]) assert.equal((await stat(join(etcdDir, f))).mode & 0o777, 0o600, f);
      const served = new X509Certificate(await readFile(join(etcdDir, "etcd-server.crt")));
      assert.equal(served.subject, "CN=etcd");
      assert.match(served.subjectAltName ?? "", /IP Address:127\.0\.0\.1/);
      const caPem = await readFile(join(dir, "pki", "ca.crt"), "utf8");
      assert.equal(await readFile(join(etcdDir, "ca.crt"), "utf8"), caPem);
      // Neither is a server or node identity at the API.
      const client = await readFile(join(etcdDir, "hypervisor-server.crt"), "utf8");
      assert.equal(identityOf(client), undefined);
      assert.equal(new X509Certificate(client).subject, `CN=${ETCD_SERVER_USER}`);
      // Again: current, kept as they are.
      assert.match((await init()).stdout, /current, kept/);
      assert.equal(await readFile(join(etcdDir, "hypervisor-server.crt"), "utf8"), client);

      const data2 = join(dir, "etcd-data");
      const got = (await run("bash", [join(repoRoot, "scripts/start-etcd.sh"), String(initPort), data2, etcdDir], { timeout: 60_000 }))
        .stdout;
      try {
        assert.equal(got.trim(), endpoint);
        const tls = {
          caFile: join(etcdDir, "ca.crt"),
          certFile: join(etcdDir, "hypervisor-server.crt"),
          keyFile: join(etcdDir, "hypervisor-server.key"),
        };
        const server = await openEtcdStore({ endpoints: [endpoint], tls });
        opened.push(server);
        await enableAuth(server);
        await server.put(keys.cluster, new TextEncoder().encode("id"));
        const noCert = await openEtcdStore({ endpoints: [endpoint], tls: { caFile: tls.caFile } });
        opened.push(noCert);
        await assert.rejects(noCert.get(keys.cluster), PermissionDeniedError);
      } finally {
        await run("bash", [join(repoRoot, "scripts/stop-etcd.sh"), data2], { timeout: 60_000 });
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
