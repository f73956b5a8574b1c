// The containerd client against a real containerd (scripts/start-containerd.sh), in a namespace of
// its own that is emptied and deleted afterwards. ctr is not used: each check reads back through
// the API what the previous call changed.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { busyboxImage, ensureContainerd } from "../../../test/support/containerd.js";
import { until } from "../../../test/support/procs.js";
import { create } from "@bufbuild/protobuf";
import { TaskExitSchema } from "./gen/containerd/events/task_pb.js";
import { OptionsSchema } from "./gen/containerd/runc/options/oci_pb.js";
import { Status } from "./gen/containerd/types/task/task_pb.js";
import {
  ContainerdClient,
  LEASE_EXPIRE_LABEL,
  isAlreadyExists,
  isFailedPrecondition,
  isNotFound,
  packJson,
  packMessage,
  sha256Digest,
  unpackEvent,
  unpackJson,
  unpackMessage,
  TypeUrlError,
  type ContainerdEvent,
} from "./index.js";

const run = promisify(execFile);
const NS = `hvtest-client-${process.pid}`;
const RUNTIME = "io.containerd.runc.v2";
const SNAPSHOTTER = "overlayfs";

let client: ContainerdClient;

/** Empties the namespace (tasks, containers, snapshots, content, leases) and deletes it. */
async function deleteNamespace(c: ContainerdClient): Promise<void> {
  const { containers } = await c.containers.list({});
  for (const { id } of containers) {
    await c.tasks.kill({ containerId: id, signal: 9 }).catch(() => undefined);
    await until(
      `task ${id} deleted`,
      async () =>
        c.tasks.delete({ containerId: id }).then(
          () => true,
          (e: unknown) => isNotFound(e),
        ),
      10_000,
    );
    await c.containers.delete({ id });
  }
  for (const { id } of (await c.leases.list({})).leases) await c.leases.delete({ id, sync: true });
  // A parent cannot go before its children: repeat until nothing is left.
  await until(
    "snapshots removed",
    async () => {
      const left: string[] = [];
      for await (const r of c.snapshots.list({ snapshotter: SNAPSHOTTER })) left.push(...r.info.map((i) => i.name));
      for (const key of left) await c.snapshots.remove({ snapshotter: SNAPSHOTTER, key }).catch(() => undefined);
      return left.length === 0;
    },
    20_000,
  );
  for await (const r of c.content.list({})) {
    for (const { digest } of r.info) await c.content.delete({ digest }).catch((e: unknown) => assert.ok(isNotFound(e), String(e)));
  }
  await until(
    `namespace ${c.namespace} deleted`,
    async () =>
      c.namespaces.delete({ name: c.namespace }).then(
        () => true,
        (e: unknown) => isNotFound(e),
      ),
    20_000,
  );
}

