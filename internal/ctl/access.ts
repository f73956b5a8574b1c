/*
 * `whoami`, `token` and `role`: the caller as the server sees it, API tokens (for people and
 * automation, sent as `Authorization: Bearer hvt_...`) and the built-in roles they carry. API
 * tokens are not join tokens (`join-token`), which only let agents join the cluster. A token is
 * shown once, when it is made; list shows everything but the secret. docs/access.md: the model.
 */
import { Command, InvalidArgumentError, Option } from "commander";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import {
  ApiTokenSchema,
  CreateTokenResponseSchema,
  RoleBindingSchema,
  RoleSchema,
  WhoAmIResponseSchema,
  type ApiToken,
  type Role,
  type WhoAmIResponse,
} from "../../api/gen/hypervisor/v1/access_pb.js";
import type { Context } from "./context.js";
import { CliError, ExitCode, usageError } from "./errors.js";
import { duration } from "./flags.js";
import * as output from "./output.js";

const DAY_SECONDS = 86_400;
/** The server's limits (docs/access.md): 90 days when not given, at most a year. */
export const DEFAULT_TOKEN_TTL_DAYS = 90;
export const MAX_TOKEN_TTL_SECONDS = 365 * DAY_SECONDS;

/** --ttl of an API token in whole seconds: "90d", "1d12h", "12h", "30m"; 1 s to a year. */
export function tokenTtlSeconds(value: string): number {
  const m = /^(\d+)d(.*)$/.exec(value);
  let s: number;
  try {
    const rest = m ? (m[2] === "" ? 0 : duration(m[2]!)) : duration(value);
    if (rest % 1000 !== 0) throw new InvalidArgumentError("");
    s = (m ? Number(m[1]) * DAY_SECONDS : 0) + rest / 1000;
  } catch {
    throw new InvalidArgumentError(`expected whole seconds as a duration like 90d, 12h or 1d12h, got "${value}"`);
  }
  if (s < 1) throw new InvalidArgumentError(`expected at least 1s, got "${value}"`);
  if (s > MAX_TOKEN_TTL_SECONDS) throw new InvalidArgumentError(`at most 365d (a year), got "${value}"`);
  return s;
}

/** Accumulates --role: repeated, or comma-separated, or both. */
export function roleList(value: string, previous: string[] | undefined): string[] {
  const more = value
    .split(",")
    .map((r) => r.trim())
    .filter((r) => r !== "");
  if (more.length === 0) throw new InvalidArgumentError(`expected a role name, got "${value}"`);
  return [...(previous ?? []), ...more];
}

export function whoamiCommand(ctx: Context): Command {
  return new Command("whoami")
    .description("who the server takes you for: user, how you authenticated, your API token's id, your roles")
    .action(async () => {
      const me = await ctx.clients().access.whoAmI({}, { signal: ctx.signal });
      const format = ctx.format();
      ctx.out(format === "table" ? whoamiText(me) : output.message(WhoAmIResponseSchema, me, format));
    });
}

/** Aligned "Key:   value" lines, as `cluster status` prints. */
export function whoamiText(me: WhoAmIResponse): string {
  return output.fields([
    ["User", me.user || "(anonymous)"],
    ["Authenticated by", me.authenticatedBy || "none"],
    ["Token", me.tokenId || "-"],
    ["Roles", me.roles.join(", ") || "-"],
    ...(me.groups.length > 0 ? [["Groups", me.groups.join(", ")] as [string, string]] : []),
    ...me.projectRights.map((p): [string, string] => [`In project ${p.project}`, p.roles.join(", ")]),
  ]);
}

export function tokenCommand(ctx: Context): Command {
  const cmd = new Command("token")
    .alias("tokens")
    .description("make, list and revoke API tokens (Authorization: Bearer hvt_...) for people and scripts; not join tokens (join-token)");

  cmd
    .command("create")
    .description("make an API token and print it (shown this once: the server keeps only its hash)")
    .addOption(
      new Option("--role <role>", "a role the token carries (repeatable, or comma-separated; role list shows them); at least one")
        .argParser(roleList)
        .makeOptionMandatory(),
    )
    .option("--user <name>", "the user the token acts as (default: you; another user needs role admin)")
    .addOption(
      new Option("--ttl <duration>", `how long the token is valid, e.g. 12h, 30d, 365d (default ${DEFAULT_TOKEN_TTL_DAYS}d)`).argParser(
        tokenTtlSeconds,
      ),
    )
    .option("--description <text>", "a note for people (who or what it is for)")
    .addHelpText("after", "\nWith the global --project, the token's roles hold in that project only.")
    .action(async (opts: { role: string[]; user?: string; ttl?: number; description?: string }) => {
      const res = await ctx.clients().access.createToken(
        {
          user: opts.user ?? "",
          roles: opts.role,
          project: ctx.projectFlag() ?? "",
          // 0: the server's default (90 days), so the one place it is decided is the server.
          ttlSeconds: opts.ttl ?? 0,
          description: opts.description ?? "",
        },
        { signal: ctx.signal },
      );
      const format = ctx.format();
      // Alone on stdout, so TOKEN=$(hypervisor-ctl token create --role viewer) captures just it.
      ctx.out(format === "table" ? `${res.token}\n` : output.message(CreateTokenResponseSchema, res, format));
    });

  cmd
    .command("list")
    .alias("ls")
    .description("list your API tokens (--all: everyone's, needs role admin); never their secrets")
    .option("--all", "every user's tokens")
    .action(async (opts: { all?: boolean }) => {
      const { apiTokens } = await ctx.clients().access.listTokens({ allUsers: opts.all === true }, { signal: ctx.signal });
      const format = ctx.format();
      ctx.out(format === "table" ? tokenTable(apiTokens, ctx.now()) : output.list(ApiTokenSchema, apiTokens, format));
    });

  cmd
    .command("revoke")
    .description("revoke an API token: no call succeeds with it afterwards")
    .argument("<id>", "token id (the 10 characters after 'hvt_'; token list shows them)")
    .action(async (id: string) => {
      const { apiToken } = await ctx.clients().access.revokeToken({ id }, { signal: ctx.signal });
      if (!apiToken) throw new CliError("the server returned no token", ExitCode.Api);
      const format = ctx.format();
      ctx.out(format === "table" ? `token/${apiToken.id} revoked\n` : output.message(ApiTokenSchema, apiToken, format));
    });

  return cmd;
}

