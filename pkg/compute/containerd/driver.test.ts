// The containerd driver against the real containerd and runc, with the busybox image built from
// Debian's busybox-static: the conformance suite every driver runs, then what containers have:
// output in the log, stop within the timeout, exit codes, cgroup limits read back from the kernel,
// adoption with the log still growing, image import, and bad input that leaves nothing behind.
// `ctr` is the independent witness of what containerd holds (the driver itself never runs it).
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtemp, readFile, readlink, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { busyboxImage, BUSYBOX_REF, ensureContainerd } from "../../../test/support/containerd.js";
import { until } from "../../../test/support/procs.js";
import { runDriverConformance } from "../driver/conformance.js";
import { type DriverInstanceSpec, InvalidSpecError } from "../driver/index.js";
import { ContainerdClient } from "./client.js";
import { ContainerdDriver } from "./driver.js";

const run = promisify(execFile);
/** Our own namespace: the tests never touch containers of `hypervisor` or anyone else. */
const NS = `hvtest-drv-${process.pid}`;
const OWNER = `ctd-${process.pid}`;
let socket: string;
let dir: string;
let imageFile: string;
const drivers: ContainerdDriver[] = [];
const ctr = async (...args: string[]) => (await run("ctr", ["--address", socket, "-n", NS, ...args])).stdout;

async function makeDriver(owner = OWNER): Promise<ContainerdDriver> {
  const d = new ContainerdDriver({ stateDir: join(dir, owner), socketPath: socket, namespace: NS, owner });
  drivers.push(d);
  return d;
}

function spec(name: string, uid: string, command: string[], extra: Partial<DriverInstanceSpec> = {}): DriverInstanceSpec {
  return {
    name,
    uid,
    labels: {},
    image: BUSYBOX_REF,
    vcpus: 1,
    memoryMiB: 64,
    diskGiB: 0,
    command,
    args: [],
    env: {},
    kernel: "",
    initrd: "",
    cmdline: "",
    config: {},
    ...extra,
  };
}

/** A shell that stops at once on SIGTERM (PID 1 gets no default signal handlers). */
const SERVICE = ["sh", "-c", "trap 'echo stopping; exit 0' TERM; echo up; while true; do sleep 1; done"];

before(async () => {
  socket = await ensureContainerd();
  imageFile = (await busyboxImage()).file;
  dir = await mkdtemp(join(tmpdir(), "hv-ctd-"));
  await (await makeDriver()).importImage(imageFile);
});

after(async () => {
  const d = await makeDriver();
  for (const i of await d.list().catch(() => [])) await d.destroy(i.name).catch(() => undefined);
  for (const x of drivers) await x.close();
  // The namespace must be empty to go: images and leftover containers of other owners first.
  const c = new ContainerdClient({ socketPath: socket, namespace: NS });
  for (const x of (await c.containers.list({})).containers) {
    await c.tasks.kill({ containerId: x.id, signal: 9, all: true }).catch(() => undefined);
    await c.tasks.delete({ containerId: x.id }).catch(() => undefined);
    await c.containers.delete({ id: x.id }).catch(() => undefined);
  }
  for (const i of (await c.images.list({})).images) await c.images.delete({ name: i.name, sync: true }).catch(() => undefined);
  await c.namespaces.delete({ name: NS }).catch(() => undefined);
  c.close();
  await rm(dir, { recursive: true, force: true });
});

runDriverConformance(
  "containerd",
  () => makeDriver(),
  (name, uid, hooks) => spec(name, uid, hooks?.exit ? ["sh", "-c", `sleep 1; exit ${hooks.exit.code}`] : SERVICE),
  { deadlineMs: 60_000, stopTimeoutMs: 10_000 },
);

