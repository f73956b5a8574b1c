/*
 * Rendering: aligned tables for people, protobuf JSON (and the same as YAML) for scripts. JSON is
 * `toJson` with the generated schema, so it is exactly what any protobuf client reads and writes
 * (fields at their default value are omitted, int64 are strings); lists are {"items": [...]}.
 */
import { toJson, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import YAML from "yaml";
import { Phase, type Instance, type NodeVerdict } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { NodeCondition, type Node, type Orphan, OrphanReason } from "../../api/gen/hypervisor/v1/node_pb.js";

export const FORMATS = ["table", "json", "yaml"] as const;
export type Format = (typeof FORMATS)[number];

/** Columns padded to their widest cell, separated by three spaces (kubectl's spacing). */
export function table(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  return [headers, ...rows].map((r) => formatRow(r, widths)).join("\n") + "\n";
}

export function formatRow(row: readonly string[], widths: readonly number[]): string {
  // The last column is not padded, so lines carry no trailing spaces.
  return row
    .map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
    .join("   ")
    .trimEnd();
}

/** "Key:   value" lines, the values aligned (cluster status, whoami). */
export function fields(lines: readonly (readonly [string, string])[]): string {
  const width = Math.max(...lines.map(([k]) => k.length)) + 3;
  return lines.map(([k, v]) => `${(k + ":").padEnd(width)}${v}`).join("\n") + "\n";
}

/** A value already in JSON form (e.g. from `toJson`) as the chosen structured format. */
export function structured(value: unknown, format: "json" | "yaml"): string {
  return format === "json" ? JSON.stringify(value, null, 2) + "\n" : YAML.stringify(value);
}

export function message<Desc extends DescMessage>(schema: Desc, msg: MessageShape<Desc>, format: "json" | "yaml"): string {
  return structured(toJson(schema, msg), format);
}

export function list<Desc extends DescMessage>(schema: Desc, items: readonly MessageShape<Desc>[], format: "json" | "yaml"): string {
  return structured({ items: items.map((i) => toJson(schema, i)) }, format);
}

/** kubectl's AGE: two significant units at most, coarser as the age grows. */
export function age(t: Timestamp | undefined, now: Date): string {
  if (!t) return "<unknown>";
  return span(Math.floor((now.getTime() - timestampDate(t).getTime()) / 1000));
}

/** A number of seconds as AGE shows it ("45s", "3h10m", "89d"); also for time left. */
export function span(seconds: number): string {
  const s = Math.max(0, seconds);
  if (s < 120) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 10) return s % 60 === 0 ? `${m}m` : `${m}m${s % 60}s`;
  if (m < 180) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 8) return m % 60 === 0 ? `${h}h` : `${h}h${m % 60}m`;
  if (h < 48) return `${h}h`;
  const d = Math.floor(h / 24);
  if (d < 8) return h % 24 === 0 ? `${d}d` : `${d}d${h % 24}h`;
  return `${d}d`;
}

/** MiB as the largest whole binary unit: 512 → "512Mi", 2048 → "2Gi", 1536 → "1536Mi". */
export function mebibytes(mib: bigint): string {
  if (mib === 0n) return "0";
  if (mib % (1024n * 1024n) === 0n) return `${mib / (1024n * 1024n)}Ti`;
  if (mib % 1024n === 0n) return `${mib / 1024n}Gi`;
  return `${mib}Mi`;
}

/** "PHASE_RUNNING" → "Running": the spelling the server uses in its messages. */
export function phaseName(p: Phase | undefined): string {
  const n = Phase[p ?? Phase.UNSPECIFIED] ?? "UNSPECIFIED";
  return n === "UNSPECIFIED" ? "Unknown" : n.charAt(0) + n.slice(1).toLowerCase();
}

export const INSTANCE_COLUMNS = ["NAME", "PHASE", "NODE", "DRIVER", "VCPUS", "MEMORY", "AGE"] as const;

