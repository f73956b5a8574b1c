// `make run` as a user meets it (scripts/run-dev.sh): a one-machine cluster that boots one demo VM
// on the real libvirtd and says how to read its console; stopping it keeps the VM, and the next
// run adopts it rather than booting another. Own port, data directory, node and VM name, so a
// developer's real `make run` on the same machine is left alone.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { BUSYBOX_REF } from "../support/containerd.js";
import { GUEST_READY_MARKER } from "../support/guest.js";
import { ensureLibvirtd } from "../support/libvirt.js";
import { binPath, freePort, Proc, repoRoot, until } from "../support/procs.js";

const run = promisify(execFile);
const virsh = async (...args: string[]) => (await run("virsh", ["-c", "qemu:///system", ...args])).stdout.trim();

describe("make run (scripts/run-dev.sh)", { timeout: 900_000 }, () => {
  let dir: string;
  let port: number;
  let proc: Proc | undefined;
  const vm = `demo-e2e-${process.pid}`;
  const container = `hello-e2e-${process.pid}`;
  const env = () => ({
    HYPERVISOR_LISTEN: `127.0.0.1:${port}`,
    HYPERVISOR_DATA_DIR: dir,
    HYPERVISOR_NODE_NAME: `run-e2e-${process.pid}`,
    DEMO_VM: vm,
    // ctl's context for the dev server goes to the test's own file, not the user's.
    HYPERVISOR_CONFIG: join(dir, "ctl.yaml"),
  });
  // As a user after `make run`: no flag and no token, the context the server wrote says where,
  // which CA and which token (nothing of the runner's environment does).
  const plain = { HYPERVISOR_SERVER: "", HYPERVISOR_CA_FILE: "", HYPERVISOR_TOKEN: "", HYPERVISOR_CONTEXT: "" };
  const ctl = async (...args: string[]) =>
    (
      await run(process.execPath, [binPath("hypervisor-ctl"), ...args], {
        timeout: 120_000,
        env: { ...process.env, ...env(), ...plain },
      })
    ).stdout;

  before(async () => {
    await ensureLibvirtd();
    dir = await mkdtemp(join(tmpdir(), "hv-run-"));
    port = await freePort();
  });

  after(async () => {
    await proc?.stop(30_000);
    await run("virsh", ["-c", "qemu:///system", "destroy", `hv-${vm}`]).catch(() => undefined);
    await run("virsh", ["-c", "qemu:///system", "undefine", `hv-${vm}`]).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  });

  it("boots a demo VM, prints how to read its console, and the log has the guest's marker", async () => {
    proc = new Proc("make run", [join(repoRoot, "scripts/run-dev.sh")], env(), "bash");
    await proc.waitFor(/A demo VM is running on the libvirt driver/, 600_000);
    assert.ok(
      proc.output.some((l) => l.includes(`hypervisor-ctl instance logs ${vm} -f`)),
      proc.tail(),
    );
    // The server's context for ctl carries the bootstrap admin token, written beside the CA.
    const token = (await readFile(join(dir, "pki", "admin-token"), "utf8")).trim();
    assert.match(token, /^hvt_/);
    assert.ok((await readFile(join(dir, "ctl.yaml"), "utf8")).includes(`token: ${token}`), "the dev context carries the admin token");
    const i = JSON.parse(await ctl("instance", "get", vm, "-o", "json")) as { spec?: { driver?: string }; status?: { phase?: string } };
    assert.equal(i.spec?.driver, "libvirt");
    assert.equal(i.status?.phase, "PHASE_RUNNING");
    assert.equal(await virsh("domstate", `hv-${vm}`), "running");
    await until(
      "the guest marker in the demo VM's log",
      async () => (await ctl("instance", "logs", vm)).includes(GUEST_READY_MARKER),
      300_000,
      1000,
    );
  });

  it("has containerd ready with the busybox image: a container runs and logs on the same cluster", async () => {
    assert.ok(
      proc!.output.some((l) => l.includes("containerd is ready with a busybox image")),
      proc!.tail(),
    );
    const images = JSON.parse(await ctl("image", "list", "-o", "json")) as { images?: { name: string; node: string }[] };
    assert.ok(
      images.images?.some((i) => i.name === BUSYBOX_REF && i.node === env().HYPERVISOR_NODE_NAME),
      JSON.stringify(images),
    );
    await ctl(
      "instance",
      "create",
      container,
      "--driver",
      "containerd",
      "--image",
      BUSYBOX_REF,
      "--vcpus",
      "1",
      "--memory",
      "64",
      "--wait",
      "--command",
      "sh",
      "--",
      "-c",
      "echo hi-from-dev; sleep 3600",
    );
    await until("the container's output in its log", async () => (await ctl("instance", "logs", container)).includes("hi-from-dev"));
    await ctl("instance", "delete", container, "--wait");
  });

  it("Ctrl-C stops the cluster and keeps the VM; the next run adopts it", async () => {
    const domId = await virsh("domid", `hv-${vm}`);
    assert.equal(await proc!.stop(30_000), 0);
    assert.equal(await virsh("domstate", `hv-${vm}`), "running", "the VM outlives the server");
    proc = new Proc("make run again", [join(repoRoot, "scripts/run-dev.sh")], env(), "bash");
    await proc.waitFor(/A demo VM is running on the libvirt driver/, 600_000);
    assert.equal(await virsh("domid", `hv-${vm}`), domId, "adopted, not booted again");
    assert.ok(
      proc.output.some((l) => /adopted instance/.test(l) && l.includes(vm)),
      proc.tail(),
    );
    await ctl("instance", "delete", vm, "--wait", "--timeout", "3m");
    await assert.rejects(virsh("dominfo", `hv-${vm}`));
    assert.equal(await proc.stop(30_000), 0);
    proc = undefined;
  });
});
