// Power and delete actions on an instance, shared by the list and the detail page: one request in
// flight per instance (the buttons show it), destructive ones confirmed first, failures reported
// in the server's words. What happens next arrives through the live stream, not from here.
import { reactive } from "vue";
import { PowerState, Phase, type Instance } from "../../../api/gen/hypervisor/v1/instance_pb.js";
import { instanceClient, errorText } from "../api/index.js";
import { confirm } from "./confirm.js";
import { notifyError } from "./notify.js";

export type Action = "start" | "stop" | "restart" | "delete";

/** name → the action whose request is in flight. */
export const inFlight = reactive(new Map<string, Action>());
/** name → the last action's failure, until the next action. */
export const lastError = reactive(new Map<string, string>());
/** Names whose deletion this tab asked for (the server may report them gone before it answers). */
export const deleteRequested = reactive(new Set<string>());

export function allowed(i: Instance, action: Action): boolean {
  if (i.deleteTime || inFlight.has(i.name)) return false;
  const wantsRunning = i.spec?.desiredPowerState !== PowerState.STOPPED;
  switch (action) {
    case "start":
      return !wantsRunning || i.status?.phase === Phase.FAILED;
    case "stop":
      return wantsRunning && i.status?.phase !== Phase.STOPPED;
    case "restart":
      return i.status?.phase === Phase.RUNNING;
    case "delete":
      return true;
  }
}

/** Runs the action (asking first for delete); false when refused, cancelled or failed. */
export async function runAction(name: string, action: Action): Promise<boolean> {
  if (inFlight.has(name)) return false;
  if (action === "delete") {
    const ok = await confirm({
      headline: `Delete ${name}?`,
      description: "The instance is stopped and its resources on the node are removed. This cannot be undone.",
      confirmText: "Delete",
    });
    if (!ok) return false;
  }
  inFlight.set(name, action);
  lastError.delete(name);
  try {
    switch (action) {
      case "start":
        await instanceClient.startInstance({ name });
        break;
      case "stop":
        await instanceClient.stopInstance({ name });
        break;
      case "restart":
        await instanceClient.restartInstance({ name });
        break;
      case "delete":
        deleteRequested.add(name);
        await instanceClient.deleteInstance({ name });
        break;
    }
    return true;
  } catch (e) {
    if (action === "delete") deleteRequested.delete(name);
    lastError.set(name, errorText(e));
    notifyError(`${action} ${name} failed`, e);
    return false;
  } finally {
    inFlight.delete(name);
  }
}
