// `user-cert create` against a real server with TLS and access on (embedded store, the cluster CA
// in a pki dir, the bootstrap admin token): the three files and their modes, the key made here
// and matching the certificate, the printed usage working as printed (flags, then a context),
// --ttl sent, and refusals that write nothing.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createPrivateKey, X509Certificate } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CLOCK_SKEW_MS, identityOf } from "../../pkg/pki/index.js";
import { startServerWithAccess, type AccessServer } from "../../test/support/api-server.js";
import { serverTls } from "../server/tls-setup.js";
import { ExitCode } from "./errors.js";
import { runCli } from "./testing.js";

const mode = async (path: string) => (await stat(path)).mode & 0o777;

describe("user-cert create against a server with TLS and access control", () => {
  let api: AccessServer;
  let dir: string;
  let caFile: string;
  /** ctl as the holder of `token` (the admin's by default), trusting the cluster CA. */
  const cli = (argv: string[], token?: string) =>
    runCli(argv, { server: api.server.url, env: { HYPERVISOR_TOKEN: token ?? api.admin, HYPERVISOR_CA_FILE: caFile } });

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-ctl-user-cert-"));
    const { ca, tls } = await serverTls({ pkiDir: join(dir, "pki"), name: "s1", listenHost: "127.0.0.1", names: [] });
    caFile = join(dir, "pki", "ca.crt");
    api = await startServerWithAccess("hv-ctl-user-cert-server-", { tls, identity: { ca } });
  });

  after(async () => {
    await api?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("writes <name>.crt, <name>.key and ca.crt (0600, in a 0700 directory), and prints how to use them", async () => {
    const out = join(dir, "robot-certs");
    const r = await cli(["user-cert", "create", "--user", "robot", "--out", out]);
    assert.equal(r.code, ExitCode.Ok, r.stderr);
    assert.deepEqual((await readdir(out)).sort(), ["ca.crt", "robot.crt", "robot.key"]);
    assert.equal(await mode(out), 0o700);
    for (const f of ["ca.crt", "robot.crt", "robot.key"]) assert.equal(await mode(join(out, f)), 0o600, f);
    const crt = await readFile(join(out, "robot.crt"), "utf8");
    const cert = new X509Certificate(crt);
    assert.deepEqual(identityOf(crt), { kind: "user", name: "robot" });
    assert.ok(cert.checkPrivateKey(createPrivateKey(await readFile(join(out, "robot.key"), "utf8"))), "the key made here");
    assert.equal(await readFile(join(out, "ca.crt"), "utf8"), await readFile(caFile, "utf8"));
    assert.ok(cert.verify(new X509Certificate(await readFile(caFile)).publicKey));
    const tlsFlags = `--ca-file ${out}/ca.crt --client-cert ${out}/robot.crt --client-key ${out}/robot.key`;
    assert.ok(r.stdout.startsWith(`wrote ${out}/robot.crt, ${out}/robot.key and ${out}/ca.crt (0600); valid until `), r.stdout);
    assert.ok(r.stdout.includes(`  hypervisor-ctl --server ${api.server.url} ${tlsFlags} whoami\n`), r.stdout);
    assert.ok(r.stdout.includes(`  hypervisor-ctl config set-context robot --server ${api.server.url} ${tlsFlags}\n`), r.stdout);
    assert.match(r.stdout, /role bindings of user:robot/);
    assert.match(r.stdout, /no revocation list/);

    // What it prints works: with the flags and no token, then from a context.
    const bare = await runCli(
      ["--ca-file", `${out}/ca.crt`, "--client-cert", `${out}/robot.crt`, "--client-key", `${out}/robot.key`, "whoami"],
      { server: api.server.url },
    );
    assert.equal(bare.code, ExitCode.Ok, bare.stderr);
    assert.match(bare.stdout, /^User:\s+robot\nAuthenticated by:\s+certificate\nToken:\s+-\nRoles:\s+-\n$/);
    const env = { HYPERVISOR_CONFIG: join(dir, "config.yaml") };
    const set = await runCli(["config", "set-context", "robot", "--server", api.server.url, ...tlsFlags.split(" ")], { env });
    assert.equal(set.code, ExitCode.Ok, set.stderr);
    const viaContext = await runCli(["--context", "robot", "whoami"], { env });
    assert.equal(viaContext.code, ExitCode.Ok, viaContext.stderr);
    assert.match(viaContext.stdout, /^User:\s+robot\nAuthenticated by:\s+certificate\n/);
  });

  it("sends --ttl; run again, it replaces the files with a new key", async () => {
    const out = join(dir, "ci-certs");
    const first = await cli(["user-cert", "create", "--user", "ci", "--ttl", "12h", "--out", out]);
    assert.equal(first.code, ExitCode.Ok, first.stderr);
    const c = new X509Certificate(await readFile(join(out, "ci.crt")));
    assert.equal(Date.parse(c.validTo) - Date.parse(c.validFrom), 12 * 3600_000 + CLOCK_SKEW_MS);
    const key = await readFile(join(out, "ci.key"), "utf8");
    const again = await cli(["user-cert", "create", "--user", "ci", "--ttl", "1d", "--out", out]);
    assert.equal(again.code, ExitCode.Ok, again.stderr);
    const renewed = new X509Certificate(await readFile(join(out, "ci.crt")));
    assert.notEqual(await readFile(join(out, "ci.key"), "utf8"), key);
    assert.ok(renewed.checkPrivateKey(createPrivateKey(await readFile(join(out, "ci.key"), "utf8"))));
    assert.equal(Date.parse(renewed.validTo) - Date.parse(renewed.validFrom), 24 * 3600_000 + CLOCK_SKEW_MS);
  });

  it("refuses bad flags before anything is sent, and a viewer at the server; neither writes a file", async () => {
    const out = join(dir, "refused");
    for (const [argv, message] of [
      [["--user", "Robot", "--out", out], /option '--user <name>' argument 'Robot' is invalid\. "Robot" is not a valid name/],
      [["--user", "ca", "--out", out], /"ca" would write its certificate over ca\.crt/],
      [["--user", "robot"], /required option '--out <dir>' not specified/],
      [["--out", out], /required option '--user <name>' not specified/],
      [["--user", "robot", "--ttl", "400d", "--out", out], /at most 365d/],
    ] as const) {
      const r = await cli(["user-cert", "create", ...argv]);
      assert.equal(r.code, ExitCode.Usage, `${argv.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, message);
    }
    const viewer = (await cli(["token", "create", "--role", "viewer", "--user", "val"])).stdout.trim();
    const r = await cli(["user-cert", "create", "--user", "robot", "--out", out], viewer);
    assert.equal(r.code, ExitCode.Api, r.stderr);
    assert.match(r.stderr, /permission_denied: IssueUserCertificate: val may not tokens:manage/);
    await assert.rejects(stat(out), /ENOENT/);
  });
});
