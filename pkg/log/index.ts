// Structured logging (pino): one root logger per process, one child per component, fields not
// string-building. Level from HYPERVISOR_LOG_LEVEL (default info); tests default to warn.
import { pino, type Logger } from "pino";

export type { Logger } from "pino";

let root: Logger | undefined;

export function rootLogger(): Logger {
  root ??= pino({
    level: process.env.HYPERVISOR_LOG_LEVEL ?? (process.env.NODE_TEST_CONTEXT ? "warn" : "info"),
    base: { pid: process.pid },
  });
  return root;
}

/** A child logger for one component, e.g. logger("scheduler"). */
export function logger(component: string, fields: Record<string, unknown> = {}): Logger {
  return rootLogger().child({ component, ...fields });
}
