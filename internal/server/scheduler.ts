/*
 * The scheduler: a pure function from a read-only snapshot to a plan (Nomad's feasibility →
 * rank → plan pipeline). It does no I/O, so it is tested with tables and properties, fast; the
 * controller that calls it writes the plan with revision-compared transactions.
 *
 *   requests (oldest first) ──► feasible nodes ──► score ──► best node ──► reserve in the pass
 *                                      │
 *                                      └─ none: a message counting why, per reason
 *
 * Feasibility, in order (a node's verdict is the first filter it fails): Ready, not cordoned,
 * driver present and healthy, host network or bridge allowed by the node (if asked), node_selector, node requirements (in/notin/exists/doesnotexist),
 * NoSchedule taints tolerated, CPU/memory/disk left after the host's reservation, max per node,
 * required affinity and anti-affinity, required spread (max skew).
 * Score (higher is better): the strategy (binpack: utilisation after placement, spread: its
 * complement; 0..100), + weighted node preferences, ± preferred affinity weights, −50 per
 * untolerated PreferNoSchedule taint, −10 per instance of skew a spread constraint would reach.
 *
 * On large clusters a request stops looking once it has found `feasibleLimit(n)` feasible nodes
 * (as kube-scheduler's percentageOfNodesToScore: 10% of 5,000), starting where the previous
 * request stopped, so the work per placement does not grow with the cluster. A request that fits
 * nowhere has seen every node, so its message counts them all.
 */

import { DENY_ALL, type HostAccessPolicy, type HostAccessRequest, hostAccessRefusal } from "../../pkg/compute/driver/index.js";

export type Algorithm = "binpack" | "spread";

/** The implicit node label: every node has it, with its name as the value. */
export const NODE_LABEL = "hypervisor.dev/node";

export interface Resources {
  vcpus: number;
  memoryMib: number;
  diskGib: number;
}

export type TaintEffect = "NoSchedule" | "PreferNoSchedule";

export interface TaintView {
  key: string;
  value: string;
  effect: TaintEffect;
}

export interface NodeView {
  name: string;
  labels: Record<string, string>;
  ready: boolean;
  cordoned: boolean;
  /** Driver name → healthy. */
  drivers: Record<string, boolean>;
  /** Driver name → what it lets instances use of the host (absent: nothing). */
  hostAccess?: Record<string, HostAccessPolicy>;
  capacity: Resources;
  /** Held back for the host. */
  reserved?: Resources;
  allocated: Resources & { count: number };
  taints?: TaintView[];
}

/** An instance already on a node (Scheduled or later), for affinity, spread and max per node. */
export interface PlacedView {
  node: string;
  labels: Record<string, string>;
}

export type LabelOp = "in" | "notin" | "exists" | "doesnotexist";

export interface Requirement {
  key: string;
  op: LabelOp;
  values: string[];
}

export interface TolerationView {
  key: string;
  op: "equal" | "exists";
  value: string;
  /** Undefined: every effect. */
  effect?: TaintEffect;
}

export interface AffinityView {
  /** Instances whose labels include all of these (empty: every instance). */
  selector: Record<string, string>;
  /** Node label of the domain; NODE_LABEL for the node itself. */
  topologyKey: string;
  anti: boolean;
  required: boolean;
  weight: number;
}

export interface SpreadView {
  topologyKey: string;
  maxSkew: number;
  selector: Record<string, string>;
  bestEffort: boolean;
}

