/*
 * AgentService (api/proto/hypervisor/v1/agent.proto): what the server asks of this node's agent
 * for what cannot travel through the store. Every request is checked here (names, kinds, drivers,
 * sizes, how long a stream may wait for its first message) before the agent looks anything up;
 * the lookups (is it assigned here, with which driver) are the source's, which refuses with
 * Connect codes.
 *
 *   server ──StreamLogs{name, tail_bytes, follow}──► agent ◄── data… (the log's last bytes, then
 *          what the runtime appends, polled, until the call ends or the log is deleted)
 *   server ──ImportImage: header{driver}, chunk…──► agent: spooled (0600, bounded by max image
 *          bytes: ResourceExhausted) ──► driver.importImage(file) ──► {images} ; spool removed
 *   server ──PurgeOrphan{name, uid}──► agent ──► reconciler.purge ──► {} | NotFound | FailedPrecondition
 *   server ══Console: open{name, kind}, data…══► agent ──► driver.console ──► VNC socket / pty
 *          ◄══ opened, data… ══  either side ending the stream closes the console; the newest
 *          serial viewer of an instance closes the older one's stream (one reader per pty)
 *   server ──ConsoleAddress{name}──► agent ◄── the VNC unix socket (for a server on this machine)
 */
import { hostName, instanceRef } from "../../pkg/cluster/state/index.js";
import { randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, open, stat, unlink } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AgentService, AgentServiceImportImageRequest } from "../../api/gen/hypervisor/v1/agent_pb.js";
import { ConsoleKind as ApiConsoleKind } from "../../api/gen/hypervisor/v1/console_pb.js";
import { type Image, ImageSchema } from "../../api/gen/hypervisor/v1/image_pb.js";
import { type ConsoleEndpoint, type ConsoleKind, type DriverImage, DRIVER_NAMES, driverEntry } from "../../pkg/compute/driver/index.js";
import type { Logger } from "../../pkg/log/index.js";
import { checkName, checkTailBytes, show } from "../../pkg/validation/index.js";
import { openConsole } from "./console-peer.js";

/** An image as a driver on this node keeps it. */
export type NodeImage = DriverImage & { driver: string };

/**
 * What the service asks the agent. Each method throws a ConnectError for a refusal: NotFound (not
 * assigned here, no such orphan), FailedPrecondition (the driver cannot), InvalidArgument (a
 * tarball that is not an image).
 */
export interface AgentServiceSource {
  /** The log file of an instance assigned here. */
  logFile(name: string, signal: AbortSignal): Promise<string>;
  /** Imports the tarball at `file` with the named driver. */
  importImage(driver: string, file: string, signal: AbortSignal): Promise<NodeImage[]>;
  listImages(signal: AbortSignal): Promise<NodeImage[]>;
  /** Where the console of a running instance assigned here is. */
  console(name: string, kind: ConsoleKind, signal: AbortSignal): Promise<ConsoleEndpoint>;
  /** Destroys the orphan `name` (of uid `uid` when not empty) and its disks. */
  purgeOrphan(name: string, uid: string, signal: AbortSignal): Promise<void>;
}

export interface AgentServiceOptions {
  nodeName: string;
  log: Logger;
  /** Where uploads are spooled while a driver imports them (made 0700). */
  spoolDir: string;
  /** Uploads larger than this are refused (ResourceExhausted) and their spool removed. */
  maxImageBytes?: number;
  /** How long a Console or ImportImage stream may wait for its first message, and an upload for its next chunk. */
  streamIdleMs?: number;
  /** How often a followed log is checked for growth. */
  followPollMs?: number;
}

/** Uploads larger than this are refused before they fill the disk. */
export const MAX_IMAGE_BYTES = 16 * 1024 ** 3;
export const DEFAULT_STREAM_IDLE_MS = 60_000;
const FOLLOW_POLL_MS = 200;
/** Longest uid taken: uids are UUIDs, an older driver's marks included. */
const MAX_UID_LENGTH = 128;

/** The name on this node of the instance a request names by project and name, both checked. */
function onNode(req: { name: string; project: string }, prefix = ""): string {
  refuse(checkName(`${prefix}name`, req.name));
  if (req.project !== "") refuse(checkName(`${prefix}project`, req.project));
  return hostName(instanceRef(req.project, req.name));
}

