/*
 * ImageService: images live in each node's driver (containerd's image store), so the server
 * holds none, not even while importing: the chunks are streamed on to the AgentService of every
 * node asked, in parallel, as they come (at the pace of the slowest node), and the whole upload
 * is bounded by max-image-bytes. A listing asks every Ready node's agent.
 *
 *   ctl ──stream {target}, {chunk}…──► server ──validates target first (before any upload)
 *                                        │ each chunk ──AgentService.ImportImage{header, chunk…}──► agent(s)
 *                                        │ over max-image-bytes: ResourceExhausted, uploads aborted
 *   ctl ◄── {results: per node images or error} ◄────────────────────────────────────┘
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import {
  type Image,
  type ImageService,
  type ImportTarget,
  NodeImportSchema,
  type NodeImport,
} from "../../api/gen/hypervisor/v1/image_pb.js";
import { keys } from "../../pkg/cluster/state/index.js";
import { DRIVER_NAMES, driverEntry } from "../../pkg/compute/driver/index.js";
import { Channel } from "./channel.js";
import type { ServerContext } from "./context.js";
import { show, validateName } from "./validate.js";

const DEFAULT_DRIVER = "containerd";
const DRIVER_RE = /^[a-z][a-z0-9-]{0,31}$/;
const IMAGE_DRIVERS = DRIVER_NAMES.filter((n) => driverEntry(n)?.capabilities.images);

/** The largest image the server passes on by default (the agent's own limit is the same). */
export const DEFAULT_MAX_IMAGE_BYTES = 16 * 1024 ** 3;

