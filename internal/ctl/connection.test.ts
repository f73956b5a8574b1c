// Where ctl connects and with what: flags over environment over the file's context over the
// default, each value naming its source; the PEM material read and checked before any call.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { newCa, type Issued, type TestCa } from "../../test/support/openssl-ca.js";
import { CliError } from "./errors.js";
import type { CtlConfig } from "./config-file.js";
import {
  type Connection,
  type ConnectionInputs,
  isLoopback,
  loadTls,
  plaintextWarning,
  resolveConnection,
  DEFAULT_SERVER,
} from "./connection.js";

const CONFIG: CtlConfig = {
  currentContext: "prod",
  contexts: [
    {
      name: "prod",
      server: "https://prod:7070",
      caFile: "ca.crt",
      credentials: { clientCertFile: "me.crt", clientKeyFile: "/abs/me.key", token: "tok" },
    },
    { name: "lab", server: "https://lab:7070", caData: "PEM", credentials: { clientCertData: "C", clientKeyData: "K" } },
    { name: "plain", server: "http://127.0.0.1:7070" },
  ],
};

function inputs(more: Partial<ConnectionInputs> = {}): ConnectionInputs {
  return { flags: {}, env: {}, config: CONFIG, configPath: "/home/u/.config/hypervisor/config.yaml", ...more };
}

/** The connection with the sources in a compact form, for table tests. */
function summary(c: Connection): Record<string, string | undefined> {
  const src = (s: Connection["ca"]) => (s === undefined ? undefined : "file" in s ? `${s.file} <- ${s.from}` : `${s.pem} <- ${s.from}`);
  return {
    context: c.context,
    server: `${c.server} <- ${c.serverFrom}`,
    ca: src(c.ca),
    cert: src(c.clientCert),
    key: src(c.clientKey),
    token: c.token ? `${c.token.value} <- ${c.token.from}` : undefined,
  };
}

