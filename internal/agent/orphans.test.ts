// The agent's decision for an instance it finds without an assignment on its node: a table, as
// the scheduler's tests are. Nothing here may come out "destroy" when a disk could be lost.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { decideUnassigned, type KnownInstance, namesakeInTheWay, type OrphanAction } from "./orphans.js";

const self = { cluster: "c-1", node: "n-1" };
const known = (over: Partial<KnownInstance> = {}): KnownInstance => ({
  uid: "u-1",
  node: "n-2",
  deleting: false,
  ephemeralDisks: false,
  ...over,
});

describe("decideUnassigned", () => {
  const cases: {
    name: string;
    found: { uid: string; cluster?: string; localDisk?: boolean };
    known?: KnownInstance;
    want: OrphanAction["kind"];
  }[] = [
    {
      name: "another cluster's: never touched",
      found: { uid: "u-1", cluster: "c-2", localDisk: true },
      known: known({ deleting: true }),
      want: "ignore",
    },
    { name: "store does not know the name: kept", found: { uid: "u-1", cluster: "c-1", localDisk: true }, want: "keep" },
    { name: "store does not know it, no disk: still kept", found: { uid: "u-1", cluster: "c-1" }, want: "keep" },
    {
      name: "name reused by another uid: kept",
      found: { uid: "u-1", cluster: "c-1", localDisk: true },
      known: known({ uid: "u-2" }),
      want: "keep",
    },
    {
      name: "name reused, the new one being deleted: kept",
      found: { uid: "u-1", cluster: "c-1" },
      known: known({ uid: "u-2", deleting: true }),
      want: "keep",
    },
    {
      name: "same uid being deleted: destroyed",
      found: { uid: "u-1", cluster: "c-1", localDisk: true },
      known: known({ deleting: true }),
      want: "destroy",
    },
    {
      name: "same uid placed here (watch lags): wait",
      found: { uid: "u-1", cluster: "c-1", localDisk: true },
      known: known({ node: "n-1" }),
      want: "wait",
    },
    {
      name: "moved away, no local disk: destroyed",
      found: { uid: "u-1", cluster: "c-1", localDisk: false },
      known: known(),
      want: "destroy",
    },
    { name: "moved away, local disk: fenced", found: { uid: "u-1", cluster: "c-1", localDisk: true }, known: known(), want: "fence" },
    {
      name: "pending elsewhere, local disk: fenced",
      found: { uid: "u-1", cluster: "c-1", localDisk: true },
      known: known({ node: "" }),
      want: "fence",
    },
    {
      name: "moved away, local disk declared ephemeral: destroyed",
      found: { uid: "u-1", cluster: "c-1", localDisk: true },
      known: known({ ephemeralDisks: true }),
      want: "destroy",
    },
    {
      name: "old mark (no cluster), moved away with a local disk: fenced",
      found: { uid: "u-1", localDisk: true },
      known: known(),
      want: "fence",
    },
    { name: "old mark, unknown: kept", found: { uid: "u-1", localDisk: true }, want: "keep" },
  ];
  for (const c of cases)
    it(c.name, () => {
      assert.equal(decideUnassigned(c.found, c.known, self).kind, c.want);
    });

  it("says where the instance runs when it fences", () => {
    const a = decideUnassigned({ uid: "u-1", cluster: "c-1", localDisk: true }, known({ node: "n-7" }), self);
    assert.deepEqual(a.kind === "fence" && [a.placedNode, /placed on node n-7/.test(a.message)], ["n-7", true]);
  });

  it("with no cluster id of its own (a driver never told one) sees every mark as its own", () => {
    assert.equal(decideUnassigned({ uid: "u-1", cluster: "c-9" }, known({ deleting: true }), { cluster: "", node: "n-1" }).kind, "destroy");
  });
});

describe("namesakeInTheWay", () => {
  it("keeps an older namesake with a local disk, makes room when it has none", () => {
    assert.equal(namesakeInTheWay({ localDisk: true }), true);
    assert.equal(namesakeInTheWay({ localDisk: false }), false);
    assert.equal(namesakeInTheWay({}), false);
  });
});
