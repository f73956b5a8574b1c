/*
 * From records to the scheduler's plain views (scheduler.ts knows no protobuf): nodes with their
 * readiness, allocation, taints, reservation and host access per driver; pending instances as
 * requests (with the host network or bridge their driver_config asks for), with empty group
 * selectors resolved to the instance's own labels; placed instances for group constraints.
 */
import { type Instance, LabelOperator, Strategy, TaintEffect, TolerationOperator } from "../../api/gen/hypervisor/v1/instance_pb.js";
import type { Node } from "../../api/gen/hypervisor/v1/node_pb.js";
import { allocationTotals, keys, refOf } from "../../pkg/cluster/state/index.js";
import { hostAccessRequest } from "../../pkg/compute/driver/index.js";
import type { Informers } from "./context.js";
import {
  type Algorithm,
  type LabelOp,
  NODE_LABEL,
  type NodeView,
  type PlacedView,
  type PlacementRequest,
  type Requirement,
  type TaintEffect as Effect,
} from "./scheduler.js";

const OPS: Record<LabelOperator, LabelOp | undefined> = {
  [LabelOperator.UNSPECIFIED]: undefined,
  [LabelOperator.IN]: "in",
  [LabelOperator.NOT_IN]: "notin",
  [LabelOperator.EXISTS]: "exists",
  [LabelOperator.DOES_NOT_EXIST]: "doesnotexist",
};

export function effectOf(e: TaintEffect): Effect | undefined {
  return e === TaintEffect.NO_SCHEDULE ? "NoSchedule" : e === TaintEffect.PREFER_NO_SCHEDULE ? "PreferNoSchedule" : undefined;
}

export function nodeView(n: Node, informers: Informers): NodeView {
  const a = informers.allocations.get(keys.allocation(n.name));
  return {
    name: n.name,
    labels: n.labels,
    ready: informers.alive.get(keys.alive(n.name)) !== undefined,
    cordoned: n.cordoned,
    drivers: Object.fromEntries(n.drivers.map((d) => [d.name, d.healthy])),
    // Only drivers that allow something: most nodes have none, and their view stays small.
    ...(n.drivers.some((d) => d.hostAccess)
      ? {
          hostAccess: Object.fromEntries(
            n.drivers.flatMap((d) =>
              d.hostAccess ? [[d.name, { hostNetwork: d.hostAccess.hostNetwork, bridges: d.hostAccess.bridges }]] : [],
            ),
          ),
        }
      : {}),
    capacity: resources(n.capacity),
    reserved: resources(n.reserved),
    allocated: allocationTotals(a?.value),
    taints: n.taints.flatMap((t) => {
      const effect = effectOf(t.effect);
      return effect ? [{ key: t.key, value: t.value, effect }] : [];
    }),
  };
}

function resources(r: { vcpus: number; memoryMib: bigint; diskGib: bigint } | undefined) {
  return { vcpus: r?.vcpus ?? 0, memoryMib: Number(r?.memoryMib ?? 0n), diskGib: Number(r?.diskGib ?? 0n) };
}

const requirement = (q: { key: string; operator: LabelOperator; values: string[] }): Requirement => ({
  key: q.key,
  op: OPS[q.operator] ?? "exists",
  values: q.values,
});

/** The scheduler's view of an instance's spec (validated on create: operators are set). */
export function placementRequest(i: Instance): PlacementRequest {
  const spec = i.spec!;
  const p = spec.placement;
  const group = (s: Record<string, string>) => (Object.keys(s).length ? s : i.labels);
  const host = hostAccessRequest(spec.driverConfig);
  return {
    // The ref: names are unique only within a project.
    name: refOf(i),
    driver: spec.driver,
    ...(host.hostNetwork || host.bridge !== undefined ? { hostAccess: host } : {}),
    vcpus: spec.vcpus,
    memoryMib: Number(spec.memoryMib),
    diskGib: Number(spec.diskGib),
    nodeSelector: spec.nodeSelector,
    labels: i.labels,
    requirements: p?.nodeRequirements.map(requirement) ?? [],
    tolerations:
      p?.tolerations.map((t) => ({
        key: t.key,
        op: t.operator === TolerationOperator.EXISTS ? ("exists" as const) : ("equal" as const),
        value: t.value,
        ...(effectOf(t.effect) ? { effect: effectOf(t.effect) } : {}),
      })) ?? [],
    affinity:
      p?.affinity.map((a) => ({
        selector: group(a.matchLabels),
        topologyKey: a.topologyKey || NODE_LABEL,
        anti: a.anti,
        required: a.required,
        weight: a.weight,
      })) ?? [],
    spread:
      p?.spread.map((s) => ({
        topologyKey: s.topologyKey,
        maxSkew: s.maxSkew || 1,
        selector: group(s.matchLabels),
        bestEffort: s.bestEffort,
      })) ?? [],
    maxPerNode: p?.maxPerNode ?? 0,
    maxPerNodeSelector: group(p?.maxPerNodeSelector ?? {}),
    ...(strategyOf(p?.strategy) ? { strategy: strategyOf(p?.strategy) } : {}),
    preferences: p?.preferences.map((x) => ({ requirement: requirement(x.requirement!), weight: x.weight })) ?? [],
  };
}

function strategyOf(s: Strategy | undefined): Algorithm | undefined {
  return s === Strategy.BINPACK ? "binpack" : s === Strategy.SPREAD ? "spread" : undefined;
}

/** Whether placing r needs the instances already placed (group constraints). */
export function needsGroups(r: PlacementRequest): boolean {
  return Boolean(r.maxPerNode || r.affinity?.length || r.spread?.length);
}

/**
 * Every instance the scheduler has put on a node, deleting ones included (they hold the node until
 * gone), but `except`.
 */
export function placedViews(informers: Informers, except = ""): PlacedView[] {
  const out: PlacedView[] = [];
  for (const { value } of informers.instances.items.values()) {
    const node = value.status?.node;
    if (node && refOf(value) !== except) out.push({ node, labels: value.labels });
  }
  return out;
}
