/*
 * Orphans: instances a driver has on this node that are not assigned here. The agent never
 * deletes one on its own (docs/architecture.md, "Data safety"): a guest's disk goes only when its
 * instance is deleted, when an instance whose disks hold nothing to keep was moved away, or when
 * an operator purges the orphan.
 *
 *   found in a driver, no assignment here
 *     ├─ marked by another cluster ─────────────────────────────► ignore (never ours)
 *     ├─ store: same uid, being deleted ────────────────────────► destroy (the user asked)
 *     ├─ store: same uid, placed here (our watch lags) ─────────► wait
 *     ├─ store: same uid, placed elsewhere or Pending
 *     │     ├─ no local disk, or spec.ephemeral_disks ──────────► destroy (a move; nothing lost)
 *     │     └─ local disk ──────────────────────────────────────► fence: stop, report FENCED
 *     └─ store: no such uid (wiped, restored, or name reused) ──► keep as it is, report UNKNOWN
 *
 * Reports live in orphans/<node>/<name> (Orphan), written by this node's agent only, listed by
 * NodeService.ListOrphans; AdoptOrphan places the instance here again (the agent then adopts it),
 * PurgeOrphan asks this agent to destroy it. The agent also keeps the last Instance it ran under
 * each name in <dataDir>/specs/, so an orphan the store has forgotten can be adopted with its spec.
 */
import { isHostName } from "../../pkg/validation/index.js";
import { create, equals, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { type Instance, InstanceSchema, InstanceSpecSchema } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { type Orphan, OrphanReason, OrphanSchema } from "../../api/gen/hypervisor/v1/node_pb.js";
import { type Store } from "../../pkg/cluster/store/index.js";
import { hostName, hostRef, keys, parseNodeKey, refOf, splitRef } from "../../pkg/cluster/state/index.js";
import type { DriverInstance } from "../../pkg/compute/driver/index.js";

/** What the store says about the name of an unassigned instance (instances/<name>). */
export interface KnownInstance {
  uid: string;
  /** The node it is placed on; empty while Pending. */
  node: string;
  deleting: boolean;
  ephemeralDisks: boolean;
}

export type OrphanAction =
  | { kind: "ignore" }
  | { kind: "wait" }
  | { kind: "destroy"; why: string }
  | { kind: "fence"; message: string; placedNode: string }
  | { kind: "keep"; message: string };

/** The decision for an instance found in a driver with no assignment on `node`. Pure. */
export function decideUnassigned(
  found: Pick<DriverInstance, "uid" | "cluster" | "localDisk">,
  known: KnownInstance | undefined,
  self: { cluster: string; node: string },
): OrphanAction {
  if (found.cluster && self.cluster && found.cluster !== self.cluster) return { kind: "ignore" };
  if (!known || known.uid !== found.uid) {
    const why = known ? `its name is now used by another instance (uid ${known.uid})` : "the store has no instance of that name";
    return { kind: "keep", message: `kept as it is: ${why}; adopt or purge it` };
  }
  if (known.deleting) return { kind: "destroy", why: "the instance is being deleted" };
  if (known.node === self.node) return { kind: "wait" };
  const where = known.node ? `placed on node ${known.node}` : "waiting for a node";
  if (!found.localDisk) return { kind: "destroy", why: `moved away (${where}); it has no local disk` };
  if (known.ephemeralDisks) return { kind: "destroy", why: `moved away (${where}); its disks are declared ephemeral` };
  return {
    kind: "fence",
    message: `stopped (fencing): the instance is ${where}; this copy keeps its local disk; adopt or purge it`,
    placedNode: known.node,
  };
}

/**
 * For an instance of another uid in the way of the one assigned here under the same name: one
 * without a local disk is destroyed (nothing lost, as before); one with a local disk is kept and
 * the assigned instance waits for an operator to purge it.
 */
export function namesakeInTheWay(found: Pick<DriverInstance, "localDisk">): boolean {
  return Boolean(found.localDisk);
}

/** The orphans/<node>/ records this agent wrote, as it last wrote them. */
export class OrphanBook {
  private readonly written = new Map<string, Orphan>();

  constructor(
    private readonly store: Store,
    private readonly node: string,
  ) {}

  /** Reads the records a previous run left (they are cleared as their instances are looked at). */
  async load(signal: AbortSignal): Promise<string[]> {
    const { kvs } = await this.store.range(keys.orphansOf(this.node), { signal });
    for (const kv of kvs) {
      const k = parseNodeKey(kv.key);
      if (k?.kind === "orphan") this.written.set(hostName(k.ref), fromBinary(OrphanSchema, kv.value));
    }
    return [...this.written.keys()];
  }

  has(name: string): boolean {
    return this.written.has(name);
  }

  /** Writes the record if it changed (found_time kept from the first report of this uid). */
  async report(o: Orphan, signal: AbortSignal): Promise<void> {
    const name = hostName(refOf(o));
    const prev = this.written.get(name);
    o.foundTime = prev?.uid === o.uid && prev.foundTime ? prev.foundTime : timestampNow();
    if (prev && equals(OrphanSchema, prev, o)) return;
    await this.store.put(keys.orphan(this.node, refOf(o)), toBinary(OrphanSchema, o), { signal });
    this.written.set(name, o);
  }

  async clear(name: string, signal: AbortSignal): Promise<void> {
    if (!this.written.has(name)) return;
    await this.store.delete(keys.orphan(this.node, hostRef(name)), { signal });
    this.written.delete(name);
  }
}

/** An Orphan record for a driver instance. */
export function orphanRecord(
  driver: string,
  found: DriverInstance,
  reason: OrphanReason,
  message: string,
  kept: Instance | undefined,
  placedNode = "",
): Orphan {
  const o = create(OrphanSchema, {
    // Its name on the node read back: its project's name and its own.
    ...splitRef(hostRef(found.name)),
    uid: found.uid,
    driver,
    state: found.state,
    reason,
    message,
    placedNode,
    localDisk: Boolean(found.localDisk),
    legacyMark: !found.cluster,
  });
  if (kept?.uid === found.uid && kept.spec) {
    o.spec = kept.spec;
    o.labels = { ...kept.labels };
  } else {
    o.spec = create(InstanceSpecSchema, { driver });
  }
  return o;
}

/**
 * The last Instance this agent ran under each name, in <dataDir>/specs/<name on the node>.pb: what
 * an orphan the store forgot is adopted back with. Names are checked by the agent (isHostName).
 */
export class SpecKeeper {
  private readonly dir: string;

  constructor(dataDir: string) {
    this.dir = join(dataDir, "specs");
  }

  async save(inst: Instance): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const file = join(this.dir, `${hostName(refOf(inst))}.pb`);
    const tmp = `${file}.tmp`;
    const copy = create(InstanceSchema, { name: inst.name, project: inst.project, uid: inst.uid, labels: inst.labels, spec: inst.spec });
    await writeFile(tmp, toBinary(InstanceSchema, copy), { mode: 0o600 });
    await rename(tmp, file);
  }

  async load(name: string): Promise<Instance | undefined> {
    if (!isHostName(name)) return undefined; // not a name this agent could have kept
    try {
      return fromBinary(InstanceSchema, await readFile(join(this.dir, `${name}.pb`)));
    } catch {
      return undefined; // none kept (created before specs were kept), or unreadable
    }
  }

  async remove(name: string): Promise<void> {
    await rm(join(this.dir, `${name}.pb`), { force: true });
  }
}

export { OrphanReason };