/** "valid", "revoked" or "expired": whether a call with it would be authenticated. */
export function tokenState(t: ApiToken, now: Date): string {
  if (t.revoked) return "revoked";
  if (!t.expireTime || timestampMs(t.expireTime) <= now.getTime()) return "expired";
  return "valid";
}

/** ID USER ROLES EXPIRES STATE CREATED-BY DESCRIPTION; EXPIRES as time left ("in 89d") or "-". */
export function tokenTable(tokens: readonly ApiToken[], now: Date): string {
  return output.table(
    ["ID", "USER", "ROLES", "EXPIRES", "STATE", "CREATED-BY", "DESCRIPTION"],
    tokens.map((t) => {
      const left = t.expireTime ? Math.floor((timestampMs(t.expireTime) - now.getTime()) / 1000) : 0;
      return [
        t.id,
        t.user,
        t.roles.join(",") + (t.project ? `@${t.project}` : ""),
        left > 0 ? `in ${output.span(left)}` : "-",
        tokenState(t, now),
        t.createdBy,
        t.description,
      ];
    }),
  );
}

export function roleCommand(ctx: Context): Command {
  const cmd = new Command("role").alias("roles").description("the built-in roles API tokens carry, and the rights each gives");
  cmd
    .command("list")
    .alias("ls")
    .description("list the roles and their rights (<resource>:<verb>,<verb>...)")
    .action(async () => {
      const { roles } = await ctx.clients().access.listRoles({}, { signal: ctx.signal });
      const format = ctx.format();
      ctx.out(format === "table" ? roleTable(roles) : output.list(RoleSchema, roles, format));
    });

  cmd
    .command("bind")
    .description("give a role to a user or a group: in the --project given, else at cluster scope")
    .option("--user <name>", "the user (an OIDC user is <prefix><claim>, e.g. oidc:alice)")
    .option("--group <name>", "the group (OIDC groups claim)")
    .requiredOption("--role <role>", "a built-in role (role list)")
    .action(async (opts: { user?: string; group?: string; role: string }) => {
      if ((opts.user === undefined) === (opts.group === undefined)) throw usageError("role bind needs exactly one of --user and --group");
      const subject = opts.user !== undefined ? `user:${opts.user}` : `group:${opts.group!}`;
      const { roleBinding } = await ctx
        .clients()
        .access.createRoleBinding({ subject, role: opts.role, project: ctx.projectFlag() ?? "" }, { signal: ctx.signal });
      if (!roleBinding) throw new CliError("the server returned no binding", ExitCode.Api);
      const format = ctx.format();
      ctx.out(
        format === "table"
          ? `rolebinding/${roleBinding.id} ${subject} ${opts.role} ${roleBinding.project ? `in project ${roleBinding.project}` : "at cluster scope"}\n`
          : output.message(RoleBindingSchema, roleBinding, format),
      );
    });

  cmd
    .command("bindings")
    .description("list role bindings you may see: of the --project given, or (without it) of every scope")
    .action(async () => {
      const project = ctx.projectFlag();
      const { roleBindings } = await ctx
        .clients()
        .access.listRoleBindings({ project: project ?? "", allScopes: project === undefined }, { signal: ctx.signal });
      const format = ctx.format();
      ctx.out(
        format === "table"
          ? output.table(
              ["ID", "SUBJECT", "ROLE", "PROJECT", "CREATED-BY"],
              roleBindings.map((b) => [b.id, b.subject, b.role, b.project || "(cluster)", b.createdBy]),
            )
          : output.list(RoleBindingSchema, roleBindings, format),
      );
    });

  cmd
    .command("unbind")
    .description("delete a role binding")
    .argument("<id>", "binding id (role bindings shows them)")
    .action(async (id: string) => {
      await ctx.clients().access.deleteRoleBinding({ id }, { signal: ctx.signal });
      ctx.out(ctx.format() === "table" ? `rolebinding/${id} deleted\n` : "{}\n");
    });
  return cmd;
}

/** NAME RIGHTS, the rights grouped by resource: "instances:get,list nodes:get". */
export function roleTable(roles: readonly Role[]): string {
  return output.table(
    ["NAME", "RIGHTS"],
    roles.map((r) => [r.name, groupRights(r.rights)]),
  );
}

export function groupRights(rights: readonly string[]): string {
  const by = new Map<string, string[]>();
  for (const right of rights) {
    const i = right.indexOf(":");
    const [resource, verb] = i < 0 ? [right, ""] : [right.slice(0, i), right.slice(i + 1)];
    by.set(resource, [...(by.get(resource) ?? []), ...(verb ? [verb] : [])]);
  }
  return [...by].map(([resource, verbs]) => (verbs.length > 0 ? `${resource}:${verbs.join(",")}` : resource)).join(" ");
}
