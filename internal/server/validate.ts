/*
 * Input validation for the API. Every rejection is an InvalidArgument naming the field and the
 * offending value, so a user can fix the request without reading server logs. Nothing is written
 * before validation has passed. The rules themselves (limits, syntax) live in pkg/validation, which
 * the ctl and the UI import too, and what each driver takes in pkg/compute/driver's registry;
 * unknown enum values and fields never get this far (strict-input.ts).
 */
import { Code, ConnectError } from "@connectrpc/connect";
import {
  type InstanceSpec,
  LabelOperator,
  type LabelRequirement,
  type Placement,
  TolerationOperator,
} from "../../api/gen/hypervisor/v1/instance_pb.js";
import { checkDriverSpec, DRIVER_NAMES, driverEntry } from "../../pkg/compute/driver/index.js";
import { DEFAULT_PROJECT, instanceRef, RESERVED_LABEL_PREFIX, RESTART_LABEL, splitRef } from "../../pkg/cluster/state/index.js";
import {
  checkDisk,
  checkLabelKey,
  checkLabels,
  checkLabelValue,
  checkMemory,
  checkName,
  checkText,
  checkTextList,
  checkTextMap,
  checkVcpus,
  CONFIG_KEY_RE,
  CONFIG_KEY_RULE,
  ENV_KEY_RE,
  ENV_KEY_RULE,
  LABEL_KEY_RE,
  LABEL_VALUE_RE,
  LIMITS,
  show,
} from "../../pkg/validation/index.js";

export { LIMITS, RESERVED_LABEL_PREFIX, RESTART_LABEL, show };

export function invalid(field: string, message: string): ConnectError {
  return new ConnectError(`${field}: ${message}`, Code.InvalidArgument);
}

/** Throws the shared rules' complaint (the whole "field: message") as InvalidArgument. */
export function refuse(problem: string | undefined): void {
  if (problem !== undefined) throw new ConnectError(problem, Code.InvalidArgument);
}

/**
 * Runs `check` (which validates one element of a list), naming the element in any
 * InvalidArgument it throws: "instances[3]." + "spec.vcpus: ...".
 */
export function prefixed<T>(prefix: string, check: () => T): T {
  try {
    return check();
  } catch (e) {
    if (e instanceof ConnectError && e.code === Code.InvalidArgument) throw new ConnectError(prefix + e.rawMessage, Code.InvalidArgument);
    throw e;
  }
}

export function validateName(field: string, name: string): void {
  refuse(checkName(field, name));
}

/** "web" in the default project, "web in project ci" in another: how messages name an instance. */
export function showRef(ref: string): string {
  const { project, name } = splitRef(ref);
  return project === DEFAULT_PROJECT ? show(name) : `${show(name)} in project ${show(project)}`;
}

/**
 * The ref ("<project>/<name>") of the instance a request names, both parts checked: `prefix` is
 * the request's path in a batch ("instances[3].").
 */
export function requestRef(req: { readonly project: string; readonly name: string }, prefix = ""): string {
  if (req.project !== "") refuse(checkName(`${prefix}project`, req.project));
  refuse(checkName(`${prefix}name`, req.name));
  return instanceRef(req.project, req.name);
}

export function validateLabels(field: string, labels: Record<string, string>, allowReserved = false): void {
  refuse(checkLabels(field, labels, allowReserved ? undefined : RESERVED_LABEL_PREFIX));
}

/** `labels`: the instance's own, the default group of placement terms. */
export function validateSpec(spec: InstanceSpec | undefined, labels: Record<string, string> = {}): asserts spec is InstanceSpec {
  if (!spec) throw invalid("spec", "is required");
  if (spec.driver === "") throw invalid("spec.driver", `is required (one of ${DRIVER_NAMES.join(", ")})`);
  const driver = driverEntry(spec.driver);
  if (!driver) throw invalid("spec.driver", `unknown driver ${show(spec.driver)}: use one of ${DRIVER_NAMES.join(", ")}`);
  refuse(checkVcpus(spec.vcpus));
  refuse(checkMemory(spec.memoryMib));
  refuse(checkDisk(spec.diskGib));
  if (spec.memoryTargetMib !== 0n && (spec.memoryTargetMib < 16n || spec.memoryTargetMib > spec.memoryMib))
    throw invalid(
      "spec.memory_target_mib",
      `${spec.memoryTargetMib} must be 0 (all memory) or from 16 to spec.memory_mib (${spec.memoryMib})`,
    );
  refuse(checkText("spec.image", spec.image, LIMITS.maxImageBytes));
  refuse(checkText("spec.kernel", spec.kernel, LIMITS.maxImageBytes));
  refuse(checkText("spec.initrd", spec.initrd, LIMITS.maxImageBytes));
  refuse(checkText("spec.cmdline", spec.cmdline, LIMITS.maxStringBytes));
  refuse(checkTextList("spec.command", spec.command));
  refuse(checkTextList("spec.args", spec.args));
  refuse(checkTextMap("spec.env", spec.env, ENV_KEY_RE, ENV_KEY_RULE));
  refuse(checkTextMap("spec.driver_config", spec.driverConfig, CONFIG_KEY_RE, CONFIG_KEY_RULE));
  validateLabels("spec.node_selector", spec.nodeSelector, true);
  // What this driver takes (a kernel on a container, a driver_config key it does not know):
  // refused here rather than by the node's agent after the instance was stored and placed.
  const problem = checkDriverSpec(driver, spec);
  if (problem) throw invalid(problem.field, problem.message);
  if (spec.placement) validatePlacement("spec.placement", spec.placement, labels);
}

