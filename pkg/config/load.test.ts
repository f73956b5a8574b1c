// The config loader: layering (defaults < file < env < flags), and errors that name the key,
// the value and where it came from.
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { ConfigError, loadConfig, usage, type Schema } from "./index.js";

const schema = {
  "node-name": { type: "string", default: "host", description: "name of this node" },
  "heartbeat-ttl": { type: "number", default: 10, description: "lease TTL in seconds", integer: true, min: 1 },
  dev: { type: "boolean", default: false, description: "one-machine mode" },
  "etcd-endpoints": { type: "string[]", default: ["http://127.0.0.1:2379"], description: "etcd client URLs" },
  label: { type: "map", default: {}, description: "node labels" },
  "etcd-password": { type: "string", default: "", description: "etcd password", secret: true },
} satisfies Schema;

const dir = await mkdtemp(join(tmpdir(), "hv-config-"));
after(() => rm(dir, { recursive: true, force: true }));
let n = 0;
async function yamlFile(text: string): Promise<string> {
  const p = join(dir, `c${++n}.yaml`);
  await writeFile(p, text);
  return p;
}

describe("config loader", () => {
  it("uses the defaults when nothing is given, with camelCase properties", async () => {
    const { config, sources, help } = await loadConfig(schema, { argv: [], env: {} });
    assert.deepEqual(config, {
      nodeName: "host",
      heartbeatTtl: 10,
      dev: false,
      etcdEndpoints: ["http://127.0.0.1:2379"],
      label: {},
      etcdPassword: "",
    });
    assert.equal(sources["node-name"], "default");
    assert.equal(help, false);
  });

  it("layers file < environment < flags", async () => {
    const file = await yamlFile(
      "node-name: from-file\nheartbeat-ttl: 5\netcd-endpoints: [http://a:2379, http://b:2379]\nlabel:\n  zone: z1\n",
    );
    const { config, sources } = await loadConfig(schema, {
      argv: ["--config", file, "--node-name", "from-flag", "--label", "rack=r1", "--label=row=2", "--dev"],
      env: { HYPERVISOR_NODE_NAME: "from-env", HYPERVISOR_HEARTBEAT_TTL: "7", HYPERVISOR_UNRELATED: "x" },
    });
    assert.equal(config.nodeName, "from-flag");
    assert.equal(config.heartbeatTtl, 7);
    assert.deepEqual(config.etcdEndpoints, ["http://a:2379", "http://b:2379"]);
    assert.deepEqual(config.label, { rack: "r1", row: "2" }, "a flag replaces the file's map; repeated flags accumulate");
    assert.equal(config.dev, true);
    assert.deepEqual(
      [sources["node-name"], sources["heartbeat-ttl"], sources["etcd-endpoints"], sources.dev],
      ["flag", "env", "file", "flag"],
    );
  });

  it("refuses a secret on the command line, where ps shows it, and takes it from the file or the environment", async () => {
    for (const argv of [["--etcd-password", "hunter2"], ["--etcd-password=hunter2"]])
      await assert.rejects(
        loadConfig(schema, { argv, env: {} }),
        (e: unknown) =>
          e instanceof ConfigError &&
          e.key === "etcd-password" &&
          /^flag --etcd-password: a secret is not taken on the command line/.test(e.message) &&
          !e.message.includes("hunter2"),
      );
    const file = await yamlFile("etcd-password: from-file\n");
    assert.equal((await loadConfig(schema, { argv: ["--config", file], env: {} })).config.etcdPassword, "from-file");
    const env = await loadConfig(schema, { argv: [], env: { HYPERVISOR_ETCD_PASSWORD: "from-env" } });
    assert.equal(env.config.etcdPassword, "from-env");
  });

  it("accepts a comma-separated string for a list, in YAML, env and flags", async () => {
    const file = await yamlFile("etcd-endpoints: http://a:1,http://b:2\n");
    assert.deepEqual((await loadConfig(schema, { argv: ["--config", file], env: {} })).config.etcdEndpoints, ["http://a:1", "http://b:2"]);
    assert.deepEqual((await loadConfig(schema, { argv: [], env: { HYPERVISOR_ETCD_ENDPOINTS: "http://c:3" } })).config.etcdEndpoints, [
      "http://c:3",
    ]);
    assert.deepEqual(
      (await loadConfig(schema, { argv: ["--etcd-endpoints", "x,y", "--etcd-endpoints", "z"], env: {} })).config.etcdEndpoints,
      ["x", "y", "z"],
    );
  });

  it("parses boolean flags: --dev, --dev=false, --no-dev", async () => {
    const load = async (...argv: string[]) => (await loadConfig(schema, { argv, env: {} })).config.dev;
    assert.equal(await load("--dev"), true);
    assert.equal(await load("--dev=false"), false);
    assert.equal(await load("--dev", "--no-dev"), false);
  });

  it("rejects an unknown YAML key, naming it and suggesting the right one", async () => {
    const file = await yamlFile("node-nmae: n1\n");
    await assert.rejects(loadConfig(schema, { argv: ["--config", file], env: {} }), (e) => {
      assert.ok(e instanceof ConfigError);
      assert.equal(e.key, "node-nmae");
      assert.match(e.message, /unknown key "node-nmae" \(did you mean node-name\?\)/);
      assert.ok(e.message.includes(file));
      return true;
    });
  });

  it("rejects wrong types in YAML with the key and the value", async () => {
    const cases: [string, RegExp][] = [
      ["heartbeat-ttl: ten\n", /heartbeat-ttl: expected a number, got "ten"/],
      ["dev: yes-please\n", /dev: expected true or false, got "yes-please"/],
      ["node-name: 12\n", /node-name: expected a string, got 12/],
      ["etcd-endpoints: [1, 2]\n", /etcd-endpoints: expected a list of strings, got \[1,2\]/],
      ["label:\n  zone: 1\n", /label\.zone: expected a string \(quote it\), got 1/],
      ["label: [a]\n", /label: expected a mapping of strings/],
      ["node-name:\n", /node-name: has no value/],
      ["- a\n- b\n", /expected a mapping of settings/],
      ["node-name: [unclosed\n", /config file .*c\d+\.yaml: /],
    ];
    for (const [text, re] of cases) {
      const file = await yamlFile(text);
      await assert.rejects(
        loadConfig(schema, { argv: ["--config", file], env: {} }),
        (e) => e instanceof ConfigError && re.test(e.message),
        text,
      );
    }
  });

  it("rejects bad environment values and flags, naming them", async () => {
    await assert.rejects(
      loadConfig(schema, { argv: [], env: { HYPERVISOR_HEARTBEAT_TTL: "soon" } }),
      /environment variable HYPERVISOR_HEARTBEAT_TTL: expected a number, got "soon"/,
    );
    await assert.rejects(
      loadConfig(schema, { argv: ["--heartbeat-ttl", "0"], env: {} }),
      /heartbeat-ttl \(from flag\): must be at least 1, got 0/,
    );
    await assert.rejects(loadConfig(schema, { argv: ["--heartbeat-ttl", "1.5"], env: {} }), /expected an integer, got 1\.5/);
    await assert.rejects(
      loadConfig(schema, { argv: ["--node-nam", "x"], env: {} }),
      /unknown flag --node-nam \(did you mean --node-name\?\)/,
    );
    await assert.rejects(loadConfig(schema, { argv: ["--node-name"], env: {} }), /flag --node-name needs a value/);
    await assert.rejects(loadConfig(schema, { argv: ["--label", "novalue"], env: {} }), /flag --label: expected key=value, got "novalue"/);
    await assert.rejects(loadConfig(schema, { argv: ["stray"], env: {} }), /unexpected argument "stray"/);
    await assert.rejects(
      loadConfig(schema, { argv: ["--config", join(dir, "missing.yaml")], env: {} }),
      /config file .*missing\.yaml: ENOENT/,
    );
  });

  it("reads the default file when no --config is given, and --help skips it", async () => {
    const file = await yamlFile("node-name: dflt\n");
    assert.equal((await loadConfig(schema, { argv: [], env: {}, defaultFile: file })).config.nodeName, "dflt");
    const h = await loadConfig(schema, { argv: ["--help"], env: {}, defaultFile: join(dir, "missing.yaml") });
    assert.equal(h.help, true);
  });

  it("documents every setting in usage, hiding secret defaults", () => {
    const text = usage(schema, "hypervisor-agent", "runs instances");
    for (const k of Object.keys(schema)) assert.ok(text.includes(`--${k}`), k);
    assert.ok(text.includes("[HYPERVISOR_NODE_NAME]"));
    assert.ok(!/etcd-password.*default/.test(text));
  });
});