/** A minimal OCI runtime spec for runc: the command in a fresh set of namespaces. */
function runtimeSpec(id: string, args: string[]): object {
  return {
    ociVersion: "1.0.2",
    process: {
      terminal: false,
      user: { uid: 0, gid: 0 },
      args,
      env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
      cwd: "/",
      noNewPrivileges: true,
    },
    root: { path: "rootfs" },
    hostname: id,
    mounts: [
      { destination: "/proc", type: "proc", source: "proc", options: ["nosuid", "noexec", "nodev"] },
      { destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid", "strictatime", "mode=755", "size=65536k"] },
      { destination: "/sys", type: "sysfs", source: "sysfs", options: ["nosuid", "noexec", "nodev", "ro"] },
    ],
    linux: {
      namespaces: [{ type: "pid" }, { type: "ipc" }, { type: "uts" }, { type: "mount" }, { type: "network" }],
      // One level (ctr uses /<namespace>/<id>): runc removes the leaf on delete, and with no
      // parent of ours nothing is left behind in the cgroup hierarchies.
      cgroupsPath: `/${NS}-${id}`,
      resources: { devices: [{ allow: false, access: "rwm" }] },
    },
  };
}

/** Opens a subscription and repeats `act` until an event matching `match` arrives. */
async function awaitEvent<T extends ContainerdEvent>(
  filters: string[],
  act: (attempt: number) => Promise<void>,
  match: (e: ContainerdEvent, topic: string, namespace: string) => e is T,
): Promise<{ event: T; topic: string; namespace: string }> {
  const ac = new AbortController();
  const stream = client.events.subscribe({ filters }, { signal: ac.signal });
  const found = (async () => {
    for await (const env of stream) {
      const e = unpackEvent(env.event);
      if (e && match(e, env.topic, env.namespace)) return { event: e, topic: env.topic, namespace: env.namespace };
    }
    throw new Error("event stream ended");
  })();
  // The server registers the subscriber asynchronously and sends nothing until the first event,
  // so the action is repeated until one is seen.
  let done = false;
  const result = found.finally(() => (done = true));
  let timer: NodeJS.Timeout | undefined;
  const pause = (ms: number) => new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)));
  try {
    for (let attempt = 0; attempt < 20 && !done; attempt++) {
      await act(attempt);
      await Promise.race([result, pause(500)]);
      clearTimeout(timer);
    }
    if (!done) throw new Error(`no event for ${filters.join(" | ")}`);
    return await result;
  } finally {
    clearTimeout(timer);
    ac.abort();
    await found.catch(() => undefined);
  }
}

interface OciDescriptor {
  mediaType: string;
  digest: string;
  size: number;
}

const readJson = async (path: string): Promise<unknown> => JSON.parse(await readFile(path, "utf8")) as unknown;
const blobPath = (layout: string, digest: string) => join(layout, "blobs", digest.replace(":", "/"));

async function snapshotExists(c: ContainerdClient, key: string): Promise<boolean> {
  try {
    await c.snapshots.stat({ snapshotter: SNAPSHOTTER, key });
    return true;
  } catch (e) {
    if (isNotFound(e)) return false;
    throw e;
  }
}

/**
 * Unpacks an OCI layout's image into committed snapshots the way `ctr image import` does (layer
 * blobs into content, then Diff.Apply onto a prepared snapshot, committed under its chain ID) and
 * resolves with the top chain ID. Needs a lease on `c`.
 */
async function unpackLayers(c: ContainerdClient, layout: string): Promise<string> {
  const index = (await readJson(join(layout, "index.json"))) as { manifests: OciDescriptor[] };
  const manifest = (await readJson(blobPath(layout, index.manifests[0]!.digest))) as { config: OciDescriptor; layers: OciDescriptor[] };
  const config = (await readJson(blobPath(layout, manifest.config.digest))) as { rootfs: { diff_ids: string[] } };
  let chain = "";
  for (const [i, layer] of manifest.layers.entries()) {
    const diffId = config.rootfs.diff_ids[i]!;
    const parent = chain;
    chain = parent === "" ? diffId : sha256Digest(new TextEncoder().encode(`${parent} ${diffId}`));
    if (await snapshotExists(c, chain)) continue;
    const blob = await readFile(blobPath(layout, layer.digest));
    await c.writeContent(`layer-${layer.digest}`, blob, { expected: layer.digest });
    const key = `extract-${Date.now()} ${chain}`;
    const { mounts } = await c.snapshots.prepare({ snapshotter: SNAPSHOTTER, key, parent });
    const { applied } = await c.diff.apply({
      diff: { mediaType: layer.mediaType, digest: layer.digest, size: BigInt(layer.size) },
      mounts,
    });
    assert.equal(applied?.digest, diffId, "Diff.Apply reports the uncompressed digest, the layer's diff ID");
    await c.snapshots.commit({ snapshotter: SNAPSHOTTER, name: chain, key });
  }
  return chain;
}