export interface PlacementRequest {
  name: string;
  driver: string;
  /** Host network or a host bridge its driver_config asks for (absent: neither). */
  hostAccess?: HostAccessRequest;
  vcpus: number;
  memoryMib: number;
  diskGib: number;
  nodeSelector: Record<string, string>;
  /** The instance's own labels: counted in groups once placed. */
  labels?: Record<string, string>;
  requirements?: Requirement[];
  tolerations?: TolerationView[];
  affinity?: AffinityView[];
  spread?: SpreadView[];
  /** 0: no limit. */
  maxPerNode?: number;
  maxPerNodeSelector?: Record<string, string>;
  /** Overrides the cluster's algorithm. */
  strategy?: Algorithm;
  preferences?: { requirement: Requirement; weight: number }[];
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

export interface Verdict {
  node: string;
  feasible: boolean;
  reason: string;
  score: number;
  parts: Record<string, number>;
}

export interface ScheduleOptions {
  /** Instances already on nodes; needed by affinity, spread and max per node. */
  placed?: readonly PlacedView[];
  /** Feasible nodes to score per request; default feasibleLimit(nodes). */
  limit?: number;
}

/** How many feasible nodes a request scores: all up to 100 nodes, then a share down to 5%. */
export function feasibleLimit(nodes: number): number {
  if (nodes <= 100) return nodes;
  const percent = Math.max(5, 50 - nodes / 125);
  return Math.max(100, Math.floor((nodes * percent) / 100));
}

export function labelOf(n: NodeView, key: string): string | undefined {
  return key === NODE_LABEL ? n.name : n.labels[key];
}

export function requirementHolds(labels: (key: string) => string | undefined, r: Requirement): boolean {
  const v = labels(r.key);
  switch (r.op) {
    case "in":
      return v !== undefined && r.values.includes(v);
    case "notin":
      return v === undefined || !r.values.includes(v);
    case "exists":
      return v !== undefined;
    case "doesnotexist":
      return v === undefined;
  }
}

export function tolerates(tolerations: readonly TolerationView[], t: TaintView): boolean {
  return tolerations.some(
    (o) =>
      (o.effect === undefined || o.effect === t.effect) &&
      (o.op === "exists" ? o.key === "" || o.key === t.key : o.key === t.key && o.value === t.value),
  );
}

/** Whether `labels` hold every key=value of `selector` (an empty selector matches everything). */
export function labelsMatch(labels: Record<string, string>, selector: Record<string, string>): boolean {
  for (const k in selector) if (labels[k] !== selector[k]) return false;
  return true;
}

const selectorId = (s: Record<string, string>) =>
  Object.keys(s)
    .sort()
    .map((k) => `${k}=${s[k]}`)
    .join(",");

/**
 * Instances per node for label selectors, built on first use of each selector and kept current
 * as the pass places instances.
 */
class Groups {
  private readonly bySelector = new Map<string, { selector: Record<string, string>; perNode: Map<string, number> }>();
  private readonly domains = new Map<string, Map<string, number>>();
  /** Placed during this pass. */
  private readonly added: PlacedView[] = [];

  constructor(
    private readonly placed: readonly PlacedView[],
    /** Built on first use: most passes have no group constraint that needs it. */
    private readonly nodes: () => ReadonlyMap<string, NodeView>,
  ) {}

  /** Matching instances on one node. */
  onNode(selector: Record<string, string>, node: string): number {
    return this.group(selector).perNode.get(node) ?? 0;
  }

  /** Matching instances per value of a node label. */
  perDomain(selector: Record<string, string>, key: string): Map<string, number> {
    const id = `${selectorId(selector)}|${key}`;
    let d = this.domains.get(id);
    if (!d) {
      d = new Map();
      for (const [node, count] of this.group(selector).perNode) {
        const n = this.nodes().get(node);
        const v = n && labelOf(n, key);
        if (v !== undefined) d.set(v, (d.get(v) ?? 0) + count);
      }
      this.domains.set(id, d);
    }
    return d;
  }

  add(node: string, labels: Record<string, string>): void {
    // Groups built later count this placement from here.
    this.added.push({ node, labels });
    for (const g of this.bySelector.values()) {
      if (labelsMatch(labels, g.selector)) g.perNode.set(node, (g.perNode.get(node) ?? 0) + 1);
    }
    const n = this.domains.size ? this.nodes().get(node) : undefined;
    for (const [id, d] of this.domains) {
      const bar = id.lastIndexOf("|");
      const g = this.bySelector.get(id.slice(0, bar))!;
      const v = n && labelOf(n, id.slice(bar + 1));
      if (v !== undefined && labelsMatch(labels, g.selector)) d.set(v, (d.get(v) ?? 0) + 1);
    }
  }

