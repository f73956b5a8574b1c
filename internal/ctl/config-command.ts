/*
 * `config` commands: read and edit the ctl configuration file (config-file.ts) without an editor,
 * as `kubectl config` does. They never contact a server. `set-context` takes the same --server,
 * --ca-file, --client-cert and --client-key as every command (commander gives them to the
 * program wherever they stand), but only from the command line: the environment is not saved.
 */
import { Command } from "commander";
import { resolve } from "node:path";
import {
  checkContext,
  checkContextName,
  ConfigFileError,
  type ContextEntry,
  type CtlConfig,
  putContext,
  readConfig,
  toYamlObject,
  writeConfig,
} from "./config-file.js";
import { loadTls } from "./connection.js";
import type { Context } from "./context.js";
import { usageError } from "./errors.js";
import * as output from "./output.js";

/** What `config view` shows in place of key material and tokens; certificates are only long. */
export const REDACTED = "REDACTED";
export const OMITTED = "DATA+OMITTED";

/** The configuration with every secret (keys, tokens) replaced, and inline certificates shortened. */
export function redact(cfg: CtlConfig): CtlConfig {
  return {
    ...cfg,
    contexts: cfg.contexts.map((c) => {
      const out: ContextEntry = { ...c };
      if (out.caData !== undefined) out.caData = OMITTED;
      if (c.credentials) {
        const cr = { ...c.credentials };
        if (cr.clientCertData !== undefined) cr.clientCertData = OMITTED;
        if (cr.clientKeyData !== undefined) cr.clientKeyData = REDACTED;
        if (cr.token !== undefined) cr.token = REDACTED;
        if (cr.oidc !== undefined)
          cr.oidc = {
            ...cr.oidc,
            idToken: REDACTED,
            ...(cr.oidc.refreshToken !== undefined ? { refreshToken: REDACTED } : {}),
          };
        out.credentials = cr;
      }
      return out;
    }),
  };
}

function credentialsSummary(c: ContextEntry): string {
  const parts: string[] = [];
  if (c.credentials?.clientCertFile !== undefined || c.credentials?.clientCertData !== undefined) parts.push("client-cert");
  if (c.credentials?.token !== undefined) parts.push("token");
  if (c.credentials?.oidc !== undefined) parts.push("oidc");
  return parts.join(",") || "-";
}

