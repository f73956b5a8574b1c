/*
 * Scheduler v0: a pure function from a read-only snapshot to a plan (Nomad's feasibility →
 * rank → plan pipeline). It does no I/O, so it is tested with tables, fast; the controller that
 * calls it writes the plan with revision-compared transactions.
 *
 *   instances (oldest first) ──► feasible nodes ──► score ──► best node ──► reserve in snapshot
 *                                      │
 *                                      └─ none: a message counting why, per reason
 */

export type Algorithm = "binpack" | "spread";

export interface NodeView {
  name: string;
  labels: Record<string, string>;
  ready: boolean;
  cordoned: boolean;
  /** Driver name → healthy. */
  drivers: Record<string, boolean>;
  capacity: { vcpus: number; memoryMib: number; diskGib: number };
  allocated: { vcpus: number; memoryMib: number; diskGib: number; count: number };
}

export interface PlacementRequest {
  name: string;
  driver: string;
  vcpus: number;
  memoryMib: number;
  diskGib: number;
  nodeSelector: Record<string, string>;
}

export interface Placement {
  instance: string;
  node: string;
}

export interface Unplaced {
  instance: string;
  /** e.g. "0/12 nodes available: 7 insufficient memory, 3 cordoned, 2 no driver libvirt". */
  message: string;
  reasons: Record<string, number>;
}

export interface Plan {
  placements: Placement[];
  unplaced: Unplaced[];
}

/** The first filter a node fails, or undefined if it can take the request. */
export function infeasibility(n: NodeView, r: PlacementRequest): string | undefined {
  if (!n.ready) return "not ready";
  if (n.cordoned) return "cordoned";
  const healthy = n.drivers[r.driver];
  if (healthy === undefined) return `no driver ${r.driver}`;
  if (!healthy) return `driver ${r.driver} unhealthy`;
  for (const [k, v] of Object.entries(r.nodeSelector)) {
    if (n.labels[k] !== v) return "node selector mismatch";
  }
  if (n.allocated.vcpus + r.vcpus > n.capacity.vcpus) return "insufficient cpu";
  if (n.allocated.memoryMib + r.memoryMib > n.capacity.memoryMib) return "insufficient memory";
  if (r.diskGib > 0 && n.allocated.diskGib + r.diskGib > n.capacity.diskGib) return "insufficient disk";
  return undefined;
}

/**
 * Higher is better. Binpack prefers the fullest node that still fits (fewer, fuller hosts);
 * spread the emptiest (even load). Both use the mean of CPU and memory utilisation after placement.
 */
export function score(n: NodeView, r: PlacementRequest, algorithm: Algorithm): number {
  const cpu = n.capacity.vcpus > 0 ? (n.allocated.vcpus + r.vcpus) / n.capacity.vcpus : 1;
  const mem = n.capacity.memoryMib > 0 ? (n.allocated.memoryMib + r.memoryMib) / n.capacity.memoryMib : 1;
  const util = (cpu + mem) / 2;
  return algorithm === "binpack" ? util : 1 - util;
}

export function schedule(nodes: readonly NodeView[], requests: readonly PlacementRequest[], algorithm: Algorithm): Plan {
  // Work on copies of the allocations: the snapshot stays read-only for the caller.
  const views = nodes
    .map((n) => ({ ...n, allocated: { ...n.allocated } }))
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const plan: Plan = { placements: [], unplaced: [] };
  for (const r of requests) {
    let best: (typeof views)[number] | undefined;
    let bestScore = -Infinity;
    const reasons: Record<string, number> = {};
    for (const n of views) {
      const why = infeasibility(n, r);
      if (why) {
        reasons[why] = (reasons[why] ?? 0) + 1;
        continue;
      }
      const s = score(n, r, algorithm);
      if (s > bestScore) {
        best = n;
        bestScore = s;
      }
    }
    if (!best) {
      plan.unplaced.push({ instance: r.name, message: explain(views.length, reasons), reasons });
      continue;
    }
    best.allocated.vcpus += r.vcpus;
    best.allocated.memoryMib += r.memoryMib;
    best.allocated.diskGib += r.diskGib;
    best.allocated.count++;
    plan.placements.push({ instance: r.name, node: best.name });
  }
  return plan;
}

export function explain(total: number, reasons: Record<string, number>): string {
  if (total === 0) return "0/0 nodes available: no nodes registered";
  const parts = Object.entries(reasons)
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
    .map(([why, n]) => `${n} ${why}`);
  return `0/${total} nodes available: ${parts.join(", ")}`;
}