/** A row of the instance table; across projects the name is "<project>/<name>". */
export function instanceRow(i: Instance, now: Date, withProject = false): string[] {
  // A pending deletion matters more than the last phase the agent reported.
  const phase = i.deleteTime ? "Deleting" : phaseName(i.status?.phase);
  return [
    withProject ? `${i.project || "default"}/${i.name}` : i.name,
    phase,
    i.status?.node || "<none>",
    i.spec?.driver ?? "",
    String(i.spec?.vcpus ?? 0),
    mebibytes(i.spec?.memoryMib ?? 0n),
    age(i.createTime, now),
  ];
}

export function instanceTable(instances: readonly Instance[], now: Date, withProject = false): string {
  return table(
    INSTANCE_COLUMNS,
    instances.map((i) => instanceRow(i, now, withProject)),
  );
}

export const NODE_COLUMNS = ["NAME", "STATUS", "DRIVERS", "CPU", "MEMORY", "INSTANCES", "AGE"] as const;

/** "Ready", "NotReady", "Unknown", with ",SchedulingDisabled" when cordoned (as kubectl shows it). */
export function nodeStatus(n: Node): string {
  const ready = n.condition === NodeCondition.READY ? "Ready" : n.condition === NodeCondition.NOT_READY ? "NotReady" : "Unknown";
  return n.draining ? `${ready},Draining` : n.cordoned ? `${ready},SchedulingDisabled` : ready;
}

/** Reserved/total: what is left to schedule is what an operator looks for first. */
function usage(total: bigint, allocatable: bigint | undefined, unit: (v: bigint) => string): string {
  if (allocatable === undefined) return unit(total);
  const used = total > allocatable ? total - allocatable : 0n;
  return `${unit(used)}/${unit(total)}`;
}

export function nodeRow(n: Node, now: Date): string[] {
  const drivers = n.drivers.map((d) => (d.healthy ? d.name : `${d.name}(unhealthy)`)).join(",");
  const cap = n.capacity;
  const alloc = n.allocatable;
  return [
    n.name,
    nodeStatus(n),
    drivers || "<none>",
    usage(BigInt(cap?.vcpus ?? 0), alloc ? BigInt(alloc.vcpus) : undefined, String),
    usage(cap?.memoryMib ?? 0n, alloc?.memoryMib, mebibytes),
    String(n.instanceCount),
    age(n.registerTime, now),
  ];
}

export function nodeTable(nodes: readonly Node[], now: Date): string {
  return table(
    NODE_COLUMNS,
    nodes.map((n) => nodeRow(n, now)),
  );
}

/** NAME DRIVER STATE REASON DISK AGE MESSAGE, one row per orphan. */
export function orphanTable(orphans: readonly Orphan[], now: Date): string {
  return table(
    ["NAME", "DRIVER", "STATE", "REASON", "DISK", "AGE", "MESSAGE"],
    orphans.map((o) => [
      o.name,
      o.driver,
      o.state,
      (OrphanReason[o.reason] ?? "UNSPECIFIED").toLowerCase().replace(/_/g, "-"),
      o.localDisk ? "local" : "-",
      age(o.foundTime, now),
      o.message,
    ]),
  );
}

/** Phases in lifecycle order, as phaseName spells them, for sorting counts. */
export const PHASE_ORDER = ["Pending", "Scheduled", "Creating", "Running", "Stopping", "Stopped", "Failed", "Unknown"];

/** NODE VERDICT SCORE DETAILS: feasible nodes with their score parts, the others with the reason. */
export function verdictTable(nodes: readonly NodeVerdict[]): string {
  const num = (x: number) => (Number.isInteger(x) ? String(x) : x.toFixed(1));
  return table(
    ["NODE", "VERDICT", "SCORE", "DETAILS"],
    nodes.map((v) =>
      v.feasible
        ? [
            v.node,
            "feasible",
            num(v.score),
            Object.entries(v.scoreParts)
              .map(([k, x]) => `${k} ${num(x)}`)
              .join(", "),
          ]
        : [v.node, "no", "-", v.reason],
    ),
  );
}
