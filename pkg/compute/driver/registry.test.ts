// The registry's checks as tables: what each driver takes and refuses, and that the drivers and
// the registry agree (capabilities, config keys), so neither can drift from the other.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { containerdCapabilities } from "../containerd/index.js";
import { libvirtCapabilities } from "../libvirt/index.js";
import { createMockDriver, parseBehaviour } from "../mock/index.js";
import { checkDriverSpec, DRIVER_NAMES, DRIVER_REGISTRY, driverEntry, type SpecShape } from "./registry.js";

const blank: SpecShape = {
  image: "",
  kernel: "",
  initrd: "",
  cmdline: "",
  command: [],
  args: [],
  env: {},
  secretEnv: {},
  driverConfig: {},
};
const spec = (s: Partial<SpecShape>): SpecShape => ({ ...blank, ...s });

describe("driver registry", () => {
  it("names exactly the drivers that exist, sorted", () => {
    assert.deepEqual(DRIVER_NAMES, ["containerd", "libvirt", "mock"]);
    assert.equal(driverEntry("firecracker"), undefined);
    assert.equal(driverEntry("toString"), undefined, "no inherited property is a driver");
    assert.equal(driverEntry("libvirt")?.kind, "vm");
  });

  it("is where the drivers take their capabilities and config keys from", () => {
    assert.deepEqual(libvirtCapabilities, DRIVER_REGISTRY.libvirt.capabilities);
    assert.deepEqual(containerdCapabilities, DRIVER_REGISTRY.containerd.capabilities);
    assert.deepEqual(createMockDriver({}).capabilities, DRIVER_REGISTRY.mock.capabilities);
    // Every value the registry accepts for a mock key, the mock driver accepts too.
    assert.doesNotThrow(() => parseBehaviour("x", { run_for: "1m30s", exit_code: "-255", start_error: "boom", stop_delay: "500ms" }));
  });

  const accepted: [string, string, Partial<SpecShape>][] = [
    ["libvirt", "disk image", { image: "debian.qcow2" }],
    ["libvirt", "direct kernel", { kernel: "vmlinuz", initrd: "initrd.img", cmdline: "console=ttyS0" }],
    ["libvirt", "user network", { image: "d.qcow2", driverConfig: { network: "user" } }],
    ["libvirt", "host bridge (the node decides whether it allows it)", { image: "d.qcow2", driverConfig: { network: "bridge:br0" } }],
    ["containerd", "image and command", { image: "alpine", command: ["sh"], args: ["-c", "true"], env: { A: "1" } }],
    ["containerd", "host network (the node decides whether it allows it)", { image: "alpine", driverConfig: { network: "host" } }],
    ["containerd", "a secret variable and a pids limit", { image: "alpine", secretEnv: { K: "v" }, driverConfig: { "pids-limit": "77" } }],
    ["mock", "anything", { kernel: "k", command: ["c"], driverConfig: { run_for: "10s", exit_code: "3", start_delay: "1.5h" } }],
  ];
  for (const [driver, what, s] of accepted)
    it(`accepts ${driver}: ${what}`, () => assert.equal(checkDriverSpec(driverEntry(driver)!, spec(s)), undefined));

  const refused: [string, Partial<SpecShape>, string, RegExp][] = [
    ["containerd", { image: "alpine", kernel: "vmlinuz" }, "spec.kernel", /does not take kernel: kernel, initrd and cmdline are for VMs/],
    ["containerd", { image: "alpine", cmdline: "quiet" }, "spec.cmdline", /does not take cmdline/],
    ["containerd", {}, "spec.image", /^is required for the containerd driver$/],
    ["libvirt", { image: "d", env: { A: "1" } }, "spec.env", /does not take env: command, args, env and secret_env are for containers/],
    ["libvirt", { image: "d", secretEnv: { A: "1" } }, "spec.secret_env", /does not take secret_env/],
    ["containerd", { image: "a", driverConfig: { "pids-limit": "0" } }, 'spec.driver_config["pids-limit"]', /is not an integer from 1/],
    ["containerd", { image: "a", driverConfig: { "pids-limit": "many" } }, 'spec.driver_config["pids-limit"]', /is not an integer/],
    ["libvirt", {}, "spec.image", /needs image or kernel/],
    ["libvirt", { image: "d", cmdline: "quiet" }, "spec.cmdline", /^needs spec\.kernel/],
    ["libvirt", { image: "d", driverConfig: { network: "bridge:" } }, 'spec.driver_config["network"]', /^"bridge:" is not user, none/],
    ["libvirt", { image: "d", driverConfig: { network: "bridge:way-too-long-name" } }, 'spec.driver_config["network"]', /is not/],
    [
      "libvirt",
      { image: "d", driverConfig: { cpu: "host" } },
      'spec.driver_config["cpu"]',
      /unknown key for the libvirt driver \(known: network\)/,
    ],
    ["containerd", { image: "a", driverConfig: { network: "user" } }, 'spec.driver_config["network"]', /"user" is not none or host/],
    ["mock", { driverConfig: { exit_code: "256" } }, 'spec.driver_config["exit_code"]', /is not an integer from -255 to 255/],
    ["mock", { driverConfig: { exit_code: "1e3" } }, 'spec.driver_config["exit_code"]', /is not an integer/],
    ["mock", { driverConfig: { run_for: "10" } }, 'spec.driver_config["run_for"]', /is not a duration/],
    ["mock", { driverConfig: { stop_delay: "" } }, 'spec.driver_config["stop_delay"]', /is not a duration/],
  ];
  for (const [driver, s, field, message] of refused)
    it(`refuses ${driver} ${JSON.stringify(s)} naming ${field}`, () => {
      const p = checkDriverSpec(driverEntry(driver)!, spec(s));
      assert.equal(p?.field, field);
      assert.match(p.message, message);
    });

  it("refuses what the mock driver itself refuses", () => {
    const configs: Record<string, string>[] = [{ exit_code: "256" }, { run_for: "10" }, { stop_delay: "" }, { nope: "1" }];
    for (const config of configs) {
      assert.throws(() => parseBehaviour("x", config));
      assert.notEqual(checkDriverSpec(DRIVER_REGISTRY.mock, spec({ driverConfig: config })), undefined);
    }
  });
});
