// Containers end to end on a two-agent cluster as production runs it: etcd on TLS with
// client-certificate auth (the server as etcd user hypervisor-server, auth on), hypervisor-server
// serving TLS, two hypervisor-agents joined with a token (mutual TLS between server and agents:
// image imports and logs cross it; each agent's etcd identity is its node certificate, confined to
// its own keys) with the containerd driver on the real containerd (one namespace of the test's
// own, each agent owning its containers), driven through hypervisor-ctl. Image import to every
// node, a service with its log, a crash loop that backs off, kill -9 of an agent and adoption,
// stop, delete, and the bad inputs a user will type.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ctlFor, joinArgs, joinToken as makeJoinToken, startSecureEtcd, type SecureEtcd } from "../support/cluster.js";
import { busyboxImage, BUSYBOX_REF, ensureContainerd } from "../support/containerd.js";
import { binPath, freePort, Proc, until } from "../support/procs.js";
import { ContainerdClient } from "../../pkg/compute/containerd/index.js";

interface JsonInstance {
  name: string;
  uid: string;
  spec?: { driver?: string };
  status?: {
    phase?: string;
    node?: string;
    startTime?: string;
    message?: string;
    restartCount?: number;
    exitCode?: number;
    details?: Record<string, string>;
  };
}

describe("containers through the whole system (etcd, server, two agents with containerd, ctl)", { timeout: 600_000 }, () => {
  const ns = `hvtest-e2e-${process.pid}`;
  const nodes = [`ctr-a-${process.pid}`, `ctr-b-${process.pid}`];
  let dir: string;
  let socket: string;
  let imageFile: string;
  let etcd: SecureEtcd;
  let port: number;
  let server: Proc;
  const agents = new Map<string, Proc>();
  let joinToken = "";

  const ctlRaw = (...args: string[]) => ctlFor(`https://127.0.0.1:${port}`, etcd.caFile, 120_000).raw(...args);
  const ctl = async (...args: string[]) => (await ctlRaw(...args)).stdout;
  const ctlFails = (...args: string[]) =>
    ctlRaw(...args).then(
      () => assert.fail(`ctl ${args.join(" ")} succeeded`),
      (e: { code?: number; stderr?: string }) => ({ code: e.code, stderr: e.stderr ?? "" }),
    );
  const get = async (name: string) => JSON.parse(await ctl("instance", "get", name, "-o", "json")) as JsonInstance;
  const startAgent = (node: string) => {
    const p = new Proc(`agent ${node}`, [
      binPath("hypervisor-agent"),
      "--node-name",
      node,
      "--etcd-endpoints",
      etcd.etcd.endpoint,
      "--heartbeat-ttl",
      "3",
      "--drivers",
      "containerd",
      "--containerd-socket",
      socket,
      "--containerd-namespace",
      ns,
      "--data-dir",
      join(dir, node),
      // The first node lets containers onto its network namespace; the second does not (the default).
      ...(node === nodes[0] ? ["--allow-host-network"] : []),
      // Joined with a token (a restart uses the certificate it got): its node certificate is its etcd identity.
      ...joinArgs(`https://127.0.0.1:${port}`, joinToken),
    ]);
    agents.set(node, p);
    return p;
  };

  before(async () => {
    socket = await ensureContainerd();
    imageFile = (await busyboxImage()).file;
    dir = await mkdtemp(join(tmpdir(), "hv-e2e-ctr-"));
    etcd = await startSecureEtcd(join(dir, "server", "pki"));
    port = await freePort();
    server = new Proc("server", [
      binPath("hypervisor-server"),
      ...etcd.serverArgs,
      "--listen",
      `127.0.0.1:${port}`,
      "--data-dir",
      join(dir, "server"),
    ]);
    await server.waitFor(/server listening/);
    // The agents join with a token: image imports, logs and consoles then cross mutual TLS.
    joinToken = await makeJoinToken(ctl, 2);
    for (const n of nodes) await startAgent(n).waitFor(/agent started/);
    await until("both nodes Ready with containerd healthy", async () => {
      const list = JSON.parse(await ctl("node", "list", "-o", "json")) as {
        items?: { name: string; condition?: string; drivers?: { name: string; healthy?: boolean }[] }[];
      };
      const ready = (list.items ?? []).filter(
        (n) => n.condition === "NODE_CONDITION_READY" && n.drivers?.some((d) => d.name === "containerd" && d.healthy),
      );
      return ready.length === 2;
    });
  });

  after(async () => {
    for (const a of agents.values()) await a.stop();
    await server?.stop();
    await etcd?.stop();
    const c = new ContainerdClient({ socketPath: socket, namespace: ns });
    for (const x of (await c.containers.list({}).catch(() => ({ containers: [] }))).containers) {
      await c.tasks.kill({ containerId: x.id, signal: 9, all: true }).catch(() => undefined);
      await new Promise((r) => setTimeout(r, 200));
      await c.tasks.delete({ containerId: x.id }).catch(() => undefined);
      await c.containers.delete({ id: x.id }).catch(() => undefined);
    }
    for (const i of (await c.images.list({}).catch(() => ({ images: [] }))).images)
      await c.images.delete({ name: i.name, sync: true }).catch(() => undefined);
    await c.namespaces.delete({ name: ns }).catch(() => undefined);
    c.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("imports the image onto every node and lists it per node", async () => {
    const out = await ctl("image", "import", imageFile, "--all");
    for (const n of nodes)
      assert.match(out, new RegExp(`node/${n}: imported ${BUSYBOX_REF.replace(/\./g, "\\.")} \\(sha256:[0-9a-f]{64}\\)`));
    const listed = JSON.parse(await ctl("image", "list", "-o", "json")) as { images?: { node: string; name: string; digest: string }[] };
    assert.deepEqual(
      (listed.images ?? [])
        .filter((i) => i.name === BUSYBOX_REF)
        .map((i) => i.node)
        .sort(),
      [...nodes].sort(),
    );
    const table = await ctl("image", "list", "--node", nodes[0]!);
    assert.match(table, /NODE\s+DRIVER\s+NAME\s+DIGEST\s+SIZE/);
    assert.equal(table.trim().split("\n").length, 2, table);
  });

  it("refuses bad imports with clear errors", async () => {
    const garbage = join(dir, "garbage.tar");
    await writeFile(garbage, Buffer.alloc(5000, 1));
    const bad = await ctlFails("image", "import", garbage, "--node", nodes[0]!);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /invalid_argument: .*not a tar archive/);
    const unknown = await ctlFails("image", "import", imageFile, "--node", "no-such-node");
    assert.match(unknown.stderr, /not_found: target.nodes: node "no-such-node" not found/);
    const none = await ctlFails("image", "import", imageFile);
    assert.equal(none.code, 2);
    assert.match(none.stderr, /--node NAME/);
  });

  it("runs a container created through ctl; its output is in `instance logs`; its memory limit is in its cgroup", async () => {
    await ctl(
      "instance", "create", "web", "--driver", "containerd", "--image", BUSYBOX_REF, "--memory", "64", "--vcpus", "1",
      "--wait", "--timeout", "2m",
      "--command", "sh", "--", "-c", "echo hello-e2e; trap 'echo bye; exit 0' TERM; while true; do sleep 1; done",
    ); // prettier-ignore
    const web = await get("web");
    assert.equal(web.status?.phase, "PHASE_RUNNING");
    await until("hello-e2e in the log", async () => (await ctl("instance", "logs", "web")).includes("hello-e2e"));
    const limit = await readFile(`/sys/fs/cgroup/memory/${ns}-web/memory.limit_in_bytes`, "utf8").catch(() =>
      readFile(`/sys/fs/cgroup/${ns}-web/memory.max`, "utf8"),
    );
    assert.equal(limit.trim(), String(64 << 20));
  });

  it("the same name in another project is another container (<project>.<name> on the node), with its own log", async () => {
    await ctl("project", "create", "team");
    await ctl(
      "-p", "team", "instance", "create", "web", "--driver", "containerd", "--image", BUSYBOX_REF, "--memory", "64", "--vcpus", "1",
      "--wait", "--timeout", "2m", "--command", "sh", "--", "-c", "echo team-web; while true; do sleep 1; done",
    ); // prettier-ignore
    const ids = async () => {
      const c = new ContainerdClient({ socketPath: socket, namespace: ns });
      try {
        return (await c.containers.list({})).containers.map((x) => x.id);
      } finally {
        c.close();
      }
    };
    assert.ok((await ids()).includes("team.web") && (await ids()).includes("web"), (await ids()).join(","));
    await until("team-web in its log", async () => (await ctl("-p", "team", "instance", "logs", "web")).includes("team-web"));
    assert.doesNotMatch(await ctl("instance", "logs", "web"), /team-web/);
    assert.match(await ctl("instance", "list", "-A"), /^team\/web\s+Running/m);
    await ctl("-p", "team", "instance", "delete", "web", "--wait");
    assert.ok(!(await ids()).includes("team.web"));
    assert.equal((await get("web")).status?.phase, "PHASE_RUNNING", "the default project's web runs on");
  });

  it("confines the container: the kernel reports its seccomp filter, no new privileges, no CAP_NET_RAW, and the node's pids limit", async () => {
    const web = await get("web");
    const status = await readFile(`/proc/${web.status?.details?.pid}/status`, "utf8");
    const field = (k: string) => new RegExp(`^${k}:\\t(.*)$`, "m").exec(status)?.[1];
    assert.equal(field("Seccomp"), "2");
    assert.equal(field("NoNewPrivs"), "1");
    assert.equal(BigInt(`0x${field("CapEff")}`), 0xa80405fbn, "runc's default set without NET_RAW");
    assert.equal(BigInt(`0x${field("CapBnd")}`), 0xa80405fbn);
    const pidsMax = await readFile(`/sys/fs/cgroup/pids/${ns}-web/pids.max`, "utf8").catch(() =>
      readFile(`/sys/fs/cgroup/${ns}-web/pids.max`, "utf8"),
    );
    assert.equal(pidsMax.trim(), "1024");
  });

  it("places a container on the host network only on the node that allows it; elsewhere it stays Pending and explain says why", async () => {
    const [open, closed] = nodes as [string, string];
    const node = JSON.parse(await ctl("node", "get", open, "-o", "json")) as {
      drivers?: { name: string; hostAccess?: { hostNetwork?: boolean } }[];
    };
    assert.equal(node.drivers?.find((d) => d.name === "containerd")?.hostAccess?.hostNetwork, true, "the node advertises it");
    const closedNode = JSON.parse(await ctl("node", "get", closed, "-o", "json")) as typeof node;
    assert.equal(closedNode.drivers?.find((d) => d.name === "containerd")?.hostAccess, undefined);
    const create = (name: string, ...extra: string[]) =>
      ctl(
        "instance", "create", name, "--driver", "containerd", "--image", BUSYBOX_REF, "--memory", "32", "--vcpus", "1",
        "--config", "network=host", ...extra, "--command", "sh", "--", "-c", "while true; do sleep 1; done",
      ); // prettier-ignore
    await create("hostnet", "--wait", "--timeout", "2m");
    const placed = await get("hostnet");
    assert.equal(placed.status?.phase, "PHASE_RUNNING");
    assert.equal(placed.status?.node, open);
    const explained = JSON.parse(await ctl("instance", "explain", "hostnet", "-o", "json")) as {
      nodes?: { node: string; feasible?: boolean; reason?: string }[];
    };
    assert.equal(explained.nodes?.find((v) => v.node === closed)?.reason, "host network not allowed (allow-host-network)");

    // Pinned to the node that refuses it: never placed there.
    await create("hostnet-pinned", "--node-selector", `hypervisor.dev/node=${closed}`);
    const why = await until("the placement message", async () => {
      const i = await get("hostnet-pinned");
      return /host network not allowed/.test(i.status?.message ?? "") ? i : undefined;
    });
    assert.equal(why.status?.phase, "PHASE_PENDING");
    assert.equal(why.status?.node ?? "", "");
    assert.match(why.status?.message ?? "", /1 host network not allowed \(allow-host-network\)/);
    const table = await ctl("instance", "explain", "hostnet-pinned");
    assert.match(table, new RegExp(`${closed}\\s.*host network not allowed \\(allow-host-network\\)`));
    for (const n of ["hostnet", "hostnet-pinned"]) await ctl("instance", "delete", n, "--wait");
  });

  it("restarts a crashing container on failure, backing off between attempts", async () => {
    await ctl(
      "instance",
      "create",
      "crash",
      "--driver",
      "containerd",
      "--image",
      BUSYBOX_REF,
      "--vcpus",
      "1",
      "--memory",
      "32",
      "--restart-policy",
      "on-failure",
      "--command",
      "sh",
      "--",
      "-c",
      "echo crashing; exit 3",
    );
    // Delays before restarts 1..4 are 0, 1, 2 and 4 s. A note says what is left of the delay when
    // the agent saw the exit, so a loaded machine that notices an exit late shows less than the
    // full delay: four restarts leave room for that and still show a wait above 1 s.
    try {
      const waits = new Set<number>();
      const last = await until(
        "four restarts",
        async () => {
          const i = await get("crash");
          const m = /exited with code 3; restarting in (\d+)s/.exec(i.status?.message ?? "");
          if (m) waits.add(Number(m[1]));
          return (i.status?.restartCount ?? 0) >= 4 ? i : undefined;
        },
        120_000,
        200,
      );
      assert.ok(Math.max(...waits) >= 2, `the wait grows between restarts: saw ${[...waits].join(", ")} s`);
      assert.ok((await ctl("instance", "logs", "crash")).split("crashing").length - 1 >= 4, "each run wrote to the same log");
      assert.equal(last.status?.exitCode, 3);
    } finally {
      await ctl("instance", "delete", "crash", "--wait"); // a failure here must not leave it to the tests after
    }
  });

  it("a container that runs to completion with restart never ends Stopped with exit code 0", async () => {
    await ctl(
      "instance",
      "create",
      "once",
      "--driver",
      "containerd",
      "--image",
      BUSYBOX_REF,
      "--vcpus",
      "1",
      "--memory",
      "32",
      "--restart-policy",
      "never",
      "--command",
      "echo",
      "--",
      "done-once",
    );
    const i = await until("once stopped", async () => {
      const x = await get("once");
      return x.status?.phase === "PHASE_STOPPED" ? x : undefined;
    });
    assert.equal(i.status?.exitCode ?? 0, 0);
    assert.match(await ctl("instance", "logs", "once"), /done-once/);
  });

  it("a new agent adopts the running container after kill -9: same process, same start time", async () => {
    const before = await get("web");
    const node = before.status!.node!;
    const pid = before.status?.details?.pid;
    assert.ok(pid, "the status records the task's pid");
    await agents.get(node)!.kill9();
    const again = startAgent(node);
    await again.waitFor(/adoption done/);
    await again.waitFor(/agent started/);
    const after = await until("web Running again", async () => {
      const i = await get("web");
      return i.status?.phase === "PHASE_RUNNING" ? i : undefined;
    });
    assert.equal(after.status?.details?.pid, pid, "not restarted");
    assert.equal(after.status?.startTime, before.status?.startTime);
    assert.ok(
      again.output.some((l) => /adopted instance/.test(l) && l.includes('"web"')),
      again.tail(),
    );
  });

  it("an image that is not on the node leaves the instance Failed with a clear message", async () => {
    const r = await ctlFails(
      "instance",
      "create",
      "ghost",
      "--driver",
      "containerd",
      "--image",
      "hypervisor.dev/ghost:1",
      "--vcpus",
      "1",
      "--memory",
      "32",
      "--wait",
      "--timeout",
      "1m",
      "--command",
      "true",
    );
    assert.equal(r.code, 5);
    const g = await get("ghost");
    assert.equal(g.status?.phase, "PHASE_FAILED");
    assert.match(g.status?.message ?? "", /image: "hypervisor.dev\/ghost:1" is not on node ctr-[ab]-\d+; import it/);
    await ctl("instance", "delete", "ghost", "--wait");
  });

  it("restart runs the container again: a new process and start time, the same log", async () => {
    const before = await get("web");
    await ctl("instance", "restart", "web", "--wait");
    const after = await get("web");
    assert.equal(after.status?.phase, "PHASE_RUNNING");
    assert.notEqual(after.status?.details?.pid, before.status?.details?.pid);
    assert.notEqual(after.status?.startTime, before.status?.startTime);
    await until("two runs in the log", async () => (await ctl("instance", "logs", "web")).split("hello-e2e").length - 1 >= 2);
    assert.match(await ctl("instance", "logs", "web"), /bye/, "the first run was stopped with SIGTERM");
  });

  it("stop sends SIGTERM and the container goes; delete leaves nothing in containerd", async () => {
    await ctl("instance", "stop", "web", "--wait", "--timeout-seconds", "10");
    assert.equal((await get("web")).status?.phase, "PHASE_STOPPED");
    assert.match(await ctl("instance", "logs", "web"), /bye/);
    for (const n of ["web", "once"]) await ctl("instance", "delete", n, "--wait");
    const c = new ContainerdClient({ socketPath: socket, namespace: ns });
    const left = (await c.containers.list({})).containers.map((x) => x.id);
    c.close();
    assert.deepEqual(left, []);
  });

  it("a delete during a stop with a 3000 s timeout takes effect at once; the container ignored SIGTERM", async () => {
    await ctl(
      "instance", "create", "stubborn", "--driver", "containerd", "--image", BUSYBOX_REF, "--memory", "32", "--vcpus", "1",
      "--wait", "--timeout", "2m", "--command", "sh", "--", "-c", 'trap "" TERM; while true; do sleep 1; done',
    ); // prettier-ignore
    await ctl("instance", "stop", "stubborn", "--timeout-seconds", "3000");
    await until("Stopping", async () => (await get("stubborn")).status?.phase === "PHASE_STOPPING");
    // Far below the stop's 3000 s: the delete does not wait for it.
    await ctl("instance", "delete", "stubborn", "--wait", "--timeout", "2m");
    const c = new ContainerdClient({ socketPath: socket, namespace: ns });
    const left = (await c.containers.list({})).containers.map((x) => x.id);
    c.close();
    assert.deepEqual(left, [], "the container is destroyed, not left stopping");
  });
});