describe("resolveConnection", () => {
  it("with no file and nothing given: the default server, no TLS settings", () => {
    const c = resolveConnection(inputs({ config: { contexts: [] }, configPath: undefined }));
    assert.deepEqual(summary(c), {
      context: undefined,
      server: `${DEFAULT_SERVER} <- default`,
      ca: undefined,
      cert: undefined,
      key: undefined,
      token: undefined,
    });
  });

  it("takes the current context, relative paths from the file's directory", () => {
    assert.deepEqual(summary(resolveConnection(inputs())), {
      context: "prod",
      server: "https://prod:7070 <- context prod (server)",
      ca: "/home/u/.config/hypervisor/ca.crt <- context prod (ca-file)",
      cert: "/home/u/.config/hypervisor/me.crt <- context prod (client-cert-file)",
      key: "/abs/me.key <- context prod (client-key-file)",
      token: "tok <- context prod (token)",
    });
  });

  it("--context beats HYPERVISOR_CONTEXT beats current-context; inline data is used as it is", () => {
    const lab = {
      context: "lab",
      server: "https://lab:7070 <- context lab (server)",
      ca: "PEM <- context lab (ca-data)",
      cert: "C <- context lab (client-cert-data)",
      key: "K <- context lab (client-key-data)",
      token: undefined,
    };
    assert.deepEqual(summary(resolveConnection(inputs({ env: { HYPERVISOR_CONTEXT: "lab" } }))), lab);
    assert.deepEqual(summary(resolveConnection(inputs({ flags: { context: "lab" }, env: { HYPERVISOR_CONTEXT: "prod" } }))), lab);
  });

  it("flags beat the environment, which beats the context, setting by setting", () => {
    const env = {
      HYPERVISOR_SERVER: "https://env:1",
      HYPERVISOR_CA_FILE: "/env/ca",
      HYPERVISOR_CLIENT_CERT: "/env/c",
      HYPERVISOR_CLIENT_KEY: "/env/k",
    };
    assert.deepEqual(summary(resolveConnection(inputs({ env }))), {
      context: "prod",
      server: "https://env:1 <- HYPERVISOR_SERVER",
      ca: "/env/ca <- HYPERVISOR_CA_FILE",
      cert: "/env/c <- HYPERVISOR_CLIENT_CERT",
      key: "/env/k <- HYPERVISOR_CLIENT_KEY",
      token: undefined,
    });
    const flags = { server: "https://flag:1/", caFile: "/f/ca", clientCert: "/f/c", clientKey: "/f/k" };
    assert.deepEqual(summary(resolveConnection(inputs({ env, flags }))), {
      context: "prod",
      server: "https://flag:1 <- --server",
      ca: "/f/ca <- --ca-file",
      cert: "/f/c <- --client-cert",
      key: "/f/k <- --client-key",
      token: undefined,
    });
    // Only the server overridden: the context's CA and certificate stay (kubectl's --server).
    const c = resolveConnection(inputs({ flags: { server: "https://other:1" } }));
    assert.equal(summary(c).ca, "/home/u/.config/hypervisor/ca.crt <- context prod (ca-file)");
    assert.equal(summary(c).cert, "/home/u/.config/hypervisor/me.crt <- context prod (client-cert-file)");
  });

  it("sends a context's token only to that context's server", () => {
    const c = resolveConnection(inputs({ flags: { server: "https://other:1" } }));
    assert.equal(c.token, undefined);
    assert.deepEqual(c.warnings, [
      "not sending the token of context prod to https://other:1 (from --server): it is not that context's server",
    ]);
    // HYPERVISOR_TOKEN is the user's own choice for this run, wherever it goes.
    const e = resolveConnection(inputs({ flags: { server: "https://other:1" }, env: { HYPERVISOR_TOKEN: "t2" } }));
    assert.deepEqual(e.token, { value: "t2", from: "HYPERVISOR_TOKEN" });
    assert.deepEqual(e.warnings, []);
  });

  it("sends a context's OIDC login only to that context's server, never in plaintext off the machine; HYPERVISOR_TOKEN wins", () => {
    const oidc = { issuer: "https://idp", clientId: "c", idToken: "eyJ.a.b", expiresAt: 0 };
    const config: CtlConfig = {
      currentContext: "sso",
      contexts: [
        { name: "sso", server: "https://sso:7070", credentials: { oidc } },
        { name: "far", server: "http://10.0.0.9:7070", credentials: { oidc } },
      ],
    };
    const c = resolveConnection(inputs({ config }));
    assert.deepEqual(c.oidc, {
      credentials: oidc,
      context: "sso",
      configPath: "/home/u/.config/hypervisor/config.yaml",
      from: "context sso (oidc)",
    });
    const other = resolveConnection(inputs({ config, flags: { server: "https://other:1" } }));
    assert.equal(other.oidc, undefined);
    assert.deepEqual(other.warnings, [
      "not sending the OIDC login of context sso to https://other:1 (from --server): it is not that context's server",
    ]);
    const env = resolveConnection(inputs({ config, env: { HYPERVISOR_TOKEN: "t2" } }));
    assert.deepEqual([env.token?.value, env.oidc], ["t2", undefined]);
    assert.throws(
      () => resolveConnection(inputs({ config, flags: { context: "far" } })),
      /refusing to send the token \(from context far \(oidc\)\) in plaintext to http:\/\/10\.0\.0\.9:7070/,
    );
  });

  it("drops a context's TLS settings when an http server is given instead; refuses ones given for this run", () => {
    const c = resolveConnection(inputs({ flags: { server: "http://127.0.0.1:9" } }));
    assert.deepEqual([c.ca, c.clientCert, c.clientKey], [undefined, undefined, undefined]);
    assert.throws(
      () => resolveConnection(inputs({ flags: { server: "http://127.0.0.1:9", caFile: "/ca" } })),
      /--ca-file is given but the server http:\/\/127\.0\.0\.1:9 \(from --server\) is not https/,
    );
    assert.throws(
      () => resolveConnection(inputs({ config: { contexts: [] }, env: { HYPERVISOR_CLIENT_CERT: "/c", HYPERVISOR_CLIENT_KEY: "/k" } })),
      /HYPERVISOR_CLIENT_CERT is given but the server http:\/\/127\.0\.0\.1:7070 \(from default\) is not https/,
    );
  });

  it("refuses a token in plaintext off the machine, allows it to loopback", () => {
    assert.throws(
      () => resolveConnection(inputs({ flags: { server: "http://10.0.0.9:7070" }, env: { HYPERVISOR_TOKEN: "t" } })),
      /refusing to send the token \(from HYPERVISOR_TOKEN\) in plaintext to http:\/\/10\.0\.0\.9:7070/,
    );
    assert.equal(resolveConnection(inputs({ flags: { context: "plain" }, env: { HYPERVISOR_TOKEN: "t" } })).token?.value, "t");
  });

  it("rejects half a key pair, a bad URL, a bad token and an unknown context, naming the source", () => {
    const bad = (more: Partial<ConnectionInputs>, re: RegExp) =>
      assert.throws(
        () => resolveConnection(inputs(more)),
        (e: unknown) => e instanceof CliError && e.exitCode === 2 && re.test(e.message),
      );
    bad({ flags: { clientCert: "/c" } }, /^--client-cert and --client-key go together/);
    bad({ env: { HYPERVISOR_CLIENT_KEY: "/k" } }, /^HYPERVISOR_CLIENT_CERT and HYPERVISOR_CLIENT_KEY go together/);
    bad({ env: { HYPERVISOR_SERVER: "localhost:7070" } }, /^HYPERVISOR_SERVER must be an http\(s\) URL, got "localhost:7070"/);
    bad({ env: { HYPERVISOR_TOKEN: "a b" } }, /^HYPERVISOR_TOKEN: a token is visible ASCII/);
    bad(
      { flags: { context: "nope" } },
      /^--context names context "nope", which \/home\/u\/\.config\/hypervisor\/config\.yaml does not have \(contexts: prod, lab, plain\)/,
    );
    bad(
      { config: { currentContext: "gone", contexts: [] } },
      /^current-context names context "gone", which .* does not have \(it has no contexts\)/,
    );
  });
});

