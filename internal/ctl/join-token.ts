/*
 * `join-token` commands: the tokens by which agents join the cluster (hypervisor-agent
 * --join-token). A token is shown once, when it is made; the server keeps only its hash, so list
 * shows everything but the secret. Not to be confused with API tokens for people and automation.
 */
import { Command, InvalidArgumentError, Option } from "commander";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { CreateJoinTokenResponseSchema, type JoinToken, JoinTokenSchema } from "../../api/gen/hypervisor/v1/identity_pb.js";
import { LIMITS } from "../../pkg/validation/index.js";
import type { Context } from "./context.js";
import { CliError, ExitCode } from "./errors.js";
import { duration, positiveInt, showDuration } from "./flags.js";
import * as output from "./output.js";

/** --ttl as whole seconds, 1 s to a year: "1h", "30m", "90s". */
export function ttlSeconds(value: string): number {
  const ms = duration(value);
  if (ms < 1000 || ms % 1000 !== 0) throw new InvalidArgumentError(`expected whole seconds, at least 1s, got "${value}"`);
  const s = ms / 1000;
  if (s > LIMITS.maxJoinTokenTtlSeconds)
    throw new InvalidArgumentError(`at most ${LIMITS.maxJoinTokenTtlSeconds / 86400} days, got "${value}"`);
  return s;
}

function uses(value: string): number {
  const n = positiveInt(value);
  if (n > LIMITS.maxJoinTokenUses) throw new InvalidArgumentError(`at most ${LIMITS.maxJoinTokenUses}, got "${value}"`);
  return n;
}

export function joinTokenCommand(ctx: Context): Command {
  const cmd = new Command("join-token")
    .alias("join-tokens")
    .description("make, list and revoke the tokens agents join the cluster with; not API tokens (token)");

  cmd
    .command("create")
    .description("make a join token and print it (shown this once: the server keeps only its hash)")
    .option("--node <name>", "the only node name the token may join")
    .addOption(
      new Option("--ttl <duration>", "how long the token is valid, e.g. 30m, 1h, 168h").argParser(ttlSeconds).default(86400, "24h"),
    )
    .addOption(new Option("--uses <n>", "how many joins it allows; 0 for unlimited").argParser(uses).default(1))
    .option("--description <text>", "a note for people (who or what it is for)")
    .action(async (opts: { node?: string; ttl: number; uses: number; description?: string }) => {
      const res = await ctx
        .clients()
        .identity.createJoinToken(
          { node: opts.node ?? "", ttlSeconds: opts.ttl, maxUses: opts.uses, description: opts.description ?? "" },
          { signal: ctx.signal },
        );
      const format = ctx.format();
      // Alone on stdout, so TOKEN=$(hypervisor-ctl join-token create) captures just the token.
      ctx.out(format === "table" ? `${res.token}\n` : output.message(CreateJoinTokenResponseSchema, res, format));
    });

  cmd
    .command("list")
    .alias("ls")
    .description("list join tokens (never their secrets)")
    .action(async () => {
      const { joinTokens } = await ctx.clients().identity.listJoinTokens({}, { signal: ctx.signal });
      const format = ctx.format();
      ctx.out(format === "table" ? joinTokenTable(joinTokens, ctx.now()) : output.list(JoinTokenSchema, joinTokens, format));
    });

  cmd
    .command("revoke")
    .description("revoke a join token: no agent joins with it afterwards (nodes that joined stay)")
    .argument("<id>", "token id (the 6 characters after '::')")
    .action(async (id: string) => {
      const { joinToken } = await ctx.clients().identity.revokeJoinToken({ id }, { signal: ctx.signal });
      if (!joinToken) throw new CliError("the server returned no join token", ExitCode.Api);
      const format = ctx.format();
      ctx.out(format === "table" ? `join-token/${joinToken.id} revoked\n` : output.message(JoinTokenSchema, joinToken, format));
    });

  return cmd;
}

/** "valid", "revoked", "expired" or "used-up": why a join with it would be refused, if it would. */
export function joinTokenState(t: JoinToken, now: Date): string {
  if (t.revoked) return "revoked";
  if (!t.expireTime || timestampMs(t.expireTime) <= now.getTime()) return "expired";
  if (t.maxUses > 0 && t.used >= t.maxUses) return "used-up";
  return "valid";
}

/** ID NODE USES EXPIRES STATE DESCRIPTION; EXPIRES as time left ("23h59m") or "-" once past. */
export function joinTokenTable(tokens: readonly JoinToken[], now: Date): string {
  return output.table(
    ["ID", "NODE", "USES", "EXPIRES", "STATE", "DESCRIPTION"],
    tokens.map((t) => {
      const left = t.expireTime ? timestampMs(t.expireTime) - now.getTime() : 0;
      return [
        t.id,
        t.node || "<any>",
        `${t.used}/${t.maxUses === 0 ? "unlimited" : t.maxUses}`,
        left > 0 ? `in ${showDuration(Math.floor(left / 1000) * 1000)}` : "-",
        joinTokenState(t, now),
        t.description,
      ];
    }),
  );
}
