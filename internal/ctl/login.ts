/*
 * `login` and `logout`: put an API token, or an OIDC login, in a context of the configuration
 * file, or take it out.
 *
 *   token (stdin's first line, or --token-file; never argv, which every user can read)
 *     ──► WhoAmI with it, at the context's server
 *           ├── authenticated by the token: store it as the context's credentials.token (0600)
 *           └── unauthenticated, anonymous, unreachable: refuse; the file is not touched
 *
 *   --oidc ──► GetAuthConfig at the context's server ──► its issuer, client, scopes
 *     ──► device login at the issuer (oidc.ts: a URL and code on stderr, wait for the user)
 *     ──► WhoAmI with the ID token ──► accepted: store credentials.oidc (0600), else refuse
 *
 * A context holds a token or an OIDC login, never both: storing one removes the other.
 * The check uses the connection the context gives (its CA and client certificate, or the flags
 * that override them) but only the context's own server: a token saved for a context is sent
 * only there (connection.ts), so it is checked only there too.
 */
import { readFileSync } from "node:fs";
import { Code, ConnectError } from "@connectrpc/connect";
import { Command } from "commander";
import { createClients } from "./client.js";
import { checkToken, readConfig, saveContext, type ContextEntry, type CtlConfig } from "./config-file.js";
import { isLoopback, loadTls, resolveConnection, selectContext } from "./connection.js";
import type { Context, Io } from "./context.js";
import { CliError, describeError, ExitCode, usageError } from "./errors.js";
import { deviceLogin } from "./oidc.js";

/** Longer than any token: a stream without a newline this early is not one. */
const MAX_LINE_BYTES = 4096;
const TOKEN_ID = /^hvt_([a-z0-9]{10})\./;

/**
 * The first line of `stdin`, without its line ending; reading stops there. On a terminal the
 * input is not echoed (raw mode: Enter ends it, Backspace erases, Ctrl-C interrupts).
 */
export async function readSecretLine(stdin: NonNullable<Io["stdin"]>, signal: AbortSignal): Promise<string> {
  const terminal = stdin.isTTY === true && typeof stdin.setRawMode === "function";
  if (terminal) stdin.setRawMode!(true);
  try {
    return await new Promise<string>((resolve, reject) => {
      let line = "";
      const finish = (err?: Error) => {
        stdin.off("data", onData);
        stdin.off("end", onEnd);
        stdin.off("error", finish);
        signal.removeEventListener("abort", onAbort);
        stdin.pause();
        if (err) reject(err);
        else resolve(line);
      };
      const onEnd = () => finish();
      const onAbort = () => finish(new CliError("interrupted", ExitCode.Interrupted));
      const onData = (chunk: Buffer | string) => {
        for (const ch of typeof chunk === "string" ? chunk : chunk.toString("utf8")) {
          if (ch === "\n" || (terminal && ch === "\r")) return finish();
          if (terminal && ch === "\x03") return finish(new CliError("interrupted", ExitCode.Interrupted));
          if (terminal && ch === "\x04") return finish();
          if (terminal && (ch === "\x7f" || ch === "\b")) line = line.slice(0, -1);
          else line += ch;
          if (line.length > MAX_LINE_BYTES) return finish(usageError(`no token in the first ${MAX_LINE_BYTES} bytes of standard input`));
        }
      };
      if (signal.aborted) return onAbort();
      stdin.on("data", onData);
      stdin.once("end", onEnd);
      stdin.once("error", finish);
      signal.addEventListener("abort", onAbort, { once: true });
      stdin.resume();
    });
  } finally {
    if (terminal) stdin.setRawMode!(false);
  }
}

/** The token: --token-file's first line, else standard input's; checked to be one word of visible ASCII. */
async function readToken(ctx: Context, file: string | undefined): Promise<{ token: string; from: string }> {
  let line: string;
  let from: string;
  if (file !== undefined) {
    from = `--token-file ${file}`;
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw usageError(`${from}: cannot read it: ${code === "ENOENT" ? "no such file" : (code ?? (e as Error).message)}`);
    }
    line = text.split("\n")[0] ?? "";
  } else {
    from = "standard input";
    const stdin = ctx.io.stdin;
    if (!stdin) throw usageError("no standard input to read the token from: give --token-file FILE");
    if (stdin.isTTY) ctx.io.stderr.write("API token (not shown as you type): ");
    try {
      line = await readSecretLine(stdin, ctx.signal);
    } finally {
      // Nothing reads further, and an open stdin (a pipe not yet at its end) would keep the
      // process alive after the command finished.
      (stdin as { destroy?: () => void }).destroy?.();
    }
    if (stdin.isTTY) ctx.io.stderr.write("\n");
  }
  const token = line.trim();
  if (token === "") throw usageError(`no token on the first line of ${from}`);
  checkToken(token, from);
  return { token, from };
}

