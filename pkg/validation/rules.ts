/*
 * The API's input rules, in one place for every side that checks them: the server (which
 * enforces them: internal/server/validate.ts), the ctl, and the web UI's forms (which check first,
 * to answer without a round trip, in the same words). No Node-only imports: Vite bundles this.
 *
 * Each check returns the whole message ("spec.vcpus: 0 ..."), or undefined when the value passes.
 * The maxima here are the ones the .proto comments and docs/architecture.md ("Input limits") document.
 */

export const LIMITS = {
  maxVcpus: 1024,
  maxMemoryMiB: 16 * 1024 * 1024, // 16 TiB
  maxDiskGiB: 1024 * 1024, // 1 PiB
  maxLabels: 64,
  maxMapEntries: 256,
  maxListEntries: 256,
  maxStringBytes: 4096,
  maxImageBytes: 1024,
  /** Instances in one CreateInstances call (one transaction). */
  maxCount: 100,
  /** StopInstance: a node worker waits this long for a graceful stop. */
  maxStopTimeoutSeconds: 3600,
  /** GetInstanceLogs.tail_bytes. */
  maxTailBytes: 1024 * 1024 * 1024,
  /** Entries in each list of a placement: the scheduler evaluates them for every node. */
  maxPlacementTerms: 32,
  maxPerNode: 1000,
  maxUnavailable: 100_000,
  maxSkew: 1000,
  /** Affinity and preference weights are -100..100 (affinity: 1..100). */
  maxWeight: 100,
  /** CreateJoinToken.ttl_seconds (one year); 0 takes the default. */
  maxJoinTokenTtlSeconds: 365 * 24 * 3600,
  /** CreateJoinToken.max_uses; 0 is unlimited. */
  maxJoinTokenUses: 1_000_000,
  /** CreateJoinToken.description. */
  maxDescriptionBytes: 256,
  /** IssueUserCertificate.ttl_seconds (one year); 0 takes the default (30 days). */
  maxUserCertTtlSeconds: 365 * 24 * 3600,
} as const;

export const NAME_RE = /^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$/;
// Kubernetes-style qualified key: optional DNS prefix, then a name segment.
export const LABEL_KEY_RE = /^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?\/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/;
export const LABEL_VALUE_RE = /^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$/;
export const ENV_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
export const CONFIG_KEY_RE = /^[a-z][a-z0-9_.-]{0,62}$/;
// NUL and other C0 controls but tab and newline: they break everything downstream (XML, argv, paths).
const CONTROL_RE = /[\u0000-\u0008\u000b-\u001f\u007f]/;

const LABEL_VALUE_RULE = "at most 63 letters, digits, '-', '_', '.'";

/** Quotes a user value for an error message, bounded so a huge value cannot flood the reply. */
export function show(value: unknown): string {
  const s = typeof value === "string" ? value : String(value);
  return JSON.stringify(s.length > 80 ? `${s.slice(0, 77)}...` : s);
}

const encoder = new TextEncoder();
const byteLength = (s: string) => encoder.encode(s).length;

/**
 * An instance's name on its node (a libvirt domain, a containerd container, its files): "<name>",
 * or "<project>.<name>" outside the default project. A leading digit is taken, as drivers took
 * before the API required a letter. One rule for every driver.
 */
const HOST_LABEL = "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?";
const HOST_NAME_RE = new RegExp(`^${HOST_LABEL}(\\.${HOST_LABEL})?$`);

export function isHostName(name: string): boolean {
  return HOST_NAME_RE.test(name);
}

export function checkName(field: string, name: string): string | undefined {
  if (name === "") return `${field}: is required`;
  if (!NAME_RE.test(name))
    return `${field}: ${show(name)} is not a valid name: use 1-63 lowercase letters, digits and '-', starting with a letter and not ending with '-'`;
  return undefined;
}

/**
 * A user's or a group's name: a token's user, an OIDC claim with its prefix ("oidc:alice@example.com"),
 * a client certificate's user. 1-256 printable ASCII characters without spaces, quotes or
 * backslashes, so it reads the same in a log, an audit event and a role binding's subject.
 */
