// The CLI against a hand-written API served over real HTTP: the requests it builds from flags
// and files, how it renders answers, and how errors map to stderr and exit codes.
import { after, before, beforeEach, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { clone, create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { ClusterService } from "../../api/gen/hypervisor/v1/cluster_pb.js";
import {
  type CreateInstanceRequest,
  EventType,
  type Instance,
  InstanceSchema,
  InstanceService,
  type ListInstancesRequest,
  Phase,
  PowerState,
  RestartPolicy,
  type StopInstanceRequest,
  type WatchInstancesResponse,
  WatchInstancesResponseSchema,
} from "../../api/gen/hypervisor/v1/instance_pb.js";
import { NodeCondition, NodeSchema, NodeService, OrphanReason, OrphanSchema } from "../../api/gen/hypervisor/v1/node_pb.js";
import { ExitCode } from "./errors.js";
import { FIXED_NOW, runCli, startApi, type TestApi } from "./testing.js";

const ago = (seconds: number) => timestampFromDate(new Date(FIXED_NOW.getTime() - seconds * 1000));

function instance(name: string, phase: Phase, more: Partial<MessageInitShape<typeof InstanceSchema>> = {}): Instance {
  const base: MessageInitShape<typeof InstanceSchema> = {
    name,
    spec: { driver: "mock", vcpus: 1, memoryMib: 512n },
    status: { phase, node: phase === Phase.PENDING ? "" : "node-a" },
    createTime: ago(60),
    generation: 1n,
  };
  return create(InstanceSchema, { ...base, ...more } as MessageInitShape<typeof InstanceSchema>);
}

function event(type: EventType, i?: Instance): WatchInstancesResponse {
  return create(WatchInstancesResponseSchema, { type, instance: i });
}

function untilAborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => (signal.aborted ? resolve() : signal.addEventListener("abort", () => resolve(), { once: true })));
}

/** What the fake API saw and what it will answer; reset before each test. */
interface Fake {
  instances: Map<string, Instance>;
  created: CreateInstanceRequest[];
  listed: ListInstancesRequest[];
  stopped: StopInstanceRequest[];
  calls: string[];
  /** Events for WatchInstances; after them the stream stays open until the client leaves. */
  watch: (signal: AbortSignal) => AsyncIterable<WatchInstancesResponse>;
}

const fake: Fake = { instances: new Map(), created: [], listed: [], stopped: [], calls: [], watch: async function* () {} };

function get(name: string): Instance {
  const i = fake.instances.get(name);
  if (!i) throw new ConnectError(`instance "${name}" not found`, Code.NotFound);
  return i;
}

const instanceImpl: ServiceImpl<typeof InstanceService> = {
  createInstance(req) {
    fake.created.push(req);
    if (req.spec?.driver === "bogus") throw new ConnectError(`spec.driver: unknown driver "bogus"`, Code.InvalidArgument);
    if (fake.instances.has(req.name)) throw new ConnectError(`instance "${req.name}" already exists`, Code.AlreadyExists);
    const i = instance(req.name, Phase.PENDING, {
      labels: req.labels,
      spec: req.spec,
      status: { phase: Phase.PENDING, message: "waiting for the scheduler" },
    });
    fake.instances.set(req.name, i);
    return { instance: i };
  },
  createInstances(req) {
    fake.calls.push(`create-batch ${req.instances.map((r) => r.name).join(",")}`);
    if (req.instances.some((r) => fake.instances.has(r.name)))
      throw new ConnectError("instances[0].name: already exists", Code.AlreadyExists);
    return {
      instances: req.instances
        .map((r) => instanceImpl.createInstance(r, undefined as never) as { instance: Instance })
        .map((x) => x.instance),
    };
  },
  getInstance(req) {
    fake.calls.push(`get ${req.name}`);
    return { instance: get(req.name) };
  },
  listInstances(req) {
    fake.listed.push(req);
    return { instances: [...fake.instances.values()] };
  },
  deleteInstance(req) {
    const i = get(req.name);
    fake.calls.push(`delete ${req.name}`);
    return { instance: create(InstanceSchema, { ...i, deleteTime: ago(0) }) };
  },
  startInstance(req) {
    fake.calls.push(`start ${req.name}`);
    return { instance: get(req.name) };
  },
  stopInstance(req) {
    fake.stopped.push(req);
    return { instance: get(req.name) };
  },
  explainInstance(req) {
    fake.calls.push(`explain ${req.name}`);
    get(req.name);
    return {
      summary: "1/3 nodes feasible; best node-b",
      best: "node-b",
      nodes: [
        { node: "node-b", feasible: true, score: 62.5, scoreParts: { binpack: 62.5 } },
        { node: "node-a", feasible: false, reason: "insufficient memory" },
        { node: "node-c", feasible: false, reason: "untolerated taint dedicated" },
      ],
    };
  },
  setInstanceMemory(req) {
    fake.calls.push(`set-memory ${req.name} ${req.memoryMib}`);
    const i = clone(InstanceSchema, get(req.name));
    if (i.spec) i.spec.memoryTargetMib = req.memoryMib;
    return { instance: i };
  },
  async *getInstanceLogs(req) {
    fake.calls.push(`logs ${req.name} follow=${req.follow} tail=${req.tailBytes}`);
    get(req.name);
    yield { data: new TextEncoder().encode("HYPERVISOR-GUEST-READY\n") };
    yield { data: new TextEncoder().encode("second chunk\n") };
  },
  restartInstance(req) {
    fake.calls.push(`restart ${req.name}`);
    const i = get(req.name);
    if (i.status?.phase !== Phase.RUNNING)
      throw new ConnectError(`instance ${req.name} is Stopped; restart needs Running`, Code.FailedPrecondition);
    return { instance: create(InstanceSchema, { ...i, generation: i.generation + 1n }) };
  },
  async *watchInstances(_req, ctx) {
    yield* fake.watch(ctx.signal);
    await untilAborted(ctx.signal);
  },
};

