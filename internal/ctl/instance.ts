/*
 * `instance` commands. Mutations return at once unless --wait is given; then the command follows
 * WatchInstances until the instance reaches the state the action aims for:
 *
 *   create/start ──► ... ──► Running   (exit 0)     Failed ──► exit 5 with the status message
 *   stop         ──► ... ──► Stopped   (exit 0)     --timeout passes ──► exit 4 with the last phase
 *   restart      ──► Running again, on a generation the agent has acted on (or a new start time)
 *   delete       ──► gone: GetInstance answers NotFound
 */
import { setTimeout as sleep } from "node:timers/promises";
import { create, equals } from "@bufbuild/protobuf";
import { TimestampSchema, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { Command, Option } from "commander";
import {
  ExplainInstanceResponseSchema,
  CreateInstanceRequestSchema,
  EventType,
  type Instance,
  InstanceSchema,
  InstanceSpecSchema,
  Phase,
  PowerState,
  WatchInstancesResponseSchema,
} from "../../api/gen/hypervisor/v1/instance_pb.js";
import { consoleCommand } from "./console.js";
import type { Context } from "./context.js";
import { CliError, ExitCode, usageError } from "./errors.js";
import * as flags from "./flags.js";
import * as output from "./output.js";
import { readSpecFile } from "./spec-file.js";
import { DRIVER_NAMES } from "../../pkg/compute/driver/index.js";
import { checkStopTimeout, LIMITS } from "../../pkg/validation/index.js";

const DEFAULT_TIMEOUT = "120s";
// How long to pause before reopening a watch the server ended, so a server that closes streams
// at once is not hammered.
const REWATCH_PAUSE_MS = 500;

export function instanceCommand(ctx: Context): Command {
  const cmd = new Command("instance").alias("instances").description("create, inspect and control instances (VMs, containers, microVMs)");
  cmd.addCommand(createCommand(ctx));
  cmd.addCommand(listCommand(ctx));
  cmd.addCommand(getCommand(ctx));
  cmd.addCommand(powerCommand(ctx, "start"));
  cmd.addCommand(powerCommand(ctx, "stop"));
  cmd.addCommand(powerCommand(ctx, "restart"));
  cmd.addCommand(deleteCommand(ctx));
  cmd.addCommand(logsCommand(ctx));
  cmd.addCommand(setMemoryCommand(ctx));
  cmd.addCommand(consoleCommand(ctx));
  cmd.addCommand(explainCommand(ctx));
  return cmd;
}

function waitOptions(cmd: Command, what: string): Command {
  return cmd
    .option("--wait", `wait until the instance ${what}`)
    .addOption(
      new Option("--timeout <duration>", "give up waiting after this long (90s, 2m, 1m30s)")
        .argParser(flags.duration)
        .default(flags.duration(DEFAULT_TIMEOUT), DEFAULT_TIMEOUT),
    );
}

interface CreateOptions {
  filename?: string;
  driver?: string;
  image?: string;
  vcpus?: number;
  memory?: bigint;
  disk?: bigint;
  kernel?: string;
  initrd?: string;
  cmdline?: string;
  label?: Record<string, string>;
  nodeSelector?: Record<string, string>;
  env?: Record<string, string>;
  secretEnv?: string[];
  config?: Record<string, string>;
  command?: string[];
  restartPolicy?: string;
  stopped?: boolean;
  count?: number;
  wait?: boolean;
  timeout: number;
}

/** `create --count`'s limit: the server's CreateInstances takes this many in one transaction. */
const MAX_COUNT = LIMITS.maxCount;

function createCommand(ctx: Context): Command {
  const cmd = new Command("create")
    .description("create an instance from flags, a spec file, or both (flags override the file)")
    .argument("[name]", "instance name (default: name in the spec file)")
    .argument("[args...]", "arguments passed to the command, after --")
    .option("-f, --filename <file>", "spec file, YAML or JSON: {name, labels, spec: {driver, image, vcpus, memoryMib, ...}}")
    .option("--driver <driver>", `${DRIVER_NAMES.join(", ")} (cluster drivers: what each takes)`)
    .option("--image <ref>", "disk image (VMs) or OCI reference (containers)")
    .option("--vcpus <n>", "virtual CPUs", flags.positiveInt)
    .option("--memory <MiB>", "memory in MiB, or 512Mi / 2Gi", flags.memoryMib)
    .option("--disk <GiB>", "disk in GiB, or 20Gi / 1Ti", flags.diskGib)
    .option("--kernel <path>", "kernel for direct-kernel boot (VMs)")
    .option("--initrd <path>", "initrd for direct-kernel boot (VMs)")
    .option("--cmdline <string>", "kernel command line")
    .option("--label <k=v>", "label (repeatable)", flags.keyValue)
    .option("--node-selector <k=v>", "node label that must match (repeatable)", flags.keyValue)
    .option("--env <K=V>", "environment variable (repeatable)", flags.keyValue)
    .option(
      "--secret-env <NAME>",
      "secret environment variable, its value taken from this shell's $NAME (never on the command line); write-only: the API shows it redacted (repeatable)",
      (v: string, prev: string[] | undefined) => [...(prev ?? []), v],
    )
    .option("--config <k=v>", "driver-specific setting, spec.driver_config (repeatable)", flags.keyValue)
    .option("--command <word...>", "command to run, replacing the image's (containers)")
    .addOption(new Option("--restart-policy <policy>", "what to do when it exits").choices(flags.RESTART_POLICIES))
    .option("--stopped", "create it without starting it")
    .option("--count <n>", `create n alike, NAME-1 to NAME-n, in one transaction: all or none (at most ${MAX_COUNT})`, flags.positiveInt);
  waitOptions(cmd, "is Running").action(async (name: string | undefined, args: string[], opts: CreateOptions) => {
    const req = opts.filename ? await readSpecFile(opts.filename, ctx.signal) : create(CreateInstanceRequestSchema);
    const spec = (req.spec ??= create(InstanceSpecSchema));
    if (name !== undefined) req.name = name;
    if (opts.driver !== undefined) spec.driver = opts.driver;
    if (opts.image !== undefined) spec.image = opts.image;
    if (opts.vcpus !== undefined) spec.vcpus = opts.vcpus;
    if (opts.memory !== undefined) spec.memoryMib = opts.memory;
    if (opts.disk !== undefined) spec.diskGib = opts.disk;
    if (opts.kernel !== undefined) spec.kernel = opts.kernel;
    if (opts.initrd !== undefined) spec.initrd = opts.initrd;
    if (opts.cmdline !== undefined) spec.cmdline = opts.cmdline;
    if (opts.command !== undefined) spec.command = opts.command;
    if (args.length > 0) spec.args = args;
    if (opts.restartPolicy !== undefined) spec.restartPolicy = flags.restartPolicy(opts.restartPolicy);
    if (opts.stopped) spec.desiredPowerState = PowerState.STOPPED;
    Object.assign(req.labels, opts.label);
    Object.assign(spec.nodeSelector, opts.nodeSelector);
    Object.assign(spec.env, opts.env);
    for (const k of opts.secretEnv ?? []) {
      const v = ctx.io.env[k];
      if (v === undefined) throw usageError(`--secret-env ${k}: $${k} is not set in this shell; export it first`);
      spec.secretEnv[k] = v;
    }
    Object.assign(spec.driverConfig, opts.config);
    if (req.name === "") throw usageError("instance create needs a NAME (or name: in the spec file)");
    // --project (or the context's) unless the spec file names one.
    if (req.project === "") req.project = ctx.project();
    if (spec.driver === "") throw usageError("instance create needs --driver (or spec.driver in the spec file)");
    if (opts.wait && opts.stopped) throw usageError("--wait waits for Running, which --stopped never reaches");
    if (opts.count !== undefined && (opts.count < 1 || opts.count > MAX_COUNT))
      throw usageError(`--count ${opts.count}: expected 1 to ${MAX_COUNT}`);

    if (opts.count !== undefined) {
      const reqs = Array.from({ length: opts.count }, (_, i) => ({ ...req, name: `${req.name}-${i + 1}` }));
      const { instances } = await ctx.clients().instances.createInstances({ instances: reqs }, { signal: ctx.signal });
      const deadline = Date.now() + opts.timeout;
      for (const instance of instances) {
        const final = opts.wait ? await waitFor(ctx, instance, runningGoal(instance), Math.max(0, deadline - Date.now())) : instance;
        report(ctx, final, opts.wait ? `is Running on ${final?.status?.node || "<none>"}` : "created");
      }
      return;
    }
    const { instance } = await ctx.clients().instances.createInstance(req, { signal: ctx.signal });
    if (!instance) throw new CliError("the server returned no instance", ExitCode.Api);
    const final = opts.wait ? await waitFor(ctx, instance, runningGoal(instance), opts.timeout) : instance;
    report(ctx, final, opts.wait ? `is Running on ${final?.status?.node || "<none>"}` : "created");
  });
  return cmd;
}

function report(ctx: Context, instance: Instance | undefined, verb: string): void {
  const format = ctx.format();
  if (!instance) return;
  if (format === "table") ctx.out(`instance/${instance.name} ${verb}\n`);
  else ctx.out(output.message(InstanceSchema, instance, format));
}

interface ListOptions {
  selector?: string;
  node?: string;
  phase?: string;
  watch?: boolean;
  allProjects?: boolean;
}

function listCommand(ctx: Context): Command {
  return new Command("list")
    .alias("ls")
    .description("list instances, optionally filtered; --watch keeps printing changes until Ctrl-C")
    .option("-l, --selector <k=v,...>", "labels that must all match", flags.selector)
    .option("--node <name>", "only instances placed on this node")
    .addOption(new Option("--phase <phase>", "only instances in this phase").choices(flags.PHASES))
    .option("-w, --watch", "after the list, print every change")
    .option("-A, --all-projects", "instances of every project you may list (NAME shows <project>/<name>)")
    .action(async (opts: ListOptions) => {
      const filter = {
        labelSelector: opts.selector ?? "",
        node: opts.node ?? "",
        phase: opts.phase !== undefined ? flags.phase(opts.phase) : Phase.UNSPECIFIED,
      };
      const project = opts.allProjects ? "*" : ctx.project();
      if (opts.watch) return watch(ctx, filter, project);
      const { instances } = await ctx.clients().instances.listInstances({ filter, project }, { signal: ctx.signal });
      const format = ctx.format();
      ctx.out(
        format === "table" ? output.instanceTable(instances, ctx.now(), opts.allProjects) : output.list(InstanceSchema, instances, format),
      );
    });
}

/**
 * Streams as it goes (the one exception to "stdout once, at the end"). The table's widths come
 * from the initial list and only grow, so columns stay put while events arrive.
 */
async function watch(ctx: Context, filter: { labelSelector: string; node: string; phase: Phase }, project: string): Promise<void> {
  const format = ctx.format();
  let widths: number[] = output.INSTANCE_COLUMNS.map((c) => c.length);
  let initial: string[][] | undefined = [];
  const row = (r: string[]): void => {
    widths = widths.map((w, i) => Math.max(w, (r[i] ?? "").length));
    ctx.out(output.formatRow(r, widths) + "\n");
  };
  try {
    for await (const ev of ctx.clients().instances.watchInstances({ filter, project }, { signal: ctx.signal })) {
      if (format !== "table") {
        const json = output.message(WatchInstancesResponseSchema, ev, "json");
        ctx.out(
          format === "json" ? JSON.stringify(JSON.parse(json)) + "\n" : "---\n" + output.message(WatchInstancesResponseSchema, ev, "yaml"),
        );
        continue;
      }
      if (ev.type === EventType.SYNCED) {
        if (initial) {
          for (const r of initial) widths = widths.map((w, i) => Math.max(w, (r[i] ?? "").length));
          row([...output.INSTANCE_COLUMNS]);
          initial.forEach(row);
          initial = undefined;
        }
        continue;
      }
      if (!ev.instance) continue;
      const r = output.instanceRow(ev.instance, ctx.now(), project === "*");
      if (ev.type === EventType.DELETED) r[1] = "Deleted";
      if (initial) initial.push(r);
      else row(r);
    }
  } catch (e) {
    // Ctrl-C is how a watch is meant to end.
    if (ctx.signal.aborted) return;
    throw e;
  }
}

function getCommand(ctx: Context): Command {
  return new Command("get")
    .description("show one instance")
    .argument("<name>", "instance name")
    .action(async (name: string) => {
      const { instance } = await ctx.clients().instances.getInstance({ project: ctx.project(), name }, { signal: ctx.signal });
      if (!instance) throw new CliError("the server returned no instance", ExitCode.Api);
      const format = ctx.format();
      ctx.out(format === "table" ? output.instanceTable([instance], ctx.now()) : output.message(InstanceSchema, instance, format));
    });
}

interface PowerOptions {
  wait?: boolean;
  timeout: number;
  timeoutSeconds?: number;
}

function powerCommand(ctx: Context, action: "start" | "stop" | "restart"): Command {
  const aim = { start: "is Running", stop: "is Stopped", restart: "is Running again" }[action];
  const cmd = new Command(action).description(`${action} an instance`).argument("<name>", "instance name");
  if (action === "stop")
    cmd.option(
      "--timeout-seconds <n>",
      `graceful stop period before forcing it (0: driver default; at most ${LIMITS.maxStopTimeoutSeconds})`,
      flags.positiveInt,
    );
  waitOptions(cmd, aim).action(async (name: string, opts: PowerOptions) => {
    const tooLong = checkStopTimeout("--timeout-seconds", opts.timeoutSeconds ?? 0);
    if (tooLong) throw usageError(tooLong);
    const api = ctx.clients().instances;
    const call = { signal: ctx.signal };
    const { instance } =
      action === "start"
        ? await api.startInstance({ project: ctx.project(), name }, call)
        : action === "stop"
          ? await api.stopInstance({ project: ctx.project(), name, timeoutSeconds: opts.timeoutSeconds ?? 0 }, call)
          : await api.restartInstance({ project: ctx.project(), name }, call);
    if (!instance) throw new CliError("the server returned no instance", ExitCode.Api);
    if (!opts.wait) return report(ctx, instance, `${action} requested`);
    const goal = action === "start" ? runningGoal(instance) : action === "stop" ? stoppedGoal(instance) : restartedGoal(instance);
    report(
      ctx,
      await waitFor(ctx, instance, goal, opts.timeout),
      { start: "is Running", stop: "is Stopped", restart: "restarted" }[action],
    );
  });
  return cmd;
}

/** The serial console log, streamed as it arrives (the one command that writes while it runs). */
function logsCommand(ctx: Context): Command {
  return new Command("logs")
    .description("print an instance's console log (VMs: the serial console)")
    .argument("<name>", "instance name")
    .option("-f, --follow", "keep printing new output until Ctrl-C")
    .option("--tail <bytes>", "start this many bytes from the end (0: the whole log)", flags.positiveInt)
    .action(async (name: string, opts: { follow?: boolean; tail?: number }) => {
      const decoder = new TextDecoder();
      const stream = ctx
        .clients()
        .instances.getInstanceLogs(
          { project: ctx.project(), name, follow: opts.follow ?? false, tailBytes: BigInt(opts.tail ?? 0) },
          { signal: ctx.signal },
        );
      try {
        for await (const chunk of stream) ctx.io.stdout.write(decoder.decode(chunk.data, { stream: true }));
      } catch (e) {
        // Ctrl-C ends a follow: that is its normal way out, not an error.
        if (!(opts.follow && ctx.signal.aborted)) throw e;
      }
      const rest = decoder.decode();
      if (rest) ctx.io.stdout.write(rest);
    });
}

function explainCommand(ctx: Context): Command {
  return new Command("explain")
    .description("show every node's verdict on an instance: feasible and its score, or the first filter it fails")
    .argument("<name>", "instance name")
    .action(async (name: string) => {
      const res = await ctx.clients().instances.explainInstance({ project: ctx.project(), name }, { signal: ctx.signal });
      const format = ctx.format();
      if (format !== "table") return ctx.out(output.message(ExplainInstanceResponseSchema, res, format));
      ctx.out(`${res.summary}\n\n${output.verdictTable(res.nodes)}`);
    });
}

function setMemoryCommand(ctx: Context): Command {
  return new Command("set-memory")
    .description("set the guest memory target (balloon) of a VM; 0 gives it all its memory again")
    .argument("<name>", "instance name")
    .argument("<memory>", "MiB, or a quantity like 512Mi or 2Gi", flags.memoryMib)
    .action(async (name: string, memoryMib: bigint) => {
      const { instance } = await ctx
        .clients()
        .instances.setInstanceMemory({ project: ctx.project(), name, memoryMib }, { signal: ctx.signal });
      if (!instance) throw new CliError("the server returned no instance", ExitCode.Api);
      report(ctx, instance, `memory target set to ${memoryMib === 0n ? "all memory" : `${memoryMib}Mi`}`);
    });
}

function deleteCommand(ctx: Context): Command {
  const cmd = new Command("delete").alias("rm").description("delete an instance").argument("<name>", "instance name");
  waitOptions(cmd, "is gone").action(async (name: string, opts: PowerOptions) => {
    const { instance } = await ctx.clients().instances.deleteInstance({ project: ctx.project(), name }, { signal: ctx.signal });
    if (!instance) throw new CliError("the server returned no instance", ExitCode.Api);
    if (opts.wait) await waitFor(ctx, instance, goneGoal(), opts.timeout);
    report(ctx, instance, opts.wait ? "deleted" : "deletion requested");
  });
  return cmd;
}

/** "done" ends the wait; a string is a failure message (exit 5); undefined keeps waiting. */
type Verdict = "done" | { failed: string } | undefined;

interface Goal {
  /** For messages: "be Running". */
  readonly aim: string;
  /** `undefined` means GetInstance answered NotFound. */
  check(i: Instance | undefined): Verdict | Promise<Verdict>;
}

function sameTime(a: Timestamp | undefined, b: Timestamp | undefined): boolean {
  return a === undefined || b === undefined ? a === b : equals(TimestampSchema, a, b);
}

/**
 * A Failed status only ends the wait if it is news: the instance was not Failed when we asked, or
 * the status was written since (the agent acted on our generation, or a new update time).
 * Starting a Failed instance again must not stop at the old failure.
 */
function failedSince(before: Instance, i: Instance): Verdict {
  const st = i.status;
  if (st?.phase !== Phase.FAILED) return undefined;
  const fresh =
    before.status?.phase !== Phase.FAILED ||
    st.observedGeneration >= before.generation ||
    !sameTime(st.updateTime, before.status.updateTime);
  return fresh ? { failed: st.message || "no message from the agent" } : undefined;
}

function vanished(name: string): Verdict {
  return { failed: `instance ${name} was deleted while waiting` };
}

function runningGoal(before: Instance): Goal {
  return {
    aim: "be Running",
    check: (i) => (!i ? vanished(before.name) : i.status?.phase === Phase.RUNNING ? "done" : failedSince(before, i)),
  };
}

function stoppedGoal(before: Instance): Goal {
  return {
    aim: "be Stopped",
    check: (i) => (!i ? vanished(before.name) : i.status?.phase === Phase.STOPPED ? "done" : failedSince(before, i)),
  };
}

/**
 * The instance is Running before and after a restart, so Running alone proves nothing: it must
 * also show the agent acted on the restart's generation, a new start time, or a phase other than
 * Running seen on the way.
 */
function restartedGoal(before: Instance): Goal {
  let leftRunning = false;
  return {
    aim: "be Running again",
    check: (i) => {
      if (!i) return vanished(before.name);
      const st = i.status;
      if (st?.phase !== Phase.RUNNING) {
        leftRunning = true;
        return failedSince(before, i);
      }
      const acted = st.observedGeneration >= before.generation || !sameTime(st.startTime, before.status?.startTime);
      return leftRunning || acted ? "done" : undefined;
    },
  };
}

/** Gone is decided by GetInstance answering NotFound (see waitFor); watch events only say when to ask. */
function goneGoal(): Goal {
  return { aim: "be deleted", check: (i) => (i ? undefined : "done") };
}

/**
 * Follows WatchInstances (reopened if the server ends it) until `goal` decides, bounded by
 * `timeoutMs` and by Ctrl-C. Returns the last state seen.
 */
async function waitFor(ctx: Context, before: Instance, goal: Goal, timeoutMs: number): Promise<Instance | undefined> {
  const { name } = before;
  const project = before.project || "default";
  const timeout = AbortSignal.timeout(timeoutMs);
  // Aborted on the way out: leaving the for-await alone does not close an HTTP/1.1 stream, and
  // an open socket would keep the process alive after the answer is printed.
  const done = new AbortController();
  const signal = AbortSignal.any([ctx.signal, timeout, done.signal]);
  let last: Instance | undefined = before;
  const decide = async (i: Instance | undefined): Promise<boolean> => {
    const verdict = await goal.check(i);
    if (verdict === undefined) return false;
    if (verdict === "done") return true;
    throw new CliError(`instance ${name} failed: ${verdict.failed}`, ExitCode.Failed);
  };
  // Absent from the watch is a hint, not a fact: the server's watch cache may not have caught up
  // with a create that just returned. GetInstance reads the store and settles it.
  const absent = async (): Promise<boolean> => {
    try {
      const { instance } = await ctx.clients().instances.getInstance({ project, name }, { signal });
      if (instance) last = instance;
      return await decide(instance);
    } catch (e) {
      if (ConnectError.from(e).code !== Code.NotFound) throw e;
      return decide(undefined);
    }
  };
  try {
    for (;;) {
      let seen = false;
      for await (const ev of ctx.clients().instances.watchInstances({ project }, { signal })) {
        if (ev.type === EventType.SYNCED) {
          if (!seen && (await absent())) return last;
          continue;
        }
        if (ev.instance?.name !== name) continue;
        if (ev.type === EventType.DELETED) {
          if (await absent()) return last;
          continue;
        }
        seen = true;
        last = ev.instance;
        if (await decide(ev.instance)) return last;
      }
      await sleep(REWATCH_PAUSE_MS, undefined, { signal });
    }
  } catch (e) {
    if (timeout.aborted && !ctx.signal.aborted) {
      const phase = last ? output.phaseName(last.status?.phase) : "gone";
      const msg = last?.status?.message ? `: ${last.status.message}` : "";
      throw new CliError(
        `timed out after ${flags.showDuration(timeoutMs)} waiting for instance ${name} to ${goal.aim} (last phase ${phase}${msg})`,
        ExitCode.Timeout,
      );
    }
    throw e;
  } finally {
    done.abort();
  }
}