function validatePlacement(field: string, p: Placement, labels: Record<string, string>): void {
  for (const [name, list] of [
    ["node_requirements", p.nodeRequirements],
    ["tolerations", p.tolerations],
    ["affinity", p.affinity],
    ["spread", p.spread],
    ["preferences", p.preferences],
  ] as const) {
    if (list.length > LIMITS.maxPlacementTerms)
      throw invalid(`${field}.${name}`, `has ${list.length} entries; at most ${LIMITS.maxPlacementTerms} allowed`);
  }
  p.nodeRequirements.forEach((r, i) => validateRequirement(`${field}.node_requirements[${i}]`, r));
  p.tolerations.forEach((t, i) => {
    const f = `${field}.tolerations[${i}]`;
    if (t.operator === TolerationOperator.EXISTS) {
      if (t.key !== "") validateLabelKey(`${f}.key`, t.key);
      if (t.value !== "") throw invalid(`${f}.value`, `must be empty with operator EXISTS, got ${show(t.value)}`);
    } else {
      validateLabelKey(`${f}.key`, t.key);
      validateLabelValue(`${f}.value`, t.value);
    }
  });
  const groupOf = (f: string, selector: Record<string, string>) => {
    validateLabels(f, selector, true);
    if (Object.keys(selector).length === 0 && Object.keys(labels).length === 0)
      throw invalid(f, "is empty and the instance has no labels: name the group of instances this counts");
  };
  p.affinity.forEach((a, i) => {
    const f = `${field}.affinity[${i}]`;
    groupOf(`${f}.match_labels`, a.matchLabels);
    if (a.topologyKey !== "") validateLabelKey(`${f}.topology_key`, a.topologyKey);
    if (a.required && a.weight !== 0) throw invalid(`${f}.weight`, `must be 0 for a required term, got ${a.weight}`);
    if (!a.required && (a.weight < 1 || a.weight > 100))
      throw invalid(`${f}.weight`, `${a.weight} must be from 1 to 100 for a preferred term`);
  });
  p.spread.forEach((sp, i) => {
    const f = `${field}.spread[${i}]`;
    if (sp.topologyKey === "") throw invalid(`${f}.topology_key`, "is required (the node label to spread over, e.g. zone)");
    validateLabelKey(`${f}.topology_key`, sp.topologyKey);
    if (sp.maxSkew > LIMITS.maxSkew) throw invalid(`${f}.max_skew`, `${sp.maxSkew} is more than ${LIMITS.maxSkew}`);
    groupOf(`${f}.match_labels`, sp.matchLabels);
  });
  if (p.maxPerNode > LIMITS.maxPerNode)
    throw invalid(`${field}.max_per_node`, `${p.maxPerNode} is more than the maximum of ${LIMITS.maxPerNode}`);
  if (p.maxPerNode > 0) groupOf(`${field}.max_per_node_selector`, p.maxPerNodeSelector);
  else if (Object.keys(p.maxPerNodeSelector).length > 0)
    throw invalid(`${field}.max_per_node_selector`, "is set but max_per_node is 0 (no limit)");
  if (p.disruptionBudget) {
    const f = `${field}.disruption_budget`;
    if (p.disruptionBudget.maxUnavailable < 1) throw invalid(`${f}.max_unavailable`, "must be at least 1");
    if (p.disruptionBudget.maxUnavailable > LIMITS.maxUnavailable)
      throw invalid(`${f}.max_unavailable`, `${p.disruptionBudget.maxUnavailable} is more than the maximum of ${LIMITS.maxUnavailable}`);
    groupOf(`${f}.match_labels`, p.disruptionBudget.matchLabels);
  }
  p.preferences.forEach((x, i) => {
    const f = `${field}.preferences[${i}]`;
    if (!x.requirement) throw invalid(`${f}.requirement`, "is required");
    validateRequirement(`${f}.requirement`, x.requirement);
    if (x.weight === 0 || x.weight < -100 || x.weight > 100) throw invalid(`${f}.weight`, `${x.weight} must be from -100 to 100, not 0`);
  });
}

function validateRequirement(field: string, r: LabelRequirement): void {
  validateLabelKey(`${field}.key`, r.key);
  const withValues = r.operator === LabelOperator.IN || r.operator === LabelOperator.NOT_IN;
  if (r.operator === LabelOperator.UNSPECIFIED)
    throw invalid(`${field}.operator`, `is required: IN, NOT_IN, EXISTS or DOES_NOT_EXIST (got ${show(r.operator)})`);
  if (withValues && r.values.length === 0) throw invalid(`${field}.values`, "needs at least one value with IN and NOT_IN");
  if (!withValues && r.values.length > 0) throw invalid(`${field}.values`, "must be empty with EXISTS and DOES_NOT_EXIST");
  if (r.values.length > LIMITS.maxListEntries)
    throw invalid(`${field}.values`, `has ${r.values.length} entries; at most ${LIMITS.maxListEntries} allowed`);
  r.values.forEach((v, i) => validateLabelValue(`${field}.values[${i}]`, v));
}

function validateLabelKey(field: string, k: string): void {
  refuse(checkLabelKey(field, k));
}

function validateLabelValue(field: string, v: string): void {
  refuse(checkLabelValue(field, v));
}

/** "k=v,k2=v2" → record. */
export function parseLabelSelector(field: string, selector: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (selector.trim() === "") return out;
  for (const part of selector.split(",")) {
    const eq = part.indexOf("=");
    if (eq <= 0) throw invalid(field, `${show(part)} is not of the form key=value`);
    const k = part.slice(0, eq).trim();
    const v = part.slice(eq + 1).trim();
    if (!LABEL_KEY_RE.test(k)) throw invalid(field, `key ${show(k)} is not a valid label key`);
    if (!LABEL_VALUE_RE.test(v)) throw invalid(field, `value ${show(v)} is not a valid label value`);
    out[k] = v;
  }
  return out;
}