export function agentService(source: AgentServiceSource, opts: AgentServiceOptions): ServiceImpl<typeof AgentService> {
  const maxImageBytes = opts.maxImageBytes ?? MAX_IMAGE_BYTES;
  const idleMs = opts.streamIdleMs ?? DEFAULT_STREAM_IDLE_MS;
  const pollMs = opts.followPollMs ?? FOLLOW_POLL_MS;
  /** The open serial console of each instance: a pty read by two would split the guest's output. */
  const serials = new Map<string, () => void>();
  const toImage = (i: NodeImage): Image =>
    create(ImageSchema, {
      name: i.name,
      digest: i.digest,
      sizeBytes: BigInt(Math.max(0, Math.trunc(i.sizeBytes))),
      node: opts.nodeName,
      driver: i.driver,
      ...(i.createdAt ? { createTime: timestampFromMs(i.createdAt) } : {}),
    });

  return {
    async *streamLogs(req, hctx) {
      const name = onNode(req);
      refuse(checkTailBytes("tail_bytes", req.tailBytes));
      const path = await source.logFile(name, hctx.signal);
      const signal = hctx.signal;
      const size = await sizeOf(path);
      // Not written yet (a VM that has printed nothing) is an empty log.
      let offset = req.tailBytes > 0n ? Math.max(0, (size ?? 0) - Number(req.tailBytes)) : 0;
      for await (const data of readRange(path, offset, size ?? 0)) {
        offset += data.length;
        yield { data };
      }
      while (req.follow && !signal.aborted) {
        await sleep(pollMs, undefined, { signal }).catch(() => undefined);
        if (signal.aborted) break;
        const now = await sizeOf(path);
        if (now === undefined) break; // the instance and its log were deleted
        if (now < offset) offset = 0; // truncated or replaced: start over
        for await (const data of readRange(path, offset, now)) {
          offset += data.length;
          yield { data };
        }
      }
    },

    async importImage(requests, hctx) {
      const it = requests[Symbol.asyncIterator]();
      const first = await nextWithin(it, idleMs, "header");
      if (first.done || first.value.part.case !== "header")
        throw new ConnectError("header: the first message must name the driver", Code.InvalidArgument);
      const driver = first.value.part.value.driver;
      if (!driverEntry(driver))
        throw new ConnectError(
          `header.driver: ${show(driver)} is not a driver (drivers: ${DRIVER_NAMES.join(", ")})`,
          Code.InvalidArgument,
        );
      await mkdir(opts.spoolDir, { recursive: true, mode: 0o700 });
      const file = join(opts.spoolDir, `import-${randomBytes(8).toString("hex")}.tar`);
      try {
        const received = await spool(it, file, maxImageBytes, idleMs);
        if (received === 0) throw new ConnectError("chunk: the image tarball is empty", Code.InvalidArgument);
        const images = await source.importImage(driver, file, hctx.signal);
        return { images: images.map(toImage) };
      } finally {
        await unlink(file).catch(() => undefined);
      }
    },

    async listImages(_req, hctx) {
      return { images: (await source.listImages(hctx.signal)).map(toImage) };
    },

    async purgeOrphan(req, hctx) {
      const name = onNode(req);
      if (req.uid.length > MAX_UID_LENGTH)
        throw new ConnectError(`uid: ${show(req.uid)} is longer than ${MAX_UID_LENGTH} characters`, Code.InvalidArgument);
      await source.purgeOrphan(name, req.uid, hctx.signal);
      return {};
    },

    async consoleAddress(req, hctx) {
      const found = await source.console(onNode(req), "vnc", hctx.signal);
      if (found.kind !== "vnc") throw new ConnectError(`the driver gave a ${found.kind} console for vnc`, Code.Internal);
      return {
        address:
          "socket" in found ? { case: "socket", value: found.socket } : { case: "tcp", value: { host: found.host, port: found.port } },
      };
    },

    async *console(requests, hctx) {
      const it = requests[Symbol.asyncIterator]();
      const first = await nextWithin(it, idleMs, "open");
      if (first.done || first.value.part.case !== "open")
        throw new ConnectError("open: the first message must name the instance and the console kind", Code.InvalidArgument);
      const { kind: apiKind } = first.value.part.value;
      const name = onNode(first.value.part.value, "open.");
      const kind = apiKind === ApiConsoleKind.VNC ? "vnc" : apiKind === ApiConsoleKind.SERIAL ? "serial" : undefined;
      if (!kind)
        throw new ConnectError(
          `open.kind: ${show(ApiConsoleKind[apiKind] ?? apiKind)} must be CONSOLE_KIND_VNC or CONSOLE_KIND_SERIAL`,
          Code.InvalidArgument,
        );
      const found = await source.console(name, kind, hctx.signal);
      // The newest serial console wins, as with `virsh console --force`: the previous one closes
      // before this one opens the pty, so every byte the guest writes reaches the current viewer.
      if (found.kind === "serial") serials.get(name)?.();
      const peer = await openConsole(found).catch((e: unknown) => {
        throw new ConnectError(`console of instance ${name}: ${(e as Error).message}`, Code.Unavailable);
      });
      let failure: ConnectError | undefined;
      const end = () => {
        if (serials.get(name) === end) serials.delete(name);
        peer.close();
      };
      if (found.kind === "serial") serials.set(name, end);
      hctx.signal.addEventListener("abort", end, { once: true });
      peer.onClose(end);
      // Server → console, one message at a time: the next is read once the console took this one.
      void (async () => {
        for (;;) {
          const r = await it.next();
          if (r.done) break;
          if (r.value.part.case !== "data") {
            failure = new ConnectError("open: sent twice; a stream opens one console", Code.InvalidArgument);
            break;
          }
          await peer.write(r.value.part.value);
        }
      })()
        .catch(() => undefined)
        .finally(end);
      opts.log.info({ instance: name, kind }, "console tunnel opened");
      try {
        yield { part: { case: "opened", value: {} } };
        // Console → server: each chunk read is one message, pulled as the server takes them.
        for await (const data of peer.readable) yield { part: { case: "data", value: data } };
      } catch {
        // The console closed under the reader (the stream destroyed): the tunnel just ends.
      } finally {
        hctx.signal.removeEventListener("abort", end);
        end();
      }
      if (failure) throw failure;
    },
  };
}

