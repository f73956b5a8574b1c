/** ClusterService: version, health of the store and the controllers, counts, and the driver registry. */
import { callerKey, projectFilter } from "./access/index.js";
import type { ServiceImpl } from "@connectrpc/connect";
import { ClusterService } from "../../api/gen/hypervisor/v1/cluster_pb.js";
import { keys } from "../../pkg/cluster/state/index.js";
import { DRIVER_NAMES, DRIVER_REGISTRY } from "../../pkg/compute/driver/index.js";
import type { ServerContext } from "./context.js";
import { instancesByPhase } from "./informers.js";

export const API_VERSION = "hypervisor.v1";

export function clusterService(ctx: ServerContext): ServiceImpl<typeof ClusterService> {
  return {
    getVersion() {
      return { version: ctx.version, apiVersion: API_VERSION, store: ctx.store.kind, nodeVersion: process.version };
    },

    async getHealth(_req, hctx) {
      const components: { name: string; healthy: boolean; message: string }[] = [];
      try {
        await ctx.store.ping({ signal: AbortSignal.any([hctx.signal, AbortSignal.timeout(3000)]) });
        components.push({ name: "store", healthy: true, message: ctx.store.kind });
      } catch (e) {
        components.push({ name: "store", healthy: false, message: e instanceof Error ? e.message : String(e) });
      }
      for (const [name, err] of Object.entries(ctx.componentHealth())) components.push({ name, healthy: err === "", message: err });
      return { healthy: components.every((c) => c.healthy), components, serverId: ctx.serverId, leaderId: ctx.leader() };
    },

    getCounts(_req, hctx) {
      const { informers } = ctx;
      // A member of some projects counts their instances only, not the whole cluster's.
      const sees = projectFilter(hctx.values.get(callerKey), "instances:list", "*");
      let nodesReady = 0;
      let nodesCordoned = 0;
      for (const { value: n } of informers.nodes.items.values()) {
        if (informers.alive.get(keys.alive(n.name))) nodesReady++;
        if (n.cordoned) nodesCordoned++;
      }
      const counted = instancesByPhase(informers, sees);
      const byPhase = Object.fromEntries(counted);
      return {
        nodes: informers.nodes.items.size,
        nodesReady,
        nodesCordoned,
        instances: [...counted.values()].reduce((a, b) => a + b, 0),
        instancesByPhase: byPhase,
      };
    },

    listDrivers() {
      return {
        drivers: DRIVER_NAMES.map((name) => {
          const d = DRIVER_REGISTRY[name];
          return {
            name: d.name,
            description: d.description,
            kind: d.kind,
            capabilities: d.capabilities,
            specFields: [...d.specFields],
            required: d.required.map((group) => group.join("|")),
            configKeys: d.configKeys.map((k) => ({ name: k.name, description: k.description, values: k.values })),
          };
        }),
      };
    },
  };
}