const nodeA = create(NodeSchema, {
  name: "node-a",
  condition: NodeCondition.READY,
  drivers: [{ name: "mock", healthy: true }],
  capacity: { vcpus: 8, memoryMib: 8192n },
  allocatable: { vcpus: 7, memoryMib: 7680n },
  instanceCount: 1,
  registerTime: ago(7200),
});

const nodeImpl: ServiceImpl<typeof NodeService> = {
  listNodes: () => ({ nodes: [nodeA, create(NodeSchema, { name: "node-b", condition: NodeCondition.NOT_READY, cordoned: true })] }),
  getNode: (req) => {
    if (req.name !== "node-a") throw new ConnectError(`node "${req.name}" not found`, Code.NotFound);
    return { node: nodeA };
  },
  cordonNode: (req) => ({ node: create(NodeSchema, { ...nodeA, name: req.name, cordoned: true }) }),
  uncordonNode: (req) => ({ node: create(NodeSchema, { ...nodeA, name: req.name }) }),
  drainNode: (req) =>
    req.move
      ? { node: create(NodeSchema, { ...nodeA, name: req.name, cordoned: true, draining: true }), movingInstances: ["web-1"] }
      : { node: create(NodeSchema, { ...nodeA, name: req.name, cordoned: true }), stoppedInstances: ["web-1", "web-2"] },
  listOrphans: (req) => {
    if (req.node !== "node-a") throw new ConnectError(`node "${req.node}" not found`, Code.NotFound);
    return {
      orphans: [
        create(OrphanSchema, {
          name: "db-1",
          uid: "u-db-1",
          driver: "libvirt",
          state: "running",
          reason: OrphanReason.UNKNOWN,
          localDisk: true,
          message: "kept as it is: the store has no instance of that name; adopt or purge it",
          foundTime: ago(120),
        }),
      ],
    };
  },
  adoptOrphan: (req) => {
    if (req.name !== "db-1") throw new ConnectError(`node ${req.node} reports no orphan ${req.name}`, Code.NotFound);
    return { instance: create(InstanceSchema, { name: req.name, uid: "u-db-1", status: { phase: Phase.SCHEDULED, node: req.node } }) };
  },
  purgeOrphan: (req) => {
    if (req.name !== "db-1") throw new ConnectError(`node ${req.node} reports no orphan ${req.name}`, Code.NotFound);
    return {};
  },
};

