// How API values read on screen: phase and condition names without their enum prefixes, sizes in
// MiB/GiB, times relative to now.
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { Phase, type Instance } from "../../../api/gen/hypervisor/v1/instance_pb.js";
import { NodeCondition, type Node } from "../../../api/gen/hypervisor/v1/node_pb.js";

export const PHASES = [Phase.PENDING, Phase.SCHEDULED, Phase.CREATING, Phase.RUNNING, Phase.STOPPING, Phase.STOPPED, Phase.FAILED] as const;

const PHASE_NAMES: Record<Phase, string> = {
  [Phase.UNSPECIFIED]: "Unknown",
  [Phase.PENDING]: "Pending",
  [Phase.SCHEDULED]: "Scheduled",
  [Phase.CREATING]: "Creating",
  [Phase.RUNNING]: "Running",
  [Phase.STOPPING]: "Stopping",
  [Phase.STOPPED]: "Stopped",
  [Phase.FAILED]: "Failed",
};

export function phaseName(p: Phase | undefined): string {
  return PHASE_NAMES[p ?? Phase.UNSPECIFIED] ?? "Unknown";
}

/** The phase as the server counts it in GetCounts ("PHASE_RUNNING") → Phase. */
export function phaseFromKey(key: string): Phase | undefined {
  const v = (Phase as unknown as Record<string, Phase>)[key.replace(/^PHASE_/, "")];
  return typeof v === "number" ? v : undefined;
}

export type Tone = "ok" | "busy" | "idle" | "bad";

export function phaseTone(i: Instance): Tone {
  if (i.deleteTime) return "busy";
  switch (i.status?.phase) {
    case Phase.RUNNING:
      return "ok";
    case Phase.FAILED:
      return "bad";
    case Phase.STOPPED:
      return "idle";
    default:
      return "busy";
  }
}

/** What the list shows as the instance's state: its phase, or "Deleting" once deletion is asked. */
export function instanceState(i: Instance): string {
  return i.deleteTime ? "Deleting" : phaseName(i.status?.phase);
}

/** Phases an instance passes through on its way somewhere else. */
export function isTransitional(i: Instance): boolean {
  const p = i.status?.phase;
  return !!i.deleteTime || p === Phase.PENDING || p === Phase.SCHEDULED || p === Phase.CREATING || p === Phase.STOPPING;
}

export function nodeReady(n: Node): boolean {
  return n.condition === NodeCondition.READY;
}

export function conditionName(n: Node): string {
  return n.condition === NodeCondition.READY ? "Ready" : n.condition === NodeCondition.NOT_READY ? "NotReady" : "Unknown";
}

export function mib(v: bigint | number | undefined): string {
  const n = Number(v ?? 0);
  if (n >= 1024 * 1024) return `${trim(n / 1024 / 1024)} TiB`;
  if (n >= 1024) return `${trim(n / 1024)} GiB`;
  return `${n} MiB`;
}

function trim(n: number): string {
  return n.toFixed(n < 10 ? 1 : 0).replace(/\.0$/, "");
}

export function toDate(t: Timestamp | undefined): Date | undefined {
  return t ? new Date(Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6)) : undefined;
}

export function ago(d: Date | undefined, now = Date.now()): string {
  if (!d) return "—";
  const s = Math.max(0, Math.round((now - d.getTime()) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export function clock(d: Date | undefined): string {
  return d ? d.toLocaleTimeString([], { hour12: false }) : "—";
}

export function labelText(labels: Record<string, string>): string {
  return Object.entries(labels)
    .map(([k, v]) => `${k}=${v}`)
    .join(", ");
}
