// The server against a real store (embedded and etcd run in the e2e suite): the API over all
// three protocols on one port, validation that leaves state untouched, placement, deletion.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createRouterTransport, type Client, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { ClusterService } from "../../api/gen/hypervisor/v1/cluster_pb.js";
import {
  ImageService,
  ImportImageRequestSchema,
  ImportTargetSchema,
  type ImportImageRequest,
} from "../../api/gen/hypervisor/v1/image_pb.js";
import {
  EventType,
  InstanceSchema,
  InstanceService,
  LabelOperator,
  Phase,
  PowerState,
  Strategy,
  TaintEffect,
} from "../../api/gen/hypervisor/v1/instance_pb.js";
import {
  NodeCondition,
  NodeSchema,
  NodeService,
  OrphanReason,
  OrphanSchema,
  ResourcesSchema,
  TaintSchema,
} from "../../api/gen/hypervisor/v1/node_pb.js";
import { AssignmentSchema, ClusterIdentitySchema } from "../../api/gen/hypervisor/v1/store_pb.js";
import { type Store } from "../../pkg/cluster/store/index.js";
import { codecs, keys, placeOps, unplaceOps, update } from "../../pkg/cluster/state/index.js";
import { openEmbeddedStore } from "../../pkg/cluster/store/index.js";
import { openEtcdStore } from "../../pkg/cluster/etcd/index.js";
import { startEtcd, type EtcdProcess } from "../../test/support/etcd.js";
import { until } from "../../test/support/procs.js";
import { Server } from "./server.js";

async function addNode(
  store: Store,
  name: string,
  vcpus: number,
  memoryMib: number,
  labels: Record<string, string> = {},
  more: { taints?: MessageInitShape<typeof TaintSchema>[]; reserved?: MessageInitShape<typeof ResourcesSchema> } = {},
): Promise<void> {
  const node = create(NodeSchema, {
    ...more,
    name,
    labels,
    capacity: { vcpus, memoryMib: BigInt(memoryMib), diskGib: 100n },
    drivers: [{ name: "mock", healthy: true }],
  });
  await store.put(keys.node(name), toBinary(NodeSchema, node));
  await store.put(keys.alive(name), new Uint8Array([1]));
}

