// What the create form checks before sending: the same rules and the same words as the server's
// validation (internal/server/validate.ts), so a mistake is caught without a round trip and reads
// the same either way. System policy (reserved label prefixes, existing names, what nodes offer)
// stays on the server; its refusals come back through errors.ts.

export const KNOWN_DRIVERS = ["libvirt", "containerd", "firecracker", "mock"] as const;
export type DriverName = (typeof KNOWN_DRIVERS)[number];

export const LIMITS = { maxVcpus: 1024, maxMemoryMiB: 16 * 1024 * 1024, minMemoryMiB: 16, maxLabels: 64 } as const;

const NAME_RE = /^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$/;
const LABEL_KEY_RE = /^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?\/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/;
const LABEL_VALUE_RE = /^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$/;
// NUL and other C0 controls but tab and newline.
const CONTROL_RE = /[\u0000-\u0008\u000b-\u001f\u007f]/;

export function show(value: unknown): string {
  const s = typeof value === "string" ? value : String(value);
  return JSON.stringify(s.length > 80 ? `${s.slice(0, 77)}...` : s);
}

export function checkName(field: string, name: string): string | undefined {
  if (name === "") return `${field}: is required`;
  if (!NAME_RE.test(name))
    return `${field}: ${show(name)} is not a valid name: use 1-63 lowercase letters, digits and '-', starting with a letter and not ending with '-'`;
  return undefined;
}

/** "k=v, k2=v2" (commas or new lines) → record, or the first error in the server's words. */
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
      return {
        labels,
        error: `${field}[${show(k)}]: value ${show(v)} is not a valid label value: at most 63 letters, digits, '-', '_', '.'`,
      };
    labels[k] = v;
  }
  if (Object.keys(labels).length > LIMITS.maxLabels)
    return { labels, error: `${field}: has ${Object.keys(labels).length} entries; at most ${LIMITS.maxLabels} allowed` };
  return { labels };
}

/** A label selector for filtering: the same syntax as the API's filter.label_selector. */
export function parseSelector(text: string): { labels: Record<string, string>; error?: string } {
  const r = parseLabels("selector", text);
  return r.error ? { labels: {}, error: r.error.replace(/^selector(\[[^\]]*\])?: /, "") } : r;
}

/** CreateInstances takes at most this many in one call (one transaction). */
export const MAX_COUNT = 100;

export function checkCount(count: number): string | undefined {
  if (!Number.isInteger(count) || count < 1 || count > MAX_COUNT) return `count: expected 1 to ${MAX_COUNT}`;
  return undefined;
}

export function checkVcpus(vcpus: number): string | undefined {
  if (!Number.isInteger(vcpus) || vcpus < 1) return "spec.vcpus: is required and must be at least 1";
  if (vcpus > LIMITS.maxVcpus) return `spec.vcpus: ${vcpus} vCPUs is more than the maximum of ${LIMITS.maxVcpus} vCPUs`;
  return undefined;
}

export function checkMemory(mib: number): string | undefined {
  // The server takes 1 MiB; nothing boots in less than 16 (its smallest balloon target).
  if (!Number.isInteger(mib) || mib < LIMITS.minMemoryMiB) return `spec.memory_mib: must be at least ${LIMITS.minMemoryMiB} MiB`;
  if (mib > LIMITS.maxMemoryMiB) return `spec.memory_mib: ${mib} MiB is more than the maximum of ${LIMITS.maxMemoryMiB} MiB`;
  return undefined;
}

export function checkText(field: string, s: string, maxBytes: number): string | undefined {
  const bytes = new TextEncoder().encode(s).length;
  if (bytes > maxBytes) return `${field}: is ${bytes} bytes; at most ${maxBytes} allowed`;
  if (CONTROL_RE.test(s)) return `${field}: ${show(s)} contains control characters`;
  return undefined;
}

/**
 * A command line split into arguments the way a shell would for simple cases: spaces separate,
 * '...' and "..." group, backslash escapes in "..." and outside quotes. Unterminated quote: error.
 */
export function splitCommand(text: string): { argv: string[]; error?: string } {
  const argv: string[] = [];
  let cur = "";
  let inArg = false;
  let quote: "'" | '"' | undefined;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quote === "'") {
      if (c === "'") quote = undefined;
      else cur += c;
    } else if (quote === '"') {
      if (c === '"') quote = undefined;
      else if (c === "\\" && i + 1 < text.length) cur += text[++i];
      else cur += c;
    } else if (c === "'" || c === '"') {
      quote = c;
      inArg = true;
    } else if (c === "\\" && i + 1 < text.length) {
      cur += text[++i];
      inArg = true;
    } else if (/\s/.test(c)) {
      if (inArg) argv.push(cur);
      cur = "";
      inArg = false;
    } else {
      cur += c;
      inArg = true;
    }
  }
  if (quote) return { argv, error: `spec.command: unterminated ${quote} quote` };
  if (inArg) argv.push(cur);
  return { argv };
}