export function imageService(ctx: ServerContext, maxImageBytes = DEFAULT_MAX_IMAGE_BYTES): ServiceImpl<typeof ImageService> {
  const { informers, agents } = ctx;
  const ready = (node: string) => informers.alive.get(keys.alive(node)) !== undefined;
  const nodeRecord = (node: string) => informers.nodes.get(keys.node(node))?.value;

  /** The nodes an import goes to, checked before a byte is uploaded. */
  function targets(t: ImportTarget): { driver: string; nodes: string[] } {
    const driver = t.driver || DEFAULT_DRIVER;
    if (!DRIVER_RE.test(driver)) throw new ConnectError(`target.driver: ${show(driver)} is not a driver name`, Code.InvalidArgument);
    if (!driverEntry(driver)?.capabilities.images)
      throw new ConnectError(
        `target.driver: ${show(driver)} keeps no images (drivers that do: ${IMAGE_DRIVERS.join(", ")})`,
        Code.InvalidArgument,
      );
    if (t.allNodes && t.nodes.length) throw new ConnectError("target: name nodes or ask for all_nodes, not both", Code.InvalidArgument);
    if (t.allNodes) {
      const nodes = [...informers.nodes.items.values()]
        .map((i) => i.value)
        .filter((n) => ready(n.name) && n.drivers.some((d) => d.name === driver && d.healthy))
        .map((n) => n.name)
        .sort();
      if (!nodes.length) throw new ConnectError(`target.all_nodes: no Ready node has driver ${driver} healthy`, Code.FailedPrecondition);
      return { driver, nodes };
    }
    if (!t.nodes.length) throw new ConnectError("target.nodes: name at least one node, or ask for all_nodes", Code.InvalidArgument);
    const seen = new Set<string>();
    for (const name of t.nodes) {
      validateName("target.nodes", name);
      if (seen.has(name)) throw new ConnectError(`target.nodes: ${show(name)} is named twice`, Code.InvalidArgument);
      seen.add(name);
      const node = nodeRecord(name);
      if (!node) throw new ConnectError(`target.nodes: node ${show(name)} not found`, Code.NotFound);
      if (!ready(name)) throw new ConnectError(`target.nodes: node ${name} is NotReady`, Code.FailedPrecondition);
      const d = node.drivers.find((x) => x.name === driver);
      if (!d) throw new ConnectError(`target.nodes: node ${name} has no driver ${driver}`, Code.FailedPrecondition);
      if (!d.healthy)
        throw new ConnectError(`target.nodes: driver ${driver} on node ${name} is unhealthy: ${d.message}`, Code.FailedPrecondition);
    }
    return { driver, nodes: t.nodes };
  }

  /** Streams the tarball to one node's agent as it comes; an error becomes the node's result. */
  async function importOn(
    node: string,
    driver: string,
    body: Channel<Uint8Array>,
    signal: AbortSignal,
  ): Promise<NodeImport & { code?: Code }> {
    const result = create(NodeImportSchema, { node });
    try {
      // The node is the one asked, whatever the agent put there.
      result.images = (await agents.importImage(node, driver, body, signal)).map((i) => Object.assign(i, { node }));
    } catch (e) {
      if (signal.aborted) throw e;
      const err = ConnectError.from(e);
      return Object.assign(result, { error: err.rawMessage, code: err.code });
    } finally {
      // Whatever the agent did, nothing more is sent to it.
      body.close();
    }
    return result;
  }

  /** One upload per node, fed chunk by chunk; a node that failed is skipped, not waited for. */
  function uploads(nodes: string[], driver: string, signal: AbortSignal) {
    const all = nodes.map((node) => {
      const body = new Channel<Uint8Array>();
      const result = importOn(node, driver, body, signal);
      // An aborted import is never waited for: its rejection is expected, not unhandled.
      result.catch(() => undefined);
      return { node, body, result };
    });
    return {
      /** Resolves once every node still importing has taken the chunk. */
      async write(chunk: Uint8Array): Promise<void> {
        await Promise.all(all.map(({ body }) => body.send(chunk)));
      },
      async finish(): Promise<(NodeImport & { code?: Code })[]> {
        for (const u of all) u.body.end();
        return Promise.all(all.map((u) => u.result));
      },
      abort(): void {
        for (const u of all) u.body.close();
      },
    };
  }

  return {
    async importImage(requests, hctx) {
      let target: { driver: string; nodes: string[] } | undefined;
      let sending: ReturnType<typeof uploads> | undefined;
      const abort = new AbortController();
      const signal = AbortSignal.any([hctx.signal, abort.signal]);
      let size = 0;
      try {
        for await (const req of requests) {
          if (req.part.case === "target") {
            if (target) throw new ConnectError("target: sent twice; send it once, first", Code.InvalidArgument);
            target = targets(req.part.value);
          } else if (req.part.case === "chunk") {
            if (!target) throw new ConnectError("target: the first message must name where the image goes", Code.InvalidArgument);
            size += req.part.value.length;
            if (size > maxImageBytes)
              throw new ConnectError(
                `chunk: the image is over the server's max-image-bytes of ${maxImageBytes} bytes; nothing was imported`,
                Code.ResourceExhausted,
              );
            if (req.part.value.length === 0) continue;
            sending ??= uploads(target.nodes, target.driver, signal);
            await sending.write(req.part.value);
          }
        }
        if (!target) throw new ConnectError("target: the first message must name where the image goes", Code.InvalidArgument);
        if (size === 0 || !sending) throw new ConnectError("chunk: the image tarball is empty", Code.InvalidArgument);
        const { driver, nodes } = target;
        const results = await sending.finish();
        const failed = results.filter((r) => r.error);
        if (failed.length === results.length) {
          // Nowhere: an error, so the caller's exit status says so. A tarball every node refused
          // as malformed is the caller's input, not the cluster's state; one over a node's size
          // limit is a limit; one refusal everywhere keeps its code.
          const first = failed[0]?.code ?? Code.Unavailable;
          const code = failed.every((r) => r.code === first) ? first : Code.Unavailable;
          throw new ConnectError(failed.map((r) => (nodes.length > 1 ? `node ${r.node}: ${r.error}` : r.error)).join("; "), code);
        }
        ctx.log.info({ driver, nodes, bytes: size, failed: failed.map((r) => r.node) }, "image imported");
        return { results: results.map(({ code: _code, ...r }) => create(NodeImportSchema, r)) };
      } catch (e) {
        // Stop every upload: the agents drop what they spooled.
        abort.abort();
        sending?.abort();
        throw e;
      }
    },

    async listImages(req, hctx) {
      if (req.driver && !DRIVER_RE.test(req.driver))
        throw new ConnectError(`driver: ${show(req.driver)} is not a driver name`, Code.InvalidArgument);
      let nodes: string[];
      if (req.node) {
        validateName("node", req.node);
        if (!nodeRecord(req.node)) throw new ConnectError(`node ${show(req.node)} not found`, Code.NotFound);
        nodes = [req.node];
      } else {
        nodes = [...informers.nodes.items.values()]
          .map((i) => i.value.name)
          .filter(ready)
          .sort();
      }
      const images: Image[] = [];
      const unreachable: Record<string, string> = {};
      await Promise.all(
        nodes.map(async (node) => {
          try {
            if (!ready(node)) throw new Error(`node ${node} is NotReady`);
            // The node is the one asked, whatever the agent put there.
            for (const i of await agents.listImages(node, hctx.signal))
              if (!req.driver || i.driver === req.driver) images.push(Object.assign(i, { node }));
          } catch (e) {
            if (hctx.signal.aborted) throw e;
            unreachable[node] = e instanceof ConnectError ? e.rawMessage : (e as Error).message;
          }
        }),
      );
      images.sort((a, b) => (a.node === b.node ? (a.name < b.name ? -1 : 1) : a.node < b.node ? -1 : 1));
      return { images, unreachable };
    },
  };
}
