// The agent's settings: configs/agent.yaml is valid against the schema, flags map as documented,
// and driver names are checked.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { ConfigError, loadConfig } from "../../pkg/config/index.js";
import { agentSchema, buildDrivers, defaultNodeName, DRIVER_DEFAULTS, parseTaints } from "./index.js";

const repo = fileURLToPath(new URL("../../../", import.meta.url));
const dir = await mkdtemp(join(tmpdir(), "hv-agent-config-"));
after(() => rm(dir, { recursive: true, force: true }));

describe("agent config", () => {
  it("loads configs/agent.yaml, and every setting in it is documented there", async () => {
    const file = join(repo, "configs/agent.yaml");
    const { config, sources } = await loadConfig(agentSchema, { argv: ["--config", file], env: {} });
    assert.deepEqual(config.drivers, ["mock"]);
    assert.equal(config.heartbeatTtl, 10);
    assert.equal(config.nodeName, defaultNodeName(), "node-name is commented out: the hostname");
    const fromFile = Object.entries(sources)
      .filter(([, s]) => s === "file")
      .map(([k]) => k);
    const missing = Object.keys(agentSchema).filter((k) => k !== "node-name" && !fromFile.includes(k));
    assert.deepEqual(missing, [], "every setting has a commented default in configs/agent.yaml");
  });

  it("takes the flags the e2e test and the docs use", async () => {
    const { config } = await loadConfig(agentSchema, {
      argv: [
        "--node-name",
        "node-a",
        "--etcd-endpoints",
        "http://a:2379,http://b:2379",
        "--heartbeat-ttl",
        "3",
        "--drivers",
        "mock",
        "--data-dir",
        "/tmp/x",
        "--label",
        "name=node-a",
        "--label",
        "zone=z",
        "--capacity-vcpus",
        "10",
        "--capacity-memory-mib",
        "10240",
      ],
      env: {},
    });
    assert.equal(config.nodeName, "node-a");
    assert.deepEqual(config.etcdEndpoints, ["http://a:2379", "http://b:2379"]);
    assert.equal(config.heartbeatTtl, 3);
    assert.deepEqual(config.label, { name: "node-a", zone: "z" });
    assert.equal(config.capacityVcpus, 10);
    assert.equal(config.capacityMemoryMib, 10240);
  });

  it("builds the mock driver under data-dir/mock and names unknown drivers in the error", async () => {
    const [d] = buildDrivers(["mock"], dir);
    assert.ok(d);
    assert.equal(d.name, "mock");
    assert.equal((await d.fingerprint()).attributes.state_dir, join(dir, "mock"));
    await d.close();
    assert.throws(
      () => buildDrivers(["mock", "vmware"], dir),
      /drivers: unknown driver "vmware"; this agent supports containerd, libvirt, mock$/,
    );
    assert.throws(() => buildDrivers(["mock", "mock"], dir), /listed twice/);
    assert.throws(() => buildDrivers([], dir), /at least one driver/);
  });

  it("denies the host network and host bridges by default; a default network needs them allowed", async () => {
    const { config } = await loadConfig(agentSchema, { argv: [], env: {} });
    assert.equal(config.allowHostNetwork, false);
    assert.deepEqual(config.allowedBridges, []);
    assert.equal(config.containerdPidsLimit, 1024);
    const base = { ...DRIVER_DEFAULTS, nodeName: "n1" };
    assert.throws(
      () => buildDrivers(["containerd"], dir, {}, { ...base, containerdNetwork: "host" }),
      (e: Error) =>
        e instanceof ConfigError && e.message === 'containerd-network: "host" needs the host network allowed (allow-host-network: true)',
    );
    assert.throws(
      () => buildDrivers(["libvirt"], dir, {}, { ...base, libvirtNetwork: "bridge:br0", allowedBridges: ["br1"] }),
      (e: Error) =>
        e instanceof ConfigError && /^libvirt-network: "bridge:br0" names a bridge that allowed-bridges does not list/.test(e.message),
    );
    assert.throws(
      () => buildDrivers(["libvirt"], dir, {}, { ...base, libvirtNetwork: "user" }),
      (e: Error) =>
        e instanceof ConfigError && /^libvirt-network: user-mode networking lets every VM reach this node's loopback/.test(e.message),
    );
    assert.equal(config.libvirtNetwork, "none", "VMs get no NIC unless the node says otherwise");
    assert.throws(
      () => buildDrivers(["mock"], dir, {}, { ...base, allowedBridges: ["br0;rm"] }),
      (e: Error) => e instanceof ConfigError && e.message === 'allowed-bridges: "br0;rm" is not an interface name',
    );
    // Allowed: built, and each driver advertises what it allows.
    const drivers = buildDrivers(
      ["containerd", "libvirt", "mock"],
      dir,
      {},
      {
        ...base,
        containerdNetwork: "host",
        allowHostNetwork: true,
        libvirtNetwork: "bridge:br0",
        allowedBridges: ["br0"],
      },
    );
    assert.deepEqual(
      drivers.map((d) => [d.name, d.hostAccess]),
      [
        ["containerd", { hostNetwork: true, bridges: [] }],
        // allow-host-network also lets VMs use QEMU's user network, which reaches the node's loopback.
        ["libvirt", { hostNetwork: true, bridges: ["br0"] }],
        ["mock", undefined],
      ],
    );
    for (const d of drivers) await d.close();
    const denied = buildDrivers(["containerd", "libvirt"], dir, {}, base);
    assert.deepEqual(
      denied.map((d) => d.hostAccess),
      [
        { hostNetwork: false, bridges: [] },
        { hostNetwork: false, bridges: [] },
      ],
    );
    for (const d of denied) await d.close();
  });

  it("parses taints with and without a value, and names a malformed one", () => {
    assert.deepEqual(parseTaints(["dedicated=db:NoSchedule", "maintenance:PreferNoSchedule", "example.com/gpu=a100:NoSchedule"]), [
      { key: "dedicated", value: "db", effect: "NoSchedule" },
      { key: "maintenance", value: "", effect: "PreferNoSchedule" },
      { key: "example.com/gpu", value: "a100", effect: "NoSchedule" },
    ]);
    for (const bad of ["dedicated=db", "dedicated=db:NoExecute", "=db:NoSchedule", "a=b c:NoSchedule", "k=v:NoSchedule;rm"])
      assert.throws(
        () => parseTaints([bad]),
        (e: Error) => e.message.startsWith(`taint: ${JSON.stringify(bad)} is not KEY=VALUE:EFFECT`),
      );
  });
});
