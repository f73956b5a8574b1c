// Power and delete actions on an instance, shared by the list and the detail page: one request in
// flight per instance (the buttons show it), destructive ones confirmed first, failures reported
// in the server's words. What happens next arrives through the live stream, not from here. Every
// call names the instance's project; maps are keyed by project/name (instanceKey).
import { reactive } from "vue";
import { PowerState, Phase, type Instance } from "../../../api/gen/hypervisor/v1/instance_pb.js";
import { instanceClient, errorText } from "../api/index.js";
import { confirm } from "./confirm.js";
import { instanceKey } from "./instances.js";
import { notifyError } from "./notify.js";

export type Action = "start" | "stop" | "restart" | "delete";

/** project/name → the action whose request is in flight. */
export const inFlight = reactive(new Map<string, Action>());
/** project/name → the last action's failure, until the next action. */
export const lastError = reactive(new Map<string, string>());
/** Instances (project/name) whose deletion this tab asked for (the server may report them gone before it answers). */
export const deleteRequested = reactive(new Set<string>());

export function allowed(i: Instance, action: Action): boolean {
  if (i.deleteTime || inFlight.has(instanceKey(i.project, i.name))) return false;
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
export async function runAction(project: string, name: string, action: Action): Promise<boolean> {
  const key = instanceKey(project, name);
  if (inFlight.has(key)) return false;
  if (action === "delete") {
    const ok = await confirm({
      headline: project && project !== "default" ? `Delete ${name} of project ${project}?` : `Delete ${name}?`,
      description: "The instance is stopped and its resources on the node are removed. This cannot be undone.",
      confirmText: "Delete",
    });
    if (!ok) return false;
  }
  inFlight.set(key, action);
  lastError.delete(key);
  try {
    switch (action) {
      case "start":
        await instanceClient.startInstance({ project, name });
        break;
      case "stop":
        await instanceClient.stopInstance({ project, name });
        break;
      case "restart":
        await instanceClient.restartInstance({ project, name });
        break;
      case "delete":
        deleteRequested.add(key);
        await instanceClient.deleteInstance({ project, name });
        break;
    }
    return true;
  } catch (e) {
    if (action === "delete") deleteRequested.delete(key);
    lastError.set(key, errorText(e));
    notifyError(`${action} ${name} failed`, e);
    return false;
  } finally {
    inFlight.delete(key);
  }
}
