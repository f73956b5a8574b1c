/*
 * `cluster status` and `version`: what an operator runs first, so one screen answers "which
 * server, is it healthy, who leads, how much is there". `cluster drivers`: the server's driver
 * registry, what each driver takes in a spec and in driver_config.
 */
import { toJson } from "@bufbuild/protobuf";
import { Command } from "commander";
import {
  GetCountsResponseSchema,
  GetHealthResponseSchema,
  GetVersionResponseSchema,
  ListDriversResponseSchema,
} from "../../api/gen/hypervisor/v1/cluster_pb.js";
import type { Context } from "./context.js";
import * as output from "./output.js";
import { packageVersion } from "../../pkg/version/index.js";

/** This client's version: the package's. */
export const clientVersion = packageVersion;

export function clusterCommand(ctx: Context): Command {
  const cmd = new Command("cluster").description("cluster-wide information");
  cmd
    .command("status")
    .description("server version, health of its components, leader, node and instance counts")
    .action(async () => {
      const api = ctx.clients().cluster;
      const call = { signal: ctx.signal };
      const [version, health, counts] = await Promise.all([api.getVersion({}, call), api.getHealth({}, call), api.getCounts({}, call)]);
      const format = ctx.format();
      if (format !== "table") {
        const value = {
          server: ctx.clients().server,
          version: toJson(GetVersionResponseSchema, version),
          health: toJson(GetHealthResponseSchema, health),
          counts: toJson(GetCountsResponseSchema, counts),
        };
        return ctx.out(output.structured(value, format));
      }
      const phases = Object.entries(counts.instancesByPhase)
        .sort(([a], [b]) => order(a) - order(b) || a.localeCompare(b))
        .map(([p, n]) => `${n} ${p}`);
      const lines: [string, string][] = [
        [
          "Server",
          `${ctx.clients().server} (version ${version.version || "unknown"}, API ${version.apiVersion || "unknown"}, store ${version.store || "unknown"})`,
        ],
        ["Health", health.healthy ? "healthy" : "UNHEALTHY"],
        ["Replica", `${health.serverId || "unknown"} (leader ${health.leaderId || "none"})`],
        ["Nodes", `${counts.nodes} (${counts.nodesReady} ready, ${counts.nodesCordoned} cordoned)`],
        ["Instances", `${counts.instances}${phases.length > 0 ? ` (${phases.join(", ")})` : ""}`],
      ];
      let text = output.fields(lines);
      if (health.components.length > 0) {
        text +=
          "\nComponents:\n" +
          output
            .table(
              ["NAME", "HEALTHY", "MESSAGE"],
              health.components.map((c) => [c.name, c.healthy ? "yes" : "NO", c.message]),
            )
            .replace(/^(?=.)/gm, "  ");
      }
      ctx.out(text);
    });
  cmd
    .command("drivers")
    .description("the drivers the server knows: what each runs, the spec fields and driver_config keys it takes")
    .action(async () => {
      const res = await ctx.clients().cluster.listDrivers({}, { signal: ctx.signal });
      const format = ctx.format();
      if (format !== "table") return ctx.out(output.structured(toJson(ListDriversResponseSchema, res), format));
      const rows = res.drivers.map((d) => [
        d.name,
        d.kind,
        d.specFields.join(",") || "-",
        d.configKeys.map((k) => k.name).join(",") || "-",
        d.description,
      ]);
      // The values each key takes are in -o yaml / -o json.
      ctx.out(output.table(["NAME", "KIND", "SPEC FIELDS", "DRIVER CONFIG KEYS", "DESCRIPTION"], rows));
    });
  return cmd;
}

function order(phase: string): number {
  const i = output.PHASE_ORDER.indexOf(phase);
  return i < 0 ? output.PHASE_ORDER.length : i;
}

export function versionCommand(ctx: Context): Command {
  return new Command("version")
    .description("client version and the server's")
    .option("--client", "only the client version; do not contact the server")
    .action(async (opts: { client?: boolean }) => {
      const client = clientVersion();
      const format = ctx.format();
      if (opts.client) {
        return ctx.out(format === "table" ? `Client: ${client}\n` : output.structured({ client }, format));
      }
      const server = await ctx.clients().cluster.getVersion({}, { signal: ctx.signal });
      if (format !== "table") return ctx.out(output.structured({ client, server: toJson(GetVersionResponseSchema, server) }, format));
      ctx.out(
        `Client: ${client}\nServer: ${server.version || "unknown"} (API ${server.apiVersion || "unknown"}, store ${server.store || "unknown"}, node ${server.nodeVersion || "unknown"})\n`,
      );
    });
}