for (const kind of ["embedded", "etcd"] as const)
  describe(`server on the ${kind} store`, () => {
    let dir: string;
    let etcd: EtcdProcess | undefined;
    let store: Store;
    let server: Server;
    let transport: Transport;
    let instances: Client<typeof InstanceService>;
    let nodes: Client<typeof NodeService>;

    before(async () => {
      dir = await mkdtemp(join(tmpdir(), "hv-server-"));
      if (kind === "etcd") {
        etcd = await startEtcd();
        store = await openEtcdStore({ endpoints: [etcd.endpoint] });
      } else {
        store = await openEmbeddedStore(join(dir, "store"));
      }
      server = new Server({ store, host: "127.0.0.1", port: 0, version: "test", access: "none" });
      await server.start();
      transport = createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" });
      instances = createClient(InstanceService, transport);
      nodes = createClient(NodeService, transport);
    });

    after(async () => {
      await server.stop();
      await store.close();
      await etcd?.stop();
      await rm(dir, { recursive: true, force: true });
    });

    it("answers Connect, gRPC (h2c) and gRPC-Web on one port", async () => {
      for (const t of [
        createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }),
        createConnectTransport({ baseUrl: server.url, httpVersion: "2" }),
        createGrpcTransport({ baseUrl: server.url }),
        createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" }),
      ]) {
        const v = await createClient(ClusterService, t).getVersion({});
        assert.equal(v.version, "test");
        assert.equal(v.store, kind);
      }
    });

    it("serves /healthz and /metrics", async () => {
      const h = await fetch(`${server.url}/healthz`);
      assert.equal(h.status, 200);
      assert.match(await h.text(), /^ok leader/);
      const m = await (await fetch(`${server.url}/metrics`)).text();
      assert.match(m, /hypervisor_api_requests_total\{service="hypervisor.v1.ClusterService",method="GetVersion",code="ok"\}/);
    });

    it("rejects bad input with InvalidArgument naming the field, and writes nothing", async () => {
      const rev = await store.revision();
      const good = { driver: "mock", vcpus: 1, memoryMib: 64n };
      const cases: [string, Parameters<typeof instances.createInstance>[0], Code, RegExp][] = [
        ["empty name", { name: "", spec: good }, Code.InvalidArgument, /^name: is required/],
        ["uppercase", { name: "Web", spec: good }, Code.InvalidArgument, /^name: "Web" is not a valid name/],
        ["path", { name: "../etc", spec: good }, Code.InvalidArgument, /^name: "\.\.\/etc"/],
        ["xml", { name: "a<b>", spec: good }, Code.InvalidArgument, /^name: "a<b>"/],
        ["too long", { name: "a".repeat(64), spec: good }, Code.InvalidArgument, /^name: /],
        ["no spec", { name: "x" }, Code.InvalidArgument, /^spec: is required/],
        [
          "unknown driver",
          { name: "x", spec: { ...good, driver: "vmware" } },
          Code.InvalidArgument,
          /^spec\.driver: unknown driver "vmware"/,
        ],
        ["zero vcpus", { name: "x", spec: { ...good, vcpus: 0 } }, Code.InvalidArgument, /^spec\.vcpus: is required/],
        [
          "absurd memory",
          { name: "x", spec: { ...good, memoryMib: 1n << 60n } },
          Code.InvalidArgument,
          /^spec\.memory_mib: \d+ MiB is more than the maximum/,
        ],
        ["absurd vcpus", { name: "x", spec: { ...good, vcpus: 100000 } }, Code.InvalidArgument, /^spec\.vcpus: 100000 vCPUs/],
        ["label key", { name: "x", labels: { "bad key": "v" }, spec: good }, Code.InvalidArgument, /^labels\["bad key"\]/],
        ["label value", { name: "x", labels: { app: "<script>" }, spec: good }, Code.InvalidArgument, /^labels\["app"\]: value "<script>"/],
        ["reserved label", { name: "x", labels: { "hypervisor.io/restart-requested": "1" }, spec: good }, Code.InvalidArgument, /reserved/],
        ["env key", { name: "x", spec: { ...good, env: { "A B": "1" } } }, Code.InvalidArgument, /^spec\.env\["A B"\]/],
        [
          "nul in command",
          { name: "x", spec: { ...good, command: ["a\u0000b"] } },
          Code.InvalidArgument,
          /^spec\.command\[0\]: .* control characters/,
        ],
        [
          "requirement without operator",
          { name: "x", spec: { ...good, placement: { nodeRequirements: [{ key: "zone", values: ["a"] }] } } },
          Code.InvalidArgument,
          /^spec\.placement\.node_requirements\[0\]\.operator: is required/,
        ],
        [
          "in without values",
          { name: "x", spec: { ...good, placement: { nodeRequirements: [{ key: "zone", operator: LabelOperator.IN }] } } },
          Code.InvalidArgument,
          /^spec\.placement\.node_requirements\[0\]\.values: needs at least one value/,
        ],
        [
          "requirement value",
          {
            name: "x",
            spec: { ...good, placement: { nodeRequirements: [{ key: "zone", operator: LabelOperator.IN, values: ["a'b"] }] } },
          },
          Code.InvalidArgument,
          /^spec\.placement\.node_requirements\[0\]\.values\[0\]: "a'b" is not a valid label value/,
        ],
        [
          "group without labels",
          { name: "x", spec: { ...good, placement: { maxPerNode: 1 } } },
          Code.InvalidArgument,
          /^spec\.placement\.max_per_node_selector: is empty and the instance has no labels/,
        ],
        [
          "preferred weight",
          { name: "x", labels: { app: "w" }, spec: { ...good, placement: { affinity: [{ weight: 500 }] } } },
          Code.InvalidArgument,
          /^spec\.placement\.affinity\[0\]\.weight: 500 must be from 1 to 100/,
        ],
        [
          "spread without key",
          { name: "x", labels: { app: "w" }, spec: { ...good, placement: { spread: [{ maxSkew: 1 }] } } },
          Code.InvalidArgument,
          /^spec\.placement\.spread\[0\]\.topology_key: is required/,
        ],
        [
          "unknown strategy",
          { name: "x", spec: { ...good, placement: { strategy: 9 as Strategy } } },
          Code.InvalidArgument,
          /^spec\.placement\.strategy: 9 is not a Strategy$/,
        ],
      ];
      // What each driver takes (pkg/compute/driver/registry.ts), checked before anything is stored.
      const vm = { driver: "libvirt", vcpus: 1, memoryMib: 64n };
      const container = { driver: "containerd", vcpus: 1, memoryMib: 64n, image: "docker.io/library/alpine:3.20" };
      cases.push(
        [
          "no such driver",
          { name: "x", spec: { ...good, driver: "firecracker" } },
          Code.InvalidArgument,
          /^spec\.driver: unknown driver "firecracker": use one of containerd, libvirt, mock$/,
        ],
        [
          "kernel on a container",
          { name: "x", spec: { ...container, kernel: "vmlinuz" } },
          Code.InvalidArgument,
          /^spec\.kernel: the containerd driver does not take kernel: kernel, initrd and cmdline are for VMs/,
        ],
        [
          "container without image",
          { name: "x", spec: { ...container, image: "" } },
          Code.InvalidArgument,
          /^spec\.image: is required for the containerd driver$/,
        ],
        [
          "command on a VM",
          { name: "x", spec: { ...vm, image: "disk.qcow2", command: ["sh"] } },
          Code.InvalidArgument,
          /^spec\.command: the libvirt driver does not take command/,
        ],
        [
          "VM without disk or kernel",
          { name: "x", spec: vm },
          Code.InvalidArgument,
          /^spec\.image: the libvirt driver needs image or kernel, and none is set$/,
        ],
        [
          "initrd without kernel",
          { name: "x", spec: { ...vm, image: "disk.qcow2", initrd: "initrd.img" } },
          Code.InvalidArgument,
          /^spec\.initrd: needs spec\.kernel with the libvirt driver$/,
        ],
        [
          "unknown config key",
          { name: "x", spec: { ...good, driverConfig: { foo: "1" } } },
          Code.InvalidArgument,
          /^spec\.driver_config\["foo"\]: unknown key for the mock driver \(known: run_for, exit_code, start_error, start_delay, stop_delay, local_disk\)$/,
        ],
        [
          "config key of another driver",
          { name: "x", spec: { ...container, driverConfig: { run_for: "1s" } } },
          Code.InvalidArgument,
          /^spec\.driver_config\["run_for"\]: unknown key for the containerd driver \(known: network, pids-limit\)$/,
        ],
        [
          "bad network",
          { name: "x", spec: { ...vm, kernel: "vmlinuz", driverConfig: { network: "wifi" } } },
          Code.InvalidArgument,
          /^spec\.driver_config\["network"\]: "wifi" is not user, none or bridge:<name>$/,
        ],
        [
          "bad bridge name",
          { name: "x", spec: { ...vm, kernel: "vmlinuz", driverConfig: { network: "bridge:a b" } } },
          Code.InvalidArgument,
          /^spec\.driver_config\["network"\]: "bridge:a b" is not/,
        ],
        [
          "bad container network",
          { name: "x", spec: { ...container, driverConfig: { network: "bridge" } } },
          Code.InvalidArgument,
          /^spec\.driver_config\["network"\]: "bridge" is not none or host$/,
        ],
        [
          "bad duration",
          { name: "x", spec: { ...good, driverConfig: { run_for: "soon" } } },
          Code.InvalidArgument,
          /^spec\.driver_config\["run_for"\]: "soon" is not a duration/,
        ],
        [
          "max per node",
          { name: "x", labels: { app: "w" }, spec: { ...good, placement: { maxPerNode: 5000 } } },
          Code.InvalidArgument,
          /^spec\.placement\.max_per_node: 5000 is more than the maximum of 1000$/,
        ],
        [
          "max unavailable",
          { name: "x", labels: { app: "w" }, spec: { ...good, placement: { disruptionBudget: { maxUnavailable: 1_000_000 } } } },
          Code.InvalidArgument,
          /^spec\.placement\.disruption_budget\.max_unavailable: 1000000 is more than the maximum of 100000$/,
        ],
      );
      for (const [what, req, code, msg] of cases) {
        await assert.rejects(instances.createInstance(req), (e: unknown) => {
          const ce = ConnectError.from(e);
          assert.equal(ce.code, code, `${what}: ${ce.message}`);
          assert.match(ce.rawMessage, msg, what);
          return true;
        });
      }
      // Oversized: more than the 4 MiB request limit, as curl would send it, and over gRPC.
      const big = { name: "big", spec: { driver: "mock", vcpus: 1, memoryMib: "1", env: { A: "x".repeat(5 * 1024 * 1024) } } };
      const res = await fetch(`${server.url}/hypervisor.v1.InstanceService/CreateInstance`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(big),
      });
      assert.equal(res.status, 429);
      assert.equal(((await res.json()) as { code: string }).code, "resource_exhausted");
      const grpc = createClient(InstanceService, createGrpcTransport({ baseUrl: server.url }));
      await assert.rejects(
        grpc.createInstance({ name: "big", spec: { ...good, env: { A: "x".repeat(5 * 1024 * 1024) } } }),
        (e: unknown) => {
          assert.equal(ConnectError.from(e).code, Code.ResourceExhausted);
          return true;
        },
      );
      assert.equal(await store.revision(), rev, "a rejected request wrote to the store");
      await assert.rejects(instances.getInstance({ name: "nope" }), (e: unknown) => ConnectError.from(e).code === Code.NotFound);
      await assert.rejects(
        instances.listInstances({ filter: { labelSelector: "a" } }),
        (e: unknown) => ConnectError.from(e).code === Code.InvalidArgument,
      );
    });

    it("keeps an instance Pending with a reason, then places it when a node fits", async () => {
      await instances.createInstance({ name: "big-one", spec: { driver: "mock", vcpus: 2, memoryMib: 2048n } });
      // Lists come from the informers; they wait for this server's own writes (read your writes).
      assert.ok((await instances.listInstances({})).instances.some((i) => i.name === "big-one"));
      await assert.rejects(
        instances.createInstance({ name: "big-one", spec: { driver: "mock", vcpus: 1, memoryMib: 1n } }),
        (e: unknown) => ConnectError.from(e).code === Code.AlreadyExists,
      );
      const pending = await until("pending reason", async () => {
        const i = (await instances.getInstance({ name: "big-one" })).instance!;
        return i.status?.message.startsWith("0/") ? i : undefined;
      });
      assert.equal(pending.status?.phase, Phase.PENDING);
      assert.equal(pending.status?.message, "0/0 nodes available: no nodes registered");
      await addNode(store, "small", 1, 1024);
      await until(
        "reason counts the small node",
        async () =>
          (await instances.getInstance({ name: "big-one" })).instance!.status?.message === "0/1 nodes available: 1 insufficient cpu",
      );
      await addNode(store, "large", 8, 8192);
      const placed = await until("placement", async () => {
        const i = (await instances.getInstance({ name: "big-one" })).instance!;
        return i.status?.phase === Phase.SCHEDULED ? i : undefined;
      });
      assert.equal(placed.status?.node, "large");
      assert.ok(await store.get(keys.assignment("large", "default/big-one")), "assignment written");
      const node = (await nodes.getNode({ name: "large" })).node!;
      assert.equal(node.condition, NodeCondition.READY);
      assert.equal(node.instanceCount, 1);
      assert.equal(node.allocatable?.vcpus, 6);
      assert.equal(node.allocatable?.memoryMib, 6144n);
    });

    it("creates a batch in one transaction: all of it, or none when one is invalid or its name taken", async () => {
      // A selector no node has: they stay Pending and leave the other tests' nodes alone.
      const spec = { driver: "mock", vcpus: 1, memoryMib: 64n, nodeSelector: { pool: "batch-test" } };
      const names = ["batch-0", "batch-1", "batch-2"];
      const { instances: made } = await instances.createInstances({
        instances: names.map((name) => ({ name, spec, labels: { set: "b" } })),
      });
      assert.deepEqual(
        made.map((i) => [i.name, i.status?.phase, i.spec?.desiredPowerState]),
        names.map((n) => [n, Phase.PENDING, PowerState.RUNNING]),
      );
      assert.equal(new Set(made.map((i) => i.uid)).size, 3, "each has its own uid");
      assert.deepEqual(
        (await instances.listInstances({ filter: { labelSelector: "set=b" } })).instances.map((i) => i.name),
        names,
      );

      // List filters read the agent's status where it reported (same uid), the record otherwise.
      // Placed on a node no test has (as the scheduler writes it), which reports it Running.
      // (By compare-and-swap: the placement controller writes its Pending reason beside the test.)
      await update(store, keys.instance("default/batch-0"), codecs.instance, ({ value }) => {
        const place = placeOps(value!, 0, "elsewhere");
        return { value: place.next, ops: place.ops.slice(1) };
      });
      await store.put(
        keys.status("elsewhere", "default/batch-0"),
        toBinary(
          InstanceSchema,
          create(InstanceSchema, { name: "batch-0", uid: made[0]!.uid, status: { phase: Phase.RUNNING, node: "elsewhere" } }),
        ),
      );
      const listed = async (filter: { phase?: Phase; node?: string }) =>
        (await instances.listInstances({ filter: { labelSelector: "set=b", ...filter } })).instances.map((i) => i.name);
      await until("the status in the informer", async () => (await listed({ phase: Phase.RUNNING })).length === 1);
      assert.deepEqual(await listed({ phase: Phase.RUNNING }), ["batch-0"]);
      assert.deepEqual(await listed({ node: "elsewhere" }), ["batch-0"]);
      assert.deepEqual(await listed({ phase: Phase.PENDING }), ["batch-1", "batch-2"]);
      assert.deepEqual(await listed({ phase: Phase.PENDING, node: "elsewhere" }), []);
      assert.equal((await instances.listInstances({ filter: { labelSelector: "set=b,x=y" } })).instances.length, 0);
      // Back to Pending, as the HA controller takes one off a lost node: nothing runs it any more,
      // so the deletes below remove it at once.
      await update(store, keys.instance("default/batch-0"), codecs.instance, ({ value }) => {
        const back = unplaceOps(value!, 0, "elsewhere", undefined, "back");
        const record = back.ops.find((o) => o.type === "put" && o.key === keys.instance("default/batch-0"));
        assert.ok(record?.type === "put");
        return { value: codecs.instance.decode(record.value), ops: back.ops.filter((o) => o !== record) };
      });

      const refused = async (req: Parameters<typeof instances.createInstances>[0], code: Code, message: RegExp) => {
        await assert.rejects(instances.createInstances(req), (e: unknown) => {
          const err = ConnectError.from(e);
          assert.equal(err.code, code, err.message);
          assert.match(err.rawMessage, message);
          return true;
        });
      };
      // The leader's controllers write beside the test (the Pending ones' reasons), so what a
      // refusal must not have written is compared key by key, not as the store's revision.
      const instanceKeys = async () => (await store.range(keys.instances)).kvs.map((kv) => kv.key);
      const before = await instanceKeys();
      await refused({ instances: [] }, Code.InvalidArgument, /^instances: is empty/);
      await refused(
        { instances: Array.from({ length: 101 }, (_, i) => ({ name: `too-many-${i}`, spec })) },
        Code.InvalidArgument,
        /^instances: has 101 entries; at most 100/,
      );
      await refused(
        {
          instances: [
            { name: "fresh-0", spec },
            { name: "fresh-1", spec: { ...spec, driver: "bogus" } },
          ],
        },
        Code.InvalidArgument,
        /^instances\[1\]\.spec\.driver: unknown driver "bogus"/,
      );
      await refused(
        {
          instances: [
            { name: "fresh-0", spec },
            { name: "Bad_Name", spec },
          ],
        },
        Code.InvalidArgument,
        /^instances\[1\]\.name: /,
      );
      await refused(
        {
          instances: [
            { name: "fresh-0", spec },
            { name: "fresh-1", spec },
            { name: "fresh-0", spec },
          ],
        },
        Code.InvalidArgument,
        /^instances\[2\]\.name: "fresh-0" is also the name of instances\[0\]/,
      );
      await refused(
        {
          instances: [
            { name: "fresh-0", spec },
            { name: "batch-1", spec },
            { name: "batch-2", spec },
          ],
        },
        Code.AlreadyExists,
        /^instances\[1\]\.name: instance "batch-1" already exists \(and 1 more of the 3\); none of the 3 was created/,
      );
      // Nothing of a refused batch was written.
      assert.deepEqual(await instanceKeys(), before, "no refusal wrote anything");
      assert.equal(await store.get(keys.instance("default/fresh-0")), undefined);
      assert.equal(await store.get(keys.instance("default/fresh-1")), undefined);
      assert.equal(await store.get(keys.instance("default/too-many-0")), undefined);
      assert.equal((await instances.getInstance({ name: "batch-1" })).instance?.uid, made[1]!.uid, "the taken one is untouched");

      for (const name of names) await instances.deleteInstance({ name });
      for (const name of names) assert.equal(await store.get(keys.instance(`default/${name}`)), undefined, `${name} deleted`);
    });

    it("refuses instances too big for a store write, and places big ones in txns etcd takes", async () => {
      /** An env of `entries` values of 4,000 bytes: about 4 KB an entry once encoded. */
      const env = (entries: number) => Object.fromEntries(Array.from({ length: entries }, (_, i) => [`E${i}`, "x".repeat(4000)]));
      const spec = (entries: number) => ({ driver: "mock", vcpus: 1, memoryMib: 64n, env: env(entries), nodeSelector: { pool: "bulky" } });
      const revision = await store.revision();
      await assert.rejects(instances.createInstance({ name: "huge", spec: spec(150) }), (e: unknown) => {
        const err = ConnectError.from(e);
        assert.equal(err.code, Code.InvalidArgument);
        assert.match(err.rawMessage, /^spec: the instance is \d+ KiB encoded; at most 512 KiB allowed/);
        return true;
      });
      await assert.rejects(
        instances.createInstances({ instances: ["b-0", "b-1", "b-2"].map((name) => ({ name, spec: spec(90) })) }),
        (e: unknown) => {
          const err = ConnectError.from(e);
          assert.equal(err.code, Code.InvalidArgument);
          assert.match(err.rawMessage, /^instances: the 3 instances are \d+ KiB encoded; one call takes at most 1024 KiB/);
          return true;
        },
      );
      assert.equal(await store.revision(), revision, "nothing written");

      // Four of 360 KB, Pending until their node comes, then placed on it in one pass: written
      // twice each (record and assignment), they are 2.9 MB, more than etcd takes in one txn.
      const names = ["bulky-0", "bulky-1", "bulky-2", "bulky-3"];
      for (const name of names) await instances.createInstance({ name, spec: spec(90) });
      await addNode(store, "bulky-node", 8, 8192, { pool: "bulky" });
      try {
        for (const name of names)
          await until(`${name} placed`, async () => (await instances.getInstance({ name })).instance?.status?.node === "bulky-node");
        for (const name of names) assert.ok(await store.get(keys.assignment("bulky-node", `default/${name}`)), `${name} assigned`);
      } finally {
        // Play the agent's part, then take the node away: the later tests count two nodes.
        for (const name of names) await instances.deleteInstance({ name });
        for (const name of names) await store.delete(keys.assignment("bulky-node", `default/${name}`));
        for (const name of names)
          await until(`${name} removed`, async () => (await store.get(keys.instance(`default/${name}`))) === undefined);
        await store.delete(keys.alive("bulky-node"));
        await store.delete(keys.node("bulky-node"));
        await store.delete(keys.allocation("bulky-node"));
      }
    });

    it("places by taints, requirements and anti-affinity, and explains every node's verdict", async () => {
      await addNode(store, "gpu-1", 8, 8192, { zone: "a" }, { taints: [{ key: "gpu", value: "", effect: TaintEffect.NO_SCHEDULE }] });
      await addNode(store, "zb-1", 8, 8192, { zone: "b" }, { reserved: { vcpus: 6, memoryMib: 0n, diskGib: 0n } });
      const spec = (over: object) => ({ driver: "mock", vcpus: 1, memoryMib: 64n, ...over });
      const anti = { anti: true, required: true };
      const zone = (values: string[]) => ({ nodeRequirements: [{ key: "zone", operator: LabelOperator.IN, values }] });
      // zb-1 has two CPUs left after its reservation; gpu-1 needs a toleration.
      await instances.createInstance({
        name: "db-1",
        labels: { app: "db" },
        spec: spec({ placement: { ...zone(["a", "b"]), affinity: [anti] } }),
      });
      await instances.createInstance({
        name: "db-2",
        labels: { app: "db" },
        spec: spec({ placement: { ...zone(["a", "b"]), affinity: [anti] } }),
      });
      const placed = await until("db-1 placed", async () => {
        const i = (await instances.getInstance({ name: "db-1" })).instance!;
        return i.status?.node ? i : undefined;
      });
      assert.equal(placed.status?.node, "zb-1");
      const stuck = await until("db-2's reason", async () => {
        const i = (await instances.getInstance({ name: "db-2" })).instance!;
        return i.status?.message.includes("untolerated taint gpu") ? i : undefined;
      });
      assert.equal(stuck.status?.phase, Phase.PENDING);
      assert.match(
        stuck.status.message,
        /^0\/\d+ nodes available: .*1 anti-affinity.*1 untolerated taint gpu|^0\/\d+ nodes available: .*1 untolerated taint gpu.*1 anti-affinity/,
      );

      const why = await instances.explainInstance({ name: "db-2" });
      assert.equal(why.best, "");
      const verdict = (n: string) => why.nodes.find((v) => v.node === n);
      assert.equal(verdict("gpu-1")?.reason, "untolerated taint gpu");
      assert.equal(verdict("zb-1")?.reason, "anti-affinity");
      assert.equal(verdict("large")?.reason, "node requirement zone");
      const ok = await instances.explainInstance({ name: "db-1" });
      assert.match(ok.summary, /^placed on zb-1; now: 1\/\d+ nodes feasible; best zb-1$/, "it does not count against itself");
      assert.equal(ok.nodes[0]?.node, "zb-1");
      assert.ok(ok.nodes[0]?.feasible && "binpack" in ok.nodes[0].scoreParts);
      await assert.rejects(instances.explainInstance({ name: "nope" }), (e: unknown) => ConnectError.from(e).code === Code.NotFound);
      // Leave nothing behind for the tests that follow: play the agent's part for db-1.
      await instances.deleteInstance({ name: "db-2" });
      await instances.deleteInstance({ name: "db-1" });
      await store.delete(keys.assignment("zb-1", "default/db-1"));
      await until(
        "both gone",
        async () => !(await store.get(keys.instance("default/db-1"))) && !(await store.get(keys.instance("default/db-2"))),
      );
      await store.delete(keys.node("gpu-1"));
      await store.delete(keys.node("zb-1"));
    });

    it("start/stop mirror desired state into the assignment; restart needs Running", async () => {
      const stopped = (await instances.stopInstance({ name: "big-one", timeoutSeconds: 7 })).instance!;
      assert.equal(stopped.spec?.desiredPowerState, PowerState.STOPPED);
      assert.equal(stopped.labels["hypervisor.io/stop-timeout-seconds"], "7");
      const gen = stopped.generation;
      const again = (await instances.stopInstance({ name: "big-one", timeoutSeconds: 7 })).instance!;
      assert.equal(again.generation, gen, "stopping a stopped instance changes nothing");
      await assert.rejects(instances.restartInstance({ name: "big-one" }), (e: unknown) => {
        const ce = ConnectError.from(e);
        return ce.code === Code.FailedPrecondition && /is Scheduled; restart needs Running/.test(ce.rawMessage);
      });
      const started = (await instances.startInstance({ name: "big-one" })).instance!;
      assert.equal(started.spec?.desiredPowerState, PowerState.RUNNING);
      assert.equal(started.generation, gen + 1n);
    });

    it("stop timeouts and log tails have a maximum, and a refusal changes nothing", async () => {
      // The instance's own record, not the store revision: the leader's controllers write too.
      const rev = (await store.get(keys.instance("default/big-one")))!.modRevision;
      for (const timeoutSeconds of [3601, 4_294_967_295])
        await assert.rejects(instances.stopInstance({ name: "big-one", timeoutSeconds }), (e: unknown) => {
          const ce = ConnectError.from(e);
          assert.equal(ce.code, Code.InvalidArgument, ce.message);
          assert.equal(ce.rawMessage, `timeout_seconds: ${timeoutSeconds} is more than the maximum of 3600 seconds (an hour)`);
          return true;
        });
      await assert.rejects(
        (async () => {
          for await (const _ of instances.getInstanceLogs({ name: "big-one", tailBytes: 1n << 40n })) void _;
        })(),
        (e: unknown) => {
          const ce = ConnectError.from(e);
          assert.equal(ce.code, Code.InvalidArgument, ce.message);
          assert.match(ce.rawMessage, /^tail_bytes: 1099511627776 is more than the maximum of 1073741824 bytes/);
          return true;
        },
      );
      assert.equal((await store.get(keys.instance("default/big-one")))!.modRevision, rev, "a refused stop wrote the instance");
      const stopped = (await instances.stopInstance({ name: "big-one", timeoutSeconds: 3600 })).instance!;
      assert.equal(stopped.labels["hypervisor.io/stop-timeout-seconds"], "3600");
      await instances.startInstance({ name: "big-one" });
    });

    it("set-memory and logs check the size and the driver's capabilities, changing nothing when refused", async () => {
      const before = (await instances.getInstance({ name: "big-one" })).instance!;
      await assert.rejects(instances.setInstanceMemory({ name: "big-one", memoryMib: 8n }), (e: unknown) => {
        const ce = ConnectError.from(e);
        return (
          ce.code === Code.InvalidArgument && ce.rawMessage === "memory_mib: 8 must be 0 (all memory) or from 16 to the instance's 2048 MiB"
        );
      });
      await assert.rejects(instances.setInstanceMemory({ name: "big-one", memoryMib: 1024n }), (e: unknown) => {
        const ce = ConnectError.from(e);
        return (
          ce.code === Code.FailedPrecondition && ce.rawMessage === "driver mock has no memory balloon on node large; set-memory needs one"
        );
      });
      await assert.rejects(
        (async () => {
          for await (const _ of instances.getInstanceLogs({ name: "big-one" })) void _;
        })(),
        (e: unknown) =>
          ConnectError.from(e).code === Code.FailedPrecondition && /driver mock keeps no console log/.test(ConnectError.from(e).rawMessage),
      );
      const after = (await instances.getInstance({ name: "big-one" })).instance!;
      assert.equal(after.generation, before.generation);
      assert.equal(after.spec?.memoryTargetMib, 0n);
    });

    it("image import checks its target before taking any bytes; list checks its filters", async () => {
      const images = createClient(ImageService, createConnectTransport({ baseUrl: server.url, httpVersion: "2" }));
      const refused = async (parts: ImportImageRequest["part"][], code: Code, message: RegExp) =>
        assert.rejects(
          images.importImage(
            (async function* () {
              for (const part of parts) yield create(ImportImageRequestSchema, { part });
            })(),
          ),
          (e: unknown) => ConnectError.from(e).code === code && message.test(ConnectError.from(e).rawMessage),
        );
      const chunk = { case: "chunk" as const, value: new Uint8Array(10) };
      const target = (t: { driver?: string; nodes?: string[]; allNodes?: boolean }) => ({
        case: "target" as const,
        value: create(ImportTargetSchema, t),
      });
      await refused([chunk], Code.InvalidArgument, /^target: the first message must name where the image goes$/);
      await refused([], Code.InvalidArgument, /^target: the first message must name where the image goes$/);
      await refused(
        [target({ nodes: ["large"], allNodes: true }), chunk],
        Code.InvalidArgument,
        /name nodes or ask for all_nodes, not both/,
      );
      await refused([target({}), chunk], Code.InvalidArgument, /target.nodes: name at least one node, or ask for all_nodes/);
      await refused([target({ nodes: ["Bad/Name"] })], Code.InvalidArgument, /target.nodes/);
      await refused([target({ nodes: ["nowhere"] }), chunk], Code.NotFound, /node "nowhere" not found/);
      await refused([target({ nodes: ["large"] }), chunk], Code.FailedPrecondition, /node large has no driver containerd/);
      await refused([target({ allNodes: true }), chunk], Code.FailedPrecondition, /no Ready node has driver containerd healthy/);
      await refused([target({ driver: "Mock!", nodes: ["large"] })], Code.InvalidArgument, /target.driver: "Mock!" is not a driver name/);
      // A node whose containerd keeps images: targets that pass, for the checks that come after.
      const imgNode = create(NodeSchema, { name: "img-node", drivers: [{ name: "containerd", healthy: true }], capacity: { vcpus: 1 } });
      await store.put(keys.node("img-node"), toBinary(NodeSchema, imgNode));
      await store.put(keys.alive("img-node"), new Uint8Array([1]));
      await until("the node in the informer", () => server.ctx.informers.alive.get(keys.alive("img-node")) !== undefined);
      await refused([target({ nodes: ["img-node"] }), target({ nodes: ["img-node"] })], Code.InvalidArgument, /target: sent twice/);
      await refused([target({ nodes: ["img-node"] })], Code.InvalidArgument, /chunk: the image tarball is empty/);
      await refused(
        [target({ nodes: ["large"], driver: "mock" }), chunk],
        Code.InvalidArgument,
        /target.driver: "mock" keeps no images \(drivers that do: containerd\)/,
      );
      await store.delete(keys.node("img-node"));
      await store.delete(keys.alive("img-node"));
      await until("the node gone from the informer", () => server.ctx.informers.nodes.get(keys.node("img-node")) === undefined);
      await assert.rejects(images.listImages({ node: "nowhere" }), (e: unknown) => ConnectError.from(e).code === Code.NotFound);
      await assert.rejects(images.listImages({ driver: "x y" }), (e: unknown) => ConnectError.from(e).code === Code.InvalidArgument);
      // Nodes without an agent endpoint are reported, not fatal.
      const listed = await images.listImages({});
      assert.deepEqual(listed.images, []);
      assert.match(listed.unreachable["large"] ?? "", /publishes no endpoint/);
    });

    it("watch sends the current list, a SYNCED marker, then changes", async () => {
      const ac = new AbortController();
      const seen: { type: EventType; name: string }[] = [];
      const done = (async () => {
        for await (const ev of instances.watchInstances({}, { signal: ac.signal })) {
          seen.push({ type: ev.type, name: ev.instance?.name ?? "" });
          if (ev.type === EventType.DELETED && ev.instance?.name === "watched") ac.abort();
        }
      })().catch((e: unknown) => {
        if (!ac.signal.aborted) throw e;
      });
      await until("synced", async () => seen.some((e) => e.type === EventType.SYNCED));
      assert.deepEqual(seen.slice(0, 2), [
        { type: EventType.ADDED, name: "big-one" },
        { type: EventType.SYNCED, name: "" },
      ]);
      await instances.createInstance({ name: "watched", spec: { driver: "mock", vcpus: 64, memoryMib: 1n } });
      await until("added", async () => seen.some((e) => e.type === EventType.ADDED && e.name === "watched"));
      await instances.deleteInstance({ name: "watched" });
      await done;
      assert.ok(seen.some((e) => e.type === EventType.DELETED && e.name === "watched"));
    });

    it("watch follows every status the agent writes, however quickly they follow each other", async () => {
      const ac = new AbortController();
      const phases: Phase[] = [];
      const done = (async () => {
        for await (const ev of instances.watchInstances({ filter: { node: "large" } }, { signal: ac.signal })) {
          if (ev.instance?.name === "big-one") phases.push(ev.instance.status?.phase ?? Phase.UNSPECIFIED);
        }
      })().catch((e: unknown) => {
        if (!ac.signal.aborted) throw e;
      });
      await until("initial state", async () => phases.length > 0);
      const uid = (await instances.getInstance({ name: "big-one" })).instance!.uid;
      // Back to back, as an agent does when a start is quick: Creating, then Running.
      for (const phase of [Phase.CREATING, Phase.RUNNING])
        await store.put(
          keys.status("large", "default/big-one"),
          toBinary(InstanceSchema, create(InstanceSchema, { name: "big-one", uid, status: { phase, node: "large" } })),
        );
      await until("the watch delivers Running", () => phases.at(-1) === Phase.RUNNING, 20_000);
      ac.abort();
      await done;
      assert.deepEqual(phases.slice(-2), [Phase.CREATING, Phase.RUNNING]);
      const listed = (await instances.getInstance({ name: "big-one" })).instance!;
      assert.equal(listed.status?.phase, Phase.RUNNING);
    });

    it("delete of a placed instance waits for its agent, then the GC releases the node", async () => {
      const del = (await instances.deleteInstance({ name: "big-one" })).instance!;
      assert.ok(del.deleteTime, "delete_time set");
      await assert.rejects(
        instances.startInstance({ name: "big-one" }),
        (e: unknown) => ConnectError.from(e).code === Code.FailedPrecondition,
      );
      // Still there: no agent has dropped the assignment yet.
      assert.ok(await store.get(keys.instance("default/big-one")));
      // Play the agent's part: it destroyed the instance and drops its assignment.
      await store.delete(keys.assignment("large", "default/big-one"));
      await until("record removed", async () => (await store.get(keys.instance("default/big-one"))) === undefined);
      const node = await until("allocation released", async () => {
        const n = (await nodes.getNode({ name: "large" })).node!;
        return n.instanceCount === 0 ? n : undefined;
      });
      assert.equal(node.allocatable?.vcpus, 8);
    });

    it("cordon keeps new instances off a node; drain stops what runs there", async () => {
      await nodes.cordonNode({ name: "large" });
      await instances.createInstance({ name: "after-cordon", spec: { driver: "mock", vcpus: 1, memoryMib: 512n } });
      const i = await until("placed on small", async () => {
        const x = (await instances.getInstance({ name: "after-cordon" })).instance!;
        return x.status?.node ? x : undefined;
      });
      assert.equal(i.status?.node, "small");
      const drained = await nodes.drainNode({ name: "small" });
      assert.ok(drained.node?.cordoned);
      assert.deepEqual(drained.stoppedInstances, ["after-cordon"]);
      assert.equal((await instances.getInstance({ name: "after-cordon" })).instance?.spec?.desiredPowerState, PowerState.STOPPED);
      await nodes.uncordonNode({ name: "large" });
      assert.equal((await nodes.getNode({ name: "large" })).node?.cordoned, false);
      await assert.rejects(nodes.cordonNode({ name: "ghost" }), (e: unknown) => ConnectError.from(e).code === Code.NotFound);
    });

    it("lists the orphans a node's agent reports, adopts one back onto its node, and refuses what it cannot do", async () => {
      const nodesBefore = (await createClient(ClusterService, transport).getCounts({})).nodes;
      const id = fromBinary(ClusterIdentitySchema, (await store.get(keys.cluster))!.value).id;
      assert.ok(id);
      assert.equal(server.clusterId, id, "made once at the first start, in the store");
      await addNode(store, "orph-1", 8, 8192);
      await addNode(store, "orph-2", 8, 8192);
      const orphan = (node: string, over: { uid?: string; reason?: OrphanReason; placedNode?: string; state?: string } = {}) =>
        store.put(
          keys.orphan(node, "default/lost-1"),
          toBinary(
            OrphanSchema,
            create(OrphanSchema, {
              name: "lost-1",
              uid: "u-lost-1",
              driver: "mock",
              state: "running",
              reason: OrphanReason.UNKNOWN,
              localDisk: true,
              spec: { driver: "mock", vcpus: 2, memoryMib: 128n },
              labels: { app: "db" },
              ...over,
            }),
          ),
        );
      const code = (c: Code, re?: RegExp) => (e: unknown) =>
        ConnectError.from(e).code === c && (!re || re.test(ConnectError.from(e).rawMessage));
      // The store forgot it (restored from an older backup): its agent kept it and reports it.
      await orphan("orph-1");
      const listed = (await nodes.listOrphans({ node: "orph-1" })).orphans;
      assert.deepEqual(
        listed.map((o) => [o.name, o.uid, o.localDisk]),
        [["lost-1", "u-lost-1", true]],
      );
      await assert.rejects(nodes.listOrphans({ node: "ghost" }), code(Code.NotFound, /node "?ghost"? not found/));
      await assert.rejects(nodes.listOrphans({ node: "Bad_Name" }), code(Code.InvalidArgument, /^node/));
      await assert.rejects(nodes.adoptOrphan({ node: "orph-1", name: "nope" }), code(Code.NotFound, /reports no orphan nope/));

      const adopted = (await nodes.adoptOrphan({ node: "orph-1", name: "lost-1" })).instance!;
      assert.equal(adopted.uid, "u-lost-1", "the orphan's own uid: its agent adopts it as it is");
      assert.equal(adopted.status?.node, "orph-1");
      assert.equal(adopted.status?.phase, Phase.SCHEDULED);
      assert.equal(adopted.spec?.vcpus, 2);
      assert.equal(adopted.spec?.desiredPowerState, PowerState.RUNNING);
      assert.equal(adopted.labels.app, "db");
      const assignment = await store.get(keys.assignment("orph-1", "default/lost-1"));
      assert.equal(assignment && fromBinary(AssignmentSchema, assignment.value).instance?.uid, "u-lost-1");
      assert.equal((await nodes.getNode({ name: "orph-1" })).node?.instanceCount, 1, "its resources are reserved there");
      const again = (await nodes.adoptOrphan({ node: "orph-1", name: "lost-1" })).instance!;
      assert.equal(again.status?.node, "orph-1", "adopting twice changes nothing");

      // Its copy on orph-2 (fenced there) adopted instead: the placement moves, orph-1 is released.
      await orphan("orph-2", { reason: OrphanReason.FENCED, placedNode: "orph-1", state: "stopped" });
      const moved = (await nodes.adoptOrphan({ node: "orph-2", name: "lost-1" })).instance!;
      assert.equal(moved.status?.node, "orph-2");
      assert.equal(await store.get(keys.assignment("orph-1", "default/lost-1")), undefined);
      assert.ok(await store.get(keys.assignment("orph-2", "default/lost-1")));
      assert.equal((await nodes.getNode({ name: "orph-1" })).node?.instanceCount, 0);
      assert.equal((await nodes.getNode({ name: "orph-2" })).node?.instanceCount, 1);

      // An orphan of another uid under a name the cluster uses: refused, nothing written.
      await orphan("orph-1", { uid: "u-other" });
      const rev = (await store.get(keys.instance("default/lost-1")))!.modRevision;
      await assert.rejects(nodes.adoptOrphan({ node: "orph-1", name: "lost-1" }), code(Code.FailedPrecondition, /exists with another uid/));
      assert.equal((await store.get(keys.instance("default/lost-1")))!.modRevision, rev);
      // Purge goes through the node's agent: none runs here.
      await assert.rejects(nodes.purgeOrphan({ node: "orph-1", name: "lost-1" }), code(Code.Unavailable, /publishes no endpoint/));
      await assert.rejects(nodes.purgeOrphan({ node: "orph-1", name: "nope" }), code(Code.NotFound));

      // Leave nothing behind: delete it and play its agent's part.
      await instances.deleteInstance({ name: "lost-1" });
      await store.delete(keys.assignment("orph-2", "default/lost-1"));
      await until("lost-1 gone", async () => !(await store.get(keys.instance("default/lost-1"))));
      for (const n of ["orph-1", "orph-2"]) {
        await store.delete(keys.orphan(n, "default/lost-1"));
        await store.delete(keys.node(n));
        await store.delete(keys.alive(n));
      }
      await until(
        "the nodes gone from the counts",
        async () => (await createClient(ClusterService, transport).getCounts({})).nodes === nodesBefore,
      );
    });

    it("explains why an instance whose disk is local stays on its lost node, and moves one declared ephemeral", async () => {
      const nodesBefore = (await createClient(ClusterService, transport).getCounts({})).nodes;
      const node = create(NodeSchema, {
        name: "vmhost-1",
        capacity: { vcpus: 4, memoryMib: 4096n, diskGib: 100n },
        drivers: [{ name: "libvirt", healthy: true }],
      });
      await store.put(keys.node("vmhost-1"), toBinary(NodeSchema, node));
      await store.put(keys.alive("vmhost-1"), new Uint8Array([1]));
      const vm = (name: string, ephemeralDisks: boolean) =>
        instances.createInstance({ name, spec: { driver: "libvirt", image: "alpine.qcow2", vcpus: 1, memoryMib: 64n, ephemeralDisks } });
      await vm("vm-local", false);
      await vm("vm-scratch", true);
      for (const n of ["vm-local", "vm-scratch"])
        await until(`${n} placed`, async () => (await instances.getInstance({ name: n })).instance?.status?.node === "vmhost-1");
      assert.doesNotMatch((await instances.explainInstance({ name: "vm-local" })).summary, /not moved/);
      await store.delete(keys.alive("vmhost-1")); // the node is lost
      const local = await until("vm-local's reason", async () => {
        const s = (await instances.explainInstance({ name: "vm-local" })).summary;
        return /NotReady/.test(s) ? s : undefined;
      });
      assert.match(local, /^placed on vmhost-1, which is NotReady: not moved, its disk is local to node vmhost-1 .*ephemeral_disks/);
      assert.doesNotMatch((await instances.explainInstance({ name: "vm-scratch" })).summary, /not moved/);
      for (const n of ["vm-local", "vm-scratch"]) {
        await instances.deleteInstance({ name: n });
        await store.delete(keys.assignment("vmhost-1", `default/${n}`));
      }
      await until(
        "both gone",
        async () => !(await store.get(keys.instance("default/vm-local"))) && !(await store.get(keys.instance("default/vm-scratch"))),
      );
      await store.delete(keys.node("vmhost-1"));
      await until(
        "the node gone from the counts",
        async () => (await createClient(ClusterService, transport).getCounts({})).nodes === nodesBefore,
      );
    });

    it("handlers work through an in-memory router transport too", async () => {
      const t = createRouterTransport(server.routes);
      const list = await createClient(InstanceService, t).listInstances({ filter: { node: "small" } });
      assert.deepEqual(
        list.instances.map((i) => i.name),
        ["after-cordon"],
      );
      const counts = await createClient(ClusterService, t).getCounts({});
      assert.equal(counts.nodes, 2);
      assert.equal(counts.nodesReady, 2);
    });

    it("/metrics counts instances by phase as GetCounts does", async () => {
      const counts = await createClient(ClusterService, transport).getCounts({});
      const m = await (await fetch(`${server.url}/metrics`)).text();
      const gauge = Object.fromEntries(
        [...m.matchAll(/^hypervisor_instances\{phase="(\w+)"\} (\d+)$/gm)].map((x) => [x[1]!, Number(x[2])]),
      );
      assert.ok(Object.keys(gauge).length > 0, "the gauge has series");
      assert.deepEqual(gauge, counts.instancesByPhase);
    });
  });