/** The context login and logout change, from the file as read: --context, HYPERVISOR_CONTEXT or current-context. */
function targetContext(ctx: Context, what: string): { entry: ContextEntry; path: string; config: CtlConfig } {
  const { config, path } = readConfig(ctx.configLocation());
  const entry = selectContext({ flags: ctx.flags(), env: ctx.io.env, config, configPath: path });
  if (!entry || path === undefined)
    throw usageError(
      `${what} needs a context to keep the token in, and none is selected: make one with ` +
        "hypervisor-ctl config set-context NAME --server URL, or name one with --context NAME",
    );
  return { entry, path, config };
}

const tokenId = (token: string) => TOKEN_ID.exec(token)?.[1];

/**
 * The connection to the context's own server with none of its bearers (its token, its OIDC
 * login, HYPERVISOR_TOKEN): what a login checks its new credential with. Refuses a --server or
 * HYPERVISOR_SERVER elsewhere, and plaintext off this machine.
 */
function bareConnection(ctx: Context, entry: ContextEntry, path: string, config: CtlConfig, what: string) {
  const env = { ...ctx.io.env, HYPERVISOR_TOKEN: undefined };
  const bare: CtlConfig = {
    ...config,
    contexts: config.contexts.map((c) => (c.name === entry.name ? { ...c, credentials: withoutBearer(c.credentials) } : c)),
  };
  const conn = resolveConnection({ flags: ctx.flags(), env, config: bare, configPath: path });
  if (conn.server !== entry.server)
    throw usageError(
      `login checks the ${what} with context ${entry.name}'s server ${entry.server}, the only one it will be sent to; ` +
        `not ${conn.server} (from ${conn.serverFrom})`,
    );
  if (conn.server.startsWith("http:") && !isLoopback(conn.server))
    throw usageError(`refusing to send the ${what} in plaintext to ${conn.server}: use an https server`);
  return conn;
}

/** Credentials without a token or OIDC login; undefined when nothing is left. */
function withoutBearer(cr: ContextEntry["credentials"]): ContextEntry["credentials"] {
  if (!cr) return undefined;
  const rest = { ...cr };
  delete rest.token;
  delete rest.oidc;
  return Object.keys(rest).length > 0 ? rest : undefined;
}

/** The context with `credentials` replacing its token or OIDC login. */
function withBearer(
  entry: ContextEntry,
  bearer: { token: string } | { oidc: NonNullable<ContextEntry["credentials"]>["oidc"] },
): ContextEntry {
  return { ...entry, credentials: { ...withoutBearer(entry.credentials), ...bearer } };
}

async function oidcLogin(ctx: Context, entry: ContextEntry, path: string, config: CtlConfig): Promise<void> {
  const conn = bareConnection(ctx, entry, path, config, "OIDC login");
  for (const w of conn.warnings) ctx.io.stderr.write(`warning: ${w}\n`);
  const tls = loadTls(conn, ctx.now());
  const unchanged = `; context ${entry.name} not changed`;
  let auth;
  try {
    auth = await createClients(conn, tls).access.getAuthConfig({}, { signal: ctx.signal });
  } catch (e) {
    if (e instanceof ConnectError && e.code === Code.Unimplemented)
      throw new CliError(`the server at ${conn.server} does not take OIDC logins (it has no GetAuthConfig)${unchanged}`, ExitCode.Api);
    const { message, exitCode } = describeError(e, conn.server, tls.caFrom);
    throw new CliError(message + unchanged, exitCode);
  }
  if (auth.oidcIssuer === "")
    throw new CliError(
      `the server at ${conn.server} does not take OIDC logins (no oidc-issuer in its settings); ` +
        `log in with an API token instead: hypervisor-ctl login${unchanged}`,
      ExitCode.Api,
    );
  const oidc = await deviceLogin({
    issuer: auth.oidcIssuer,
    clientId: auth.oidcClientId,
    scopes: auth.oidcScopes.length > 0 ? auth.oidcScopes : ["openid"],
    prompt: (text) => void ctx.io.stderr.write(text),
    signal: ctx.signal,
    server: conn.server,
  });
  conn.token = { value: oidc.idToken, from: `the OIDC login at ${oidc.issuer}` };
  let me;
  try {
    me = await createClients(conn, tls).access.whoAmI({}, { signal: ctx.signal });
  } catch (e) {
    if (e instanceof ConnectError && e.code === Code.Unauthenticated)
      throw new CliError(`the server at ${conn.server} refused the ID token: ${e.rawMessage}${unchanged}`, ExitCode.Api);
    const { message, exitCode } = describeError(e, conn.server, tls.caFrom);
    throw new CliError(message + unchanged, exitCode);
  }
  if (me.authenticatedBy === "none" || me.user === "")
    throw new CliError(
      `the server at ${conn.server} did not authenticate the ID token (it answered as anonymous: is its access control off?)${unchanged}`,
      ExitCode.Api,
    );
  saveContext(path, withBearer(entry, { oidc }), { makeCurrent: false });
  if (ctx.io.env["HYPERVISOR_TOKEN"])
    ctx.io.stderr.write("warning: HYPERVISOR_TOKEN is set: commands send it, not the context's OIDC login, while it is\n");
  const groups = me.groups.length > 0 ? `groups ${me.groups.join(", ")}, ` : "";
  ctx.out(
    `logged in to ${conn.server} (context ${entry.name}) as ${me.user} ` +
      `(${groups}roles ${me.roles.join(", ") || "none"}; until ${new Date(oidc.expiresAt).toISOString()}` +
      `${oidc.refreshToken !== undefined ? ", then refreshed" : ""})\n`,
  );
}

