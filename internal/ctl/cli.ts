/*
 * The command tree and `run`, the whole CLI as a function: argv and an Io in, an exit code out.
 * A fresh commander program per call keeps runs independent (tests call it many times), and
 * commander's exits are turned into return values so nothing calls process.exit here.
 */
import { Command, CommanderError, Option } from "commander";
import { clusterCommand, versionCommand } from "./cluster.js";
import { createClients, DEFAULT_SERVER, type Clients } from "./client.js";
import { completionCommand } from "./completion.js";
import type { Context, Io } from "./context.js";
import { describeError, ExitCode } from "./errors.js";
import { imageCommand } from "./image.js";
import { instanceCommand } from "./instance.js";
import { joinTokenCommand } from "./join-token.js";
import { nodeCommand } from "./node.js";
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
    .option("--server <url>", `API server URL (env HYPERVISOR_SERVER, default ${DEFAULT_SERVER})`)
    .addOption(new Option("-o, --output <format>", "output format").choices(FORMATS).default("table"));
  program.addCommand(nodeCommand(ctx));
  program.addCommand(instanceCommand(ctx));
  program.addCommand(imageCommand(ctx));
  program.addCommand(clusterCommand(ctx));
  program.addCommand(joinTokenCommand(ctx));
  program.addCommand(completionCommand(ctx));
  program.addCommand(versionCommand(ctx));
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
  const server = (): string => (program.opts<{ server?: string }>().server ?? io.env["HYPERVISOR_SERVER"]) || DEFAULT_SERVER;
  const ctx: Context = {
    io,
    signal,
    now: io.now ?? (() => new Date()),
    format: () => program.opts<{ output: Format }>().output,
    clients: () => (clients ??= createClients(server())),
    out: (text) => void io.stdout.write(text),
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
    const { message, exitCode } = describeError(e, server());
    io.stderr.write(`error: ${message}\n`);
    return exitCode;
  }
}