describe("containerd client", { timeout: 180_000 }, () => {
  before(async () => {
    client = new ContainerdClient({ socketPath: await ensureContainerd(), namespace: NS });
  });

  after(async () => {
    if (!client) return;
    try {
      await deleteNamespace(client);
    } finally {
      client.close();
    }
  });

  it("reports the daemon's version", async () => {
    const { version, revision } = await client.version();
    assert.match(version, /^v?\d+\.\d+\./);
    assert.notEqual(revision, "");
  });

  it("creates a namespace with labels, idempotently, and gets it", async () => {
    await client.ensureNamespace({ "hypervisor.dev/test": "client" });
    await client.ensureNamespace({ "hypervisor.dev/test": "client" });
    const { namespace } = await client.namespaces.get({ name: NS });
    assert.equal(namespace?.name, NS);
    assert.deepEqual(namespace?.labels, { "hypervisor.dev/test": "client" });
    await assert.rejects(client.namespaces.create({ namespace: { name: NS } }), isAlreadyExists);
    assert.ok((await client.namespaces.list({})).namespaces.some((n) => n.name === NS));
    // containerd 1.6 answers Get for a namespace that does not exist with OK and no labels, so
    // existence is read from List; Delete does report NotFound.
    const missing = `${NS}-missing`;
    assert.deepEqual((await client.namespaces.get({ name: missing })).namespace?.labels, {});
    assert.ok(!(await client.namespaces.list({})).namespaces.some((n) => n.name === missing));
    await assert.rejects(client.namespaces.delete({ name: missing }), isNotFound);
  });

  it("holds a lease for the duration of a callback and sends it on calls", async () => {
    let leaseId = "";
    const blob = new TextEncoder().encode(`leased blob ${NS}`);
    await client.withTemporaryLease(async (leased) => {
      leaseId = leased.lease!;
      assert.equal(leased.namespace, NS);
      const { leases } = await client.leases.list({ filters: [`id==${leaseId}`] });
      assert.equal(leases.length, 1);
      const expires = Date.parse(leases[0]!.labels[LEASE_EXPIRE_LABEL] ?? "");
      assert.ok(expires > Date.now() + 23 * 3600_000, `expiry label ${leases[0]!.labels[LEASE_EXPIRE_LABEL]}`);
      await leased.writeContent(`lease-${NS}`, blob, { expected: sha256Digest(blob) });
    });
    assert.notEqual(leaseId, "");
    assert.deepEqual((await client.leases.list({ filters: [`id==${leaseId}`] })).leases, []);
    await assert.rejects(client.leases.delete({ id: leaseId }), isNotFound);
  });

  it("writes content through the bidirectional stream and refuses a wrong digest", async () => {
    await client.withTemporaryLease(async (leased) => {
      const small = new TextEncoder().encode("hello, containerd");
      const written = await leased.writeContent(`small-${NS}`, small, {
        expected: sha256Digest(small),
        labels: { "hypervisor.dev/kind": "test" },
      });
      assert.deepEqual(written, { digest: sha256Digest(small), size: BigInt(small.length), created: true });
      const { info } = await leased.content.info({ digest: sha256Digest(small) });
      assert.equal(info?.digest, sha256Digest(small));
      assert.equal(info?.size, BigInt(small.length));
      assert.equal(info?.labels["hypervisor.dev/kind"], "test");

      // Already stored: containerd answers ALREADY_EXISTS, which the helper reports as success.
      assert.deepEqual(await leased.writeContent(`again-${NS}`, small, { expected: sha256Digest(small) }), { ...written, created: false });

      // Larger than one chunk (1 MiB): several WRITE round trips before the COMMIT.
      const big = new Uint8Array(2.5 * (1 << 20)).map((_, i) => (i * 31) % 251);
      const bigWritten = await leased.writeContent(`big-${NS}`, big, { expected: sha256Digest(big) });
      assert.equal(bigWritten.size, BigInt(big.length));
      const chunks: Uint8Array[] = [];
      for await (const r of leased.content.read({ digest: sha256Digest(big) })) chunks.push(r.data);
      assert.equal(sha256Digest(Buffer.concat(chunks)), sha256Digest(big));

      const wrongDigest = sha256Digest(new TextEncoder().encode("something else"));
      const other = new TextEncoder().encode("not what was announced");
      await assert.rejects(leased.writeContent(`wrong-${NS}`, other, { expected: wrongDigest }), (e: unknown) => {
        assert.ok(isFailedPrecondition(e), String(e));
        assert.match(String(e), /content write wrong-.*unexpected commit digest sha256:[0-9a-f]{64}, expected sha256:[0-9a-f]{64}/);
        return true;
      });
      await assert.rejects(leased.content.info({ digest: wrongDigest }), isNotFound);
      await assert.rejects(leased.content.info({ digest: sha256Digest(other) }), isNotFound);
      // The failed ingest was aborted: the ref is free for a correct write.
      assert.equal((await leased.writeContent(`wrong-${NS}`, other, { expected: sha256Digest(other) })).created, true);
    });
  });

  it("creates, lists, updates and deletes containers carrying a JSON spec and runc options", async () => {
    const id = `ctr-${process.pid}`;
    const spec = runtimeSpec(id, ["/bin/true"]);
    const options = create(OptionsSchema, { binaryName: "runc", systemdCgroup: false });
    const { container } = await client.containers.create({
      container: {
        id,
        labels: { "hypervisor.dev/suite": "client", "hypervisor.dev/instance": id },
        runtime: { name: RUNTIME, options: packMessage(OptionsSchema, options) },
        spec: packJson(spec),
      },
    });
    assert.equal(container?.id, id);
    assert.ok(container?.createdAt, "createdAt set by the server");

    const got = (await client.containers.get({ id })).container!;
    assert.deepEqual(unpackJson(got.spec!), spec);
    assert.equal(got.spec!.typeUrl, "types.containerd.io/opencontainers/runtime-spec/1/Spec");
    assert.equal(got.runtime?.name, RUNTIME);
    assert.equal(got.runtime?.options?.typeUrl, "containerd.runc.v1.Options");
    assert.equal(unpackMessage(OptionsSchema, got.runtime.options).binaryName, "runc");
    assert.equal(got.labels["hypervisor.dev/instance"], id);

    const listed = await client.containers.list({ filters: [`labels."hypervisor.dev/instance"==${id}`] });
    assert.deepEqual(
      listed.containers.map((c) => c.id),
      [id],
    );
    assert.deepEqual((await client.containers.list({ filters: ['labels."hypervisor.dev/instance"==nobody'] })).containers, []);

    const updated = await client.containers.update({
      container: { id, labels: { "hypervisor.dev/phase": "updated" } },
      updateMask: { paths: ["labels.hypervisor.dev/phase"] },
    });
    assert.equal(updated.container?.labels["hypervisor.dev/phase"], "updated");
    assert.equal(updated.container?.labels["hypervisor.dev/instance"], id, "a masked update keeps other labels");

    await assert.rejects(
      client.containers.create({ container: { id, runtime: { name: RUNTIME }, spec: packJson(spec) } }),
      isAlreadyExists,
    );
    await client.containers.delete({ id });
    await assert.rejects(client.containers.get({ id }), isNotFound);
    await assert.rejects(client.containers.delete({ id }), isNotFound);
  });

  it("receives the /containers/create event for a container it creates", async () => {
    const created: string[] = [];
    const { event, topic, namespace } = await awaitEvent(
      [`namespace==${NS},topic=="/containers/create"`],
      async (attempt) => {
        const id = `evt-${process.pid}-${attempt}`;
        await client.containers.create({ container: { id, runtime: { name: RUNTIME }, spec: packJson(runtimeSpec(id, ["/bin/true"])) } });
        created.push(id);
      },
      (e): e is Extract<ContainerdEvent, { type: "containerd.events.ContainerCreate" }> => e.type === "containerd.events.ContainerCreate",
    );
    assert.equal(topic, "/containers/create");
    assert.equal(namespace, NS);
    assert.ok(created.includes(event.event.id), `event for ${event.event.id}, created ${created.join(",")}`);
    assert.equal(event.event.runtime?.name, RUNTIME);
    for (const id of created) await client.containers.delete({ id });
  });

  it("maps missing objects to NotFound across services", async () => {
    const missing = `missing-${process.pid}`;
    const calls: Array<[string, () => Promise<unknown>]> = [
      ["containers.get", () => client.containers.get({ id: missing })],
      ["images.get", () => client.images.get({ name: `example.com/${missing}:latest` })],
      ["tasks.get", () => client.tasks.get({ containerId: missing })],
      ["snapshots.stat", () => client.snapshots.stat({ snapshotter: SNAPSHOTTER, key: missing })],
      ["content.info", () => client.content.info({ digest: sha256Digest(new TextEncoder().encode(missing)) })],
      ["leases.delete", () => client.leases.delete({ id: missing })],
    ];
    for (const [name, call] of calls) {
      await assert.rejects(call(), (e: unknown) => {
        assert.ok(isNotFound(e), `${name}: ${String(e)}`);
        assert.ok(!isAlreadyExists(e) && !isFailedPrecondition(e), name);
        return true;
      });
    }
    assert.equal(isNotFound(new Error("not found")), false, "only ConnectErrors carry codes");
  });

  it("runs a task from a busybox layer applied with Diff.Apply, then kills, waits and deletes it", async () => {
    const image = await busyboxImage();
    const dir = await mkdtemp(join(tmpdir(), "hvtest-client-"));
    const id = `task-${process.pid}`;
    const events: Array<{ topic: string; event: ContainerdEvent }> = [];
    const ac = new AbortController();
    // Opened first: by the time the task exists (after the unpack) the subscription is registered.
    const collecting = (async () => {
      for await (const env of client.events.subscribe({ filters: [`namespace==${NS},topic~="^/tasks/"`] }, { signal: ac.signal })) {
        const event = unpackEvent(env.event);
        if (event) events.push({ topic: env.topic, event });
      }
    })().catch(() => undefined);
    try {
      await run("tar", ["-xf", image.file, "-C", dir]);
      await client.withTemporaryLease(async (leased) => {
        const top = await unpackLayers(leased, dir);
        assert.equal((await leased.snapshots.stat({ snapshotter: SNAPSHOTTER, key: top })).info?.name, top);
        await leased.snapshots.prepare({ snapshotter: SNAPSHOTTER, key: id, parent: top });
        await leased.containers.create({
          container: {
            id,
            image: image.ref,
            runtime: { name: RUNTIME, options: packMessage(OptionsSchema, create(OptionsSchema)) },
            spec: packJson(runtimeSpec(id, ["/bin/sh", "-c", "echo hello from $(hostname); exec sleep 300"])),
            snapshotter: SNAPSHOTTER,
            snapshotKey: id,
          },
        });
      });

      const { mounts } = await client.snapshots.mounts({ snapshotter: SNAPSHOTTER, key: id });
      const log = join(dir, "stdio.log");
      const created = await client.tasks.create({ containerId: id, rootfs: mounts, stdout: `file://${log}`, stderr: `file://${log}` });
      assert.ok(created.pid > 0);
      assert.equal((await client.tasks.get({ containerId: id })).process?.status, Status.CREATED);

      const waited = client.tasks.wait({ containerId: id }); // blocks until exit: issued before Start
      const { pid } = await client.tasks.start({ containerId: id });
      assert.equal(pid, created.pid);
      await until(
        "the task's output in the log file",
        async () => (await readFile(log, "utf8").catch(() => "")).includes(`hello from ${id}`),
        20_000,
      );
      const running = (await client.tasks.get({ containerId: id })).process!;
      assert.equal(running.status, Status.RUNNING);
      assert.equal(running.pid, pid);
      // containerd 1.6 fills Process.id (with the container's id) but not container_id in List.
      assert.deepEqual(
        (await client.tasks.list({})).tasks.map((t) => t.id),
        [id],
      );
      const { metrics } = await client.tasks.metrics({ filters: [`id==${id}`] });
      assert.equal(metrics.length, 1);
      assert.match(metrics[0]!.data?.typeUrl ?? "", /^io\.containerd\.cgroups\.v[12]\.Metrics$/);

      // Deleting a running task is refused, but 1.6 reports it as UNKNOWN (the shim's error over
      // ttrpc loses its code), not FAILED_PRECONDITION: only the message says why.
      await assert.rejects(client.tasks.delete({ containerId: id }), /cannot delete a running process/);
      await client.tasks.kill({ containerId: id, signal: 9 });
      assert.equal((await waited).exitStatus, 128 + 9);
      const deleted = await client.tasks.delete({ containerId: id });
      assert.equal(deleted.exitStatus, 128 + 9);
      assert.equal(deleted.pid, pid);
      await assert.rejects(client.tasks.get({ containerId: id }), isNotFound);

      await until(
        "task events",
        () => ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"].every((t) => events.some((e) => e.topic === t)),
        10_000,
      );
      const exit = events.find((e) => e.event.type === "containerd.events.TaskExit")?.event;
      assert.ok(exit?.type === "containerd.events.TaskExit");
      assert.equal(exit.event.containerId, id);
      assert.equal(exit.event.pid, pid);
      assert.equal(exit.event.exitStatus, 137);
      const start = events.find((e) => e.event.type === "containerd.events.TaskStart")?.event;
      assert.ok(start?.type === "containerd.events.TaskStart" && start.event.pid === pid);

      await client.containers.delete({ id });
      // Deleting the container drops the last reference to its snapshot, so containerd's garbage
      // collector may remove it before we do: either way it must be gone afterwards.
      await client.snapshots.remove({ snapshotter: SNAPSHOTTER, key: id }).catch((e: unknown) => {
        if (!isNotFound(e)) throw e;
      });
      await assert.rejects(client.snapshots.stat({ snapshotter: SNAPSHOTTER, key: id }), isNotFound);
    } finally {
      ac.abort();
      await collecting;
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("containerd Any encoding", () => {
  it("packs the runtime spec as JSON and events as bare-named protobuf", () => {
    const spec = packJson({ ociVersion: "1.0.2", process: { args: ["/bin/true"] } });
    assert.equal(spec.typeUrl, "types.containerd.io/opencontainers/runtime-spec/1/Spec");
    assert.equal(new TextDecoder().decode(spec.value), '{"ociVersion":"1.0.2","process":{"args":["/bin/true"]}}');
    assert.throws(() => unpackJson({ ...spec, typeUrl: "containerd.runc.v1.Options" }), TypeUrlError);

    const exit = packMessage(TaskExitSchema, create(TaskExitSchema, { containerId: "c1", pid: 42, exitStatus: 3 }));
    assert.equal(exit.typeUrl, "containerd.events.TaskExit");
    const decoded = unpackEvent(exit);
    assert.ok(decoded?.type === "containerd.events.TaskExit");
    assert.deepEqual([decoded.event.containerId, decoded.event.pid, decoded.event.exitStatus], ["c1", 42, 3]);
    // A googleapis-style prefix decodes too; unknown and missing events are skipped, not errors.
    assert.equal(unpackMessage(TaskExitSchema, { ...exit, typeUrl: "type.googleapis.com/containerd.events.TaskExit" }).pid, 42);
    assert.equal(unpackEvent({ ...exit, typeUrl: "containerd.services.images.v1.ImageCreate" }), undefined);
    assert.equal(unpackEvent(undefined), undefined);
    assert.throws(
      () => unpackMessage(OptionsSchema, exit),
      /expected an Any of type containerd.runc.v1.Options, got containerd.events.TaskExit/,
    );
  });
});
