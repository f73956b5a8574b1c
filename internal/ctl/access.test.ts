// `whoami`, `token`, `role`, `login` and `logout` against a real server with access control on
// (embedded store, real HTTP, the bootstrap admin token from its pki directory): what create
// prints and sends, the list table without secrets, revoke, a viewer refused more than it holds,
// and login storing only a token the server accepts.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { chmod, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import type { Server } from "../server/server.js";
import type { Store } from "../../pkg/cluster/store/index.js";
import { startServerWithAccess, type AccessServer } from "../../test/support/api-server.js";
import { groupRights, tokenTtlSeconds } from "./access.js";
import { parseConfig } from "./config-file.js";
import { ExitCode } from "./errors.js";
import { readSecretLine } from "./login.js";
import { runCli } from "./testing.js";

const TOKEN_RE = /^hvt_([a-z0-9]{10})\.[A-Za-z0-9_-]{43}$/;
const idOf = (token: string) => TOKEN_RE.exec(token.trim())![1]!;

describe("access commands against a server with access control", () => {
  let api: AccessServer;
  let dir: string;
  let store: Store;
  let server: Server;
  let admin = "";
  /** ctl as the holder of `token` (the admin's by default), pointed at the server. */
  const cli = (argv: string[], token = admin, extra: { stdin?: string; env?: Record<string, string>; now?: Date } = {}) =>
    runCli(argv, { server: server.url, env: { HYPERVISOR_TOKEN: token, ...extra.env }, stdin: extra.stdin, now: extra.now });
  const create = async (...argv: string[]) => {
    const r = await cli(["token", "create", ...argv]);
    assert.equal(r.code, ExitCode.Ok, r.stderr);
    return r.stdout.trim();
  };

  before(async () => {
    api = await startServerWithAccess("hv-ctl-access-");
    ({ dir, store, server, admin } = api);
  });

  after(async () => {
    await api?.stop();
  });

  it("whoami shows the bootstrap admin; -o json adds the rights", async () => {
    const r = await cli(["whoami"]);
    assert.equal(r.code, ExitCode.Ok, r.stderr);
    assert.equal(r.stderr, "");
    assert.equal(
      r.stdout,
      ["User:              admin", "Authenticated by:  token", `Token:             ${idOf(admin)}`, "Roles:             admin", ""].join(
        "\n",
      ),
    );
    const json = JSON.parse((await cli(["whoami", "-o", "json"])).stdout) as { user: string; roles: string[]; rights: string[] };
    assert.equal(json.user, "admin");
    assert.deepEqual(json.roles, ["admin"]);
    assert.ok(json.rights.includes("tokens:manage") && json.rights.includes("instances:create"));
    // Without a token: anonymous (WhoAmI is public).
    const anon = await runCli(["whoami"], { server: server.url });
    assert.equal(anon.code, ExitCode.Ok, anon.stderr);
    assert.match(anon.stdout, /^User:\s+\(anonymous\)\nAuthenticated by:\s+none\nToken:\s+-\nRoles:\s+-\n$/);
  });

  it("token create prints the token alone; list shows it (never a secret); revoke ends it", async () => {
    const token = await create("--role", "viewer", "--user", "ci", "--ttl", "30d", "--description", "nightly build");
    assert.match(token, TOKEN_RE);
    const id = idOf(token);
    const secret = token.split(".")[1]!;
    const listed = JSON.parse((await cli(["token", "list", "--all", "-o", "json"])).stdout) as {
      items: {
        id: string;
        user: string;
        roles: string[];
        createTime: string;
        expireTime: string;
        createdBy: string;
        description: string;
      }[];
    };
    const mine = listed.items.find((t) => t.id === id)!;
    assert.deepEqual(
      { ...mine, createTime: undefined, expireTime: undefined },
      { id, user: "ci", roles: ["viewer"], createdBy: "admin", description: "nightly build", createTime: undefined, expireTime: undefined },
    );
    assert.equal(Date.parse(mine.expireTime) - Date.parse(mine.createTime), 30 * 86_400_000, "--ttl 30d was sent");
    assert.ok(listed.items.some((t) => t.id === idOf(admin) && t.createdBy === "bootstrap"));

    // An hour after it was made: 29 days and 23 hours left.
    const now = new Date(Date.parse(mine.createTime) + 3_600_000);
    const table = await cli(["token", "list", "--all"], admin, { now });
    assert.equal(table.code, ExitCode.Ok, table.stderr);
    const lines = table.stdout.split("\n");
    assert.match(lines[0]!, /^ID\s+USER\s+ROLES\s+EXPIRES\s+STATE\s+CREATED-BY\s+DESCRIPTION$/);
    assert.ok(
      lines.some((l) => new RegExp(`^${id}\\s+ci\\s+viewer\\s+in 29d\\s+valid\\s+admin\\s+nightly build$`).test(l)),
      table.stdout,
    );
    assert.ok(
      lines.some((l) => new RegExp(`^${idOf(admin)}\\s+admin\\s+admin\\s+in 36499d\\s+valid\\s+bootstrap\\s+bootstrap: `).test(l)),
      table.stdout,
    );
    // Without --all: the caller's own tokens only (ci's is not admin's).
    assert.ok(!(await cli(["token", "list"])).stdout.includes(id));
    for (const out of [table.stdout, JSON.stringify(listed), (await cli(["token", "ls", "--all", "-o", "yaml"])).stdout])
      assert.ok(!out.includes(secret) && !out.includes(admin.split(".")[1]!), "no secret listed");

    // The token works until revoked, then is refused.
    assert.match((await cli(["whoami"], token)).stdout, /^User:\s+ci$/m);
    const revoked = await cli(["token", "revoke", id]);
    assert.equal(revoked.code, ExitCode.Ok, revoked.stderr);
    assert.equal(revoked.stdout, `token/${id} revoked\n`);
    assert.ok(
      (await cli(["token", "list", "--all"], admin, { now })).stdout.split("\n").some((l) => l.startsWith(id) && / revoked /.test(l)),
    );
    const refused = await cli(["whoami"], token);
    assert.equal(refused.code, ExitCode.Api);
    assert.equal(refused.stdout, "");
    assert.equal(refused.stderr, `error: unauthenticated: token ${id}: revoked\n`);
    const missing = await cli(["token", "revoke", "zzzzzzzzzz"]);
    assert.equal(missing.code, ExitCode.Api);
    assert.equal(missing.stderr, 'error: not_found: token "zzzzzzzzzz" not found\n');
  });

  it("takes --role repeated or comma-separated, and sends the server's default ttl (90 days) when none is given", async () => {
    const r = await cli(["token", "create", "--role", "viewer,operator", "--role", "admin", "-o", "json"]);
    assert.equal(r.code, ExitCode.Ok, r.stderr);
    const body = JSON.parse(r.stdout) as {
      token: string;
      apiToken: { id: string; roles: string[]; createTime: string; expireTime: string };
    };
    assert.equal(idOf(body.token), body.apiToken.id);
    assert.deepEqual(body.apiToken.roles, ["viewer", "operator", "admin"]);
    assert.equal(Date.parse(body.apiToken.expireTime) - Date.parse(body.apiToken.createTime), 90 * 86_400_000);
  });

  it("a viewer sees itself, and is refused an operator token with the server's permission_denied", async () => {
    const viewer = await create("--role", "viewer", "--user", "ci");
    const me = await cli(["whoami"], viewer);
    assert.equal(me.code, ExitCode.Ok, me.stderr);
    assert.equal(
      me.stdout,
      ["User:              ci", "Authenticated by:  token", `Token:             ${idOf(viewer)}`, "Roles:             viewer", ""].join(
        "\n",
      ),
    );
    const rev = await store.revision();
    const r = await cli(["token", "create", "--role", "operator"], viewer);
    assert.equal(r.code, ExitCode.Api);
    assert.equal(r.stdout, "");
    assert.equal(r.stderr, "error: permission_denied: ci may not grant role operator: it does not hold instances:create\n");
    const all = await cli(["token", "list", "--all"], viewer);
    assert.equal(all.code, ExitCode.Api);
    assert.match(all.stderr, /^error: permission_denied: ci may not list every user's tokens/);
    assert.equal(await store.revision(), rev, "nothing was written");
    // Its own viewer token: yes, for its own user.
    const own = await cli(["token", "create", "--role", "viewer", "-o", "json"], viewer);
    assert.equal((JSON.parse(own.stdout) as { apiToken: { user: string } }).apiToken.user, "ci");
  });

  it("refuses bad flags before sending anything", async () => {
    const rev = await store.revision();
    const cases: [string[], RegExp][] = [
      [[], /required option '--role <role>' not specified/],
      [["--role", ","], /--role <role>' argument ',' is invalid\. expected a role name/],
      [["--role", "viewer", "--ttl", "0"], /expected at least 1s, got "0"/],
      [["--role", "viewer", "--ttl", "366d"], /at most 365d \(a year\), got "366d"/],
      [["--role", "viewer", "--ttl", "1500ms"], /expected whole seconds as a duration like 90d/],
      [["--role", "viewer", "--ttl", "soon"], /expected whole seconds as a duration like 90d/],
    ];
    for (const [flags, want] of cases) {
      const r = await cli(["token", "create", ...flags]);
      assert.equal(r.code, ExitCode.Usage, flags.join(" "));
      assert.match(r.stderr, want, flags.join(" "));
      assert.equal(r.stdout, "");
    }
    assert.equal(await store.revision(), rev, "nothing was sent");
    const bad = await cli(["token", "create", "--role", "root"]);
    assert.equal(bad.code, ExitCode.Api);
    assert.match(bad.stderr, /^error: invalid_argument: roles\[0\]: "root" is not a role/);
  });

  it("role list shows each role's rights, grouped by resource; a viewer may list them", async () => {
    const viewer = await create("--role", "viewer");
    const r = await cli(["role", "list"], viewer);
    assert.equal(r.code, ExitCode.Ok, r.stderr);
    const lines = r.stdout.split("\n");
    assert.equal(lines[0], "NAME            RIGHTS");
    assert.equal(
      lines[1],
      "viewer          cluster:get images:list instances:get,list,watch nodes:get,list projects:get,list roles:list tokens:create,list,revoke",
    );
    assert.deepEqual(
      lines.slice(2, -1).map((l) => l.split(/\s+/)[0]),
      ["operator", "project-admin", "admin"],
    );
    assert.match(lines[4]!, /^admin\s+audit:read cluster:get,metrics .*jointokens:create,list,revoke .*tokens:create,list,manage,revoke$/);
    const json = JSON.parse((await cli(["roles", "ls", "-o", "json"], viewer)).stdout) as { items: { name: string; rights: string[] }[] };
    assert.deepEqual(
      json.items.map((i) => i.name),
      ["viewer", "operator", "project-admin", "admin"],
    );
    assert.ok(json.items[0]!.rights.includes("instances:list"));
  });

  describe("login and logout", () => {
    let cfg: string;
    const ctl = (argv: string[], stdin?: string) => runCli(argv, { env: { HYPERVISOR_CONFIG: cfg }, stdin });

    before(async () => {
      cfg = join(dir, "ctl", "config.yaml");
      await rm(join(dir, "ctl"), { recursive: true, force: true });
      await runCli(["config", "set-context", "lab", "--server", server.url], { env: { HYPERVISOR_CONFIG: cfg } });
      await runCli(["config", "set-context", "other", "--server", server.url], { env: { HYPERVISOR_CONFIG: cfg } });
    });

    const tokenOf = async (name: string) =>
      parseConfig(await readFile(cfg, "utf8"), cfg).contexts.find((c) => c.name === name)?.credentials?.token;

    it("stores a token the server accepts in the current context, 0600, and says who you are", async () => {
      await chmod(cfg, 0o644);
      const viewer = await create("--role", "viewer", "--user", "ci");
      const r = await ctl(["login"], `${viewer}\nthe rest is not read\n`);
      assert.equal(r.code, ExitCode.Ok, r.stderr);
      assert.equal(r.stderr, "");
      assert.equal(r.stdout, `logged in to ${server.url} (context lab) as ci (token ${idOf(viewer)}, roles viewer)\n`);
      assert.equal(await tokenOf("lab"), viewer);
      assert.equal(await tokenOf("other"), undefined);
      assert.equal((await stat(cfg)).mode & 0o777, 0o600);
      // Commands now send it.
      assert.match((await ctl(["whoami"])).stdout, /^User:\s+ci$/m);
    });

    it("--context and --token-file choose the context and the source", async () => {
      const file = join(dir, "op-token");
      const op = await create("--role", "operator", "--user", "ops");
      await writeFile(file, `  ${op}  \n`, { mode: 0o600 });
      const r = await ctl(["login", "--context", "other", "--token-file", file]);
      assert.equal(r.code, ExitCode.Ok, r.stderr);
      assert.match(r.stdout, /\(context other\) as ops \(token \w+, roles operator\)\n$/);
      assert.equal(await tokenOf("other"), op);
      assert.match((await ctl(["--context", "other", "whoami"])).stdout, /^User:\s+ops$/m);
    });

    it("refuses a token the server does not accept, and leaves the file as it was", async () => {
      const before = await readFile(cfg, "utf8");
      const revoked = await create("--role", "viewer");
      assert.equal((await cli(["token", "revoke", idOf(revoked)])).code, ExitCode.Ok);
      const cases: [string, string][] = [
        [`hvt_zzzzzzzzzz.${"A".repeat(43)}`, "token zzzzzzzzzz: not a valid token of this cluster"],
        ["nonsense", "authorization: the token is malformed (expected hvt_<id>.<secret>)"],
        [revoked, `token ${idOf(revoked)}: revoked`],
      ];
      for (const [token, why] of cases) {
        const r = await ctl(["login"], `${token}\n`);
        assert.equal(r.code, ExitCode.Api, token);
        assert.equal(r.stdout, "");
        assert.equal(r.stderr, `error: the server at ${server.url} refused the token: ${why}; context lab not changed\n`);
      }
      const usage: [string[], string | undefined, RegExp][] = [
        [["login"], "\n", /^error: no token on the first line of standard input\n$/],
        [["login"], "two words\n", /^error: standard input: a token is visible ASCII characters without spaces\n$/],
        [["login", "--token-file", join(dir, "absent")], undefined, /--token-file .*absent: cannot read it: no such file/],
        [["login", "--context", "nope"], "x\n", /--context names context "nope", which .* does not have \(contexts: lab, other\)/],
        [["login", admin], undefined, /too many arguments for 'login'/],
      ];
      for (const [argv, stdin, want] of usage) {
        const r = await ctl(argv, stdin);
        assert.equal(r.code, ExitCode.Usage, argv.join(" "));
        assert.match(r.stderr, want, argv.join(" "));
      }
      assert.equal(await readFile(cfg, "utf8"), before, "the file is unchanged");
    });

    it("refuses to check the token with a server other than the context's, and without a context", async () => {
      const r = await runCli(["login", "--server", "http://127.0.0.1:1"], { env: { HYPERVISOR_CONFIG: cfg }, stdin: `${admin}\n` });
      assert.equal(r.code, ExitCode.Usage);
      assert.match(
        r.stderr,
        /^error: login checks the token with context lab's server .*; not http:\/\/127\.0\.0\.1:1 \(from --server\)\n$/,
      );
      const none = await runCli(["login"], { env: { HYPERVISOR_CONFIG: join(dir, "none.yaml") }, stdin: `${admin}\n` });
      assert.equal(none.code, ExitCode.Usage);
      assert.match(none.stderr, /no such file|needs a context/);
    });

    it("logout removes the token from the context and says it stays valid", async () => {
      const token = (await tokenOf("lab"))!;
      const r = await ctl(["logout"]);
      assert.equal(r.code, ExitCode.Ok, r.stderr);
      assert.equal(
        r.stdout,
        `logged out of context lab: its token removed from ${cfg}; token ${idOf(token)} stays valid until it expires or is revoked ` +
          `(hypervisor-ctl token revoke ${idOf(token)})\n`,
      );
      assert.equal(await tokenOf("lab"), undefined);
      assert.ok(await tokenOf("other"), "the other context keeps its token");
      assert.equal((await ctl(["logout"])).stdout, "context lab has no token or OIDC login\n");
      assert.match((await ctl(["whoami"])).stdout, /^User:\s+\(anonymous\)$/m);
    });
  });
});

describe("access flag parsers", () => {
  it("reads token lifetimes in days, hours, minutes and seconds", () => {
    assert.equal(tokenTtlSeconds("90d"), 90 * 86_400);
    assert.equal(tokenTtlSeconds("1d12h"), 129_600);
    assert.equal(tokenTtlSeconds("12h"), 43_200);
    assert.equal(tokenTtlSeconds("365d"), 31_536_000);
    assert.equal(tokenTtlSeconds("3600"), 3600);
    for (const bad of ["", "d", "1.5d", "366d", "0s", "-1d", "1w"]) assert.throws(() => tokenTtlSeconds(bad), bad);
  });

  it("groups rights by resource", () => {
    assert.equal(groupRights(["cluster:get", "instances:get", "instances:list", "odd"]), "cluster:get instances:get,list odd");
  });
});

describe("readSecretLine", () => {
  it("reads a terminal in raw mode, without echo: Backspace erases, Enter ends, raw mode is restored", async () => {
    const modes: boolean[] = [];
    const tty = Object.assign(new PassThrough(), { isTTY: true, setRawMode: (raw: boolean) => modes.push(raw) });
    const line = readSecretLine(tty, new AbortController().signal);
    tty.write("hvt_ab");
    tty.write("x\x7fc\rafter");
    assert.equal(await line, "hvt_abc");
    assert.deepEqual(modes, [true, false]);
  });

  it("Ctrl-C on a terminal interrupts", async () => {
    const tty = Object.assign(new PassThrough(), { isTTY: true, setRawMode: () => undefined });
    const line = readSecretLine(tty, new AbortController().signal);
    tty.write("hvt\x03");
    await assert.rejects(line, { message: "interrupted" });
  });

  it("takes a pipe's first line, or all of it without a newline", async () => {
    const pipe = new PassThrough();
    const line = readSecretLine(pipe, new AbortController().signal);
    pipe.end("hvt_x\r\nsecond\n");
    assert.equal(await line, "hvt_x\r");
    const last = new PassThrough();
    const whole = readSecretLine(last, new AbortController().signal);
    last.end("hvt_y");
    assert.equal(await whole, "hvt_y");
  });
});
