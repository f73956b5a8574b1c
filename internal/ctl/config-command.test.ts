// `config` commands run in-process against a configuration file in a temp HOME: what they print
// (secrets redacted), what they leave in the file, and their errors (exit 2, file untouched).
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, stat, writeFile, mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import YAML from "yaml";
import { newCa, type Issued, type TestCa } from "../../test/support/openssl-ca.js";
import { parseConfig } from "./config-file.js";
import { ExitCode } from "./errors.js";
import { runCli } from "./testing.js";

let root: string;
let ca: TestCa;
let me: Issued;

before(async () => {
  root = await mkdtemp(join(tmpdir(), "ctl-config-cmd-"));
  ca = await newCa(root, "a");
  me = await ca.issue("me", { cn: "user:me", eku: ["clientAuth"] });
});
after(() => rm(root, { recursive: true, force: true }));

/** A fresh HOME, its config file written with `text` if given. */
async function home(text?: string): Promise<{ env: Record<string, string>; file: string }> {
  const h = await mkdtemp(join(root, "home-"));
  const file = join(h, ".config", "hypervisor", "config.yaml");
  if (text !== undefined) {
    await mkdir(dirname(file), { recursive: true });
    await writeFile(file, text, { mode: 0o600 });
  }
  return { env: { HOME: h }, file };
}

const SECRET_KEY = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";
const CERT = "-----BEGIN CERTIFICATE-----\nY2VydA==\n-----END CERTIFICATE-----\n";

const FILE = `current-context: prod
contexts:
  - name: prod
    server: https://prod:7070
    ca-data: |
${CERT.trim().replace(/^/gm, "      ")}
    credentials:
      client-cert-data: |
${CERT.trim().replace(/^/gm, "        ")}
      client-key-data: |
${SECRET_KEY.trim().replace(/^/gm, "        ")}
      token: the-token-value
  - name: lab
    server: https://lab:7070
    ca-file: /etc/lab-ca.crt
`;