export function configCommand(ctx: Context): Command {
  const cmd = new Command("config").description("show and edit the ctl configuration file (contexts: server, CA, credentials)");

  const load = () => readConfig(ctx.configLocation());
  // A command that writes creates the file, even one named by --config-file that is not there yet.
  const loadForWrite = () => readConfig({ ...ctx.configLocation(), explicit: false });
  /** The file to write: the one named, else the default; there is none without a home. */
  const target = (): string => {
    const { path } = ctx.configLocation();
    if (path === undefined)
      throw usageError("no place for the configuration file: set HOME, XDG_CONFIG_HOME or HYPERVISOR_CONFIG, or give --config-file");
    return path;
  };
  const find = (cfg: CtlConfig, name: string, path: string | undefined): ContextEntry => {
    const c = cfg.contexts.find((x) => x.name === name);
    if (c) return c;
    const known = cfg.contexts.map((x) => x.name);
    throw new ConfigFileError(
      `no context ${JSON.stringify(name)} in ${path ?? "the configuration (there is no file)"}` +
        (known.length > 0 ? ` (contexts: ${known.join(", ")})` : ""),
      "name",
    );
  };

  cmd
    .command("view")
    .description("print the configuration, keys and tokens redacted (--raw: as it is)")
    .option("--raw", "print keys and tokens too (careful: the output is as secret as the file)")
    .action((opts: { raw?: boolean }) => {
      const { config } = load();
      const shown = toYamlObject(opts.raw ? config : redact(config));
      const format = ctx.format();
      ctx.out(output.structured(shown, format === "json" ? "json" : "yaml"));
    });

  cmd
    .command("get-contexts")
    .description("list the contexts, marking the current one")
    .action(() => {
      const { config } = load();
      const format = ctx.format();
      if (format !== "table") {
        const items = toYamlObject(redact(config))["contexts"] as Record<string, unknown>[];
        return ctx.out(output.structured({ currentContext: config.currentContext ?? "", items }, format));
      }
      const rows = config.contexts.map((c) => [
        c.name === config.currentContext ? "*" : "",
        c.name,
        c.server,
        c.caFile ?? (c.caData !== undefined ? "(inline)" : "-"),
        credentialsSummary(c),
      ]);
      ctx.out(output.table(["CURRENT", "NAME", "SERVER", "CA", "CREDENTIALS"], rows));
    });

  cmd
    .command("current-context")
    .description("print the name of the current context")
    .action(() => {
      const { config } = load();
      if (config.currentContext === undefined)
        throw new ConfigFileError("no current context is set (config use-context NAME)", "current-context");
      ctx.out(`${config.currentContext}\n`);
    });

  cmd
    .command("use-context")
    .description("make a context the current one")
    .argument("<name>", "context name")
    .action((name: string) => {
      const { config, path } = load();
      find(config, name, path);
      writeConfig(target(), { ...config, currentContext: name });
      ctx.out(`switched to context ${name}\n`);
    });

  cmd
    .command("set-context")
    .description(
      "create a context, or change the settings given of an existing one (--server, --ca-file, --client-cert/--client-key, --project)",
    )
    .argument("<name>", "context name")
    .option("--embed", "store the CA, certificate and key given here in the file (as PEM) rather than their paths")
    .action((name: string, opts: { embed?: boolean }) => {
      checkContextName(name, "context name");
      const f = ctx.flags();
      const { config } = loadForWrite();
      const old = config.contexts.find((c) => c.name === name);
      if (!old && f.server === undefined) throw usageError(`context ${name} is new: give its --server`);
      const next: ContextEntry = old ? structuredClone(old) : { name, server: "" };
      if (f.server !== undefined) next.server = f.server.replace(/\/+$/, "");
      const project = ctx.projectFlag();
      if (project !== undefined) next.project = project;
      if ((f.clientCert === undefined) !== (f.clientKey === undefined))
        throw usageError("--client-cert and --client-key go together: give both");
      // Read and checked now: a wrong path or a key of another certificate is an error here,
      // not at the first command that uses the context.
      const abs = (p: string) => resolve(p);
      const conn = {
        server: next.server,
        serverFrom: "--server",
        warnings: [],
        ...(f.caFile !== undefined ? { ca: { file: abs(f.caFile), from: "--ca-file" } } : {}),
        ...(f.clientCert !== undefined && f.clientKey !== undefined
          ? { clientCert: { file: abs(f.clientCert), from: "--client-cert" }, clientKey: { file: abs(f.clientKey), from: "--client-key" } }
          : {}),
      };
      const tls = loadTls(conn, ctx.now());
      if (f.caFile !== undefined) {
        delete next.caFile;
        delete next.caData;
        if (opts.embed) next.caData = tls.ca!;
        else next.caFile = abs(f.caFile);
      }
      if (f.clientCert !== undefined && f.clientKey !== undefined) {
        const cr = { ...next.credentials };
        delete cr.clientCertFile;
        delete cr.clientCertData;
        delete cr.clientKeyFile;
        delete cr.clientKeyData;
        if (opts.embed) [cr.clientCertData, cr.clientKeyData] = [tls.cert!, tls.key!];
        else [cr.clientCertFile, cr.clientKeyFile] = [abs(f.clientCert), abs(f.clientKey)];
        next.credentials = cr;
      }
      checkContext(next, `context ${name}`);
      const written = putContext(config, next);
      writeConfig(target(), written);
      const current = config.currentContext === undefined ? " and made current (there was none)" : "";
      ctx.out(`context ${name} ${old ? "modified" : "created"}${current}\n`);
    });

  cmd
    .command("delete-context")
    .description("remove a context (if it is the current one, no context is current after)")
    .argument("<name>", "context name")
    .action((name: string) => {
      const { config, path } = load();
      find(config, name, path);
      const next: CtlConfig = { contexts: config.contexts.filter((c) => c.name !== name) };
      if (config.currentContext !== undefined && config.currentContext !== name) next.currentContext = config.currentContext;
      writeConfig(target(), next);
      if (config.currentContext === name) ctx.io.stderr.write(`warning: ${name} was the current context; none is current now\n`);
      ctx.out(`context ${name} deleted\n`);
    });

  return cmd;
}
