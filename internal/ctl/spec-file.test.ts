// Spec files: both field spellings, short enum names, and errors that name the file and field.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LabelOperator, RestartPolicy, Strategy, TaintEffect, TolerationOperator } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { CliError, ExitCode } from "./errors.js";
import { parseSpec, readSpecFile } from "./spec-file.js";

function usage(text: string, pattern: RegExp): void {
  assert.throws(
    () => parseSpec(text, "spec.yaml"),
    (e: unknown) => {
      assert.ok(e instanceof CliError, String(e));
      assert.equal(e.exitCode, ExitCode.Usage);
      assert.match(e.message, pattern);
      return true;
    },
  );
}

describe("spec files", () => {
  it("reads YAML with camelCase fields", () => {
    const req = parseSpec(
      `name: web-1
labels: {app: web}
spec:
  driver: containerd
  image: docker.io/library/nginx:1
  vcpus: 2
  memoryMib: 512
  command: [nginx, -g, "daemon off;"]
  env: {PORT: "8080"}
  nodeSelector: {zone: a}
  restartPolicy: RESTART_POLICY_ALWAYS
  driverConfig: {network: bridge}
`,
      "spec.yaml",
    );
    assert.equal(req.name, "web-1");
    assert.deepEqual(req.labels, { app: "web" });
    assert.equal(req.spec?.memoryMib, 512n);
    assert.deepEqual(req.spec?.command, ["nginx", "-g", "daemon off;"]);
    assert.deepEqual(req.spec?.env, { PORT: "8080" });
    assert.deepEqual(req.spec?.nodeSelector, { zone: "a" });
    assert.deepEqual(req.spec?.driverConfig, { network: "bridge" });
    assert.equal(req.spec?.restartPolicy, RestartPolicy.ALWAYS);
  });

  it("reads JSON with the proto's snake_case names and short enum values", () => {
    const req = parseSpec(
      JSON.stringify({
        name: "vm",
        spec: { driver: "libvirt", memory_mib: "1024", disk_gib: 20, restart_policy: "on-failure", node_selector: { a: "b" } },
      }),
      "spec.json",
    );
    assert.equal(req.spec?.memoryMib, 1024n);
    assert.equal(req.spec?.diskGib, 20n);
    assert.equal(req.spec?.restartPolicy, RestartPolicy.ON_FAILURE);
    assert.deepEqual(req.spec?.nodeSelector, { a: "b" });
  });

  it("rejects an unknown field, naming its path", () => {
    usage(
      "name: x\nspec:\n  driver: mock\n  memmoryMib: 512\n",
      /^spec\.yaml: unknown field "spec\.memmoryMib" \(InstanceSpec fields: driver, image, vcpus, memoryMib/,
    );
    usage("name: x\nkind: Instance\n", /unknown field "kind"/);
  });

  it("rejects a wrong type, naming the field", () => {
    usage("name: x\nspec: {driver: mock, vcpus: two}\n", /^spec\.yaml: spec\.vcpus: expected number \(uint32\), got "two"$/);
    usage("name: x\nspec: {vcpus: -1}\n", /spec\.vcpus: .*out of range/);
    usage("name: x\nspec: {command: run}\n", /spec\.command: /);
    usage("name: x\nspec: []\n", /spec: expected a mapping, got a list/);
    usage("- a\n", /the top level: expected a mapping/);
  });

  it("names the map entry and hints at quoting for unquoted YAML numbers", () => {
    usage("name: x\nspec: {env: {PORT: 8080}}\n", /spec\.env\.PORT: expected string, got 8080 \(quote it in YAML\)/);
  });

  it("rejects unknown enum values with the valid ones", () => {
    usage(
      "name: x\nspec: {restartPolicy: sometimes}\n",
      /spec\.restartPolicy: unknown value "sometimes" \(one of never, on-failure, always\)/,
    );
  });

  it("reads placement terms in lists, with Kubernetes-style short enum names, and names a bad one by index", () => {
    const r = parseSpec(
      [
        "name: web-1",
        "labels: {app: web}",
        "spec:",
        "  driver: mock",
        "  vcpus: 1",
        "  memoryMib: 64",
        "  placement:",
        "    nodeRequirements:",
        "      - {key: zone, operator: NotIn, values: [c]}",
        "      - {key: ssd, operator: exists}",
        "    tolerations: [{key: dedicated, operator: Equal, value: db, effect: NoSchedule}]",
        "    affinity: [{anti: true, required: true}]",
        "    spread: [{topologyKey: zone, maxSkew: 1}]",
        "    maxPerNode: 2",
        "    strategy: spread",
        "    preferences: [{requirement: {key: tier, operator: in, values: [fast]}, weight: 30}]",
        "",
      ].join("\n"),
      "spec.yaml",
    );
    const p = r.spec?.placement;
    assert.deepEqual(
      p?.nodeRequirements.map((q) => [q.key, q.operator, q.values]),
      [
        ["zone", LabelOperator.NOT_IN, ["c"]],
        ["ssd", LabelOperator.EXISTS, []],
      ],
    );
    assert.equal(p?.tolerations[0]?.effect, TaintEffect.NO_SCHEDULE);
    assert.equal(p?.tolerations[0]?.operator, TolerationOperator.EQUAL);
    assert.equal(p?.affinity[0]?.anti, true);
    assert.equal(p?.spread[0]?.topologyKey, "zone");
    assert.equal(p?.maxPerNode, 2);
    assert.equal(p?.strategy, Strategy.SPREAD);
    assert.equal(p?.preferences[0]?.requirement?.operator, LabelOperator.IN);
    usage(
      "name: x\nspec: {placement: {nodeRequirements: [{key: a, operator: exists}, {key: b, operator: sometimes}]}}\n",
      /spec\.placement\.nodeRequirements\[1\]\.operator: unknown value "sometimes" \(one of in, not-in, exists, does-not-exist\)/,
    );
  });

  it("rejects empty files, bad YAML and duplicate keys", () => {
    usage("", /the file is empty/);
    usage("name: [unclosed\n", /invalid YAML/);
    usage("name: a\nname: b\n", /invalid YAML/);
  });

  it("reports a missing file as a usage error naming it", async () => {
    const dir = await mkdtemp(join(tmpdir(), "hv-ctl-spec-"));
    try {
      await assert.rejects(
        readSpecFile(join(dir, "nope.yaml")),
        (e: unknown) => e instanceof CliError && /nope\.yaml: ENOENT/.test(e.message),
      );
      await writeFile(join(dir, "ok.yaml"), "name: ok\nspec: {driver: mock}\n");
      assert.equal((await readSpecFile(join(dir, "ok.yaml"))).name, "ok");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