describe("plaintext", () => {
  it("knows loopback hosts", () => {
    for (const u of ["http://127.0.0.1:1", "http://127.9.9.9", "http://localhost:7070", "http://[::1]:7070", "http://a.localhost"])
      assert.ok(isLoopback(u), u);
    for (const u of ["http://10.0.0.1", "http://128.0.0.1", "http://example.com", "http://[::2]", "http://localhost.example.com"])
      assert.ok(!isLoopback(u), u);
  });

  it("warns only for http off the machine", () => {
    assert.equal(plaintextWarning("https://10.0.0.1:7070"), undefined);
    assert.equal(plaintextWarning("http://127.0.0.1:7070"), undefined);
    assert.equal(
      plaintextWarning("http://10.0.0.1:7070"),
      "warning: http://10.0.0.1:7070 is not https: requests (and anything they carry) cross the network in plaintext",
    );
  });
});

describe("loadTls", () => {
  let dir: string;
  let ca: TestCa;
  let me: Issued;
  let other: Issued;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "ctl-tls-load-"));
    ca = await newCa(dir, "a");
    me = await ca.issue("me", { cn: "user:me", eku: ["clientAuth"] });
    other = await ca.issue("other", { cn: "user:other", eku: ["clientAuth"] });
  });
  after(() => rm(dir, { recursive: true, force: true }));

  const conn = (more: Partial<Connection>): Connection => ({ server: "https://h:1", serverFrom: "--server", warnings: [], ...more });

  it("reads the CA, certificate and key from files or inline", () => {
    const t = loadTls(
      conn({
        ca: { file: ca.certFile, from: "--ca-file" },
        clientCert: { pem: me.certPem, from: "c" },
        clientKey: { file: me.keyFile, from: "k" },
      }),
      new Date(),
    );
    assert.deepEqual(t, { ca: ca.certPem, caFrom: `--ca-file ${ca.certFile}`, cert: me.certPem, key: me.keyPem });
  });

  it("names the file and what is wrong with it", async () => {
    const load =
      (more: Partial<Connection>, now = new Date()) =>
      () =>
        loadTls(conn(more), now);
    const throwsMsg = (fn: () => unknown, re: RegExp) =>
      assert.throws(fn, (e: unknown) => e instanceof CliError && e.exitCode === 2 && re.test(e.message));
    throwsMsg(load({ ca: { file: join(dir, "none"), from: "--ca-file" } }), /^--ca-file: cannot read .*\/none: no such file$/);
    throwsMsg(load({ ca: { file: me.keyFile, from: "--ca-file" } }), /^--ca-file .*me\.key: no PEM certificate in it$/);
    const broken = join(dir, "broken.crt");
    await writeFile(broken, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    throwsMsg(load({ ca: { file: broken, from: "HYPERVISOR_CA_FILE" } }), /^HYPERVISOR_CA_FILE .*broken\.crt: not a valid certificate/);
    const pair = (key: string) => ({
      clientCert: { file: me.certFile, from: "--client-cert" },
      clientKey: { file: key, from: "--client-key" },
    });
    throwsMsg(load(pair(other.keyFile)), /^--client-key .*other\.key is not the key of the certificate --client-cert .*me\.crt$/);
    throwsMsg(load(pair(me.certFile)), /^--client-key .*me\.crt: not a private key/);
    // The test CA issues for a day.
    throwsMsg(load(pair(me.keyFile), new Date(Date.now() + 3 * 86_400_000)), /^--client-cert .*me\.crt: the certificate expired on /);
  });
});
