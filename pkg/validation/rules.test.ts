// The shared input rules as tables: the words the server, the ctl and the UI all use.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  checkCount,
  checkLabels,
  checkMemory,
  checkName,
  checkStopTimeout,
  checkTailBytes,
  checkText,
  checkTextList,
  checkVcpus,
  LIMITS,
  parseLabels,
} from "./rules.js";

describe("input rules", () => {
  const cases: [string, string | undefined, string | RegExp | undefined][] = [
    ["name ok", checkName("name", "web-1"), undefined],
    ["name empty", checkName("name", ""), "name: is required"],
    ["name upper", checkName("name", "Web"), /^name: "Web" is not a valid name/],
    ["name digit first", checkName("name", "1web"), /^name: "1web" is not a valid name/],
    ["vcpus 0", checkVcpus(0), "spec.vcpus: is required and must be at least 1"],
    ["vcpus max", checkVcpus(LIMITS.maxVcpus), undefined],
    ["vcpus over", checkVcpus(1025), "spec.vcpus: 1025 vCPUs is more than the maximum of 1024 vCPUs"],
    ["memory 1 MiB (the API's floor)", checkMemory(1n), undefined],
    ["memory under a form's floor", checkMemory(8, 16), "spec.memory_mib: must be at least 16 MiB"],
    ["memory over", checkMemory(1n << 60n), /^spec\.memory_mib: \d+ MiB is more than the maximum of 16777216 MiB$/],
    ["count 0", checkCount(0), "count: expected 1 to 100"],
    ["count 101", checkCount(101), "count: expected 1 to 100"],
    ["stop timeout 0 (driver default)", checkStopTimeout("timeout_seconds", 0), undefined],
    ["stop timeout an hour", checkStopTimeout("timeout_seconds", 3600), undefined],
    [
      "stop timeout over",
      checkStopTimeout("timeout_seconds", 3601),
      "timeout_seconds: 3601 is more than the maximum of 3600 seconds (an hour)",
    ],
    ["stop timeout uint32 max", checkStopTimeout("t", 4_294_967_295), /^t: 4294967295 is more than/],
    ["tail 1 GiB", checkTailBytes("tail_bytes", 1n << 30n), undefined],
    ["tail over", checkTailBytes("tail_bytes", (1n << 30n) + 1n), /^tail_bytes: 1073741825 is more than the maximum of 1073741824 bytes/],
    ["text nul", checkText("spec.image", "a\u0000b", 1024), 'spec.image: "a\\u0000b" contains control characters'],
    ["text tab ok", checkText("spec.cmdline", "a\tb\n", 4096), undefined],
    ["text bytes (not characters)", checkText("spec.image", "é".repeat(513), 1024), "spec.image: is 1026 bytes; at most 1024 allowed"],
    [
      "list too long",
      checkTextList(
        "spec.args",
        Array.from({ length: 257 }, () => "a"),
      ),
      "spec.args: has 257 entries; at most 256 allowed",
    ],
    [
      "label reserved",
      checkLabels("labels", { "hypervisor.io/x": "1" }, "hypervisor.io/"),
      /^labels\["hypervisor.io\/x"\]: keys under "hypervisor.io\/" are reserved/,
    ],
    ["label value", checkLabels("labels", { app: "<b>" }), /^labels\["app"\]: value "<b>" is not a valid label value/],
  ];
  for (const [what, got, want] of cases)
    it(what, () => {
      if (want === undefined) assert.equal(got, undefined);
      else if (typeof want === "string") assert.equal(got, want);
      else assert.match(got ?? "", want);
    });

  it("parses label text the way the API's selector reads it", () => {
    assert.deepEqual(parseLabels("labels", "app=web, tier=front\nzone=a"), { labels: { app: "web", tier: "front", zone: "a" } });
    assert.equal(parseLabels("labels", "oops").error, 'labels: "oops" is not of the form key=value');
    const many = Array.from({ length: 65 }, (_, i) => `k${i}=v`).join(",");
    assert.equal(parseLabels("labels", many).error, "labels: has 65 entries; at most 64 allowed");
  });
});