function refuse(problem: string | undefined): void {
  if (problem) throw new ConnectError(problem, Code.InvalidArgument);
}

/**
 * The iterator's next message, or DeadlineExceeded naming `what` when none comes within `ms`: a
 * stream opened and left silent would otherwise hold its spool file or its slot forever.
 */
async function nextWithin<T>(it: AsyncIterator<T>, ms: number, what: string): Promise<IteratorResult<T>> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new ConnectError(`${what}: nothing came for ${ms} ms`, Code.DeadlineExceeded)), ms);
  });
  try {
    return await Promise.race([it.next(), late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Writes the chunks to a new 0600 file; over `max` bytes: ResourceExhausted. Resolves with the size. */
async function spool(it: AsyncIterator<AgentServiceImportImageRequest>, file: string, max: number, idleMs: number): Promise<number> {
  const fh = await open(file, "wx", 0o600);
  let received = 0;
  try {
    for (;;) {
      const r = await nextWithin(it, idleMs, "chunk");
      if (r.done) break;
      if (r.value.part.case !== "chunk") throw new ConnectError("header: sent twice; send it once, first", Code.InvalidArgument);
      const chunk = r.value.part.value;
      received += chunk.length;
      if (received > max)
        throw new ConnectError(`chunk: the image is over the agent's limit of ${max} bytes; nothing was imported`, Code.ResourceExhausted);
      if (chunk.length) await fh.write(chunk);
    }
  } finally {
    await fh.close();
  }
  return received;
}

/** The file's size, or undefined when it does not exist. */
function sizeOf(path: string): Promise<number | undefined> {
  return stat(path).then(
    (s) => s.size,
    () => undefined,
  );
}

/** Bytes [from, to) of the file; nothing when it went away. */
async function* readRange(path: string, from: number, to: number): AsyncGenerator<Uint8Array> {
  if (to <= from) return;
  try {
    for await (const b of createReadStream(path, { start: from, end: to - 1 })) yield b as Buffer;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
}
