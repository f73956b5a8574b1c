/*
 * `image` commands: images live in the nodes' drivers (containerd), so an import names the nodes
 * it goes to. The tarball streams to the server in chunks and is read once, whatever the count.
 */
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { create } from "@bufbuild/protobuf";
import { Command } from "commander";
import {
  type Image,
  ImportImageRequestSchema,
  ImportImageResponseSchema,
  ListImagesResponseSchema,
  type ImportImageRequest,
} from "../../api/gen/hypervisor/v1/image_pb.js";
import type { Context } from "./context.js";
import { CliError, ExitCode, usageError } from "./errors.js";
import * as output from "./output.js";

/** Under the server's default message limits, and large enough to keep the pipe full. */
const CHUNK_BYTES = 1 << 20;

interface ImportOptions {
  node?: string[];
  all?: boolean;
  driver: string;
}

export function imageCommand(ctx: Context): Command {
  const cmd = new Command("image").alias("images").description("import and list images on the nodes (containerd)");

  cmd
    .command("import")
    .description("import an OCI image tarball (docker save, ctr images export) onto nodes")
    .argument("<file>", "the tarball")
    .option("--node <name>", "node to import on (repeatable)", (v: string, prev: string[] = []) => [...prev, v])
    .option("--all", "every Ready node that has the driver")
    .option("--driver <driver>", "driver that keeps the image", "containerd")
    .action(async (file: string, opts: ImportOptions) => {
      const nodes = opts.node ?? [];
      if (!opts.all && nodes.length === 0) throw usageError("name the nodes with --node NAME (repeatable), or use --all");
      if (opts.all && nodes.length > 0) throw usageError("--node and --all exclude each other");
      const info = await stat(file).catch((e: NodeJS.ErrnoException) => {
        throw usageError(`${file}: ${e.code === "ENOENT" ? "no such file" : e.message}`);
      });
      if (!info.isFile()) throw usageError(`${file}: not a file`);
      const res = await ctx.clients().images.importImage(upload(file, { driver: opts.driver, nodes, allNodes: opts.all ?? false }), {
        signal: ctx.signal,
      });
      const format = ctx.format();
      const failed = res.results.filter((r) => r.error);
      if (format !== "table") ctx.out(output.message(ImportImageResponseSchema, res, format));
      else
        ctx.out(
          res.results
            .map((r) =>
              r.error
                ? `node/${r.node}: failed: ${r.error}\n`
                : r.images.map((i) => `node/${r.node}: imported ${i.name} (${i.digest})\n`).join(""),
            )
            .join(""),
        );
      if (failed.length) throw new CliError(`image import failed on ${failed.map((r) => r.node).join(", ")}`, ExitCode.Api);
    });

  cmd
    .command("list")
    .alias("ls")
    .description("list the images on every Ready node (or one)")
    .option("--node <name>", "only this node")
    .option("--driver <driver>", "only this driver")
    .action(async (opts: { node?: string; driver?: string }) => {
      const res = await ctx.clients().images.listImages({ node: opts.node ?? "", driver: opts.driver ?? "" }, { signal: ctx.signal });
      const format = ctx.format();
      if (format !== "table") return ctx.out(output.message(ListImagesResponseSchema, res, format));
      let text = imageTable(res.images, ctx.now());
      for (const [node, why] of Object.entries(res.unreachable)) text += `node/${node}: not asked: ${why}\n`;
      ctx.out(text);
    });

  return cmd;
}

/** The request stream: the target, then the file in chunks, read as the server takes them. */
async function* upload(file: string, target: { driver: string; nodes: string[]; allNodes: boolean }): AsyncIterable<ImportImageRequest> {
  yield create(ImportImageRequestSchema, { part: { case: "target", value: target } });
  for await (const chunk of createReadStream(file, { highWaterMark: CHUNK_BYTES }))
    yield create(ImportImageRequestSchema, { part: { case: "chunk", value: chunk as Buffer } });
}

export function imageTable(images: readonly Image[], now: Date): string {
  const rows = images.map((i) => [i.node, i.driver, i.name, shortDigest(i.digest), bytes(i.sizeBytes), output.age(i.createTime, now)]);
  return output.table(["NODE", "DRIVER", "NAME", "DIGEST", "SIZE", "AGE"], rows);
}

function shortDigest(d: string): string {
  const m = /^(sha256:)([0-9a-f]{12})[0-9a-f]*$/.exec(d);
  return m ? `${m[1]}${m[2]}` : d;
}

function bytes(n: bigint): string {
  const v = Number(n);
  if (v < 1024) return `${v}B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let x = v / 1024;
  let u = 0;
  while (x >= 1024 && u < units.length - 1) {
    x /= 1024;
    u++;
  }
  return `${x < 10 ? x.toFixed(1) : Math.round(x)}${units[u]}`;
}
