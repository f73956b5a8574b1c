/*
 * Input validation for the API. Every rejection is an InvalidArgument naming the field and the
 * offending value, so a user can fix the request without reading server logs. Nothing is written
 * before validation has passed.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import {
  type InstanceSpec,
  LabelOperator,
  type LabelRequirement,
  type Placement,
  Strategy,
  TaintEffect,
  TolerationOperator,
} from "../../api/gen/hypervisor/v1/instance_pb.js";

/** Drivers the platform knows. A known driver that no node has leaves the instance Pending. */
export const KNOWN_DRIVERS = ["libvirt", "containerd", "firecracker", "mock"] as const;

import { RESERVED_LABEL_PREFIX, RESTART_LABEL } from "../../pkg/cluster/store/index.js";
export { RESERVED_LABEL_PREFIX, RESTART_LABEL };

export const LIMITS = {
  maxVcpus: 1024,
  maxMemoryMiB: 16 * 1024 * 1024, // 16 TiB
  maxDiskGiB: 1024 * 1024, // 1 PiB
  maxLabels: 64,
  maxMapEntries: 256,
  maxListEntries: 256,
  maxStringBytes: 4096,
  maxImageBytes: 1024,
} as const;

const NAME_RE = /^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$/;
// Kubernetes-style qualified key: optional DNS prefix, then a name segment.
const LABEL_KEY_RE = /^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?\/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/;
const LABEL_VALUE_RE = /^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$/;
const ENV_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
const CONFIG_KEY_RE = /^[a-z][a-z0-9_.-]{0,62}$/;

