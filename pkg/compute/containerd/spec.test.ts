// The runtime spec's confinement, as data: runc's default capabilities without CAP_NET_RAW,
// no-new-privileges, the default seccomp profile, and the pids limit. What the kernel makes of it
// is read back from a real container in driver.test.ts.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { InvalidSpecError, type DriverInstanceSpec } from "../driver/index.js";
import { defaultSeccompProfile } from "./seccomp.js";
import { buildRuntimeSpec } from "./spec.js";

const spec: DriverInstanceSpec = {
  name: "web",
  uid: "u-1",
  labels: {},
  image: "hypervisor.dev/busybox:test",
  vcpus: 1,
  memoryMiB: 64,
  diskGiB: 0,
  command: ["sh"],
  args: [],
  env: {},
  kernel: "",
  initrd: "",
  cmdline: "",
  config: {},
};

interface RuntimeSpec {
  process: { capabilities: Record<string, string[]>; noNewPrivileges: boolean };
  linux: { resources: { pids: { limit: number } }; seccomp: ReturnType<typeof defaultSeccompProfile> };
}

describe("runtime spec confinement", () => {
  it("runc's default capabilities without NET_RAW, no-new-privileges, seccomp and a pids limit", () => {
    const rs = buildRuntimeSpec({ spec, image: {}, cgroupsPath: "/ns-web", network: "none", pidsLimit: 321 }) as unknown as RuntimeSpec;
    const want = [
      "CAP_AUDIT_WRITE",
      "CAP_CHOWN",
      "CAP_DAC_OVERRIDE",
      "CAP_FOWNER",
      "CAP_FSETID",
      "CAP_KILL",
      "CAP_MKNOD",
      "CAP_NET_BIND_SERVICE",
      "CAP_SETFCAP",
      "CAP_SETGID",
      "CAP_SETPCAP",
      "CAP_SETUID",
      "CAP_SYS_CHROOT",
    ];
    for (const set of ["bounding", "effective", "permitted"]) assert.deepEqual([...rs.process.capabilities[set]!].sort(), want, set);
    assert.equal(rs.process.capabilities.ambient, undefined);
    assert.equal(rs.process.noNewPrivileges, true);
    assert.equal(rs.linux.resources.pids.limit, 321);
    assert.deepEqual(rs.linux.seccomp, defaultSeccompProfile());
    assert.throws(
      () => buildRuntimeSpec({ spec, image: {}, cgroupsPath: "/ns-web", network: "none", pidsLimit: 0 }),
      (e: unknown) => e instanceof InvalidSpecError && /pids limit: 0 must be a positive integer/.test(e.message),
    );
  });

  it("the seccomp profile: errno by default, an allowlist per architecture, no namespace or mount calls", () => {
    const p = defaultSeccompProfile("x64");
    assert.equal(p.defaultAction, "SCMP_ACT_ERRNO");
    assert.equal(p.defaultErrnoRet, 1);
    assert.deepEqual(p.architectures, ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]);
    const allowed = new Set(p.syscalls.filter((r) => r.action === "SCMP_ACT_ALLOW" && !r.args).flatMap((r) => r.names));
    for (const name of ["read", "write", "execve", "openat", "futex", "arch_prctl", "chroot", "exit_group"])
      assert.ok(allowed.has(name), name);
    for (const name of [
      "mount",
      "umount2",
      "unshare",
      "setns",
      "bpf",
      "perf_event_open",
      "keyctl",
      "add_key",
      "kexec_load",
      "init_module",
      "reboot",
      "clone",
      "clone3",
      "socket",
      "personality",
      "userfaultfd",
      "open_by_handle_at",
    ])
      assert.ok(!allowed.has(name), `${name} is not allowed unconditionally`);
    // clone only without CLONE_NEW* flags; clone3 answers ENOSYS so libc falls back to clone.
    assert.deepEqual(p.syscalls.find((r) => r.names.includes("clone"))?.args, [
      { index: 0, value: 0x7e020000, valueTwo: 0, op: "SCMP_CMP_MASKED_EQ" },
    ]);
    assert.deepEqual(
      p.syscalls.find((r) => r.names.includes("clone3")),
      { names: ["clone3"], action: "SCMP_ACT_ERRNO", errnoRet: 38 },
    );
    assert.deepEqual(p.syscalls.find((r) => r.names.includes("socket"))?.args, [{ index: 0, value: 40, op: "SCMP_CMP_NE" }]);
    assert.equal(defaultSeccompProfile("s390x").syscalls.find((r) => r.names.includes("clone"))?.args?.[0]?.index, 1);
    assert.ok(defaultSeccompProfile("arm64").syscalls[0]!.names.includes("set_tls"));
    assert.ok(!defaultSeccompProfile("arm64").syscalls[0]!.names.includes("arch_prctl"));
    assert.throws(() => defaultSeccompProfile("sparc"), /no seccomp profile for architecture "sparc"/);
  });
});