describe("containerd driver: what containers have", () => {
  it("imports the image tarball: listed with its digest, and ctr sees the same image", async () => {
    const d = await makeDriver();
    const images = await d.importImage(imageFile); // a second import of the same tarball is fine
    assert.equal(images.length, 1);
    assert.equal(images[0]!.name, BUSYBOX_REF);
    assert.match(images[0]!.digest, /^sha256:[0-9a-f]{64}$/);
    const listed = (await d.listImages()).find((i) => i.name === BUSYBOX_REF);
    assert.equal(listed?.digest, images[0]!.digest);
    assert.ok((listed?.sizeBytes ?? 0) > 100_000, `size ${listed?.sizeBytes}`);
    assert.match(await ctr("images", "ls", "-q"), new RegExp(BUSYBOX_REF.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")));
  });

  it("imports the same image several times at once (two agents on one containerd, import --all)", async () => {
    // From nothing, so that the imports race to write every blob and to create the record.
    await ctr("images", "rm", "--sync", BUSYBOX_REF);
    const blobs = (await ctr("content", "ls", "-q")).split("\n").filter(Boolean);
    if (blobs.length) await ctr("content", "rm", ...blobs);
    assert.equal((await ctr("content", "ls", "-q")).trim(), "", "no content left to start from");
    const d = await makeDriver();
    const all = await Promise.all([d.importImage(imageFile), d.importImage(imageFile), (await makeDriver("other")).importImage(imageFile)]);
    for (const images of all)
      assert.deepEqual(
        images.map((i) => i.name),
        [BUSYBOX_REF],
      );
    assert.equal(new Set(all.map((images) => images[0]!.digest)).size, 1);
    assert.equal((await d.listImages()).filter((i) => i.name === BUSYBOX_REF).length, 1);
  });

  it("writes stdout and stderr to the log, and records the exit code", async () => {
    const d = await makeDriver();
    const name = `echo-${randomUUID().slice(0, 6)}`;
    await d.create(
      spec(name, randomUUID(), ["sh", "-c", "echo hello-from-container; echo to-stderr >&2; echo FOO=$FOO; exit 7"], {
        env: { FOO: "a b'c" },
      }),
    );
    await d.start(name);
    const exited = await until("exited", async () => {
      const i = await d.inspect(name);
      return i?.state === "exited" ? i : undefined;
    });
    assert.equal(exited.exitCode, 7);
    // Both streams go to one file; the shim copies each through its own pipe, so lines of
    // stdout and stderr may interleave in any order, and the copy may finish after the exit.
    const lines = await until("three lines in the log", async () => {
      const l = (await readFile(d.logFile(name), "utf8")).split("\n");
      return l.length >= 4 ? l : undefined;
    });
    assert.deepEqual(lines.sort(), ["", "FOO=a b'c", "hello-from-container", "to-stderr"]);
    await d.destroy(name);
    await assert.rejects(stat(d.logFile(name)), "the log goes with the container");
  });

  it("stops a container that ignores SIGTERM with SIGKILL at the timeout", async () => {
    const d = await makeDriver();
    const name = `stubborn-${randomUUID().slice(0, 6)}`;
    await d.create(spec(name, randomUUID(), ["sleep", "3600"])); // sleep as PID 1 ignores SIGTERM
    await d.start(name);
    const stopped = await d.stop(name, 1500);
    assert.equal(stopped.state, "stopped");
    const c = new ContainerdClient({ socketPath: socket, namespace: NS });
    const { process: task } = await c.tasks.get({ containerId: name });
    c.close();
    assert.equal(task?.exitStatus, 137, "killed, not exited");
    await d.destroy(name);
  });

  it("an aborted stop ends its wait at once and leaves the container running (no early SIGKILL)", async () => {
    const d = await makeDriver();
    const name = `abort-${randomUUID().slice(0, 6)}`;
    await d.create(spec(name, randomUUID(), ["sh", "-c", 'trap "" TERM; while true; do sleep 1; done']));
    await d.start(name);
    const why = new Error("desired state changed");
    const ac = new AbortController();
    const stopping = d.stop(name, 3_000_000, { signal: ac.signal });
    setTimeout(() => ac.abort(why), 1000);
    await assert.rejects(stopping, (e) => e === why);
    assert.equal((await d.inspect(name))?.state, "running", "not killed: the caller decides what comes next");
    await d.destroy(name);
    assert.equal(await d.inspect(name), undefined);
  });

  it("applies the memory and CPU limits as cgroup settings the kernel reports", async () => {
    const d = await makeDriver();
    const name = `limits-${randomUUID().slice(0, 6)}`;
    await d.create(spec(name, randomUUID(), SERVICE, { memoryMiB: 48, vcpus: 2 }));
    await d.start(name);
    const cg = `/sys/fs/cgroup/memory/${NS}-${name}`;
    const v2 = await stat("/sys/fs/cgroup/cgroup.controllers").then(
      () => true,
      () => false,
    );
    if (v2) {
      assert.equal((await readFile(`/sys/fs/cgroup/${NS}-${name}/memory.max`, "utf8")).trim(), String(48 << 20));
    } else {
      assert.equal((await readFile(`${cg}/memory.limit_in_bytes`, "utf8")).trim(), String(48 << 20));
      assert.equal((await readFile(`/sys/fs/cgroup/cpu/${NS}-${name}/cpu.cfs_quota_us`, "utf8")).trim(), "200000");
    }
    const stats = await d.stats(name);
    assert.equal(stats.memoryLimitBytes, 48 << 20);
    assert.ok(stats.memoryUsedBytes > 0 && stats.cpuTimeNs > 0, JSON.stringify(stats));
    await d.destroy(name);
  });

  it("confines the container: the kernel reports its seccomp filter, no new privileges, capabilities without NET_RAW, pids.max", async () => {
    const d = await makeDriver();
    const name = `confined-${randomUUID().slice(0, 6)}`;
    const uid = randomUUID();
    await d.create(spec(name, uid, SERVICE, { config: { "pids-limit": "77" } }));
    const running = await d.start(name);
    const status = await readFile(`/proc/${running.details.pid}/status`, "utf8");
    const field = (k: string) => new RegExp(`^${k}:\\t(.*)$`, "m").exec(status)?.[1];
    assert.equal(field("Seccomp"), "2", "a seccomp filter (mode 2)");
    assert.equal(field("NoNewPrivs"), "1");
    // CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE SYS_CHROOT MKNOD
    // AUDIT_WRITE SETFCAP: Docker's a80425fb without NET_RAW (bit 13).
    const want = 0xa80405fbn;
    for (const k of ["CapEff", "CapBnd", "CapPrm"]) {
      const caps = BigInt(`0x${field(k)}`);
      assert.equal(caps, want, `${k} ${field(k)}`);
      assert.equal(caps & (1n << 13n), 0n, `${k} without CAP_NET_RAW`);
    }
    assert.equal(BigInt(`0x${field("CapInh")}`), 0n);
    const v2 = await stat("/sys/fs/cgroup/cgroup.controllers").then(
      () => true,
      () => false,
    );
    const pidsMax = v2 ? `/sys/fs/cgroup/${NS}-${name}/pids.max` : `/sys/fs/cgroup/pids/${NS}-${name}/pids.max`;
    assert.equal((await readFile(pidsMax, "utf8")).trim(), "77");
    await d.destroy(name);

    // The node's limit when the instance asks for none.
    const node = new ContainerdDriver({ stateDir: join(dir, "pids"), socketPath: socket, namespace: NS, owner: OWNER, pidsLimit: 333 });
    drivers.push(node);
    const plain = `pids-${randomUUID().slice(0, 6)}`;
    await node.create(spec(plain, randomUUID(), SERVICE));
    await node.start(plain);
    const plainMax = v2 ? `/sys/fs/cgroup/${NS}-${plain}/pids.max` : `/sys/fs/cgroup/pids/${NS}-${plain}/pids.max`;
    assert.equal((await readFile(plainMax, "utf8")).trim(), "333");
    await node.destroy(plain);
  });

  it("refuses the host network unless the node allows it (allow-host-network), and a pids-limit over the node's", async () => {
    const d = await makeDriver();
    const before = await ctr("containers", "ls", "-q");
    const host = `hostnet-${randomUUID().slice(0, 6)}`;
    await assert.rejects(
      d.create(spec(host, randomUUID(), SERVICE, { config: { network: "host" } })),
      (e: unknown) =>
        e instanceof InvalidSpecError &&
        e.message === `driver_config.network: "host" is not allowed on node ${OWNER} (allow-host-network: false)`,
    );
    for (const bad of ["1025", "0", "-1", "12x", ""])
      await assert.rejects(
        d.create(spec(`pids-${randomUUID().slice(0, 6)}`, randomUUID(), SERVICE, { config: { "pids-limit": bad } })),
        (e: unknown) =>
          e instanceof InvalidSpecError &&
          e.message ===
            `driver_config.pids-limit: ${JSON.stringify(bad)} must be an integer from 1 to 1024 (containerd-pids-limit of node ${OWNER})`,
        bad,
      );
    assert.equal(await ctr("containers", "ls", "-q"), before, "nothing created");
    assert.deepEqual(d.hostAccess, { hostNetwork: false, bridges: [] });
    // Allowed on this node: the container shares the host's network namespace.
    const open = new ContainerdDriver({
      stateDir: join(dir, "open"),
      socketPath: socket,
      namespace: NS,
      owner: OWNER,
      allowHostNetwork: true,
    });
    drivers.push(open);
    await open.create(spec(host, randomUUID(), SERVICE, { config: { network: "host" } }));
    const running = await open.start(host);
    assert.equal(await readlink(`/proc/${running.details.pid}/ns/net`), await readlink("/proc/self/ns/net"));
    await open.destroy(host);
  });

  it("a new driver adopts a running container: same task, not restarted, and its log keeps growing", async () => {
    const first = await makeDriver();
    const name = `adopt-${randomUUID().slice(0, 6)}`;
    await first.create(spec(name, randomUUID(), ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"]));
    const running = await first.start(name);
    await first.close();
    const second = await makeDriver();
    const adopted = (await second.list()).find((i) => i.name === name);
    assert.equal(adopted?.state, "running");
    assert.equal(adopted.startedAt, running.startedAt);
    assert.equal(adopted.details.pid, running.details.pid, "the same process");
    const size = (await stat(second.logFile(name))).size;
    await until("the log grows after the driver changed", async () => (await stat(second.logFile(name))).size > size);
    await second.destroy(name);
  });

  it("leaves another node's containers alone in the same namespace", async () => {
    const mine = await makeDriver();
    const theirs = await makeDriver(`other-${process.pid}`);
    const name = `foreign-${randomUUID().slice(0, 6)}`;
    await theirs.create(spec(name, randomUUID(), SERVICE));
    assert.equal(
      (await mine.list()).some((i) => i.name === name),
      false,
    );
    assert.equal(await mine.inspect(name), undefined);
    await assert.rejects(mine.destroy(name), /managed by other-\d+, not by ctd-\d+/);
    await assert.rejects(mine.create(spec(name, randomUUID(), SERVICE)), /exists and is managed by other-\d+/);
    await theirs.destroy(name);
  });

  it("refuses bad input with InvalidSpecError and leaves nothing in containerd", async () => {
    const d = await makeDriver();
    const before = await ctr("containers", "ls", "-q");
    const beforeSnaps = await ctr("snapshots", "ls");
    const cases: [DriverInstanceSpec, RegExp][] = [
      [
        spec(`noimg-${randomUUID().slice(0, 6)}`, randomUUID(), SERVICE, { image: "hypervisor.dev/nope:1" }),
        /image: "hypervisor.dev\/nope:1" is not on node ctd-\d+; import it/,
      ],
      [spec(`empty-${randomUUID().slice(0, 6)}`, randomUUID(), [""]), /command: empty/],
      [spec(`env-${randomUUID().slice(0, 6)}`, randomUUID(), SERVICE, { env: { "A=B": "x" } }), /env: "A=B" is not a variable name/],
      [spec(`vm-${randomUUID().slice(0, 6)}`, randomUUID(), SERVICE, { kernel: "vmlinuz" }), /kernel, initrd and cmdline are for VMs/],
      [
        spec(`net-${randomUUID().slice(0, 6)}`, randomUUID(), SERVICE, { config: { network: "bridge" } }),
        /driver_config.network: "bridge" must be none or host/,
      ],
      [spec("Bad_Name", randomUUID(), SERVICE), /name: "Bad_Name" is not an instance.s name on a node/],
    ];
    for (const [s, re] of cases)
      await assert.rejects(d.create(s), (e: unknown) => e instanceof InvalidSpecError && re.test(e.message), s.name);
    assert.equal(await ctr("containers", "ls", "-q"), before, "no container");
    assert.equal(await ctr("snapshots", "ls"), beforeSnaps, "no snapshot");

    const imagesBefore = await ctr("images", "ls", "-q");
    const garbage = join(dir, "garbage.tar");
    await writeFile(garbage, Buffer.alloc(10_000, 0x5a));
    await assert.rejects(d.importImage(garbage), (e: unknown) => e instanceof InvalidSpecError && /not a tar archive/.test(e.message));
    // A real tar that is not an image, and one whose index points at a blob it does not hold.
    const notImage = join(dir, "not-image.tar");
    await run("tar", ["-cf", notImage, "-C", dir, "garbage.tar"]);
    await assert.rejects(d.importImage(notImage), /no oci-layout file: not an OCI image layout/);
    const broken = join(dir, "broken");
    await run("mkdir", ["-p", broken]);
    await run("tar", ["-xf", imageFile, "-C", broken]);
    const index = JSON.parse(await readFile(join(broken, "index.json"), "utf8")) as { manifests: { digest: string }[] };
    await rm(join(broken, "blobs", "sha256", index.manifests[0]!.digest.slice(7)));
    const brokenTar = join(dir, "broken.tar");
    await run("tar", ["-cf", brokenTar, "-C", broken, "."]);
    await assert.rejects(d.importImage(brokenTar), /blob sha256:[0-9a-f]+ is not in the archive/);
    assert.equal(await ctr("images", "ls", "-q"), imagesBefore, "no image record");
    assert.equal((await ctr("leases", "ls", "-q")).trim(), "", "no lease left holding content");
  });
});
