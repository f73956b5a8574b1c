/** Prometheus metrics of the server (prom-client), served on /metrics. */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

export const registry = new Registry();
collectDefaultMetrics({ register: registry, prefix: "hypervisor_server_" });

export const metrics = {
  apiRequests: new Counter({
    name: "hypervisor_api_requests_total",
    help: "API requests by service, method and Connect code",
    labelNames: ["service", "method", "code"] as const,
    registers: [registry],
  }),
  apiLatency: new Histogram({
    name: "hypervisor_api_request_seconds",
    help: "API request latency (unary calls)",
    labelNames: ["service", "method"] as const,
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry],
  }),
  refusedRequests: new Counter({
    name: "hypervisor_api_refused_total",
    help: "Requests refused before reaching a handler, by reason (origin: Host or Origin not allowed; limit: a per-client cap)",
    labelNames: ["reason"] as const,
    registers: [registry],
  }),
  placements: new Counter({ name: "hypervisor_scheduler_placements_total", help: "Instances placed on a node", registers: [registry] }),
  placementConflicts: new Counter({
    name: "hypervisor_scheduler_conflicts_total",
    help: "Placements refused by a revision compare (stale snapshot); they are replanned",
    registers: [registry],
  }),
  haReschedules: new Counter({
    name: "hypervisor_ha_reschedules_total",
    help: "Instances sent back to the scheduler because their node stayed NotReady past the HA grace period",
    registers: [registry],
  }),
  nodes: new Gauge({
    name: "hypervisor_nodes",
    help: "Registered nodes by condition",
    labelNames: ["condition"] as const,
    registers: [registry],
  }),
  // Counted when scraped, from the serving replica's informers (setInstanceSource).
  instances: new Gauge({
    name: "hypervisor_instances",
    help: "Instances by phase",
    labelNames: ["phase"] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const [phase, n] of instanceSource?.() ?? []) this.set({ phase }, n);
    },
  }),
  leader: new Gauge({
    name: "hypervisor_server_is_leader",
    help: "1 when this server runs the scheduler and controllers",
    registers: [registry],
  }),
};

let instanceSource: (() => Map<string, number>) | undefined;

/** Where the instances gauge reads its counts per phase at scrape time. */
export function setInstanceSource(fn: (() => Map<string, number>) | undefined): void {
  instanceSource = fn;
}