describe("config view", () => {
  it("redacts keys and tokens and shortens inline certificates, in yaml and json", async () => {
    const { env } = await home(FILE);
    const r = await runCli(["config", "view"], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(!r.stdout.includes("c2VjcmV0") && !r.stdout.includes("the-token-value") && !r.stdout.includes("Y2VydA"), r.stdout);
    const R = "REDACTED";
    const O = "DATA+OMITTED";
    assert.deepEqual(YAML.parse(r.stdout), {
      "current-context": "prod",
      contexts: [
        { name: "prod", server: "https://prod:7070", "ca-data": O, credentials: { "client-cert-data": O, "client-key-data": R, token: R } },
        { name: "lab", server: "https://lab:7070", "ca-file": "/etc/lab-ca.crt" },
      ],
    });
    assert.match(r.stdout, /client-key-data: REDACTED\n\s+token: REDACTED\n/);
    const j = await runCli(["config", "view", "-o", "json"], { env });
    const doc = JSON.parse(j.stdout) as { contexts: { credentials?: Record<string, string> }[] };
    assert.deepEqual(doc.contexts[0]?.credentials, {
      "client-cert-data": "DATA+OMITTED",
      "client-key-data": "REDACTED",
      token: "REDACTED",
    });
  });

  it("--raw prints the file's content", async () => {
    const { env } = await home(FILE);
    const r = await runCli(["config", "view", "--raw"], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(parseConfig(r.stdout, "out"), parseConfig(FILE, "in"));
  });

  it("without a file shows an empty configuration; a broken file is an error naming the key", async () => {
    const empty = await runCli(["config", "view"], { env: (await home()).env });
    assert.equal(empty.code, 0, empty.stderr);
    assert.equal(empty.stdout, "contexts: []\n");
    const { env, file } = await home("contexts:\n  - name: a\n    server: https://a\n    sever: https://b\n");
    const r = await runCli(["config", "view"], { env });
    assert.equal(r.code, ExitCode.Usage);
    assert.equal(
      r.stderr,
      `error: config file ${file}: unknown key contexts[0].sever (known: name, server, ca-file, ca-data, project, credentials)\n`,
    );
    const missing = await runCli(["config", "view"], { env: { HYPERVISOR_CONFIG: join(root, "nope.yaml") } });
    assert.equal(missing.code, ExitCode.Usage);
    assert.match(missing.stderr, /^error: config file .*nope\.yaml: no such file\n$/);
  });
});

describe("config get-contexts, current-context, use-context, delete-context", () => {
  it("lists the contexts marking the current one, without secrets", async () => {
    const { env } = await home(FILE);
    const r = await runCli(["config", "get-contexts"], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      r.stdout,
      [
        "CURRENT   NAME   SERVER              CA                CREDENTIALS",
        "*         prod   https://prod:7070   (inline)          client-cert,token",
        "          lab    https://lab:7070    /etc/lab-ca.crt   -",
        "",
      ].join("\n"),
    );
    const y = await runCli(["config", "get-contexts", "-o", "json"], { env });
    assert.ok(!y.stdout.includes("the-token-value"));
    assert.equal((JSON.parse(y.stdout) as { currentContext: string }).currentContext, "prod");
  });

  it("switches the current context and keeps the rest of the file", async () => {
    const { env, file } = await home(FILE);
    const r = await runCli(["config", "use-context", "lab"], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "switched to context lab\n");
    assert.deepEqual(parseConfig(await readFile(file, "utf8"), file), { ...parseConfig(FILE, "in"), currentContext: "lab" });
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    assert.equal((await runCli(["config", "current-context"], { env })).stdout, "lab\n");
  });

  it("refuses an unknown context and leaves the file as it was", async () => {
    const { env, file } = await home(FILE);
    const r = await runCli(["config", "use-context", "staging"], { env });
    assert.equal(r.code, ExitCode.Usage);
    assert.equal(r.stderr, `error: no context "staging" in ${file} (contexts: prod, lab)\n`);
    assert.equal(await readFile(file, "utf8"), FILE);
    const d = await runCli(["config", "delete-context", "staging"], { env });
    assert.equal(d.code, ExitCode.Usage);
    assert.equal(await readFile(file, "utf8"), FILE);
  });

  it("deletes a context; deleting the current one leaves none current, with a warning", async () => {
    const { env, file } = await home(FILE);
    const lab = await runCli(["config", "delete-context", "lab"], { env });
    assert.equal(lab.stdout, "context lab deleted\n");
    assert.equal(lab.stderr, "");
    const prod = await runCli(["config", "delete-context", "prod"], { env });
    assert.equal(prod.stdout, "context prod deleted\n");
    assert.equal(prod.stderr, "warning: prod was the current context; none is current now\n");
    assert.deepEqual(parseConfig(await readFile(file, "utf8"), file), { contexts: [] });
    const cur = await runCli(["config", "current-context"], { env });
    assert.equal(cur.code, ExitCode.Usage);
    assert.match(cur.stderr, /no current context is set/);
  });
});

describe("config set-context", () => {
  it("creates a context with absolute paths (made current when none is), then changes only what is given", async () => {
    const { env, file } = await home();
    const r = await runCli(["config", "set-context", "prod", "--server", "https://prod:7070/", "--ca-file", ca.certFile], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "context prod created and made current (there was none)\n");
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    assert.deepEqual(parseConfig(await readFile(file, "utf8"), file), {
      currentContext: "prod",
      contexts: [{ name: "prod", server: "https://prod:7070", caFile: ca.certFile }],
    });
    const m = await runCli(["config", "set-context", "prod", "--client-cert", me.certFile, "--client-key", me.keyFile], { env });
    assert.equal(m.stdout, "context prod modified\n");
    const s = await runCli(["config", "set-context", "two", "--server", "https://two:1"], { env });
    assert.equal(s.stdout, "context two created\n");
    assert.deepEqual(parseConfig(await readFile(file, "utf8"), file), {
      currentContext: "prod",
      contexts: [
        {
          name: "prod",
          server: "https://prod:7070",
          caFile: ca.certFile,
          credentials: { clientCertFile: me.certFile, clientKeyFile: me.keyFile },
        },
        { name: "two", server: "https://two:1" },
      ],
    });
  });

  it("refuses what would make a bad context, writing nothing", async () => {
    const { env, file } = await home(FILE);
    const cases: [string[], RegExp][] = [
      [["config", "set-context", "new"], /^error: context new is new: give its --server\n$/],
      [["config", "set-context", "a b", "--server", "https://x"], /invalid context name "a b"/],
      [["config", "set-context", "x", "--server", "x:1"], /context x\.server must be an http\(s\) URL, got "x:1"/],
      [
        ["config", "set-context", "x", "--server", "http://x:1", "--ca-file", ca.certFile],
        /context x: has a CA or client certificate but server http:\/\/x:1 is not https/,
      ],
      [["config", "set-context", "lab", "--client-cert", me.certFile], /--client-cert and --client-key go together/],
      [["config", "set-context", "lab", "--ca-file", join(root, "none.crt")], /--ca-file: cannot read .*none\.crt: no such file/],
      [
        ["config", "set-context", "lab", "--client-cert", me.certFile, "--client-key", ca.keyFile],
        /--client-key .*a-ca\.key is not the key of the certificate/,
      ],
    ];
    for (const [argv, re] of cases) {
      const r = await runCli(argv, { env });
      assert.equal(r.code, ExitCode.Usage, `${argv.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, re, argv.join(" "));
      assert.equal(r.stdout, "");
    }
    assert.equal(await readFile(file, "utf8"), FILE);
  });

  it("without any place for the file says how to give one", async () => {
    const r = await runCli(["config", "set-context", "a", "--server", "https://a"], { env: {} });
    assert.equal(r.code, ExitCode.Usage);
    assert.match(r.stderr, /no place for the configuration file: set HOME, XDG_CONFIG_HOME or HYPERVISOR_CONFIG, or give --config-file/);
  });

  it("--config-file and HYPERVISOR_CONFIG choose the file", async () => {
    const f1 = join(root, "f1", "c.yaml");
    const f2 = join(root, "f2", "c.yaml");
    await runCli(["--config-file", f1, "config", "set-context", "one", "--server", "https://one"], { env: { HYPERVISOR_CONFIG: f2 } });
    await runCli(["config", "set-context", "two", "--server", "https://two"], { env: { HYPERVISOR_CONFIG: f2 } });
    assert.deepEqual(
      parseConfig(await readFile(f1, "utf8"), f1).contexts.map((c) => c.name),
      ["one"],
    );
    assert.deepEqual(
      parseConfig(await readFile(f2, "utf8"), f2).contexts.map((c) => c.name),
      ["two"],
    );
  });
});

describe("commands use the file", () => {
  it("an unknown --context is a usage error before anything is sent", async () => {
    const { env, file } = await home(FILE);
    const r = await runCli(["--context", "nope", "node", "list"], { env });
    assert.equal(r.code, ExitCode.Usage);
    assert.equal(r.stderr, `error: --context names context "nope", which ${file} does not have (contexts: prod, lab)\n`);
  });

  it("a plaintext server off the machine gets a warning on stderr", async () => {
    // 192.0.2.0/24 is TEST-NET-1: never routed. The warning comes before the call, which the
    // already-aborted signal ends at once.
    const ac = new AbortController();
    ac.abort();
    const r = await runCli(["--server", "http://192.0.2.1:7070", "node", "list"], { signal: ac.signal });
    assert.equal(r.code, ExitCode.Interrupted);
    assert.equal(
      r.stderr,
      "warning: http://192.0.2.1:7070 is not https: requests (and anything they carry) cross the network in plaintext\ninterrupted\n",
    );
  });
});
