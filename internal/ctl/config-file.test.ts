// The ctl configuration file: strict parsing with errors naming the key, where the file is
// found, and writing it 0600 through a rename so nothing half-written is ever read.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  ConfigFileError,
  configLocation,
  formatConfig,
  parseConfig,
  putContext,
  readConfig,
  saveContext,
  writeConfig,
} from "./config-file.js";

const PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

const GOOD = `
current-context: prod
contexts:
  - name: prod
    server: https://10.0.0.5:7070/
    ca-file: ca.crt
    credentials:
      client-cert-file: /etc/me.crt
      client-key-file: /etc/me.key
      token: abc.def
  - name: dev
    server: http://127.0.0.1:7070
`;

function fails(text: string, key: string | undefined, message: RegExp): void {
  assert.throws(
    () => parseConfig(text, "/f.yaml"),
    (e: unknown) => {
      assert.ok(e instanceof ConfigFileError, String(e));
      assert.equal(e.key, key, e.message);
      assert.match(e.message, message);
      assert.match(e.message, /^config file \/f\.yaml: /);
      return true;
    },
  );
}

describe("parseConfig", () => {
  it("reads contexts, current-context and credentials; trims a trailing slash of the server", () => {
    assert.deepEqual(parseConfig(GOOD, "/f.yaml"), {
      currentContext: "prod",
      contexts: [
        {
          name: "prod",
          server: "https://10.0.0.5:7070",
          caFile: "ca.crt",
          credentials: { clientCertFile: "/etc/me.crt", clientKeyFile: "/etc/me.key", token: "abc.def" },
        },
        { name: "dev", server: "http://127.0.0.1:7070" },
      ],
    });
    assert.deepEqual(parseConfig("", "/f.yaml"), { contexts: [] });
    assert.deepEqual(parseConfig("contexts:\n", "/f.yaml"), { contexts: [] });
  });

  it("round-trips through formatConfig", () => {
    const cfg = parseConfig(GOOD, "/f.yaml");
    assert.deepEqual(parseConfig(formatConfig(cfg), "/f.yaml"), cfg);
    const inline = {
      contexts: [
        {
          name: "x",
          server: "https://h:1",
          caData: PEM,
          credentials: { clientCertData: PEM, clientKeyData: PEM.replace(/CERTIFICATE/g, "PRIVATE KEY") },
        },
      ],
    };
    assert.deepEqual(parseConfig(formatConfig(inline), "/f.yaml"), inline);
  });

  it("rejects unknown keys at every level, naming them", () => {
    fails("current-contxt: a\n", "current-contxt", /unknown key current-contxt \(known: current-context, contexts\)/);
    fails("contexts:\n  - name: a\n    server: https://h\n    ca: x\n", "contexts[0].ca", /unknown key contexts\[0\]\.ca /);
    fails(
      "contexts:\n  - name: a\n    server: https://h\n    credentials:\n      password: x\n",
      "contexts[0].credentials.password",
      /unknown key contexts\[0\]\.credentials\.password/,
    );
  });

  it("rejects wrong types, missing and duplicate entries", () => {
    fails("contexts: {}\n", "contexts", /contexts: expected a list of contexts/);
    fails("contexts:\n  - name: a\n", "contexts[0].server", /contexts\[0\]\.server: required/);
    fails("contexts:\n  - server: https://h\n", "contexts[0].name", /contexts\[0\]\.name: required/);
    fails("contexts:\n  - name: 7\n    server: https://h\n", "contexts[0].name", /expected a non-empty string, got 7/);
    fails(
      "contexts:\n  - {name: a, server: 'https://h'}\n  - {name: a, server: 'https://g'}\n",
      "contexts[1].name",
      /context "a" is defined twice/,
    );
    fails("- a\n", undefined, /expected a mapping/);
    fails("a: [\n", undefined, /config file \/f\.yaml: /);
    fails("current-context: a\ncurrent-context: b\n", undefined, /unique/i);
  });

  it("rejects bad values, naming the key and the value", () => {
    fails("contexts:\n  - {name: 'a b', server: 'https://h'}\n", "contexts[0].name", /invalid context name "a b"/);
    fails(
      "contexts:\n  - {name: a, server: 'h:7070'}\n",
      "contexts[0].server",
      /contexts\[0\]\.server must be an http\(s\) URL, got "h:7070"/,
    );
    fails("contexts:\n  - {name: a, server: 'ftp://h'}\n", "contexts[0].server", /must be an http\(s\) URL/);
    fails("contexts:\n  - {name: a, server: 'https://u:p@h'}\n", "contexts[0].server", /must not carry a user or password/);
    fails("contexts:\n  - {name: a, server: 'https://h', ca-data: 'Y2E='}\n", "contexts[0].ca-data", /expected PEM text/);
    fails("contexts:\n  - {name: a, server: 'https://h', credentials: {token: 'a b'}}\n", "contexts[0].credentials.token", /visible ASCII/);
  });

  it("rejects contradictions: file and data, half a key pair, TLS settings on http", () => {
    fails(
      "contexts:\n  - {name: a, server: 'https://h', ca-file: f, ca-data: x}\n",
      "contexts[0].ca-file",
      /ca-file and ca-data exclude each other/,
    );
    fails(
      "contexts:\n  - {name: a, server: 'https://h', credentials: {client-cert-file: c}}\n",
      "contexts[0].credentials.client-key-file",
      /a client certificate needs its key/,
    );
    fails(
      "contexts:\n  - {name: a, server: 'https://h', credentials: {client-key-file: k, client-key-data: k2, client-cert-file: c}}\n",
      "contexts[0].credentials.client-key-file",
      /client-key-file and client-key-data exclude each other/,
    );
    fails(
      "contexts:\n  - {name: a, server: 'http://h', ca-file: f}\n",
      "contexts[0].server",
      /has a CA or client certificate but server http:\/\/h is not https/,
    );
  });
});