export function loginCommand(ctx: Context): Command {
  return new Command("login")
    .description(
      "store an API token in a context (the current one, or --context NAME) after checking it with the server; " +
        "reads the token from standard input's first line or --token-file, never from the command line; " +
        "with --oidc, log in at the identity provider the server names instead (a URL and a code to open in a browser)",
    )
    .option("--token-file <file>", "read the token from this file's first line instead of standard input")
    .option("--oidc", "log in at the server's OIDC identity provider (device code flow) and store the ID and refresh tokens")
    .action(async (opts: { tokenFile?: string; oidc?: boolean }) => {
      if (opts.oidc && opts.tokenFile !== undefined)
        throw usageError("--oidc and --token-file exclude each other: an OIDC login has no token file");
      const { entry, path, config } = targetContext(ctx, "login");
      if (opts.oidc) return oidcLogin(ctx, entry, path, config);
      const { token, from } = await readToken(ctx, opts.tokenFile);
      // The connection without the token being replaced: neither the context's old one nor
      // HYPERVISOR_TOKEN is what is being checked.
      const conn = bareConnection(ctx, entry, path, config, "token");
      conn.token = { value: token, from };
      for (const w of conn.warnings) ctx.io.stderr.write(`warning: ${w}\n`);
      const tls = loadTls(conn, ctx.now());
      let me;
      try {
        me = await createClients(conn, tls).access.whoAmI({}, { signal: ctx.signal });
      } catch (e) {
        const unchanged = `; context ${entry.name} not changed`;
        if (e instanceof ConnectError && e.code === Code.Unauthenticated)
          throw new CliError(`the server at ${conn.server} refused the token: ${e.rawMessage}${unchanged}`, ExitCode.Api);
        const { message, exitCode } = describeError(e, conn.server, tls.caFrom);
        throw new CliError(message + unchanged, exitCode);
      }
      if (me.authenticatedBy !== "token")
        throw new CliError(
          `the server at ${conn.server} did not authenticate the token (it answered as ${me.user || "anonymous"}, ` +
            `by ${me.authenticatedBy || "none"}: is its access control off?); context ${entry.name} not changed`,
          ExitCode.Api,
        );
      saveContext(path, withBearer(entry, { token }), { makeCurrent: false });
      if (ctx.io.env["HYPERVISOR_TOKEN"])
        ctx.io.stderr.write("warning: HYPERVISOR_TOKEN is set: commands send it, not the context's token, while it is\n");
      ctx.out(
        `logged in to ${conn.server} (context ${entry.name}) as ${me.user} ` +
          `(token ${me.tokenId}, roles ${me.roles.join(", ") || "none"})\n`,
      );
    });
}

export function logoutCommand(ctx: Context): Command {
  return new Command("logout")
    .description(
      "remove the API token or OIDC login from a context (the current one, or --context NAME); a token itself stays valid until revoked",
    )
    .action(() => {
      const { entry, path } = targetContext(ctx, "logout");
      const token = entry.credentials?.token;
      const oidc = entry.credentials?.oidc;
      if (token === undefined && oidc === undefined) return ctx.out(`context ${entry.name} has no token or OIDC login\n`);
      const next: ContextEntry = { ...entry };
      const credentials = withoutBearer(entry.credentials);
      if (credentials) next.credentials = credentials;
      else delete next.credentials;
      saveContext(path, next, { makeCurrent: false });
      if (oidc !== undefined)
        return ctx.out(
          `logged out of context ${entry.name}: its OIDC login (${oidc.issuer}) removed from ${path}; ` +
            "the provider's session in your browser stays until you sign out there\n",
        );
      const id = tokenId(token!);
      ctx.out(
        `logged out of context ${entry.name}: its token removed from ${path}` +
          (id !== undefined ? `; token ${id} stays valid until it expires or is revoked (hypervisor-ctl token revoke ${id})\n` : "\n"),
      );
    });
}
