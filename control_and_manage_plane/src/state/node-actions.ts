// Cordon, uncordon, drain and move, each confirmed first (they change where work may run; drain
// stops everything on the node, move re-creates it elsewhere), reported in the server's words
// when refused.
import { reactive } from "vue";
import type { Node, Orphan } from "../../../api/gen/hypervisor/v1/node_pb.js";
import { nodeClient } from "../api/index.js";
import { confirm } from "./confirm.js";
import { notify, notifyError } from "./notify.js";

export type NodeAction = "cordon" | "uncordon" | "drain" | "move";

/** node → action in flight. */
export const nodeInFlight = reactive(new Map<string, NodeAction>());

const ASK: Record<NodeAction, (name: string) => { headline: string; description: string; confirmText: string }> = {
  cordon: (name) => ({
    headline: `Cordon ${name}?`,
    description: "No new instances will be placed on this node. What runs there keeps running.",
    confirmText: "Cordon",
  }),
  uncordon: (name) => ({
    headline: `Uncordon ${name}?`,
    description: "The scheduler may place new instances on this node again.",
    confirmText: "Uncordon",
  }),
  drain: (name) => ({
    headline: `Drain ${name}?`,
    description: "The node is cordoned and every instance running on it is stopped.",
    confirmText: "Drain",
  }),
  move: (name) => ({
    headline: `Move everything off ${name}?`,
    description:
      "The node is cordoned and its instances are re-created on other nodes, each group within its disruption budget (no live migration: a VM restarts from its spec).",
    confirmText: "Move",
  }),
};

/** Returns the node as the server now has it, or undefined when cancelled or refused. */
export async function runNodeAction(name: string, action: NodeAction): Promise<Node | undefined> {
  if (nodeInFlight.has(name)) return undefined;
  if (!(await confirm(ASK[action](name)))) return undefined;
  nodeInFlight.set(name, action);
  try {
    switch (action) {
      case "cordon":
        return (await nodeClient.cordonNode({ name })).node;
      case "uncordon":
        return (await nodeClient.uncordonNode({ name })).node;
      case "drain": {
        const res = await nodeClient.drainNode({ name });
        notify(
          res.stoppedInstances.length
            ? `Drained ${name}: stopping ${res.stoppedInstances.join(", ")}`
            : `Drained ${name}: nothing was running`,
        );
        return res.node;
      }
      case "move": {
        const res = await nodeClient.drainNode({ name, move: true });
        notify(
          res.movingInstances.length ? `Draining ${name}: moving ${res.movingInstances.join(", ")}` : `Draining ${name}: nothing to move`,
        );
        return res.node;
      }
    }
  } catch (e) {
    notifyError(`${action} ${name} failed`, e);
    return undefined;
  } finally {
    nodeInFlight.delete(name);
  }
}

/** "node/name" → the orphan action in flight. */
export const orphanInFlight = reactive(new Map<string, "adopt" | "purge">());

/**
 * Adopts an orphan back (it becomes an instance placed on its node, disks as they are) or purges
 * it (destroyed with its disks), confirmed first; true when the server did it.
 */
export async function runOrphanAction(node: string, o: Orphan, action: "adopt" | "purge"): Promise<boolean> {
  const key = `${node}/${o.name}`;
  if (orphanInFlight.has(key)) return false;
  const ask =
    action === "adopt"
      ? {
          headline: `Adopt ${o.name}?`,
          description: `${o.name} becomes an instance of the cluster again, placed on ${node}, with its disks as they are.`,
          confirmText: "Adopt",
        }
      : {
          headline: `Purge ${o.name}?`,
          description: `${o.name} is destroyed on ${node}${o.localDisk ? " with its disk, which only this node holds" : ""}. This cannot be undone.`,
          confirmText: "Purge",
        };
  if (!(await confirm(ask))) return false;
  orphanInFlight.set(key, action);
  try {
    if (action === "adopt") await nodeClient.adoptOrphan({ node, name: o.name });
    else await nodeClient.purgeOrphan({ node, name: o.name });
    notify(action === "adopt" ? `Adopted ${o.name} on ${node}` : `Purged ${o.name} from ${node}`);
    return true;
  } catch (e) {
    notifyError(`${action} ${o.name} failed`, e);
    return false;
  } finally {
    orphanInFlight.delete(key);
  }
}