const clusterImpl: ServiceImpl<typeof ClusterService> = {
  getVersion: () => ({ version: "9.9.9", apiVersion: "hypervisor.v1", store: "embedded", nodeVersion: "v20" }),
  getHealth: () => ({
    healthy: false,
    serverId: "srv-1",
    leaderId: "srv-1",
    components: [
      { name: "store", healthy: true, message: "embedded" },
      { name: "scheduler", healthy: false, message: "no nodes" },
    ],
  }),
  getCounts: () => ({ nodes: 2, nodesReady: 1, nodesCordoned: 1, instances: 3, instancesByPhase: { Running: 2, Pending: 1 } }),
  listDrivers: () => ({
    drivers: [
      {
        name: "libvirt",
        kind: "vm",
        description: "virtual machines",
        specFields: ["image", "kernel"],
        required: ["image|kernel"],
        configKeys: [{ name: "network", description: "the VM's network", values: "user, none or bridge:<name>" }],
      },
      { name: "mock", kind: "simulated", description: "simulated", specFields: [], configKeys: [] },
    ],
  }),
};

describe("hypervisor-ctl against an API over HTTP", () => {
  let api: TestApi;
  let dir: string;
  const ctl = (argv: string[], opts: Parameters<typeof runCli>[1] = {}) => runCli(argv, { server: api.url, ...opts });

  before(async () => {
    api = await startApi((router) => {
      router.service(InstanceService, instanceImpl);
      router.service(NodeService, nodeImpl);
      router.service(ClusterService, clusterImpl);
    });
    dir = await mkdtemp(join(tmpdir(), "hv-ctl-api-"));
  });
  after(async () => {
    await api.close();
    await rm(dir, { recursive: true, force: true });
  });
  beforeEach(() => {
    Object.assign(fake, { instances: new Map(), created: [], listed: [], stopped: [], calls: [], watch: async function* () {} });
  });

  describe("instance create", () => {
    it("builds the request from flags, repeated flags accumulating", async () => {
      const r = await ctl([
        "instance", "create", "web-1", "--driver", "containerd", "--image", "nginx:1", "--vcpus", "2", "--memory", "2Gi", "--disk", "10",
        "--label", "app=web", "--label", "tier=front", "--label", "app=web2", "--env", "A=1", "--env", "B=x=y",
        "--node-selector", "zone=a", "--config", "network=bridge", "--restart-policy", "always",
        "--command", "nginx", "--", "-g", "daemon off;",
      ]); // prettier-ignore
      assert.deepEqual(r, { code: 0, stdout: "instance/web-1 created\n", stderr: "" });
      const req = fake.created[0]!;
      assert.equal(req.name, "web-1");
      assert.deepEqual(req.labels, { app: "web2", tier: "front" });
      assert.equal(req.spec?.driver, "containerd");
      assert.equal(req.spec?.image, "nginx:1");
      assert.equal(req.spec?.vcpus, 2);
      assert.equal(req.spec?.memoryMib, 2048n);
      assert.equal(req.spec?.diskGib, 10n);
      assert.deepEqual(req.spec?.env, { A: "1", B: "x=y" });
      assert.deepEqual(req.spec?.nodeSelector, { zone: "a" });
      assert.deepEqual(req.spec?.driverConfig, { network: "bridge" });
      assert.equal(req.spec?.restartPolicy, RestartPolicy.ALWAYS);
      assert.deepEqual(req.spec?.command, ["nginx"]);
      assert.deepEqual(req.spec?.args, ["-g", "daemon off;"]);
      assert.equal(req.spec?.desiredPowerState, PowerState.UNSPECIFIED);
    });

    it("--secret-env takes the value from the shell's environment, never from argv", async () => {
      const r = await ctl(["instance", "create", "db-1", "--driver", "containerd", "--image", "x", "--secret-env", "DB_PASSWORD"], {
        env: { DB_PASSWORD: "hunter2" },
      });
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(fake.created[0]!.spec?.secretEnv, { DB_PASSWORD: "hunter2" });
      const unset = await ctl(["instance", "create", "db-2", "--driver", "containerd", "--secret-env", "NOPE"]);
      assert.equal(unset.code, 2);
      assert.match(unset.stderr, /--secret-env NOPE: \$NOPE is not set in this shell/);
      assert.equal(fake.created.length, 1);
    });

    it("--count creates NAME-1 to NAME-n alike in one call", async () => {
      const r = await ctl(["instance", "create", "pool", "--driver", "mock", "--vcpus", "1", "--label", "app=pool", "--count", "3"]);
      assert.deepEqual(r, { code: 0, stdout: "instance/pool-1 created\ninstance/pool-2 created\ninstance/pool-3 created\n", stderr: "" });
      assert.deepEqual(fake.calls, ["create-batch pool-1,pool-2,pool-3"]);
      assert.deepEqual(
        fake.created.map((c) => [c.name, c.labels, c.spec?.driver, c.spec?.vcpus]),
        ["pool-1", "pool-2", "pool-3"].map((n) => [n, { app: "pool" }, "mock", 1]),
      );
    });

    it("reads -f and lets flags override the file", async () => {
      const file = join(dir, "web.yaml");
      await writeFile(file, "name: from-file\nlabels: {app: web, env: dev}\nspec:\n  driver: mock\n  vcpus: 1\n  memory_mib: 256\n");
      const r = await ctl(["instance", "create", "-f", file, "--vcpus", "4", "--label", "env=prod", "--stopped"]);
      assert.equal(r.code, 0, r.stderr);
      const req = fake.created[0]!;
      assert.equal(req.name, "from-file");
      assert.deepEqual(req.labels, { app: "web", env: "prod" });
      assert.equal(req.spec?.vcpus, 4);
      assert.equal(req.spec?.memoryMib, 256n);
      assert.equal(req.spec?.desiredPowerState, PowerState.STOPPED);
      const named = await ctl(["instance", "create", "renamed", "-f", file]);
      assert.equal(named.code, 0);
      assert.equal(fake.created[1]!.name, "renamed");
    });

    it("refuses a spec file with an unknown field before sending anything", async () => {
      const file = join(dir, "typo.yaml");
      await writeFile(file, "name: x\nspec: {driver: mock, cpus: 2}\n");
      const r = await ctl(["instance", "create", "-f", file]);
      assert.equal(r.code, ExitCode.Usage);
      assert.equal(r.stdout, "");
      assert.match(r.stderr, /^error: .*typo\.yaml: unknown field "spec\.cpus"/);
      assert.equal(fake.created.length, 0);
    });

    it("prints the created instance as protobuf JSON with -o json", async () => {
      const r = await ctl(["-o", "json", "instance", "create", "db", "--driver", "mock"]);
      assert.equal(r.code, 0);
      const json = JSON.parse(r.stdout) as { name: string; status: { phase: string } };
      assert.equal(json.name, "db");
      assert.equal(json.status.phase, "PHASE_PENDING");
    });

    it("reports the server's InvalidArgument and AlreadyExists on stderr with exit 1", async () => {
      const bad = await ctl(["instance", "create", "x", "--driver", "bogus"]);
      assert.deepEqual(bad, { code: ExitCode.Api, stdout: "", stderr: `error: invalid_argument: spec.driver: unknown driver "bogus"\n` });
      fake.instances.set("x", instance("x", Phase.RUNNING));
      const dup = await ctl(["instance", "create", "x", "--driver", "mock"]);
      assert.deepEqual(dup, { code: ExitCode.Api, stdout: "", stderr: `error: already_exists: instance "x" already exists\n` });
    });

    it("--wait follows the watch until Running", async () => {
      fake.watch = async function* () {
        yield event(EventType.ADDED, instance("other", Phase.RUNNING));
        yield event(EventType.ADDED, instance("web-1", Phase.PENDING));
        yield event(EventType.SYNCED);
        yield event(EventType.MODIFIED, instance("web-1", Phase.SCHEDULED));
        yield event(EventType.MODIFIED, instance("web-1", Phase.CREATING));
        yield event(EventType.MODIFIED, instance("web-1", Phase.RUNNING));
      };
      const r = await ctl(["instance", "create", "web-1", "--driver", "mock", "--wait"]);
      assert.deepEqual(r, { code: 0, stdout: "instance/web-1 is Running on node-a\n", stderr: "" });
    });

    it("--wait exits 5 with the status message when the instance fails", async () => {
      fake.watch = async function* () {
        yield event(EventType.SYNCED);
        yield event(EventType.MODIFIED, instance("web-1", Phase.FAILED, { status: { phase: Phase.FAILED, message: "image not found" } }));
      };
      const r = await ctl(["instance", "create", "web-1", "--driver", "mock", "--wait"]);
      assert.deepEqual(r, { code: ExitCode.Failed, stdout: "", stderr: "error: instance web-1 failed: image not found\n" });
    });

    it("--wait exits 4 naming the last phase when --timeout passes", async () => {
      fake.watch = async function* () {
        yield event(
          EventType.ADDED,
          instance("web-1", Phase.PENDING, { status: { phase: Phase.PENDING, message: "no node has driver mock" } }),
        );
        yield event(EventType.SYNCED);
      };
      const r = await ctl(["instance", "create", "web-1", "--driver", "mock", "--wait", "--timeout", "300ms"]);
      assert.equal(r.code, ExitCode.Timeout);
      assert.equal(r.stdout, "");
      assert.equal(
        r.stderr,
        "error: timed out after 300ms waiting for instance web-1 to be Running (last phase Pending: no node has driver mock)\n",
      );
    });

    it("--wait ends with exit 130 on Ctrl-C", async () => {
      const ac = new AbortController();
      fake.watch = async function* () {
        yield event(EventType.SYNCED);
        ac.abort();
      };
      const r = await ctl(["instance", "create", "web-1", "--driver", "mock", "--wait"], { signal: ac.signal });
      assert.deepEqual(r, { code: ExitCode.Interrupted, stdout: "", stderr: "interrupted\n" });
    });
  });

  describe("instance get and list", () => {
    it("renders get as a table, and NotFound as exit 1 on stderr", async () => {
      fake.instances.set("web-1", instance("web-1", Phase.RUNNING));
      const r = await ctl(["instance", "get", "web-1"]);
      assert.equal(r.code, 0);
      assert.equal(
        r.stdout,
        "NAME    PHASE     NODE     DRIVER   VCPUS   MEMORY   AGE\nweb-1   Running   node-a   mock     1       512Mi    60s\n",
      );
      const missing = await ctl(["instance", "get", "nope"]);
      assert.deepEqual(missing, { code: ExitCode.Api, stdout: "", stderr: `error: not_found: instance "nope" not found\n` });
    });

    it("sends the filter from --selector, --node and --phase", async () => {
      fake.instances.set("a", instance("a", Phase.RUNNING));
      fake.instances.set("b", instance("b", Phase.PENDING));
      const r = await ctl(["instance", "list", "--selector", "app=web,tier=front", "--node", "node-a", "--phase", "running"]);
      assert.equal(r.code, 0);
      assert.equal(fake.listed[0]!.filter?.labelSelector, "app=web,tier=front");
      assert.equal(fake.listed[0]!.filter?.node, "node-a");
      assert.equal(fake.listed[0]!.filter?.phase, Phase.RUNNING);
      assert.deepEqual(
        r.stdout.split("\n").map((l) => l.split(/\s+/)[0]),
        ["NAME", "a", "b", ""],
      );
    });

    it("prints {items: [...]} with -o json and YAML with -o yaml", async () => {
      fake.instances.set("a", instance("a", Phase.RUNNING));
      const json = await ctl(["instance", "list", "-o", "json"]);
      assert.deepEqual(
        (JSON.parse(json.stdout) as { items: { name: string }[] }).items.map((i) => i.name),
        ["a"],
      );
      const yaml = await ctl(["instance", "ls", "--output", "yaml"]);
      assert.match(yaml.stdout, /^items:\n {2}- name: a\n/);
    });

    it("--watch prints the list, then changes, and Ctrl-C ends it with exit 0", async () => {
      const ac = new AbortController();
      fake.watch = async function* () {
        yield event(EventType.ADDED, instance("web-1", Phase.PENDING));
        yield event(EventType.SYNCED);
        yield event(EventType.MODIFIED, instance("web-1", Phase.RUNNING));
        yield event(EventType.DELETED, instance("web-1", Phase.RUNNING));
      };
      const r = await ctl(["instance", "list", "--watch"], {
        signal: ac.signal,
        onStdout: (all) => {
          if (all.split("\n").length > 4) ac.abort();
        },
      });
      assert.equal(r.code, 0);
      assert.equal(r.stderr, "");
      assert.equal(
        r.stdout,
        [
          "NAME    PHASE     NODE     DRIVER   VCPUS   MEMORY   AGE",
          "web-1   Pending   <none>   mock     1       512Mi    60s",
          "web-1   Running   node-a   mock     1       512Mi    60s",
          "web-1   Deleted   node-a   mock     1       512Mi    60s",
          "",
        ].join("\n"),
      );
    });

    it("--watch -o json prints one event per line", async () => {
      const ac = new AbortController();
      fake.watch = async function* () {
        yield event(EventType.ADDED, instance("web-1", Phase.PENDING));
        yield event(EventType.SYNCED);
      };
      const r = await ctl(["-o", "json", "instance", "list", "-w"], {
        signal: ac.signal,
        onStdout: (all) => all.includes("SYNCED") && ac.abort(),
      });
      assert.equal(r.code, 0);
      const lines = r.stdout
        .trimEnd()
        .split("\n")
        .map((l) => JSON.parse(l) as { type: string });
      assert.deepEqual(
        lines.map((l) => l.type),
        ["EVENT_TYPE_ADDED", "EVENT_TYPE_SYNCED"],
      );
    });
  });

  describe("instance start, stop, restart, delete", () => {
    it("stop passes --timeout-seconds and --wait waits for Stopped", async () => {
      fake.instances.set("web-1", instance("web-1", Phase.RUNNING));
      fake.watch = async function* () {
        yield event(EventType.ADDED, instance("web-1", Phase.STOPPING));
        yield event(EventType.SYNCED);
        yield event(EventType.MODIFIED, instance("web-1", Phase.STOPPED));
      };
      const r = await ctl(["instance", "stop", "web-1", "--timeout-seconds", "30", "--wait"]);
      assert.deepEqual(r, { code: 0, stdout: "instance/web-1 is Stopped\n", stderr: "" });
      assert.equal(fake.stopped[0]!.timeoutSeconds, 30);
    });

    it("stop refuses a --timeout-seconds over an hour without calling the server", async () => {
      fake.instances.set("web-1", instance("web-1", Phase.RUNNING));
      const r = await ctl(["instance", "stop", "web-1", "--timeout-seconds", "3601"]);
      assert.equal(r.code, ExitCode.Usage);
      assert.match(r.stderr, /--timeout-seconds: 3601 is more than the maximum of 3600 seconds/);
      assert.deepEqual(fake.stopped, []);
    });

    it("start without --wait returns at once", async () => {
      fake.instances.set("web-1", instance("web-1", Phase.STOPPED));
      const r = await ctl(["instance", "start", "web-1"]);
      assert.deepEqual(r, { code: 0, stdout: "instance/web-1 start requested\n", stderr: "" });
      assert.deepEqual(fake.calls, ["start web-1"]);
    });

    it("restart --wait does not stop at the Running it started from", async () => {
      fake.instances.set(
        "web-1",
        instance("web-1", Phase.RUNNING, { status: { phase: Phase.RUNNING, node: "node-a", observedGeneration: 1n } }),
      );
      fake.watch = async function* () {
        yield event(EventType.ADDED, fake.instances.get("web-1"));
        yield event(EventType.SYNCED);
        yield event(EventType.MODIFIED, instance("web-1", Phase.STOPPING));
        yield event(EventType.MODIFIED, instance("web-1", Phase.RUNNING, { generation: 2n }));
      };
      const r = await ctl(["-o", "json", "instance", "restart", "web-1", "--wait"]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal((JSON.parse(r.stdout) as { generation: string }).generation, "2");
    });

    it("start --wait on a Failed instance waits past the old failure", async () => {
      const old = instance("web-1", Phase.FAILED, { status: { phase: Phase.FAILED, message: "old crash", updateTime: ago(30) } });
      fake.instances.set("web-1", old);
      fake.watch = async function* () {
        yield event(EventType.ADDED, old);
        yield event(EventType.SYNCED);
        yield event(EventType.MODIFIED, instance("web-1", Phase.CREATING));
        yield event(EventType.MODIFIED, instance("web-1", Phase.RUNNING));
      };
      const r = await ctl(["instance", "start", "web-1", "--wait"]);
      assert.deepEqual(r, { code: 0, stdout: "instance/web-1 is Running\n", stderr: "" });
    });

    it("restart of a stopped instance shows FailedPrecondition", async () => {
      fake.instances.set("web-1", instance("web-1", Phase.STOPPED));
      const r = await ctl(["instance", "restart", "web-1"]);
      assert.deepEqual(r, {
        code: ExitCode.Api,
        stdout: "",
        stderr: "error: failed_precondition: instance web-1 is Stopped; restart needs Running\n",
      });
    });

    it("delete --wait waits until GetInstance answers NotFound", async () => {
      fake.instances.set("web-1", instance("web-1", Phase.RUNNING));
      fake.watch = async function* () {
        yield event(EventType.ADDED, fake.instances.get("web-1"));
        yield event(EventType.SYNCED);
        fake.instances.delete("web-1");
        yield event(EventType.DELETED, instance("web-1", Phase.RUNNING));
      };
      const r = await ctl(["instance", "delete", "web-1", "--wait"]);
      assert.deepEqual(r, { code: 0, stdout: "instance/web-1 deleted\n", stderr: "" });
      assert.deepEqual(fake.calls, ["delete web-1", "get web-1"]);
    });

    it("logs prints the streamed chunks as they come, with --follow and --tail passed on", async () => {
      fake.instances.set("vm-1", instance("vm-1", Phase.RUNNING));
      const r = await ctl(["instance", "logs", "vm-1", "--tail", "4096"]);
      assert.deepEqual(r, { code: 0, stdout: "HYPERVISOR-GUEST-READY\nsecond chunk\n", stderr: "" });
      const f = await ctl(["instance", "logs", "vm-1", "-f"]);
      assert.equal(f.code, 0);
      assert.deepEqual(fake.calls, ["logs vm-1 follow=false tail=4096", "logs vm-1 follow=true tail=0"]);
      const missing = await ctl(["instance", "logs", "nope"]);
      assert.equal(missing.code, ExitCode.Api);
      assert.match(missing.stderr, /not found/);
    });

    it("explain prints the summary and one row per node", async () => {
      fake.instances.set("web-1", instance("web-1", Phase.PENDING));
      const r = await ctl(["instance", "explain", "web-1"]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(
        r.stdout,
        [
          "1/3 nodes feasible; best node-b",
          "",
          "NODE     VERDICT    SCORE   DETAILS",
          "node-b   feasible   62.5    binpack 62.5",
          "node-a   no         -       insufficient memory",
          "node-c   no         -       untolerated taint dedicated",
          "",
        ].join("\n"),
      );
      const json = JSON.parse((await ctl(["instance", "explain", "web-1", "-o", "json"])).stdout) as { best: string; nodes: unknown[] };
      assert.equal(json.best, "node-b");
      assert.equal(json.nodes.length, 3);
      assert.equal((await ctl(["instance", "explain", "nope"])).code, ExitCode.Api);
    });

    it("set-memory sends MiB from a quantity and refuses a malformed one before calling", async () => {
      fake.instances.set("vm-1", instance("vm-1", Phase.RUNNING));
      const r = await ctl(["instance", "set-memory", "vm-1", "1Gi"]);
      assert.deepEqual(r, { code: 0, stdout: "instance/vm-1 memory target set to 1024Mi\n", stderr: "" });
      const bad = await ctl(["instance", "set-memory", "vm-1", "lots"]);
      assert.equal(bad.code, ExitCode.Usage);
      assert.deepEqual(fake.calls, ["set-memory vm-1 1024"]);
    });
  });

  describe("node and cluster", () => {
    it("lists nodes as a table", async () => {
      const r = await ctl(["node", "list"]);
      assert.equal(r.code, 0);
      assert.equal(
        r.stdout,
        [
          "NAME     STATUS                        DRIVERS   CPU   MEMORY      INSTANCES   AGE",
          "node-a   Ready                         mock      1/8   512Mi/8Gi   1           120m",
          "node-b   NotReady,SchedulingDisabled   <none>    0     0           0           <unknown>",
          "",
        ].join("\n"),
      );
    });

    it("cordons, drains, and reports a missing node", async () => {
      assert.equal((await ctl(["node", "cordon", "node-a"])).stdout, "node/node-a cordoned\n");
      assert.equal((await ctl(["node", "drain", "node-a"])).stdout, "node/node-a drained; stopping web-1, web-2\n");
      const drained = JSON.parse((await ctl(["node", "drain", "node-a", "-o", "json"])).stdout) as { stoppedInstances: string[] };
      assert.deepEqual(drained.stoppedInstances, ["web-1", "web-2"]);
      assert.equal((await ctl(["node", "drain", "node-a", "--move"])).stdout, "node/node-a draining; moving web-1\n");
      assert.deepEqual(await ctl(["node", "get", "nope"]), { code: 1, stdout: "", stderr: `error: not_found: node "nope" not found\n` });
    });

    it("lists, adopts and purges a node's orphans", async () => {
      assert.equal(
        (await ctl(["node", "orphans", "node-a"])).stdout,
        [
          "NAME   DRIVER    STATE     REASON    DISK    AGE   MESSAGE",
          "db-1   libvirt   running   unknown   local   2m    kept as it is: the store has no instance of that name; adopt or purge it",
          "",
        ].join("\n"),
      );
      const listed = JSON.parse((await ctl(["node", "orphans", "node-a", "-o", "json"])).stdout) as {
        items: { uid: string; localDisk: boolean }[];
      };
      assert.deepEqual(
        listed.items.map((o) => [o.uid, o.localDisk]),
        [["u-db-1", true]],
      );
      assert.equal((await ctl(["node", "adopt", "node-a", "db-1"])).stdout, "instance/db-1 adopted on node node-a\n");
      assert.equal((await ctl(["node", "purge", "node-a", "db-1"])).stdout, "orphan db-1 purged from node node-a\n");
      assert.deepEqual(await ctl(["node", "purge", "node-a", "db-9"]), {
        code: 1,
        stdout: "",
        stderr: "error: not_found: node node-a reports no orphan db-9\n",
      });
      assert.deepEqual(await ctl(["node", "orphans", "nope"]), {
        code: 1,
        stdout: "",
        stderr: `error: not_found: node "nope" not found\n`,
      });
    });

    it("cluster status shows version, health, leader and counts on one screen", async () => {
      const r = await ctl(["cluster", "status"]);
      assert.equal(r.code, 0);
      assert.equal(
        r.stdout,
        [
          `Server:     ${api.url} (version 9.9.9, API hypervisor.v1, store embedded)`,
          "Health:     UNHEALTHY",
          "Replica:    srv-1 (leader srv-1)",
          "Nodes:      2 (1 ready, 1 cordoned)",
          "Instances:  3 (1 Pending, 2 Running)",
          "",
          "Components:",
          "  NAME        HEALTHY   MESSAGE",
          "  store       yes       embedded",
          "  scheduler   NO        no nodes",
          "",
        ].join("\n"),
      );
      const json = JSON.parse((await ctl(["cluster", "status", "-o", "json"])).stdout) as {
        counts: { instancesByPhase: Record<string, number> };
      };
      assert.deepEqual(json.counts.instancesByPhase, { Running: 2, Pending: 1 });
    });

    it("cluster drivers lists the server's driver registry", async () => {
      const r = await ctl(["cluster", "drivers"]);
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stdout.trimEnd().split("\n");
      assert.match(lines[0]!, /^NAME\s+KIND\s+SPEC FIELDS\s+DRIVER CONFIG KEYS\s+DESCRIPTION$/);
      assert.match(lines[1]!, /^libvirt\s+vm\s+image,kernel\s+network\s+virtual machines$/);
      assert.match(lines[2]!, /^mock\s+simulated\s+-\s+-\s+simulated$/);
      const json = JSON.parse((await ctl(["cluster", "drivers", "-o", "json"])).stdout) as { drivers: { name: string }[] };
      assert.deepEqual(
        json.drivers.map((d) => d.name),
        ["libvirt", "mock"],
      );
    });

    it("version shows client and server", async () => {
      const r = await ctl(["version"]);
      assert.equal(r.code, 0);
      assert.match(r.stdout, /^Client: \S+\nServer: 9\.9\.9 \(API hypervisor\.v1, store embedded, node v20\)\n$/);
    });
  });

  describe("connection", () => {
    it("--server overrides HYPERVISOR_SERVER", async () => {
      const r = await runCli(["--server", api.url, "node", "get", "node-a", "-o", "json"], {
        env: { HYPERVISOR_SERVER: "http://127.0.0.1:1" },
      });
      assert.equal(r.code, 0, r.stderr);
    });

    it("names the URL when nothing listens there, with exit 3", async () => {
      const gone = await startApi(() => {});
      await gone.close();
      const r = await runCli(["node", "list"], { server: gone.url });
      assert.equal(r.code, ExitCode.Unavailable);
      assert.equal(r.stdout, "");
      assert.equal(r.stderr, `error: cannot reach server at ${gone.url}: ECONNREFUSED\n`);
    });
  });
});