  private group(selector: Record<string, string>) {
    const id = selectorId(selector);
    let g = this.bySelector.get(id);
    if (!g) {
      g = { selector, perNode: new Map() };
      for (const list of [this.placed, this.added])
        for (const p of list) if (labelsMatch(p.labels, selector)) g.perNode.set(p.node, (g.perNode.get(p.node) ?? 0) + 1);
      this.bySelector.set(id, g);
    }
    return g;
  }
}

/** One scheduling pass's state: node views with allocations that grow as requests are placed. */
class Pass {
  readonly views: readonly NodeView[];
  private byName: Map<string, NodeView> | undefined;
  readonly groups: Groups;
  /** Keyed by the view itself: an identity lookup, on the path of every node a request scans. */
  private readonly added = new Map<NodeView, NodeView["allocated"]>();
  private readonly statics = new Map<string, (string | null | undefined)[]>();
  /** Where the next request starts looking. */
  private next = 0;

  constructor(
    nodes: readonly NodeView[],
    placed: readonly PlacedView[],
    private readonly algorithm: Algorithm,
    private readonly limit: number,
  ) {
    // By name, for a deterministic order; a caller that keeps its nodes sorted (the placement
    // controller) saves the copy and the sort.
    this.views = isSortedByName(nodes) ? nodes : [...nodes].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    this.groups = new Groups(placed, () => (this.byName ??= new Map(this.views.map((n) => [n.name, n]))));
  }

  /**
   * What is allocated on n so far in this pass. The snapshot stays read-only for the caller:
   * a node gets its own copy when the pass first places something on it.
   */
  allocated(n: NodeView): NodeView["allocated"] {
    return this.added.get(n) ?? n.allocated;
  }

  /** The first filter `n` fails for `r`, or undefined. */
  infeasibility(
    n: NodeView,
    r: PlacementRequest,
    spreadDomains: (s: SpreadView) => SpreadDomains,
    staticWhy = staticInfeasibility(n, r),
  ): string | undefined {
    if (staticWhy) return staticWhy;
    const reserved = n.reserved;
    const a = this.allocated(n);
    if (a.vcpus + r.vcpus > n.capacity.vcpus - (reserved?.vcpus ?? 0)) return "insufficient cpu";
    if (a.memoryMib + r.memoryMib > n.capacity.memoryMib - (reserved?.memoryMib ?? 0)) return "insufficient memory";
    if (r.diskGib > 0 && a.diskGib + r.diskGib > n.capacity.diskGib - (reserved?.diskGib ?? 0)) return "insufficient disk";
    if (r.maxPerNode && this.groups.onNode(r.maxPerNodeSelector ?? {}, n.name) >= r.maxPerNode) return "max per node";
    for (const a of r.affinity ?? []) {
      if (!a.required) continue;
      const domain = labelOf(n, a.topologyKey);
      const present = domain !== undefined && this.inDomain(a.selector, a.topologyKey, domain) > 0;
      if (a.anti && present) return "anti-affinity";
      if (!a.anti && !present) return domain === undefined ? `no label ${a.topologyKey}` : "affinity";
    }
    for (const s of r.spread ?? []) {
      if (s.bestEffort) continue;
      const domain = labelOf(n, s.topologyKey);
      if (domain === undefined) return `no label ${s.topologyKey}`;
      const d = spreadDomains(s);
      if ((d.counts.get(domain) ?? 0) + 1 - d.min > s.maxSkew) return `spread ${s.topologyKey}`;
    }
    return undefined;
  }

  /**
   * n's score for r; with `parts`, also each term of it by name (for explain). Called for every
   * feasible node a request looks at, so it allocates nothing without `parts`.
   */
  score(n: NodeView, r: PlacementRequest, spreadDomains: (s: SpreadView) => SpreadDomains, parts?: Record<string, number>): number {
    const reserved = n.reserved;
    const a = this.allocated(n);
    const cpuCap = n.capacity.vcpus - (reserved?.vcpus ?? 0);
    const memCap = n.capacity.memoryMib - (reserved?.memoryMib ?? 0);
    const cpu = cpuCap > 0 ? (a.vcpus + r.vcpus) / cpuCap : 1;
    const mem = memCap > 0 ? (a.memoryMib + r.memoryMib) / memCap : 1;
    const util = (cpu + mem) / 2;
    const strategy = r.strategy ?? this.algorithm;
    const base = 100 * (strategy === "binpack" ? util : 1 - util);
    let preferences = 0;
    for (const p of r.preferences ?? []) if (requirementHolds((k) => labelOf(n, k), p.requirement)) preferences += p.weight;
    let affinity = 0;
    for (const x of r.affinity ?? []) {
      if (x.required) continue;
      const domain = labelOf(n, x.topologyKey);
      const present = domain !== undefined && this.inDomain(x.selector, x.topologyKey, domain) > 0;
      if (present) affinity += x.anti ? -x.weight : x.weight;
    }
    let untolerated = 0;
    for (const t of n.taints ?? []) if (t.effect === "PreferNoSchedule" && !tolerates(r.tolerations ?? [], t)) untolerated++;
    let spread = 0;
    for (const sc of r.spread ?? []) {
      const domain = labelOf(n, sc.topologyKey);
      if (domain === undefined) continue;
      const d = spreadDomains(sc);
      spread -= 10 * ((d.counts.get(domain) ?? 0) + 1 - d.min);
    }
    if (parts) {
      parts[strategy] = base;
      if (preferences) parts.preferences = preferences;
      if (affinity) parts.affinity = affinity;
      if (untolerated) parts.taints = -50 * untolerated;
      if (spread) parts.spread = spread;
    }
    return base + preferences + affinity - 50 * untolerated + spread;
  }

