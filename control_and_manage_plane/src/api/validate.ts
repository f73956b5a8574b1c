// What the create form checks before sending: the server's own rules and words
// (pkg/validation, which the server enforces and the ctl uses too), so a mistake is caught without
// a round trip and reads the same either way. What each driver takes comes from the server
// (ClusterService.ListDrivers). System policy (reserved label prefixes, existing names, what nodes
// offer) stays on the server; its refusals come back through errors.ts.
import { checkMemory as checkMemoryRule, LIMITS as RULE_LIMITS, parseLabels } from "../../../pkg/validation/rules.js";

export { checkCount, checkName, checkText, checkVcpus, parseLabels, show } from "../../../pkg/validation/rules.js";

/** The API's limits, and the form's floor for memory (nothing boots in less than 16 MiB). */
export const LIMITS = { ...RULE_LIMITS, minMemoryMiB: 16 } as const;

/** CreateInstances takes at most this many in one call (one transaction). */
export const MAX_COUNT = LIMITS.maxCount;

export function checkMemory(mib: number): string | undefined {
  return checkMemoryRule(mib, LIMITS.minMemoryMiB);
}

/** A label selector for filtering: the same syntax as the API's filter.label_selector. */
export function parseSelector(text: string): { labels: Record<string, string>; error?: string } {
  const r = parseLabels("selector", text);
  return r.error ? { labels: {}, error: r.error.replace(/^selector(\[[^\]]*\])?: /, "") } : r;
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
