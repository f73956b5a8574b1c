// Flag parsing and usage errors (exit 2, nothing sent, nothing on stdout), value parsers, and
// shell completion generated from the command tree and exercised in a real bash.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import type { Command } from "commander";
import { buildProgram } from "./cli.js";
import { commandTree } from "./completion.js";
import type { Context, Io } from "./context.js";
import { ExitCode } from "./errors.js";
import * as flags from "./flags.js";
import { runCli } from "./testing.js";

// Nothing listens on port 1: a usage error must be caught before any call, or the exit code
// would be 3 (unreachable) instead of 2.
const NOWHERE = "http://127.0.0.1:1";

async function usage(argv: string[], pattern: RegExp): Promise<void> {
  const r = await runCli(argv, { server: NOWHERE });
  assert.equal(r.code, ExitCode.Usage, `${argv.join(" ")}: ${r.stderr}`);
  assert.equal(r.stdout, "", argv.join(" "));
  assert.match(r.stderr, pattern, argv.join(" "));
}

describe("usage errors", () => {
  it("rejects a --label that is not k=v, naming the flag and value", async () => {
    await usage(
      ["instance", "create", "x", "--driver", "mock", "--label", "app=web", "--label", "oops"],
      /--label <k=v>.*oops.*expected key=value/,
    );
    await usage(["instance", "create", "x", "--driver", "mock", "--env", "=v"], /--env <K=V>.*expected key=value/);
  });

  it("rejects bad numbers, quantities, durations and choices", async () => {
    const create = ["instance", "create", "x", "--driver", "mock"];
    await usage([...create, "--vcpus", "two"], /--vcpus.*two.*non-negative integer/);
    await usage([...create, "--memory", "2GB"], /--memory.*2GB/);
    await usage([...create, "--disk", "10Mi"], /--disk.*10Mi/);
    await usage([...create, "--wait", "--timeout", "soon"], /--timeout.*soon.*duration/);
    await usage([...create, "--restart-policy", "sometimes"], /--restart-policy.*sometimes.*never, on-failure, always/);
    await usage(["instance", "list", "--phase", "bogus"], /--phase.*bogus/);
    await usage(["instance", "list", "--selector", "app"], /--selector.*k=v/);
    await usage(["-o", "xml", "node", "list"], /--output.*xml.*table, json, yaml/);
    await usage(["instance", "stop", "x", "--timeout-seconds", "-1"], /unknown option|--timeout-seconds/);
  });

  it("rejects unknown commands and flags and missing arguments", async () => {
    await usage(["instanse", "list"], /unknown command 'instanse'.*\n.*Did you mean instance\?/s);
    await usage(["instance", "list", "--nod", "a"], /unknown option '--nod'/);
    await usage(["instance", "get"], /missing required argument 'name'/);
    await usage(["node", "cordon", "a", "b"], /too many arguments/);
    await usage(["completion", "fish"], /'fish' is invalid.*bash, zsh/);
  });

  it("rejects incomplete or contradictory create requests", async () => {
    await usage(["instance", "create", "--driver", "mock"], /needs a NAME/);
    await usage(["instance", "create", "x"], /needs --driver/);
    await usage(["instance", "create", "x", "--driver", "mock", "--stopped", "--wait"], /--stopped/);
    await usage(["instance", "create", "x", "--driver", "mock", "--count", "0"], /--count 0: expected 1 to 100/);
    await usage(["instance", "create", "x", "--driver", "mock", "--count", "101"], /--count 101: expected 1 to 100/);
    await usage(["instance", "create", "x", "-f", "/nonexistent/spec.yaml"], /cannot read spec file \/nonexistent\/spec\.yaml: ENOENT/);
  });

  it("rejects image imports without a target, with two targets, or of a file that is not there", async () => {
    await usage(["image", "import", "x.tar"], /name the nodes with --node NAME \(repeatable\), or use --all/);
    await usage(["image", "import", "x.tar", "--all", "--node", "a"], /--node and --all exclude each other/);
    await usage(["image", "import", "/nonexistent/x.tar", "--all"], /\/nonexistent\/x\.tar: no such file/);
    await usage(["image", "import", "/tmp", "--node", "a"], /\/tmp: not a file/);
    await usage(["image", "import"], /missing required argument 'file'/);
  });

  it("rejects a server that is not a URL", async () => {
    await usage(["--server", "localhost:7070", "node", "list"], /--server must be an http\(s\) URL, got "localhost:7070"/);
  });

  it("prints help on stdout with exit 0, and on stderr with exit 2 when no command is given", async () => {
    const help = await runCli(["instance", "create", "--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /^Usage: hypervisor-ctl instance create \[options\] \[name\] \[args\.\.\.\]/);
    const bare = await runCli([]);
    assert.equal(bare.code, ExitCode.Usage);
    assert.equal(bare.stdout, "");
    assert.match(bare.stderr, /^Usage: hypervisor-ctl/);
  });

  it("version --client needs no server", async () => {
    const r = await runCli(["version", "--client"], { server: NOWHERE });
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^Client: \d+\.\d+\.\d+\n$/);
  });
});

describe("value parsers", () => {
  it("accumulates k=v pairs, splitting at the first '='", () => {
    let m = flags.keyValue("a=1", undefined);
    m = flags.keyValue("b=x=y", m);
    m = flags.keyValue("a=2", m);
    assert.deepEqual(m, { a: "2", b: "x=y" });
    assert.deepEqual(flags.keyValue("empty=", undefined), { empty: "" });
  });

  it("parses durations and quantities", () => {
    assert.equal(flags.duration("90"), 90_000);
    assert.equal(flags.duration("1m30s"), 90_000);
    assert.equal(flags.duration("250ms"), 250);
    assert.equal(flags.duration("1.5h"), 5_400_000);
    assert.throws(() => flags.duration("1d"));
    assert.throws(() => flags.duration(""));
    assert.equal(flags.memoryMib("512"), 512n);
    assert.equal(flags.memoryMib("2Gi"), 2048n);
    assert.equal(flags.diskGib("1Ti"), 1024n);
    assert.equal(flags.showDuration(120_000), "2m0s");
  });

  it("takes phases and restart policies in any spelling", () => {
    assert.equal(flags.phase("running"), flags.phase("PHASE_RUNNING"));
    assert.equal(flags.restartPolicy("on-failure"), flags.restartPolicy("ON_FAILURE"));
    assert.throws(() => flags.phase("unspecified"));
  });
});

function program(): Command {
  const io: Io = { stdout: { write: () => true }, stderr: { write: () => true }, env: {} };
  const ctx = { io } as unknown as Context;
  return buildProgram(ctx, io);
}

/** Every command path in the tree, e.g. "instance create". */
function paths(cmd: Command, prefix = ""): string[] {
  return cmd.commands.flatMap((c) => {
    const p = prefix ? `${prefix} ${c.name()}` : c.name();
    return [p, ...paths(c, p)];
  });
}

const EXPECTED = [
  "node list", "node get", "node cordon", "node uncordon", "node drain", "node revoke",
  "instance create", "instance list", "instance get", "instance start", "instance stop", "instance restart", "instance delete",
  "instance logs", "instance set-memory", "instance console", "image import", "image list",
  "cluster status", "join-token create", "join-token list", "join-token revoke", "completion", "version",
  "token create", "token list", "token revoke", "role list", "whoami", "audit", "login", "logout",
  "config view", "config get-contexts", "config current-context", "config use-context", "config set-context", "config delete-context",
  "user-cert create",
]; // prettier-ignore

describe("completion", () => {
  it("has every command the CLI documents", () => {
    const all = paths(program());
    for (const p of EXPECTED) assert.ok(all.includes(p), p);
  });

  for (const shell of ["bash", "zsh"] as const) {
    it(`${shell} script names every command, subcommand and flag of the tree`, async () => {
      const r = await runCli(["completion", shell]);
      assert.equal(r.code, 0);
      const tree = commandTree(program());
      for (const p of paths(program())) {
        const words = p.split(" ");
        assert.ok(r.stdout.includes(`'${words.slice(0, -1).join(" ")}/${words.at(-1)}'`), `${shell}: ${p}`);
      }
      for (const level of tree.levels)
        for (const f of level.flags) assert.ok(r.stdout.includes(f.name), `${shell}: ${level.path} ${f.name}`);
      assert.ok(r.stdout.includes("'--restart-policy') printf '%s\\n' 'never' 'on-failure' 'always'"), shell);
    });
  }

  const exec = promisify(execFile);
  /** Runs the generated bash completion for the words typed, the last one being completed. */
  async function complete(script: string, ...words: string[]): Promise<string[]> {
    const quoted = words.map((w) => `'${w}'`).join(" ");
    const { stdout } = await exec("bash", [
      "-c",
      `${script}\nCOMP_WORDS=(hypervisor-ctl ${quoted}); COMP_CWORD=${words.length}; __hypervisor_ctl; printf '%s\\n' "\${COMPREPLY[@]}"`,
    ]);
    return stdout.split("\n").filter((l) => l !== "");
  }

  it("completes commands, aliases, flags and flag values in a real bash", async () => {
    const { stdout: script } = await runCli(["completion", "bash"]);
    assert.deepEqual(await complete(script, ""), [
      "node",
      "instance",
      "image",
      "cluster",
      "join-token",
      "user-cert",
      "token",
      "role",
      "project",
      "whoami",
      "audit",
      "login",
      "logout",
      "completion",
      "version",
      "config",
    ]);
    assert.deepEqual(await complete(script, "inst"), ["instance"]);
    assert.deepEqual(await complete(script, "instance", "st"), ["start", "stop"]);
    assert.deepEqual(await complete(script, "instances", "ls", "--ph"), ["--phase"]);
    assert.deepEqual(await complete(script, "instance", "list", "--phase", "s"), ["scheduled", "stopping", "stopped"]);
    assert.deepEqual(await complete(script, "-o", "j"), ["json"]);
    // The value of a flag is skipped when finding the command path.
    assert.deepEqual(await complete(script, "--server", "http://x", "-o", "yaml", "node", "dr"), ["drain"]);
    assert.deepEqual(await complete(script, "--context", "lab", "config", "use"), ["use-context"]);
    assert.deepEqual(await complete(script, "completion", ""), ["bash", "zsh"]);
    const createFlags = await complete(script, "instance", "create", "--");
    for (const f of ["--driver", "--label", "--wait", "--timeout", "--server", "--output", "--help"]) assert.ok(createFlags.includes(f), f);
  });
});