  /**
   * The static filters' verdict per node (null: passes), shared by the requests of this pass that
   * ask the same of a node's fixed traits (driver, selectors, requirements, tolerations): a
   * backlog of 1,000 alike requests checks each node once, not once per request. Filled lazily.
   */
  private staticVerdicts(r: PlacementRequest): (at: number) => string | undefined {
    const sig = `${r.driver}\0${JSON.stringify(r.hostAccess ?? {})}\0${JSON.stringify(r.nodeSelector)}\0${JSON.stringify(r.requirements ?? [])}\0${JSON.stringify(r.tolerations ?? [])}`;
    let v = this.statics.get(sig);
    if (!v) this.statics.set(sig, (v = new Array<string | null | undefined>(this.views.length)));
    const verdicts = v;
    return (at) => {
      let why = verdicts[at];
      if (why === undefined) verdicts[at] = why = staticInfeasibility(this.views[at]!, r) ?? null;
      return why ?? undefined;
    };
  }

  /** Places r if it can: the chosen node, or the reasons it fits nowhere. */
  place(r: PlacementRequest): { node: string } | { reasons: Record<string, number> } {
    const spreadDomains = this.spreadDomainsFor(r);
    const total = this.views.length;
    const reasons: Record<string, number> = {};
    let best: NodeView | undefined;
    let bestScore = -Infinity;
    let feasible = 0;
    const staticWhy = this.staticVerdicts(r);
    let i = 0;
    for (; i < total && feasible < this.limit; i++) {
      const at = (this.next + i) % total;
      const n = this.views[at]!;
      const why = this.infeasibility(n, r, spreadDomains, staticWhy(at));
      if (why) {
        reasons[why] = (reasons[why] ?? 0) + 1;
        continue;
      }
      feasible++;
      const score = this.score(n, r, spreadDomains);
      if (score > bestScore || (score === bestScore && best && n.name < best.name)) {
        best = n;
        bestScore = score;
      }
    }
    if (total) this.next = (this.next + i) % total;
    if (!best) return { reasons };
    let a = this.added.get(best);
    if (!a) this.added.set(best, (a = { ...best.allocated }));
    a.vcpus += r.vcpus;
    a.memoryMib += r.memoryMib;
    a.diskGib += r.diskGib;
    a.count++;
    this.groups.add(best.name, r.labels ?? {});
    return { node: best.name };
  }

  /** Every node's verdict, feasible ones best first. */
  verdicts(r: PlacementRequest): Verdict[] {
    const spreadDomains = this.spreadDomainsFor(r);
    const out: Verdict[] = this.views.map((n) => {
      const why = this.infeasibility(n, r, spreadDomains);
      if (why) return { node: n.name, feasible: false, reason: why, score: 0, parts: {} };
      const parts: Record<string, number> = {};
      const score = this.score(n, r, spreadDomains, parts);
      return { node: n.name, feasible: true, reason: "", score, parts };
    });
    return out.sort((a, b) => Number(b.feasible) - Number(a.feasible) || b.score - a.score || (a.node < b.node ? -1 : 1));
  }

  private inDomain(selector: Record<string, string>, key: string, domain: string): number {
    return key === NODE_LABEL ? this.groups.onNode(selector, domain) : (this.groups.perDomain(selector, key).get(domain) ?? 0);
  }

