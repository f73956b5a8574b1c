// Server settings: the YAML file, environment and flags through the shared loader, and the checks
// the schema's types cannot express (listen address, store kind, algorithm).
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { loadConfig } from "../../pkg/config/index.js";
import { binPath } from "../../test/support/procs.js";
import { checkServerConfig, oidcSettingsOf, serverSchema } from "./config.js";

const repo = fileURLToPath(new URL("../../../", import.meta.url));

describe("server config", () => {
  it("configs/server.yaml loads, and flags override it", async () => {
    const { config, sources } = await loadConfig(serverSchema, {
      argv: [
        "--config",
        `${repo}configs/server.yaml`,
        "--listen",
        "127.0.0.1:9999",
        "--store",
        "etcd",
        "--etcd-endpoints",
        "http://a:1,http://b:2",
      ],
      env: {},
    });
    assert.equal(sources.listen, "flag");
    assert.equal(sources["data-dir"], "file");
    assert.deepEqual(config.etcdEndpoints, ["http://a:1", "http://b:2"]);
    assert.deepEqual(checkServerConfig(config), { host: "127.0.0.1", port: 9999, algorithm: "binpack" });
  });

  it("serves cleartext on loopback only, unless forced by the flag named as dangerous", async () => {
    const check = async (...argv: string[]) => checkServerConfig((await loadConfig(serverSchema, { argv, env: {} })).config);
    assert.deepEqual(await check("--no-tls", "--listen", "127.0.0.1:7070"), { host: "127.0.0.1", port: 7070, algorithm: "binpack" });
    assert.deepEqual(await check("--no-tls", "--listen", "[::1]:7070"), { host: "::1", port: 7070, algorithm: "binpack" });
    assert.deepEqual(await check("--no-tls", "--dangerously-allow-plaintext", "--listen", ":7070"), {
      host: "0.0.0.0",
      port: 7070,
      algorithm: "binpack",
    });
    assert.deepEqual(await check("--listen", ":7070"), { host: "0.0.0.0", port: 7070, algorithm: "binpack" }, "TLS anywhere");
  });

  it("accepts IPv6 and empty hosts", async () => {
    const load = async (listen: string) =>
      checkServerConfig((await loadConfig(serverSchema, { argv: ["--listen", listen], env: {} })).config);
    assert.deepEqual(await load("[::1]:7070"), { host: "::1", port: 7070, algorithm: "binpack" });
    assert.deepEqual(await load(":7070"), { host: "0.0.0.0", port: 7070, algorithm: "binpack" });
  });

  for (const [args, message] of [
    [["--listen", "7070"], /listen: "7070" is not HOST:PORT/],
    [["--listen", "host:70000"], /listen: "host:70000" is not HOST:PORT/],
    [["--store", "postgres"], /store: "postgres" must be etcd or embedded/],
    [["--scheduler-algorithm", "random"], /scheduler-algorithm: "random" must be binpack or spread/],
    [["--server-id", "a b"], /server-id: "a b"/],
    [["--no-controllers"], /controllers: false \(an API-only replica\) needs store: etcd/],
    [["--no-controllers", "--store", "etcd", "--dev"], /controllers: false .* and no --dev/],
    [
      ["--no-tls", "--listen", "0.0.0.0:7070"],
      /tls: false on listen 0\.0\.0\.0:7070, which is not loopback: .*dangerously-allow-plaintext/,
    ],
    [["--no-tls", "--listen", "10.1.2.3:7070"], /tls: false on listen 10\.1\.2\.3:7070/],
    [
      ["--dangerously-disable-access", "--listen", "0.0.0.0:7070"],
      /dangerously-disable-access on listen 0\.0\.0\.0:7070, which is not loopback/,
    ],
    [["--audit-level", "everything"], /audit-level: "everything" must be one of none, metadata, request/],
    [
      ["--oidc-issuer", "http://idp.example.com", "--oidc-client-id", "c"],
      /oidc-issuer: "http:\/\/idp\.example\.com" must be an https URL \(http only on loopback/,
    ],
    [["--oidc-issuer", "idp.example.com", "--oidc-client-id", "c"], /oidc-issuer: "idp\.example\.com" is not a URL/],
    [["--oidc-issuer", "https://idp.example.com"], /oidc-client-id: required with oidc-issuer/],
    [["--oidc-client-id", "hypervisor"], /oidc-client-id: "hypervisor" is set but oidc-issuer is empty/],
    [
      ["--oidc-issuer", "https://idp", "--oidc-client-id", "c", "--oidc-scopes", "profile,email"],
      /oidc-scopes: "profile,email" must include openid/,
    ],
    [["--oidc-issuer", "https://idp", "--oidc-client-id", "c", "--oidc-scopes", 'openid,a"b'], /oidc-scopes: "a\\"b" is not a scope/],
    [
      ["--oidc-issuer", "https://idp", "--oidc-client-id", "c", "--oidc-username-claim", ""],
      /oidc-username-claim: "" must be a claim name/,
    ],
    [
      ["--oidc-issuer", "http://127.0.0.1:5556", "--oidc-client-id", "c", "--oidc-ca-file", "ca.crt"],
      /oidc-ca-file: "ca\.crt" with an http issuer/,
    ],
  ] as const)
    it(`rejects ${args.join(" ")}`, async () => {
      const { config } = await loadConfig(serverSchema, { argv: [...args], env: {} });
      assert.throws(() => checkServerConfig(config), message);
    });

  it("OIDC is off by default; on, its settings are the verifier's", async () => {
    const load = async (...argv: string[]) => {
      const { config } = await loadConfig(serverSchema, { argv, env: {} });
      checkServerConfig(config);
      return oidcSettingsOf(config);
    };
    assert.equal(await load(), undefined);
    assert.deepEqual(
      await load("--oidc-issuer", "https://dex.example.com/dex", "--oidc-client-id", "hypervisor", "--oidc-ca-file", "/etc/idp-ca.crt"),
      {
        issuer: "https://dex.example.com/dex",
        clientId: "hypervisor",
        usernameClaim: "sub",
        groupsClaim: "groups",
        usernamePrefix: "oidc:",
        groupsPrefix: "",
        scopes: ["openid", "offline_access", "profile", "email"],
        caFile: "/etc/idp-ca.crt",
      },
    );
    const local = await load(
      "--oidc-issuer",
      "http://127.0.0.1:5556",
      "--oidc-client-id",
      "c",
      "--oidc-username-claim",
      "email",
      "--oidc-groups-prefix",
      "idp:",
    );
    assert.deepEqual([local?.usernameClaim, local?.groupsPrefix, local?.caFile], ["email", "idp:", undefined]);
  });

  it("the binary exits 2 on bad settings, naming them, before touching any store", async () => {
    const err = await promisify(execFile)(process.execPath, [binPath("hypervisor-server"), "--store", "postgres"]).then(
      () => assert.fail("should have failed"),
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal(err.code, 2);
    assert.match(err.stderr, /^hypervisor-server: store: "postgres" must be etcd or embedded\n$/);
  });
});
