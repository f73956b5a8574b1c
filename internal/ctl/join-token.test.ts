// `join-token` against the real IdentityService handler (embedded store, real HTTP): what create
// prints and sends, the list table, revoke, and usage errors that send nothing.
import { after, before, beforeEach, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { IdentityService } from "../../api/gen/hypervisor/v1/identity_pb.js";
import { openEmbeddedStore, type Store } from "../../pkg/cluster/store/index.js";
import { caHash, createCa, parseCa, parseJoinToken, type CertificateAuthority } from "../../pkg/pki/index.js";
import { identityService } from "../server/identity-service.js";
import { keys } from "../../pkg/cluster/state/index.js";
import { ExitCode } from "./errors.js";
import { FIXED_NOW, runCli, startApi, type TestApi } from "./testing.js";

describe("join-token commands", () => {
  let dir: string;
  let store: Store;
  let ca: CertificateAuthority;
  let api: TestApi;
  const cli = (...argv: string[]) => runCli(argv, { server: api.url });

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-ctl-join-"));
    store = await openEmbeddedStore(join(dir, "store"));
    const made = await createCa();
    ca = await parseCa(made.certPem, made.keyPem);
    api = await startApi((router) => router.service(IdentityService, identityService({ store, ca, now: () => FIXED_NOW })));
  });

  after(async () => {
    await api.close();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  beforeEach(() => store.deletePrefix(keys.joinTokens));

  it("create prints the token alone; by default it joins once within 24 h", async () => {
    const r = await cli("join-token", "create");
    assert.equal(r.code, ExitCode.Ok, r.stderr);
    assert.equal(r.stderr, "");
    assert.match(r.stdout, /^HV10[0-9a-f]{64}::[a-z0-9]{6}\.[0-9a-f]{32}\n$/);
    const t = parseJoinToken(r.stdout);
    assert.equal(t.caHash, caHash(ca.certPem));
    const list = await cli("join-token", "list");
    assert.equal(
      list.stdout,
      ["ID       NODE    USES   EXPIRES      STATE   DESCRIPTION", `${t.id}   <any>   0/1    in 24h0m0s   valid`, ""].join("\n"),
    );
  });

  it("create sends --node, --ttl, --uses and --description; list shows them and never a secret", async () => {
    const r = await cli("join-token", "create", "--node", "worker-1", "--ttl", "90m", "--uses", "0", "--description", "rack 4");
    assert.equal(r.code, ExitCode.Ok, r.stderr);
    const { id, secret } = parseJoinToken(r.stdout);
    const table = await cli("join-token", "ls");
    assert.equal(
      table.stdout,
      [
        "ID       NODE       USES          EXPIRES      STATE   DESCRIPTION",
        `${id}   worker-1   0/unlimited   in 1h30m0s   valid   rack 4`,
        "",
      ].join("\n"),
    );
    const json = await cli("join-token", "list", "-o", "json");
    const items = (JSON.parse(json.stdout) as { items: Record<string, unknown>[] }).items;
    assert.deepEqual(items, [
      {
        id,
        node: "worker-1",
        createTime: FIXED_NOW.toISOString().replace(".000Z", "Z"),
        expireTime: new Date(FIXED_NOW.getTime() + 90 * 60_000).toISOString().replace(".000Z", "Z"),
        description: "rack 4",
      },
    ]);
    assert.ok(!json.stdout.includes(secret) && !table.stdout.includes(secret));
  });

  it("create -o json returns the token and its record", async () => {
    const r = await cli("join-token", "create", "-o", "json", "--uses", "3");
    const body = JSON.parse(r.stdout) as { token: string; joinToken: { id: string; maxUses: number } };
    assert.equal(body.joinToken.id, parseJoinToken(body.token).id);
    assert.equal(body.joinToken.maxUses, 3);
  });

  it("revoke marks the token revoked; an unknown id is the server's not_found", async () => {
    const { id } = parseJoinToken((await cli("join-token", "create")).stdout);
    const r = await cli("join-token", "revoke", id);
    assert.equal(r.code, ExitCode.Ok, r.stderr);
    assert.equal(r.stdout, `join-token/${id} revoked\n`);
    assert.match((await cli("join-token", "list")).stdout, new RegExp(`^${id} .* revoked\\s*$`, "m"));
    const missing = await cli("join-token", "revoke", "zzzzzz");
    assert.equal(missing.code, ExitCode.Api);
    assert.equal(missing.stdout, "");
    assert.equal(missing.stderr, 'error: not_found: join token "zzzzzz" not found\n');
  });

  it("refuses bad flags before sending anything, and passes on the server's refusals", async () => {
    const rev = await store.revision();
    const cases: [string[], RegExp][] = [
      [["--ttl", "0"], /--ttl <duration>' argument '0' is invalid\. expected whole seconds, at least 1s/],
      [["--ttl", "1500ms"], /expected whole seconds, at least 1s, got "1500ms"/],
      [["--ttl", "8761h"], /at most 365 days, got "8761h"/],
      [["--ttl", "soon"], /expected a duration like 90s/],
      [["--uses", "-1"], /expected a non-negative integer, got "-1"/],
      [["--uses", "1000001"], /at most 1000000, got "1000001"/],
    ];
    for (const [flags, want] of cases) {
      const r = await cli("join-token", "create", ...flags);
      assert.equal(r.code, ExitCode.Usage, flags.join(" "));
      assert.match(r.stderr, want);
      assert.equal(r.stdout, "");
    }
    assert.equal(await store.revision(), rev, "nothing was sent");
    const bad = await cli("join-token", "create", "--node", "Bad_Name");
    assert.equal(bad.code, ExitCode.Api);
    assert.match(bad.stderr, /^error: invalid_argument: node: "Bad_Name" is not a valid name/);
  });
});