export function invalid(field: string, message: string): ConnectError {
  return new ConnectError(`${field}: ${message}`, Code.InvalidArgument);
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

/** Quotes a user value for an error message, bounded so a huge value cannot flood the reply. */
export function show(value: unknown): string {
  const s = typeof value === "string" ? value : String(value);
  return JSON.stringify(s.length > 80 ? `${s.slice(0, 77)}...` : s);
}

export function validateName(field: string, name: string): void {
  if (name === "") throw invalid(field, "is required");
  if (!NAME_RE.test(name)) {
    throw invalid(
      field,
      `${show(name)} is not a valid name: use 1-63 lowercase letters, digits and '-', starting with a letter and not ending with '-'`,
    );
  }
}

export function validateLabels(field: string, labels: Record<string, string>, allowReserved = false): void {
  const entries = Object.entries(labels);
  if (entries.length > LIMITS.maxLabels) throw invalid(field, `has ${entries.length} entries; at most ${LIMITS.maxLabels} allowed`);
  for (const [k, v] of entries) {
    if (!LABEL_KEY_RE.test(k)) throw invalid(`${field}[${show(k)}]`, `key ${show(k)} is not a valid label key`);
    if (!allowReserved && k.startsWith(RESERVED_LABEL_PREFIX)) {
      throw invalid(`${field}[${show(k)}]`, `keys under ${show(RESERVED_LABEL_PREFIX)} are reserved for the system`);
    }
    if (!LABEL_VALUE_RE.test(v)) {
      throw invalid(`${field}[${show(k)}]`, `value ${show(v)} is not a valid label value: at most 63 letters, digits, '-', '_', '.'`);
    }
  }
}

function validateStringList(field: string, list: string[]): void {
  if (list.length > LIMITS.maxListEntries) throw invalid(field, `has ${list.length} entries; at most ${LIMITS.maxListEntries} allowed`);
  list.forEach((s, i) => validateString(`${field}[${i}]`, s, LIMITS.maxStringBytes));
}

function validateString(field: string, s: string, max: number): void {
  if (Buffer.byteLength(s) > max) throw invalid(field, `is ${Buffer.byteLength(s)} bytes; at most ${max} allowed`);
  // NUL and other C0 controls other than tab/newline have no business in a spec and break
  // everything downstream (XML, argv, file paths).
  if (/[\u0000-\u0008\u000b-\u001f\u007f]/.test(s)) throw invalid(field, `${show(s)} contains control characters`);
}

function validateMap(field: string, m: Record<string, string>, keyRe: RegExp, keyRule: string): void {
  const entries = Object.entries(m);
  if (entries.length > LIMITS.maxMapEntries) throw invalid(field, `has ${entries.length} entries; at most ${LIMITS.maxMapEntries} allowed`);
  for (const [k, v] of entries) {
    if (!keyRe.test(k)) throw invalid(`${field}[${show(k)}]`, `key ${show(k)} is invalid: ${keyRule}`);
    validateString(`${field}[${show(k)}]`, v, LIMITS.maxStringBytes);
  }
}

function validateSize(field: string, value: number | bigint, max: number, unit: string, required: boolean): void {
  const n = Number(value);
  if (required && n === 0) throw invalid(field, "is required and must be at least 1");
  if (n > max) throw invalid(field, `${n} ${unit} is more than the maximum of ${max} ${unit}`);
}

/** `labels`: the instance's own, the default group of placement terms. */
export function validateSpec(spec: InstanceSpec | undefined, labels: Record<string, string> = {}): asserts spec is InstanceSpec {
  if (!spec) throw invalid("spec", "is required");
  if (spec.driver === "") throw invalid("spec.driver", `is required (one of ${KNOWN_DRIVERS.join(", ")})`);
  if (!(KNOWN_DRIVERS as readonly string[]).includes(spec.driver)) {
    throw invalid("spec.driver", `unknown driver ${show(spec.driver)}: use one of ${KNOWN_DRIVERS.join(", ")}`);
  }
  validateSize("spec.vcpus", spec.vcpus, LIMITS.maxVcpus, "vCPUs", true);
  validateSize("spec.memory_mib", spec.memoryMib, LIMITS.maxMemoryMiB, "MiB", true);
  validateSize("spec.disk_gib", spec.diskGib, LIMITS.maxDiskGiB, "GiB", false);
  if (spec.memoryTargetMib !== 0n && (spec.memoryTargetMib < 16n || spec.memoryTargetMib > spec.memoryMib))
    throw invalid(
      "spec.memory_target_mib",
      `${spec.memoryTargetMib} must be 0 (all memory) or from 16 to spec.memory_mib (${spec.memoryMib})`,
    );
  validateString("spec.image", spec.image, LIMITS.maxImageBytes);
  validateString("spec.kernel", spec.kernel, LIMITS.maxImageBytes);
  validateString("spec.initrd", spec.initrd, LIMITS.maxImageBytes);
  validateString("spec.cmdline", spec.cmdline, LIMITS.maxStringBytes);
  validateStringList("spec.command", spec.command);
  validateStringList("spec.args", spec.args);
  validateMap("spec.env", spec.env, ENV_KEY_RE, "environment names are letters, digits and '_', not starting with a digit");
  validateMap("spec.driver_config", spec.driverConfig, CONFIG_KEY_RE, "lowercase letters, digits, '_', '.', '-'");
  validateLabels("spec.node_selector", spec.nodeSelector, true);
  if (spec.driver === "firecracker" && spec.kernel === "") {
    throw invalid("spec.kernel", "is required for the firecracker driver (microVMs boot a kernel directly)");
  }
  if (spec.placement) validatePlacement("spec.placement", spec.placement, labels);
}

/** Most entries in each list of a placement: the scheduler evaluates them for every node. */
const MAX_PLACEMENT_TERMS = 32;

function validatePlacement(field: string, p: Placement, labels: Record<string, string>): void {
  for (const [name, list] of [
    ["node_requirements", p.nodeRequirements],
    ["tolerations", p.tolerations],
    ["affinity", p.affinity],
    ["spread", p.spread],
    ["preferences", p.preferences],
  ] as const) {
    if (list.length > MAX_PLACEMENT_TERMS)
      throw invalid(`${field}.${name}`, `has ${list.length} entries; at most ${MAX_PLACEMENT_TERMS} allowed`);
  }
  p.nodeRequirements.forEach((r, i) => validateRequirement(`${field}.node_requirements[${i}]`, r));
  p.tolerations.forEach((t, i) => {
    const f = `${field}.tolerations[${i}]`;
    if (!(t.operator in TolerationOperator)) throw invalid(`${f}.operator`, `${show(t.operator)} is not an operator`);
    if (t.operator === TolerationOperator.EXISTS) {
      if (t.key !== "") validateLabelKey(`${f}.key`, t.key);
      if (t.value !== "") throw invalid(`${f}.value`, `must be empty with operator EXISTS, got ${show(t.value)}`);
    } else {
      validateLabelKey(`${f}.key`, t.key);
      validateLabelValue(`${f}.value`, t.value);
    }
    if (!(t.effect in TaintEffect)) throw invalid(`${f}.effect`, `${show(t.effect)} is not a taint effect`);
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
    if (sp.maxSkew > 1000) throw invalid(`${f}.max_skew`, `${sp.maxSkew} is more than 1000`);
    groupOf(`${f}.match_labels`, sp.matchLabels);
  });
  if (p.maxPerNode > 0) groupOf(`${field}.max_per_node_selector`, p.maxPerNodeSelector);
  else if (Object.keys(p.maxPerNodeSelector).length > 0)
    throw invalid(`${field}.max_per_node_selector`, "is set but max_per_node is 0 (no limit)");
  if (p.disruptionBudget) {
    const f = `${field}.disruption_budget`;
    if (p.disruptionBudget.maxUnavailable < 1) throw invalid(`${f}.max_unavailable`, "must be at least 1");
    groupOf(`${f}.match_labels`, p.disruptionBudget.matchLabels);
  }
  if (!(p.strategy in Strategy)) throw invalid(`${field}.strategy`, `${show(p.strategy)} is not a strategy`);
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
  if (r.operator === LabelOperator.UNSPECIFIED || !(r.operator in LabelOperator))
    throw invalid(`${field}.operator`, `is required: IN, NOT_IN, EXISTS or DOES_NOT_EXIST (got ${show(r.operator)})`);
  if (withValues && r.values.length === 0) throw invalid(`${field}.values`, "needs at least one value with IN and NOT_IN");
  if (!withValues && r.values.length > 0) throw invalid(`${field}.values`, "must be empty with EXISTS and DOES_NOT_EXIST");
  if (r.values.length > LIMITS.maxListEntries)
    throw invalid(`${field}.values`, `has ${r.values.length} entries; at most ${LIMITS.maxListEntries} allowed`);
  r.values.forEach((v, i) => validateLabelValue(`${field}.values[${i}]`, v));
}

function validateLabelKey(field: string, k: string): void {
  if (!LABEL_KEY_RE.test(k)) throw invalid(field, `${show(k)} is not a valid label key`);
}

function validateLabelValue(field: string, v: string): void {
  if (!LABEL_VALUE_RE.test(v)) throw invalid(field, `${show(v)} is not a valid label value: at most 63 letters, digits, '-', '_', '.'`);
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