  /**
   * A spread constraint's domains: the label's values on the nodes this request could use at all
   * (ready, uncordoned, its driver, its selectors, its taints), with the group's count in each and
   * the smallest count. Computed once per request and constraint.
   */
  private spreadDomainsFor(r: PlacementRequest): (s: SpreadView) => SpreadDomains {
    const memo = new Map<SpreadView, SpreadDomains>();
    return (s) => {
      let d = memo.get(s);
      if (!d) {
        const counts = s.topologyKey === NODE_LABEL ? undefined : this.groups.perDomain(s.selector, s.topologyKey);
        let min = Infinity;
        const perDomain = new Map<string, number>();
        for (const n of this.views) {
          const v = labelOf(n, s.topologyKey);
          if (v === undefined || perDomain.has(v) || staticInfeasibility(n, r)) continue;
          const c = counts ? (counts.get(v) ?? 0) : this.groups.onNode(s.selector, v);
          perDomain.set(v, c);
          min = Math.min(min, c);
        }
        d = { counts: perDomain, min: min === Infinity ? 0 : min };
        memo.set(s, d);
      }
      return d;
    };
  }
}

function isSortedByName(nodes: readonly NodeView[]): boolean {
  for (let i = 1; i < nodes.length; i++) if (nodes[i - 1]!.name >= nodes[i]!.name) return false;
  return true;
}

interface SpreadDomains {
  counts: Map<string, number>;
  min: number;
}

/** The filters that do not depend on what is placed: readiness, driver, selectors, taints. */
function staticInfeasibility(n: NodeView, r: PlacementRequest): string | undefined {
  if (!n.ready) return "not ready";
  if (n.cordoned) return "cordoned";
  const healthy = n.drivers[r.driver];
  if (healthy === undefined) return `no driver ${r.driver}`;
  if (!healthy) return `driver ${r.driver} unhealthy`;
  if (r.hostAccess) {
    const why = hostAccessRefusal(r.hostAccess, n.hostAccess?.[r.driver] ?? DENY_ALL);
    if (why) return why;
  }
  for (const k in r.nodeSelector) if (labelOf(n, k) !== r.nodeSelector[k]) return "node selector mismatch";
  for (const q of r.requirements ?? []) if (!requirementHolds((k) => labelOf(n, k), q)) return `node requirement ${q.key}`;
  for (const t of n.taints ?? []) {
    if (t.effect === "NoSchedule" && !tolerates(r.tolerations ?? [], t)) return `untolerated taint ${t.key}`;
  }
  return undefined;
}

export function schedule(
  nodes: readonly NodeView[],
  requests: readonly PlacementRequest[],
  algorithm: Algorithm,
  opts: ScheduleOptions = {},
): Plan {
  const pass = new Pass(nodes, opts.placed ?? [], algorithm, opts.limit ?? feasibleLimit(nodes.length));
  const plan: Plan = { placements: [], unplaced: [] };
  for (const r of requests) {
    const got = pass.place(r);
    if ("node" in got) plan.placements.push({ instance: r.name, node: got.node });
    else plan.unplaced.push({ instance: r.name, message: explain(nodes.length, got.reasons), reasons: got.reasons });
  }
  return plan;
}

/** Every node's verdict on one request, over the whole cluster (no sampling). */
export function verdicts(
  nodes: readonly NodeView[],
  request: PlacementRequest,
  algorithm: Algorithm,
  placed: readonly PlacedView[] = [],
): { verdicts: Verdict[]; summary: string; best: string } {
  const out = new Pass(nodes, placed, algorithm, nodes.length).verdicts(request);
  const best = out[0]?.feasible ? out[0].node : "";
  if (best) return { verdicts: out, best, summary: `${out.filter((v) => v.feasible).length}/${nodes.length} nodes feasible; best ${best}` };
  const reasons: Record<string, number> = {};
  for (const v of out) reasons[v.reason] = (reasons[v.reason] ?? 0) + 1;
  return { verdicts: out, best, summary: explain(nodes.length, reasons) };
}

export function explain(total: number, reasons: Record<string, number>): string {
  if (total === 0) return "0/0 nodes available: no nodes registered";
  const parts = Object.entries(reasons)
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
    .map(([why, n]) => `${n} ${why}`);
  return `0/${total} nodes available: ${parts.join(", ")}`;
}