const PRINCIPAL_RE = /^[A-Za-z0-9._@:+=#~-]{1,256}$/;

export function checkPrincipal(field: string, name: string): string | undefined {
  if (name === "") return `${field}: is required`;
  if (!PRINCIPAL_RE.test(name))
    return `${field}: ${show(name)} is not a valid user or group name: use 1-256 of letters, digits and . _ @ : + = # ~ -`;
  return undefined;
}

export function checkLabelKey(field: string, k: string): string | undefined {
  return LABEL_KEY_RE.test(k) ? undefined : `${field}: ${show(k)} is not a valid label key`;
}

export function checkLabelValue(field: string, v: string): string | undefined {
  return LABEL_VALUE_RE.test(v) ? undefined : `${field}: ${show(v)} is not a valid label value: ${LABEL_VALUE_RULE}`;
}

/** A label map; `reserved` (a key prefix) refused unless undefined. */
export function checkLabels(field: string, labels: Record<string, string>, reserved?: string): string | undefined {
  const entries = Object.entries(labels);
  if (entries.length > LIMITS.maxLabels) return `${field}: has ${entries.length} entries; at most ${LIMITS.maxLabels} allowed`;
  for (const [k, v] of entries) {
    const f = `${field}[${show(k)}]`;
    if (!LABEL_KEY_RE.test(k)) return `${f}: key ${show(k)} is not a valid label key`;
    if (reserved !== undefined && k.startsWith(reserved)) return `${f}: keys under ${show(reserved)} are reserved for the system`;
    if (!LABEL_VALUE_RE.test(v)) return `${f}: value ${show(v)} is not a valid label value: ${LABEL_VALUE_RULE}`;
  }
  return undefined;
}

/** "k=v,k2=v2" (commas or new lines) → record, or the first error in the server's words. */
export function parseLabels(field: string, text: string): { labels: Record<string, string>; error?: string } {
  const labels: Record<string, string> = {};
  const parts = text
    .split(/[,\n]/)
    .map((p) => p.trim())
    .filter((p) => p !== "");
  for (const part of parts) {
    const eq = part.indexOf("=");
    if (eq <= 0) return { labels, error: `${field}: ${show(part)} is not of the form key=value` };
    const k = part.slice(0, eq).trim();
    const v = part.slice(eq + 1).trim();
    if (!LABEL_KEY_RE.test(k)) return { labels, error: `${field}[${show(k)}]: key ${show(k)} is not a valid label key` };
    if (!LABEL_VALUE_RE.test(v))
      return { labels, error: `${field}[${show(k)}]: value ${show(v)} is not a valid label value: ${LABEL_VALUE_RULE}` };
    labels[k] = v;
  }
  const error = checkLabels(field, labels);
  return error ? { labels, error } : { labels };
}

export function checkText(field: string, s: string, maxBytes: number): string | undefined {
  const bytes = byteLength(s);
  if (bytes > maxBytes) return `${field}: is ${bytes} bytes; at most ${maxBytes} allowed`;
  if (CONTROL_RE.test(s)) return `${field}: ${show(s)} contains control characters`;
  return undefined;
}

export function checkTextList(field: string, list: readonly string[]): string | undefined {
  if (list.length > LIMITS.maxListEntries) return `${field}: has ${list.length} entries; at most ${LIMITS.maxListEntries} allowed`;
  for (const [i, s] of list.entries()) {
    const e = checkText(`${field}[${i}]`, s, LIMITS.maxStringBytes);
    if (e) return e;
  }
  return undefined;
}

export function checkTextMap(field: string, m: Record<string, string>, keyRe: RegExp, keyRule: string): string | undefined {
  const entries = Object.entries(m);
  if (entries.length > LIMITS.maxMapEntries) return `${field}: has ${entries.length} entries; at most ${LIMITS.maxMapEntries} allowed`;
  for (const [k, v] of entries) {
    if (!keyRe.test(k)) return `${field}[${show(k)}]: key ${show(k)} is invalid: ${keyRule}`;
    const e = checkText(`${field}[${show(k)}]`, v, LIMITS.maxStringBytes);
    if (e) return e;
  }
  return undefined;
}

export const ENV_KEY_RULE = "environment names are letters, digits and '_', not starting with a digit";
export const CONFIG_KEY_RULE = "lowercase letters, digits, '_', '.', '-'";

/** A size in `unit`s up to `max`; `min` 1 makes it required. */
export function checkSize(field: string, value: number | bigint, max: number, unit: string, min = 0): string | undefined {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min)
    return min === 1 ? `${field}: is required and must be at least 1` : `${field}: must be at least ${min} ${unit}`;
  if (n > max) return `${field}: ${n} ${unit} is more than the maximum of ${max} ${unit}`;
  return undefined;
}

export function checkVcpus(vcpus: number): string | undefined {
  return checkSize("spec.vcpus", vcpus, LIMITS.maxVcpus, "vCPUs", 1);
}

/** The API takes 1 MiB; forms ask for at least 16 (nothing boots in less, its smallest balloon target). */
export function checkMemory(mib: number | bigint, min = 1): string | undefined {
  return checkSize("spec.memory_mib", mib, LIMITS.maxMemoryMiB, "MiB", min);
}

export function checkDisk(gib: number | bigint): string | undefined {
  return checkSize("spec.disk_gib", gib, LIMITS.maxDiskGiB, "GiB");
}

export function checkCount(count: number): string | undefined {
  if (!Number.isInteger(count) || count < 1 || count > LIMITS.maxCount) return `count: expected 1 to ${LIMITS.maxCount}`;
  return undefined;
}

export function checkStopTimeout(field: string, seconds: number): string | undefined {
  if (!Number.isInteger(seconds) || seconds < 0 || seconds > LIMITS.maxStopTimeoutSeconds)
    return `${field}: ${seconds} is more than the maximum of ${LIMITS.maxStopTimeoutSeconds} seconds (an hour)`;
  return undefined;
}

export function checkTailBytes(field: string, bytes: number | bigint): string | undefined {
  if (BigInt(bytes) > BigInt(LIMITS.maxTailBytes))
    return `${field}: ${bytes} is more than the maximum of ${LIMITS.maxTailBytes} bytes (1 GiB)`;
  return undefined;
}
