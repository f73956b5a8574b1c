/*
 * The command tree and `run`, the whole CLI as a function: argv and an Io in, an exit code out.
 * A fresh commander program per call keeps runs independent (tests call it many times), and
 * commander's exits are turned into return values so nothing calls process.exit here.
 */
import { Command, CommanderError, Option } from "commander";
import { roleCommand, tokenCommand, whoamiCommand } from "./access.js";
import { auditCommand } from "./audit.js";
import { clusterCommand, versionCommand } from "./cluster.js";
import { createClients, DEFAULT_SERVER, type Clients } from "./client.js";
import { completionCommand } from "./completion.js";
import { configCommand } from "./config-command.js";
import { configLocation, readConfig } from "./config-file.js";
import { type Connection, type ConnectionFlags, loadTls, plaintextWarning, resolveConnection, selectContext } from "./connection.js";
import type { Context, Io } from "./context.js";
import { describeError, ExitCode, usageError } from "./errors.js";
import { checkName } from "../../pkg/validation/index.js";
import { imageCommand } from "./image.js";
import { instanceCommand } from "./instance.js";
import { joinTokenCommand } from "./join-token.js";
import { userCertCommand } from "./user-cert.js";
import { loginCommand, logoutCommand } from "./login.js";
import { nodeCommand } from "./node.js";
import { projectCommand } from "./project.js";
import { FORMATS, type Format } from "./output.js";

export const PROGRAM = "hypervisor-ctl";

/** Builds the command tree bound to `ctx`; exported for completion tests and docs. */
export function buildProgram(ctx: Context, io: Io): Command {
  const program = new Command(PROGRAM)
    .description("command-line client of the hypervisor API")
    // Commander's own errors (unknown flag, missing argument) go through io and become exit 2.
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.stdout.write(s), writeErr: (s) => io.stderr.write(s) })
    .showHelpAfterError("(add --help for usage)")
    .showSuggestionAfterError(true)
    .option("--server <url>", `API server URL (env HYPERVISOR_SERVER; else the context's; else ${DEFAULT_SERVER})`)
    .option("--context <name>", "context of the configuration file to use (env HYPERVISOR_CONTEXT; default its current-context)")
    // Not --config: `instance create --config k=v` has it, and commander gives the program's own
    // options precedence wherever they appear on the line.
    .option("--config-file <file>", "ctl configuration file (env HYPERVISOR_CONFIG; default ~/.config/hypervisor/config.yaml)")
    .option("--ca-file <file>", "CA certificate(s) the server's certificate must chain to (env HYPERVISOR_CA_FILE)")
    .option("--client-cert <file>", "client certificate to present, with --client-key (env HYPERVISOR_CLIENT_CERT)")
    .option("--client-key <file>", "private key of --client-cert (env HYPERVISOR_CLIENT_KEY)")
    .option("-p, --project <name>", 'project to act in (env HYPERVISOR_PROJECT; else the context\'s; else "default")')
    .addOption(new Option("-o, --output <format>", "output format").choices(FORMATS).default("table"));
  program.addCommand(nodeCommand(ctx));
  program.addCommand(instanceCommand(ctx));
  program.addCommand(imageCommand(ctx));
  program.addCommand(clusterCommand(ctx));
  program.addCommand(joinTokenCommand(ctx));
  program.addCommand(userCertCommand(ctx));
  program.addCommand(tokenCommand(ctx));
  program.addCommand(roleCommand(ctx));
  program.addCommand(projectCommand(ctx));
  program.addCommand(whoamiCommand(ctx));
  program.addCommand(auditCommand(ctx));
  program.addCommand(loginCommand(ctx));
  program.addCommand(logoutCommand(ctx));
  program.addCommand(completionCommand(ctx));
  program.addCommand(versionCommand(ctx));
  program.addCommand(configCommand(ctx));
  return program;
}

// exitOverride and configureOutput are copied to subcommands only when they are created through
// .command(); those built separately and added with addCommand need them set explicitly.
function inherit(cmd: Command, from: Command): void {
  for (const sub of cmd.commands) {
    sub.copyInheritedSettings(from);
    inherit(sub, from);
  }
}

/** Runs the CLI; `argv` excludes node and the script (process.argv.slice(2)). */
export async function run(argv: readonly string[], io: Io): Promise<number> {
  const signal = io.signal ?? new AbortController().signal;
  let clients: Clients | undefined;
  let conn: Connection | undefined;
  let caFrom: string | undefined;
  const flags = (): ConnectionFlags => {
    const o = program.opts<ConnectionFlags>();
    return { server: o.server, caFile: o.caFile, clientCert: o.clientCert, clientKey: o.clientKey, context: o.context };
  };
  const location = () => configLocation(program.opts<{ configFile?: string }>().configFile, io.env);
  const connect = (): Clients => {
    const file = readConfig(location());
    if (file.exposed) io.stderr.write(`warning: ${file.path} holds a key or token and others may read it: chmod 600 ${file.path}\n`);
    conn = resolveConnection({ flags: flags(), env: io.env, config: file.config, configPath: file.path });
    const tls = loadTls(conn, ctx.now());
    caFrom = tls.caFrom;
    for (const w of conn.warnings) io.stderr.write(`warning: ${w}\n`);
    const plain = plaintextWarning(conn.server);
    if (plain !== undefined) io.stderr.write(`${plain}\n`);
    return createClients(conn, tls);
  };
  const ctx: Context = {
    io,
    signal,
    now: io.now ?? (() => new Date()),
    format: () => program.opts<{ output: Format }>().output,
    clients: () => (clients ??= connect()),
    configLocation: location,
    flags,
    out: (text) => void io.stdout.write(text),
    projectFlag: () => {
      const p = program.opts<{ project?: string }>().project;
      const bad = p === undefined ? undefined : checkName("--project", p);
      if (bad) throw usageError(bad);
      return p;
    },
    project: () => {
      const given = program.opts<{ project?: string }>().project ?? io.env["HYPERVISOR_PROJECT"];
      const p =
        given ??
        selectContext({ flags: flags(), env: io.env, config: readConfig(location()).config, configPath: location().path })?.project ??
        "default"; // the server's DEFAULT_PROJECT (not imported: ctl loads no store code)
      const bad = checkName(given === undefined ? "project" : "--project", p);
      if (bad) throw usageError(bad);
      return p;
    },
  };
  // The closures above read `program` only once parsing has started.
  const program = buildProgram(ctx, io);
  inherit(program, program);
  try {
    await program.parseAsync([...argv], { from: "user" });
    return ExitCode.Ok;
  } catch (e) {
    // Commander has already written its message (or the help) to stderr/stdout.
    if (e instanceof CommanderError) return e.exitCode === 0 ? ExitCode.Ok : ExitCode.Usage;
    if (signal.aborted) {
      io.stderr.write("interrupted\n");
      return ExitCode.Interrupted;
    }
    // Without a connection the failure is in resolving it, a CliError that names its own source.
    const { message, exitCode } = describeError(e, conn?.server ?? DEFAULT_SERVER, caFrom);
    io.stderr.write(`error: ${message}\n`);
    return exitCode;
  }
}
