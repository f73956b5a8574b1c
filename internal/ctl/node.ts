/*
 * `node` commands. Nodes are registered by their agents, so the CLI only reads them and toggles
 * what the API owns: the cordon flag, and drain (cordon plus stopping or moving what runs there);
 * and the orphans an agent keeps (instances without an assignment there), adopted back or purged.
 */
import { Command } from "commander";
import { DrainNodeResponseSchema, type Node, NodeSchema, OrphanSchema } from "../../api/gen/hypervisor/v1/node_pb.js";
import { InstanceSchema } from "../../api/gen/hypervisor/v1/instance_pb.js";
import type { Context } from "./context.js";
import { CliError, ExitCode } from "./errors.js";
import * as output from "./output.js";

export function nodeCommand(ctx: Context): Command {
  const cmd = new Command("node").alias("nodes").description("inspect compute nodes, cordon and drain them");

  cmd
    .command("list")
    .alias("ls")
    .description("list nodes")
    .action(async () => {
      const { nodes } = await ctx.clients().nodes.listNodes({}, { signal: ctx.signal });
      const format = ctx.format();
      ctx.out(format === "table" ? output.nodeTable(nodes, ctx.now()) : output.list(NodeSchema, nodes, format));
    });

  cmd
    .command("get")
    .description("show one node")
    .argument("<name>", "node name")
    .action(async (name: string) => {
      const { node } = await ctx.clients().nodes.getNode({ name }, { signal: ctx.signal });
      show(ctx, node, undefined);
    });

  cmd
    .command("cordon")
    .description("stop scheduling new instances onto a node; running ones stay")
    .argument("<name>", "node name")
    .action(async (name: string) => {
      const { node } = await ctx.clients().nodes.cordonNode({ name }, { signal: ctx.signal });
      show(ctx, node, "cordoned");
    });

  cmd
    .command("uncordon")
    .description("allow scheduling onto a node again")
    .argument("<name>", "node name")
    .action(async (name: string) => {
      const { node } = await ctx.clients().nodes.uncordonNode({ name }, { signal: ctx.signal });
      show(ctx, node, "uncordoned");
    });

  cmd
    .command("drain")
    .description("cordon a node and stop every instance on it, or with --move place them on other nodes")
    .argument("<name>", "node name")
    .option("--move", "move the instances to other nodes, each group within its disruption budget, instead of stopping them")
    .action(async (name: string, opts: { move?: boolean }) => {
      const res = await ctx.clients().nodes.drainNode({ name, move: Boolean(opts.move) }, { signal: ctx.signal });
      const format = ctx.format();
      if (format !== "table") return ctx.out(output.message(DrainNodeResponseSchema, res, format));
      if (opts.move) {
        const moving = res.movingInstances.length > 0 ? `; moving ${res.movingInstances.join(", ")}` : "; no instances to move";
        const pinned =
          res.pinnedInstances.length > 0 ? `; not moving ${res.pinnedInstances.join(", ")}: their disks are local to the node` : "";
        return ctx.out(`node/${name} draining${moving}${pinned}\n`);
      }
      const stopped = res.stoppedInstances.length > 0 ? `; stopping ${res.stoppedInstances.join(", ")}` : "; no instances to stop";
      ctx.out(`node/${name} drained${stopped}\n`);
    });

  cmd
    .command("orphans")
    .description("list the instances a node keeps without an assignment there (never deleted unasked)")
    .argument("<node>", "node name")
    .action(async (node: string) => {
      const { orphans } = await ctx.clients().nodes.listOrphans({ node }, { signal: ctx.signal });
      const format = ctx.format();
      ctx.out(format === "table" ? output.orphanTable(orphans, ctx.now()) : output.list(OrphanSchema, orphans, format));
    });

  cmd
    .command("adopt")
    .description("make an orphan an instance of the cluster again, placed on its node, its disks as they are")
    .argument("<node>", "node name")
    .argument("<name>", "orphan (instance) name")
    .action(async (node: string, name: string) => {
      const { instance } = await ctx.clients().nodes.adoptOrphan({ node, name }, { signal: ctx.signal });
      if (!instance) throw new CliError("the server returned no instance", ExitCode.Api);
      const format = ctx.format();
      ctx.out(
        format === "table" ? `instance/${instance.name} adopted on node ${node}\n` : output.message(InstanceSchema, instance, format),
      );
    });

  cmd
    .command("purge")
    .description("destroy an orphan and its disks (cannot be undone)")
    .argument("<node>", "node name")
    .argument("<name>", "orphan (instance) name")
    .action(async (node: string, name: string) => {
      await ctx.clients().nodes.purgeOrphan({ node, name }, { signal: ctx.signal });
      ctx.out(`orphan ${name} purged from node ${node}\n`);
    });

  cmd
    .command("revoke")
    .description("shut a node out: no certificate renewal, its etcd identity removed; it must join again with a new token")
    .argument("<name>", "node name")
    .action(async (name: string) => {
      const { revoked } = await ctx.clients().identity.revokeNode({ node: name }, { signal: ctx.signal });
      ctx.out(revoked ? `node/${name} revoked\n` : `node/${name} has no binding (never joined, or already revoked)\n`);
    });

  return cmd;
}

/** `verb` undefined: a `get`, shown as a one-row table; otherwise a one-line confirmation. */
function show(ctx: Context, node: Node | undefined, verb: string | undefined): void {
  if (!node) throw new CliError("the server returned no node", ExitCode.Api);
  const format = ctx.format();
  if (format !== "table") ctx.out(output.message(NodeSchema, node, format));
  else ctx.out(verb ? `node/${node.name} ${verb}\n` : output.nodeTable([node], ctx.now()));
}
