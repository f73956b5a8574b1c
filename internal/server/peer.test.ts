// Who a request comes from, as its TLS connection proved it (a server, a node or a user), and who
// may use the operator methods of cluster identity (minting join tokens, revoking nodes) before
// users and roles exist.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { createCa, generateKeyAndCsr, issueServerCertificate, parseCa, signNodeCsr, signUserCsr } from "../../pkg/pki/index.js";
import { identityOfPeer, operatorRefusal } from "./peer.js";

describe("peer identity", () => {
  it("reads the kind, name and serial of a cluster certificate, and nothing of anything else", async () => {
    const ca = await parseCa(...(await createCa().then((c) => [c.certPem, c.keyPem] as const)));
    const server = await issueServerCertificate(ca, { name: "s1", dnsNames: ["localhost"], ipAddresses: [], ttlSeconds: 600 });
    const { csrPem } = await generateKeyAndCsr("node:n1");
    const node = await signNodeCsr(ca, csrPem, { node: "n1", ttlSeconds: 600 });
    const der = (pem: string) => new X509Certificate(pem).raw;
    assert.deepEqual(identityOfPeer(der(server.certPem)), {
      kind: "server",
      name: "s1",
      serial: new X509Certificate(server.certPem).serialNumber,
    });
    assert.deepEqual(identityOfPeer(der(node)), { kind: "node", name: "n1", serial: new X509Certificate(node).serialNumber });
    const user = await signUserCsr(ca, (await generateKeyAndCsr("user:robot")).csrPem, { user: "robot", ttlSeconds: 600 });
    assert.deepEqual(identityOfPeer(der(user)), { kind: "user", name: "robot", serial: new X509Certificate(user).serialNumber });
    assert.equal(identityOfPeer(der(ca.certPem)), undefined, "the CA names no server or node");
    assert.equal(identityOfPeer(Buffer.from("not a certificate")), undefined);
    assert.equal(identityOfPeer(undefined), undefined);
  });

  it("lets loopback clients and servers manage join tokens, and nobody else", () => {
    const node = { kind: "node" as const, name: "n1", serial: "01" };
    const server = { kind: "server" as const, name: "s1", serial: "02" };
    const user = { kind: "user" as const, name: "robot", serial: "03" };
    for (const [address, peer, allowed] of [
      ["127.0.0.1", undefined, true],
      ["127.8.9.10", undefined, true],
      ["::1", undefined, true],
      ["10.0.0.5", server, true],
      ["10.0.0.5", undefined, false],
      ["10.0.0.5", node, false],
      ["10.0.0.5", user, false],
      ["::ffff:10.0.0.5", undefined, false],
      ["unknown", undefined, false],
      ["1127.0.0.1", undefined, false],
    ] as const) {
      const why = operatorRefusal(address, peer);
      assert.equal(why === undefined, allowed, `${address} ${peer?.kind ?? "anonymous"}: ${why}`);
      if (why) assert.match(why, new RegExp(`${address.replace(/[.:]/g, "\\$&")} is neither`));
    }
  });
});
