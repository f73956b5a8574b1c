// What HA and drain do with an instance on a lost or draining node: tables over the spec. An
// instance whose disk only its node holds stays (a move would start it on a fresh disk).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { InstanceSchema, RestartPolicy } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { drainPin } from "./drain-controller.js";
import { decideHa } from "./ha-controller.js";

const inst = (
  spec: { driver: string; image?: string; kernel?: string; ephemeralDisks?: boolean; restartPolicy?: RestartPolicy },
  deleting = false,
) => {
  const i = create(InstanceSchema, { name: "i-1", uid: "u-1", spec });
  if (deleting) i.deleteTime = timestampNow();
  return i;
};

describe("decideHa", () => {
  const cases: { name: string; i: ReturnType<typeof inst>; want: string }[] = [
    { name: "VM booted from an image (local overlay): stays", i: inst({ driver: "libvirt", image: "alpine.qcow2" }), want: "stay" },
    {
      name: "VM with local disk declared ephemeral: moves",
      i: inst({ driver: "libvirt", image: "alpine.qcow2", ephemeralDisks: true }),
      want: "move",
    },
    { name: "VM booted from a kernel, no disk: moves", i: inst({ driver: "libvirt", kernel: "vmlinuz" }), want: "move" },
    { name: "microVM with a rootfs image: stays", i: inst({ driver: "firecracker", image: "rootfs.ext4" }), want: "stay" },
    { name: "container: moves", i: inst({ driver: "containerd", image: "docker.io/library/alpine:3.20" }), want: "move" },
    { name: "mock: moves", i: inst({ driver: "mock" }), want: "move" },
    { name: "restart policy never: stays", i: inst({ driver: "mock", restartPolicy: RestartPolicy.NEVER }), want: "stay" },
    { name: "being deleted, local disk: released", i: inst({ driver: "libvirt", image: "alpine.qcow2" }, true), want: "release" },
  ];
  for (const c of cases)
    it(c.name, () => {
      assert.equal(decideHa(c.i, "n-1").kind, c.want);
    });

  it("says why a VM with a local disk stays", () => {
    const d = decideHa(inst({ driver: "libvirt", image: "alpine.qcow2" }), "n-1");
    assert.equal(d.kind, "stay");
    assert.match(d.kind === "stay" ? d.why : "", /disk is local to node n-1.*ephemeral_disks/);
  });
});

describe("drainPin", () => {
  it("pins what HA would not move for its disk, and nothing else", () => {
    assert.match(drainPin(inst({ driver: "libvirt", image: "alpine.qcow2" }), "n-1") ?? "", /local to node n-1/);
    assert.equal(drainPin(inst({ driver: "libvirt", image: "alpine.qcow2", ephemeralDisks: true }), "n-1"), undefined);
    assert.equal(drainPin(inst({ driver: "mock", restartPolicy: RestartPolicy.NEVER }), "n-1"), undefined);
    assert.equal(drainPin(inst({ driver: "containerd", image: "x" }), "n-1"), undefined);
  });
});