describe("an OIDC login in a context", () => {
  const text = (oidc: string, token = "") => `contexts:
  - name: lab
    server: https://lab:7070
    credentials:${token}
      oidc:
${oidc}`;
  const GOOD_OIDC = `        issuer: https://idp.example.com
        client-id: hypervisor
        id-token: eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln
        refresh-token: rt-1
        expires-at: 2026-12-04T23:40:00.000Z
`;

  it("reads it (the expiry an ISO time, unquoted or quoted) and writes it back the same", () => {
    const cfg = parseConfig(text(GOOD_OIDC), "f");
    assert.deepEqual(cfg.contexts[0]!.credentials, {
      oidc: {
        issuer: "https://idp.example.com",
        clientId: "hypervisor",
        idToken: "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln",
        refreshToken: "rt-1",
        expiresAt: Date.parse("2026-12-04T23:40:00.000Z"),
      },
    });
    assert.deepEqual(parseConfig(formatConfig(cfg), "f"), cfg);
    assert.deepEqual(parseConfig(text(GOOD_OIDC.replace("2026-12-04T23:40:00.000Z", '"2026-12-04T23:40:00.000Z"')), "f"), cfg);
    const noRefresh = parseConfig(text(GOOD_OIDC.replace("        refresh-token: rt-1\n", "")), "f");
    assert.equal(noRefresh.contexts[0]!.credentials!.oidc!.refreshToken, undefined);
  });

  it("refuses it with a token beside it, or with a part missing or wrong, naming the key", () => {
    const cases: [string, RegExp][] = [
      [text(GOOD_OIDC, "\n      token: hvt_x"), /contexts\[0\]\.credentials: token and oidc exclude each other/],
      [text(GOOD_OIDC.replace(/ +id-token: .*\n/, "")), /contexts\[0\]\.credentials\.oidc\.id-token: required/],
      [
        text(GOOD_OIDC.replace("https://idp.example.com", "idp")),
        /contexts\[0\]\.credentials\.oidc\.issuer must be an http\(s\) URL, got "idp"/,
      ],
      [text(GOOD_OIDC.replace("2026-12-04T23:40:00.000Z", "soon")), /contexts\[0\]\.credentials\.oidc\.expires-at: expected a time/],
      [text(GOOD_OIDC + "        access-token: x\n"), /unknown key contexts\[0\]\.credentials\.oidc\.access-token/],
    ];
    for (const [t, re] of cases)
      assert.throws(
        () => parseConfig(t, "f"),
        (e) => e instanceof ConfigFileError && re.test(e.message),
        t,
      );
  });

  it("counts as a secret: a file others may read is flagged", () => {
    const dir = mkdtempSync(join(tmpdir(), "hv-ctl-oidc-cfg-"));
    try {
      const path = join(dir, "config.yaml");
      writeFileSync(path, text(GOOD_OIDC), { mode: 0o644 });
      assert.equal(readConfig({ path, explicit: true }).exposed, true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("configs/ctl.yaml", () => {
  it("the documented example is a valid configuration", () => {
    const path = fileURLToPath(new URL("../../../configs/ctl.yaml", import.meta.url));
    const cfg = parseConfig(readFileSync(path, "utf8"), path);
    assert.equal(cfg.currentContext, "prod");
    assert.deepEqual(
      cfg.contexts.map((c) => [c.name, c.server]),
      [
        ["prod", "https://10.0.0.5:7070"],
        ["local", "http://127.0.0.1:7070"],
      ],
    );
    assert.equal(cfg.contexts[0]!.project, "web");
    // A project that is not a name is refused, naming the key.
    assert.throws(
      () => parseConfig("contexts:\n  - name: a\n    server: http://127.0.0.1:7070\n    project: Bad_Name\n", path),
      /contexts\[0\]\.project: "Bad_Name" is not a valid name/,
    );
  });
});

describe("configLocation", () => {
  it("takes --config-file, then HYPERVISOR_CONFIG, then XDG_CONFIG_HOME, then HOME", () => {
    const env = { HYPERVISOR_CONFIG: "/e/c.yaml", XDG_CONFIG_HOME: "/x", HOME: "/h" };
    assert.deepEqual(configLocation("/f/c.yaml", env), { path: "/f/c.yaml", explicit: true });
    assert.deepEqual(configLocation(undefined, env), { path: "/e/c.yaml", explicit: true });
    assert.deepEqual(configLocation(undefined, { ...env, HYPERVISOR_CONFIG: "" }), { path: "/x/hypervisor/config.yaml", explicit: false });
    assert.deepEqual(configLocation(undefined, { HOME: "/h" }), { path: "/h/.config/hypervisor/config.yaml", explicit: false });
    // XDG says a relative XDG_CONFIG_HOME is invalid and to be ignored.
    assert.deepEqual(configLocation(undefined, { XDG_CONFIG_HOME: "rel", HOME: "/h" }), {
      path: "/h/.config/hypervisor/config.yaml",
      explicit: false,
    });
    assert.deepEqual(configLocation(undefined, {}), { path: undefined, explicit: false });
  });
});

describe("readConfig and writeConfig", () => {
  it("a missing default file is empty; a missing named one is an error", () => {
    const dir = mkdtempSync(join(tmpdir(), "ctl-cfg-"));
    try {
      assert.deepEqual(readConfig({ path: join(dir, "none.yaml"), explicit: false }), {
        config: { contexts: [] },
        path: undefined,
        exposed: false,
      });
      assert.throws(() => readConfig({ path: join(dir, "none.yaml"), explicit: true }), /config file .*none\.yaml: no such file/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("writes 0600 in a 0700 directory, through a temp file that does not stay", () => {
    const dir = mkdtempSync(join(tmpdir(), "ctl-cfg-"));
    try {
      const path = join(dir, "sub", "config.yaml");
      const cfg = parseConfig(GOOD, path);
      writeConfig(path, cfg);
      assert.equal(statSync(path).mode & 0o777, 0o600);
      assert.equal(statSync(join(dir, "sub")).mode & 0o777, 0o700);
      assert.deepEqual(readConfig({ path, explicit: true }).config, cfg);
      // Over an existing file made 0644 by someone: the new one is 0600 again (a new inode).
      writeFileSync(path, "contexts: []\n", { mode: 0o644 });
      writeConfig(path, cfg);
      assert.equal(statSync(path).mode & 0o777, 0o600);
      assert.deepEqual(readdirSync(join(dir, "sub")), ["config.yaml"]);
      assert.match(readFileSync(path, "utf8"), /^current-context: prod\ncontexts:\n {2}- name: prod\n/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("flags a file that holds a secret and others may read", () => {
    const dir = mkdtempSync(join(tmpdir(), "ctl-cfg-"));
    try {
      const path = join(dir, "config.yaml");
      writeFileSync(path, GOOD, { mode: 0o644 });
      assert.equal(readConfig({ path, explicit: true }).exposed, true);
      writeFileSync(join(dir, "plain.yaml"), "contexts:\n  - {name: a, server: 'https://h'}\n", { mode: 0o644 });
      assert.equal(readConfig({ path: join(dir, "plain.yaml"), explicit: true }).exposed, false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("saveContext adds or replaces a context and can make it current; it validates first", () => {
    const dir = mkdtempSync(join(tmpdir(), "ctl-cfg-"));
    try {
      const path = join(dir, "config.yaml");
      saveContext(path, { name: "a", server: "https://a:1" }, { makeCurrent: false });
      saveContext(path, { name: "b", server: "https://b:1" }, { makeCurrent: false });
      assert.equal(readConfig({ path, explicit: true }).config.currentContext, "a", "the first context added becomes current");
      saveContext(path, { name: "b", server: "https://b:2", caData: PEM }, { makeCurrent: true });
      assert.deepEqual(readConfig({ path, explicit: true }).config, {
        currentContext: "b",
        contexts: [
          { name: "a", server: "https://a:1" },
          { name: "b", server: "https://b:2", caData: PEM },
        ],
      });
      const before = readFileSync(path, "utf8");
      assert.throws(
        () => saveContext(path, { name: "c", server: "nope" }, { makeCurrent: true }),
        /context c\.server must be an http\(s\) URL/,
      );
      assert.equal(readFileSync(path, "utf8"), before, "nothing written");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("putContext keeps the order and an existing current context", () => {
    const cfg = putContext(
      {
        currentContext: "a",
        contexts: [
          { name: "a", server: "https://a" },
          { name: "b", server: "https://b" },
        ],
      },
      { name: "a", server: "https://a2" },
    );
    assert.deepEqual(cfg, {
      currentContext: "a",
      contexts: [
        { name: "a", server: "https://a2" },
        { name: "b", server: "https://b" },
      ],
    });
  });
});
