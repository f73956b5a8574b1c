/*
 * The small test guest for QEMU/libvirt tests: a Debian kernel and a busybox initramfs, built by
 * scripts/build-test-guest.sh into a cache outside the clone (world-readable, since QEMU runs as
 * libvirt-qemu). The guest's /init (scripts/guest/init) prints the markers below on ttyS0: READY
 * once booted, POWEROFF before it powers off on an ACPI power button press, EXIT before the
 * poweroff that `hv.poweroff_after=N` on the kernel command line asks for. After READY it runs each
 * line it reads on ttyS0 with sh and prints the output, then a line GUEST_CMD_DONE (no echo).
 * Serial lines end in "\r\n".
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { repoRoot } from "./procs.js";

const run = promisify(execFile);

export const GUEST_READY_MARKER = "HYPERVISOR-GUEST-READY";
export const GUEST_POWEROFF_MARKER = "HYPERVISOR-GUEST-POWEROFF";
export const GUEST_EXIT_MARKER = "HYPERVISOR-GUEST-EXIT";
export const GUEST_CMD_DONE = "HYPERVISOR-GUEST-CMD-DONE";
/** Printed on the serial console when Ctrl-Alt-Del reaches the guest's keyboard. */
export const GUEST_CTRL_ALT_DEL_MARKER = "HYPERVISOR-GUEST-CTRL-ALT-DEL";

/** The default command line: serial console, no kernel chatter (it slows TCG), no reboot on panic. */
export const GUEST_CMDLINE = "console=ttyS0 panic=-1 quiet";

export interface TestGuest {
  /** The cache directory holding the files. */
  dir: string;
  /** Absolute path of the kernel (vmlinuz). */
  kernel: string;
  /** Absolute path of the initramfs (initrd.img). */
  initrd: string;
  /** Default kernel command line; append `hv.poweroff_after=N` for a guest that exits by itself. */
  cmdline: string;
}

let built: Promise<TestGuest> | undefined;

/** Builds the test guest if needed (once per process; a no-op when the cache is current). */
export function testGuest(): Promise<TestGuest> {
  built ??= (async () => {
    const { stdout } = await run("bash", ["scripts/build-test-guest.sh"], {
      cwd: repoRoot,
      timeout: 600_000,
      maxBuffer: 16 * 1024 * 1024,
    });
    const dir = stdout.trim().split("\n").pop();
    if (!dir) throw new Error("scripts/build-test-guest.sh printed no directory");
    return { dir, kernel: `${dir}/vmlinuz`, initrd: `${dir}/initrd.img`, cmdline: GUEST_CMDLINE };
  })();
  // A failed build is not cached: the next test file may try again.
  built.catch(() => (built = undefined));
  return built;
}

/**
 * A libvirt VM's spec file booting the test guest's kernel and initrd from the image directory
 * (as `instance create -f` takes it): 1 vCPU, 256 MiB.
 */
export function guestVmYaml(name: string, cmdline: string): string {
  return [
    `name: ${name}`,
    "spec:",
    "  driver: libvirt",
    "  vcpus: 1",
    "  memoryMib: 256",
    "  kernel: vmlinuz",
    "  initrd: initrd.img",
    `  cmdline: ${JSON.stringify(cmdline)}`,
    "",
  ].join("\n");
}
