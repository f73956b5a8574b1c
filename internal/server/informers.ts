/*
 * The informers every server replica keeps, and the feeds that fill them: one list/watch a
 * prefix. Everything of every node comes from one watch of nodes/, split by kind of key; the
 * nodes the API shows are derived, each node's record with the servers' flags merged in.
 *
 *   instances/ ──► instances        assignments/ ──► assignments     allocations/ ──► allocations
 *   nodes/     ──► records (…/record), alive (…/alive), statuses (…/status/<project>/<name>)
 *   nodeflags/ ──► flags            records + flags ──► nodes (derived)
 *   apitokens/, rolebindings/, projects/ ──► the same, for access control and projects
 */
import type { Node } from "../../api/gen/hypervisor/v1/node_pb.js";
import { codecs, DEFAULT_PROJECT, keys, parseNodeKey, phaseName, mergedPhase, withFlags } from "../../pkg/cluster/state/index.js";
import type { KeyValue, Store } from "../../pkg/cluster/store/index.js";
import type { Logger } from "../../pkg/log/index.js";
import { type Informers, statusOf } from "./context.js";
import { Feed, Informer } from "./informer.js";

const kind = (k: string) => (key: string) => parseNodeKey(key)?.kind === k;

export function makeInformers(store: Store, log: Logger): { informers: Informers; start(signal: AbortSignal): Promise<void> } {
  const instance = (kv: KeyValue) => codecs.instance.decode(kv.value);
  const records = new Informer(undefined, keys.nodes, (kv) => codecs.node.decode(kv.value), log, { match: kind("record") });
  const alive = new Informer(undefined, keys.nodes, () => true as const, log, { match: kind("alive") });
  const statuses = new Informer(undefined, keys.nodes, instance, log, { match: kind("status") });
  const flags = new Informer(store, keys.nodeFlagsPrefix, (kv) => codecs.nodeFlags.decode(kv.value), log);
  const nodes = new Informer<Node>(undefined, keys.nodes, () => undefined as never, log, { match: () => false });
  const informers: Informers = {
    instances: new Informer(store, keys.instances, instance, log),
    statuses,
    nodes,
    records,
    flags,
    alive,
    allocations: new Informer(store, keys.allocations, (kv) => codecs.allocation.decode(kv.value), log),
    assignments: new Informer(store, keys.assignments, () => true as const, log),
    apiTokens: new Informer(store, keys.apiTokens, (kv) => codecs.apiToken.decode(kv.value), log),
    roleBindings: new Informer(store, keys.roleBindings, (kv) => codecs.roleBinding.decode(kv.value), log),
    projects: new Informer(store, keys.projects, (kv) => codecs.project.decode(kv.value), log),
  };
  const join = (name: string, revision: number) => {
    const r = records.get(keys.node(name));
    if (!r) return nodes.remove(keys.node(name), revision);
    const f = flags.get(keys.nodeFlags(name));
    nodes.set(keys.node(name), withFlags(r.value, f?.value), Math.max(r.modRevision, f?.modRevision ?? 0), revision);
  };
  records.subscribe((ev) => join(parseNodeKey(ev.key)!.node, ev.revision));
  flags.subscribe((ev) => join(ev.key.slice(keys.nodeFlagsPrefix.length), ev.revision));
  // Not `nodes`: a sink's relist drops what it does not match, and the joined nodes match nothing.
  const nodeFeed = new Feed(store, keys.nodes, [records, alive, statuses], log);
  return {
    informers,
    async start(signal) {
      // Flags first: the nodes joined from the records' first listing carry them.
      await flags.start(signal);
      await Promise.all([
        nodeFeed.start(signal),
        ...[
          informers.instances,
          informers.allocations,
          informers.assignments,
          informers.apiTokens,
          informers.roleBindings,
          informers.projects,
        ].map((i) => i.start(signal)),
      ]);
    },
  };
}

/** Instances per phase name ("Running": 3), from the informers' copies. */
export function instancesByPhase(
  informers: Pick<Informers, "instances" | "statuses">,
  /** Only the instances of the projects it says yes to (a caller's: it counts what it may list). */
  sees: (project: string) => boolean = () => true,
): Map<string, number> {
  const byPhase = new Map<string, number>();
  for (const { value } of informers.instances.items.values()) {
    if (!sees(value.project || DEFAULT_PROJECT)) continue;
    const p = phaseName(mergedPhase(value, statusOf(informers, value)));
    byPhase.set(p, (byPhase.get(p) ?? 0) + 1);
  }
  return byPhase;
}
