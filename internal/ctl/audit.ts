/*
 * `audit`: the server's audit events, newest first (docs/access.md, "The audit log"): who did or
 * was refused what, when, from where, and how it ended. Each server audits the calls it serves.
 */
import { Command, InvalidArgumentError, Option } from "commander";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { AuditEventSchema, type AuditEvent } from "../../api/gen/hypervisor/v1/audit_pb.js";
import type { Context } from "./context.js";
import { duration } from "./flags.js";
import * as output from "./output.js";

function limit(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 1000) throw new InvalidArgumentError(`expected 1 to 1000, got "${value}"`);
  return n;
}

export function auditCommand(ctx: Context): Command {
  return new Command("audit")
    .description("the audit log of the server: refusals, changes, consoles, log streams and logins, newest first")
    .addOption(new Option("--since <duration>", "only events of the last DURATION, e.g. 10m, 24h").argParser(duration))
    .option("--user <name>", "only this user's events (e.g. admin, node:n1)")
    .addOption(new Option("--limit <n>", "at most this many events (1-1000)").argParser(limit).default(100))
    .action(async (opts: { since?: number; user?: string; limit: number }) => {
      const res = await ctx.clients().audit.listAuditEvents(
        {
          ...(opts.since !== undefined ? { since: timestampFromMs(ctx.now().getTime() - opts.since) } : {}),
          user: opts.user ?? "",
          limit: opts.limit,
        },
        { signal: ctx.signal },
      );
      const format = ctx.format();
      ctx.out(format === "table" ? auditTable(res.events, ctx.now()) : output.list(AuditEventSchema, res.events, format));
    });
}

/** AGE USER SOURCE METHOD RESOURCE DECISION RESULT; a refusal's message after it. */
export function auditTable(events: readonly AuditEvent[], now: Date): string {
  return output.table(
    ["AGE", "USER", "SOURCE", "METHOD", "RESOURCE", "DECISION", "RESULT", "MESSAGE"],
    events.map((e) => [
      output.age(e.time, now),
      e.user || "(anonymous)",
      e.sourceAddress,
      e.method,
      e.resource,
      e.decision,
      e.result,
      e.message.length > 80 ? `${e.message.slice(0, 77)}...` : e.message,
    ]),
  );
}
