/*
 * `project`: the tenant boundary (docs/access.md). Create, list, show, set quotas and the
 * restriction, delete (only an empty one).
 *
 *   hypervisor-ctl project create web --max-instances 10 --max-vcpus 16 [--restricted]
 *   hypervisor-ctl project set web --max-vcpus 32 | --no-quota | --restricted=false
 *   hypervisor-ctl --project web instance list
 */
import { Command, InvalidArgumentError, Option } from "commander";
import { create } from "@bufbuild/protobuf";
import { ProjectSchema, QuotaSchema, type Project, type Quota } from "../../api/gen/hypervisor/v1/project_pb.js";
import type { Context } from "./context.js";
import { CliError, ExitCode, usageError } from "./errors.js";
import * as output from "./output.js";

interface QuotaOptions {
  maxInstances?: number;
  maxVcpus?: number;
  maxMemoryMib?: bigint;
  maxDiskGib?: bigint;
}

const count = (flag: string) => (v: string) => {
  if (!/^\d{1,10}$/.test(v) || Number(v) > 0xffffffff) throw new InvalidArgumentError(`${flag}: ${v} is not a count (0: no limit)`);
  return Number(v);
};
const big = (flag: string) => (v: string) => {
  if (!/^\d{1,19}$/.test(v)) throw new InvalidArgumentError(`${flag}: ${v} is not a whole number (0: no limit)`);
  return BigInt(v);
};

function quotaOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option("--max-instances <n>", "instances the project may hold (0: no limit)").argParser(count("--max-instances")))
    .addOption(new Option("--max-vcpus <n>", "vCPUs its instances may hold together").argParser(count("--max-vcpus")))
    .addOption(new Option("--max-memory-mib <n>", "memory its instances may hold together, MiB").argParser(big("--max-memory-mib")))
    .addOption(new Option("--max-disk-gib <n>", "disk its instances may hold together, GiB").argParser(big("--max-disk-gib")));
}

const quotaOf = (o: QuotaOptions, base?: Quota): Quota =>
  create(QuotaSchema, {
    instances: o.maxInstances ?? base?.instances ?? 0,
    vcpus: o.maxVcpus ?? base?.vcpus ?? 0,
    memoryMib: o.maxMemoryMib ?? base?.memoryMib ?? 0n,
    diskGib: o.maxDiskGib ?? base?.diskGib ?? 0n,
  });
const anyQuota = (o: QuotaOptions) =>
  o.maxInstances !== undefined || o.maxVcpus !== undefined || o.maxMemoryMib !== undefined || o.maxDiskGib !== undefined;

/** "3/10" (used of the limit), or "3" without one. */
function used(n: number | bigint, limit: number | bigint | undefined): string {
  return limit ? `${n}/${limit}` : String(n);
}

export function projectTable(projects: readonly Project[]): string {
  return output.table(
    ["NAME", "INSTANCES", "VCPUS", "MEMORY-MIB", "DISK-GIB", "RESTRICTED", "DESCRIPTION"],
    projects.map((p) => [
      p.name,
      used(p.usage?.instances ?? 0, p.quota?.instances),
      used(p.usage?.vcpus ?? 0, p.quota?.vcpus),
      used(p.usage?.memoryMib ?? 0n, p.quota?.memoryMib),
      used(p.usage?.diskGib ?? 0n, p.quota?.diskGib),
      p.restricted ? "yes" : "no",
      p.description,
    ]),
  );
}

export function projectCommand(ctx: Context): Command {
  const cmd = new Command("project").alias("projects").description("projects: instances' tenant boundary, with quotas and restrictions");
  const show = (p: Project | undefined, verb: string) => {
    if (!p) throw new CliError("the server returned no project", ExitCode.Api);
    const format = ctx.format();
    ctx.out(format === "table" ? `project/${p.name} ${verb}\n` : output.message(ProjectSchema, p, format));
  };

  quotaOptions(
    cmd
      .command("create")
      .description("make a project (needs role admin)")
      .argument("<name>", "project name (a DNS label)")
      .option("--description <text>", "a note for people")
      .option("--restricted", "refuse host networking, host bridges and host paths in it"),
  ).action(async (name: string, o: QuotaOptions & { description?: string; restricted?: boolean }) => {
    const { project } = await ctx
      .clients()
      .projects.createProject(
        { name, description: o.description ?? "", restricted: o.restricted === true, ...(anyQuota(o) ? { quota: quotaOf(o) } : {}) },
        { signal: ctx.signal },
      );
    show(project, "created");
  });

  cmd
    .command("list")
    .alias("ls")
    .description("the projects you may see, with usage/quota")
    .action(async () => {
      const { projects } = await ctx.clients().projects.listProjects({}, { signal: ctx.signal });
      const format = ctx.format();
      ctx.out(format === "table" ? projectTable(projects) : output.list(ProjectSchema, projects, format));
    });

  cmd
    .command("get")
    .description("show one project")
    .argument("<name>", "project name")
    .action(async (name: string) => {
      const { project } = await ctx.clients().projects.getProject({ name }, { signal: ctx.signal });
      if (!project) throw new CliError("the server returned no project", ExitCode.Api);
      const format = ctx.format();
      ctx.out(format === "table" ? projectTable([project]) : output.message(ProjectSchema, project, format));
    });

  quotaOptions(
    cmd
      .command("set")
      .description("change a project's description, quota (the limits given; others kept) or restriction")
      .argument("<name>", "project name")
      .option("--description <text>", "a note for people")
      .option("--no-quota", "remove every limit")
      .addOption(new Option("--restricted <bool>", "restrict it or not").choices(["true", "false"])),
  ).action(async (name: string, o: QuotaOptions & { description?: string; quota?: boolean; restricted?: string }) => {
    const mask: string[] = [];
    let quota: Quota | undefined;
    if (o.quota === false) {
      if (anyQuota(o)) throw usageError("--no-quota and --max-* exclude each other");
      mask.push("quota");
    } else if (anyQuota(o)) {
      const { project } = await ctx.clients().projects.getProject({ name }, { signal: ctx.signal });
      quota = quotaOf(o, project?.quota);
      mask.push("quota");
    }
    if (o.description !== undefined) mask.push("description");
    if (o.restricted !== undefined) mask.push("restricted");
    if (mask.length === 0) throw usageError("project set needs --description, --max-*, --no-quota or --restricted");
    const { project } = await ctx
      .clients()
      .projects.updateProject(
        { name, description: o.description ?? "", restricted: o.restricted === "true", updateMask: mask, ...(quota ? { quota } : {}) },
        { signal: ctx.signal },
      );
    show(project, "updated");
  });

  cmd
    .command("delete")
    .alias("rm")
    .description("delete an empty project, with its role bindings")
    .argument("<name>", "project name")
    .action(async (name: string) => {
      await ctx.clients().projects.deleteProject({ name }, { signal: ctx.signal });
      ctx.out(ctx.format() === "table" ? `project/${name} deleted\n` : "{}\n");
    });
  return cmd;
}
