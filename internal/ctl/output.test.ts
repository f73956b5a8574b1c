// Rendering: aligned tables, protobuf JSON that round-trips through the schema, YAML equal to it.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { create, fromJson, type JsonValue } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import YAML from "yaml";
import { InstanceSchema, Phase } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { NodeCondition, NodeSchema } from "../../api/gen/hypervisor/v1/node_pb.js";
import * as output from "./output.js";
import { FIXED_NOW } from "./testing.js";

const ago = (seconds: number) => timestampFromDate(new Date(FIXED_NOW.getTime() - seconds * 1000));

const web = create(InstanceSchema, {
  name: "web-1",
  labels: { app: "web" },
  spec: { driver: "containerd", image: "docker.io/library/nginx:1", vcpus: 2, memoryMib: 2048n },
  status: { phase: Phase.RUNNING, node: "node-a" },
  createTime: ago(300),
  generation: 3n,
});
const db = create(InstanceSchema, {
  name: "database-primary",
  spec: { driver: "libvirt", vcpus: 16, memoryMib: 1536n },
  status: { phase: Phase.PENDING },
  createTime: ago(3 * 86400 + 7200),
});

describe("tables", () => {
  it("aligns instance columns to the widest cell with no trailing spaces", () => {
    const text = output.instanceTable([web, db], FIXED_NOW);
    assert.equal(
      text,
      [
        "NAME               PHASE     NODE     DRIVER       VCPUS   MEMORY   AGE",
        "web-1              Running   node-a   containerd   2       2Gi      5m",
        "database-primary   Pending   <none>   libvirt      16      1536Mi   3d2h",
        "",
      ].join("\n"),
    );
  });

  it("shows a pending deletion instead of the last phase", () => {
    const deleting = create(InstanceSchema, { ...web, deleteTime: ago(1) });
    assert.equal(output.instanceRow(deleting, FIXED_NOW)[1], "Deleting");
  });

  it("prints the header alone for an empty list", () => {
    assert.equal(output.instanceTable([], FIXED_NOW), "NAME   PHASE   NODE   DRIVER   VCPUS   MEMORY   AGE\n");
  });

  it("shows node readiness, cordon, unhealthy drivers and reserved/total capacity", () => {
    const a = create(NodeSchema, {
      name: "node-a",
      condition: NodeCondition.READY,
      cordoned: true,
      drivers: [
        { name: "libvirt", healthy: true },
        { name: "containerd", healthy: false },
      ],
      capacity: { vcpus: 8, memoryMib: 16384n },
      allocatable: { vcpus: 6, memoryMib: 14336n },
      instanceCount: 2,
      registerTime: ago(90),
    });
    const b = create(NodeSchema, { name: "node-b", condition: NodeCondition.NOT_READY, capacity: { vcpus: 4, memoryMib: 8192n } });
    assert.equal(
      output.nodeTable([a, b], FIXED_NOW),
      [
        "NAME     STATUS                     DRIVERS                         CPU   MEMORY     INSTANCES   AGE",
        "node-a   Ready,SchedulingDisabled   libvirt,containerd(unhealthy)   2/8   2Gi/16Gi   2           90s",
        "node-b   NotReady                   <none>                          4     8Gi        0           <unknown>",
        "",
      ].join("\n"),
    );
  });

  it("formats ages like kubectl", () => {
    const cases: [number, string][] = [
      [0, "0s"],
      [119, "119s"],
      [150, "2m30s"],
      [600, "10m"],
      [3 * 3600 + 600, "3h10m"],
      [30 * 3600, "30h"],
      [3 * 86400, "3d"],
      [40 * 86400, "40d"],
    ];
    for (const [s, want] of cases) assert.equal(output.age(ago(s), FIXED_NOW), want, `${s}s`);
  });
});

describe("structured output", () => {
  it("emits protobuf JSON that parses back to the same message", () => {
    const text = output.message(InstanceSchema, web, "json");
    const json = JSON.parse(text) as Record<string, unknown>;
    assert.equal((json["status"] as Record<string, unknown>)["phase"], "PHASE_RUNNING");
    assert.equal((json["spec"] as Record<string, unknown>)["memoryMib"], "2048");
    assert.equal(json["generation"], "3");
    assert.ok(text.endsWith("}\n"));
    assert.equal(fromJson(InstanceSchema, JSON.parse(text) as JsonValue).name, "web-1");
  });

  it("wraps lists as {items: [...]}", () => {
    const json = JSON.parse(output.list(InstanceSchema, [web, db], "json")) as { items: { name: string }[] };
    assert.deepEqual(
      json.items.map((i) => i.name),
      ["web-1", "database-primary"],
    );
    assert.deepEqual(JSON.parse(output.list(InstanceSchema, [], "json")), { items: [] });
  });

  it("renders YAML with the same content as JSON", () => {
    const yaml = output.list(InstanceSchema, [web], "yaml");
    assert.deepEqual(YAML.parse(yaml), JSON.parse(output.list(InstanceSchema, [web], "json")));
    assert.match(yaml, /^items:\n {2}- name: web-1\n/);
  });
});
