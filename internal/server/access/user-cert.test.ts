// Users' client certificates against a real server over TLS (its CA made in a pki dir, the API
// served with a certificate of that CA, access on): the admin issues one through the RPC, a client
// presenting it and no token is that user with exactly what its role bindings give (nothing, then
// a project's operator, then nothing again once the binding goes); who may issue, what CSR is
// taken; and that the certificate is refused wherever a node or a server is required: the node
// calls of the server (through the rules, and through the handlers' own checks with access off)
// and an agent's mutual-TLS endpoint.
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, createClient, type Interceptor, type ServiceImpl } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { AccessService } from "../../../api/gen/hypervisor/v1/access_pb.js";
import { AgentService, AgentSupportService } from "../../../api/gen/hypervisor/v1/agent_pb.js";
import { AuditService } from "../../../api/gen/hypervisor/v1/audit_pb.js";
import { IdentityService } from "../../../api/gen/hypervisor/v1/identity_pb.js";
import { InstanceService } from "../../../api/gen/hypervisor/v1/instance_pb.js";
import { ProjectService } from "../../../api/gen/hypervisor/v1/project_pb.js";
import { codecs, keys } from "../../../pkg/cluster/state/index.js";
import { openEmbeddedStore, type Store } from "../../../pkg/cluster/store/index.js";
import { logger } from "../../../pkg/log/index.js";
import {
  CLOCK_SKEW_MS,
  type CertificateAuthority,
  generateKeyAndCsr,
  identityOf,
  issueServerCertificate,
  signNodeCsr,
} from "../../../pkg/pki/index.js";
import { startServerWithAccess } from "../../../test/support/api-server.js";
import { until } from "../../../test/support/procs.js";
import { refusal } from "../../../test/support/refusal.js";
import { AgentEndpoint } from "../../agent/endpoint.js";
import { Server } from "../server.js";
import { serverTls } from "../tls-setup.js";
import { DEFAULT_USER_CERT_TTL_SECONDS } from "./access-service.js";
import { ADMIN_TOKEN_FILE, AuditLog } from "./index.js";

const MOCK = { driver: "mock", vcpus: 1, memoryMib: 64n };

/** What a client presents: a bearer token, a client certificate, or both, or nothing. */
interface As {
  token?: string;
  cert?: string;
  key?: string;
}

describe("users' client certificates (a server with TLS and access on)", () => {
  let dir: string;
  let store: Store;
  let server: Server;
  let audit: AuditLog;
  let ca: CertificateAuthority;
  let admin: string;
  /** robot's key and certificate, issued through the API in the first test. */
  const robot = { cert: "", key: "" };

  const clients = (as: As = {}) => {
    const bearer: Interceptor = (next) => (req) => {
      if (as.token) req.header.set("Authorization", `Bearer ${as.token}`);
      return next(req);
    };
    const transport = createConnectTransport({
      baseUrl: server.url,
      httpVersion: "1.1",
      nodeOptions: { ca: ca.certPem, ...(as.cert ? { cert: as.cert, key: as.key } : {}) },
      interceptors: [bearer],
    });
    return {
      access: createClient(AccessService, transport),
      instances: createClient(InstanceService, transport),
      projects: createClient(ProjectService, transport),
      identity: createClient(IdentityService, transport),
      support: createClient(AgentSupportService, transport),
      audit: createClient(AuditService, transport),
    };
  };
  /** A new key and a certificate for `user`, issued by the admin through the API. */
  const issue = async (user: string, ttlSeconds = 0) => {
    const { keyPem, csrPem } = await generateKeyAndCsr(`user:${user}`);
    const res = await clients({ token: admin }).access.issueUserCertificate({ user, csrPem, ttlSeconds });
    return { res, key: keyPem, cert: res.certificatePem };
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-user-cert-"));
    store = await openEmbeddedStore(join(dir, "store"), { sync: false });
    const made = await serverTls({ pkiDir: join(dir, "pki"), name: "s1", listenHost: "127.0.0.1", names: [] });
    ca = made.ca;
    audit = new AuditLog({ dir: join(dir, "audit"), level: "metadata" });
    server = new Server({
      store,
      host: "127.0.0.1",
      port: 0,
      version: "test",
      controllers: false,
      tls: made.tls,
      identity: { ca },
      access: { bootstrapDir: join(dir, "pki") },
      audit,
    });
    await server.start();
    admin = (await readFile(join(dir, "pki", ADMIN_TOKEN_FILE), "utf8")).trim();
    const a = clients({ token: admin });
    await a.projects.createProject({ name: "web" });
    await a.projects.createProject({ name: "ci" });
  });

  after(async () => {
    await server?.stop();
    await audit?.close();
    await store?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("the admin issues robot a certificate of the cluster CA for robot's own key; presented alone, it is robot with no rights", async () => {
    const { res, key, cert } = await issue("robot");
    Object.assign(robot, { key, cert });
    assert.equal(res.caPem, ca.certPem);
    const c = new X509Certificate(cert);
    assert.ok(c.verify(new X509Certificate(ca.certPem).publicKey), "signed by the cluster CA");
    assert.deepEqual(identityOf(cert), { kind: "user", name: "robot" });
    assert.deepEqual(c.keyUsage, ["1.3.6.1.5.5.7.3.2"], "client authentication only");
    assert.equal(timestampDate(res.expireTime!).getTime(), new Date(c.validTo).getTime());
    assert.equal(
      new Date(c.validTo).getTime() - new Date(c.validFrom).getTime(),
      DEFAULT_USER_CERT_TTL_SECONDS * 1000 + CLOCK_SKEW_MS,
      "the default lifetime",
    );

    const me = await clients(robot).access.whoAmI({});
    assert.deepEqual(
      [me.user, me.authenticatedBy, me.tokenId, me.roles, me.rights, me.projectRights],
      ["robot", "certificate", "", [], [], []],
    );
    const none = await refusal(clients(robot).instances.createInstance({ project: "web", name: "r0", spec: MOCK }));
    assert.equal(none.code, Code.PermissionDenied);
    assert.match(none.message, /robot may not instances:create in project web/);
    assert.deepEqual((await store.range(keys.instancesOf("web"))).kvs, []);

    // Issuing is a change with a subject: audited, naming the user the certificate is for.
    const events = (await clients({ token: admin }).audit.listAuditEvents({ user: "admin" })).events;
    const e = events.find((x) => x.method === "AccessService/IssueUserCertificate");
    assert.ok(e, JSON.stringify(events.map((x) => x.method)));
    assert.deepEqual([e.verb, e.resource, e.decision, e.result], ["tokens:manage", "certificates/user:robot", "allow", "ok"]);
  });

  it("robot holds what bindings of user:robot give: operator in web creates there, is refused in ci, and nothing once unbound", async () => {
    const a = clients({ token: admin });
    const bound = await a.access.createRoleBinding({ subject: "user:robot", role: "operator", project: "web" });
    const r = clients(robot);
    // The servers' copy of the bindings has it within moments.
    await until("robot's binding in web", async () => (await r.access.whoAmI({})).projectRights.some((p) => p.project === "web"));
    await r.instances.createInstance({ project: "web", name: "r1", spec: MOCK });
    const made = (await store.range(keys.instancesOf("web"))).kvs.map((kv) => codecs.instance.decode(kv.value).name);
    assert.deepEqual(made, ["r1"]);
    const elsewhere = await refusal(r.instances.createInstance({ project: "ci", name: "r2", spec: MOCK }));
    assert.equal(elsewhere.code, Code.PermissionDenied);
    assert.match(elsewhere.message, /robot may not instances:create in project ci/);
    assert.deepEqual((await store.range(keys.instancesOf("ci"))).kvs, []);
    // An operator may not issue certificates, its own or anyone's.
    const self = await refusal(r.access.issueUserCertificate({ user: "robot", csrPem: (await generateKeyAndCsr("user:robot")).csrPem }));
    assert.equal(self.code, Code.PermissionDenied);
    assert.match(self.message, /may not tokens:manage/);

    // No revocation list: deleting the bindings is how a certificate is cut off.
    await a.access.deleteRoleBinding({ id: bound.roleBinding!.id });
    await until("robot's binding gone", async () => (await r.access.whoAmI({})).projectRights.length === 0);
    const cut = await refusal(r.instances.createInstance({ project: "web", name: "r3", spec: MOCK }));
    assert.equal(cut.code, Code.PermissionDenied);
    assert.deepEqual(
      (await store.range(keys.instancesOf("web"))).kvs.map((kv) => codecs.instance.decode(kv.value).name),
      ["r1"],
    );
  });

  it("refuses issuing to a viewer, and a CSR for another user, a bad user name, a lifetime past a year; honours a given lifetime", async () => {
    const viewer = (await clients({ token: admin }).access.createToken({ user: "val", roles: ["viewer"] })).token;
    const csrPem = (await generateKeyAndCsr("user:robot")).csrPem;
    const v = await refusal(clients({ token: viewer }).access.issueUserCertificate({ user: "robot", csrPem }));
    assert.equal(v.code, Code.PermissionDenied);
    assert.match(v.message, /^IssueUserCertificate: val may not tokens:manage/);

    const a = clients({ token: admin }).access;
    const cases: [Parameters<typeof a.issueUserCertificate>[0], RegExp][] = [
      [
        { user: "robot", csrPem: (await generateKeyAndCsr("user:mallory")).csrPem },
        /^csr_pem: csr subject CN must be exactly "user:robot", got "user:mallory"$/,
      ],
      [{ user: "robot", csrPem: (await generateKeyAndCsr("node:robot")).csrPem }, /^csr_pem: .*got "node:robot"$/],
      [{ user: "Robot", csrPem }, /^user: "Robot" is not a valid name/],
      [{ user: "", csrPem }, /^user: is required$/],
      [{ user: "robot", csrPem: "" }, /^csr_pem: is required$/],
      [{ user: "robot", csrPem: "x".repeat(20_000) }, /^csr_pem: is 20000 bytes; at most 16384 allowed$/],
      [{ user: "robot", csrPem: "not a csr" }, /^csr_pem: csr is not a PEM certificate request$/],
      [{ user: "robot", csrPem, ttlSeconds: 365 * 86400 + 1 }, /^ttl_seconds: 31536001 is more than the maximum 31536000/],
    ];
    for (const [req, message] of cases) {
      const r = await refusal(a.issueUserCertificate(req));
      assert.equal(r.code, Code.InvalidArgument, r.message);
      assert.match(r.message, message);
    }
    const { cert } = await issue("short", 3600);
    const c = new X509Certificate(cert);
    assert.equal(new Date(c.validTo).getTime() - new Date(c.validFrom).getTime(), 3600_000 + CLOCK_SKEW_MS);
  });

  it("a token sent with the certificate decides who calls: the certificate adds nothing to it", async () => {
    const viewer = (await clients({ token: admin }).access.createToken({ user: "vic", roles: ["viewer"] })).token;
    const me = await clients({ ...robot, token: viewer }).access.whoAmI({});
    assert.deepEqual([me.user, me.authenticatedBy, me.roles], ["vic", "token", ["viewer"]]);
  });

  it("refuses robot's certificate where a node is required: instance lookups and certificate renewal", async () => {
    const csrPem = (await generateKeyAndCsr("node:robot")).csrPem;
    const lookup = await refusal(clients(robot).support.lookupInstance({ project: "web", name: "r1" }));
    assert.equal(lookup.code, Code.PermissionDenied);
    assert.match(lookup.message, /for nodes only/);
    const renew = await refusal(clients(robot).identity.renewCertificate({ csrPem }));
    assert.equal(renew.code, Code.PermissionDenied);
    assert.match(renew.message, /for nodes only/);
    // A node's certificate of the same CA is served: the refusal is the kind's.
    const node = await generateKeyAndCsr("node:n1");
    const nodeCert = await signNodeCsr(ca, node.csrPem, { node: "n1", ttlSeconds: 600 });
    const found = await clients({ cert: nodeCert, key: node.keyPem }).support.lookupInstance({ project: "web", name: "r1" });
    assert.equal(found.found, true);
  });

  it("refuses robot's certificate at the handlers too, where access control is off", async () => {
    const bare = new Server({
      store,
      host: "127.0.0.1",
      port: 0,
      version: "test",
      controllers: false,
      tls: await serverTlsOf(ca),
      identity: { ca },
      access: "none",
    });
    await bare.start();
    try {
      const transport = createConnectTransport({
        baseUrl: bare.url,
        httpVersion: "1.1",
        nodeOptions: { ca: ca.certPem, cert: robot.cert, key: robot.key },
      });
      const lookup = await refusal(createClient(AgentSupportService, transport).lookupInstance({ project: "web", name: "r1" }));
      assert.equal(lookup.code, Code.Unauthenticated);
      assert.match(lookup.message, /only a node of this cluster/);
      const renew = await refusal(
        createClient(IdentityService, transport).renewCertificate({ csrPem: (await generateKeyAndCsr("node:robot")).csrPem }),
      );
      assert.equal(renew.code, Code.Unauthenticated);
      assert.match(renew.message, /renewal needs the node's current certificate/);
    } finally {
      await bare.stop();
    }
  });

  it("an agent's mutual-TLS endpoint serves a server's certificate and shuts robot's out", async () => {
    const node = await generateKeyAndCsr("node:n1");
    const nodeCert = await signNodeCsr(ca, node.csrPem, { node: "n1", ttlSeconds: 600 });
    let served = 0;
    const impl: Partial<ServiceImpl<typeof AgentService>> = {
      listImages: () => {
        served++;
        return { images: [] };
      },
    };
    const endpoint = new AgentEndpoint(impl as ServiceImpl<typeof AgentService>, logger("user-cert-test"), {
      tls: { key: node.keyPem, cert: nodeCert, ca: ca.certPem, requestCert: true, serversOnly: true },
    });
    const port = await endpoint.listen("127.0.0.1", 0);
    const as = (cert: string, key: string) =>
      createClient(
        AgentService,
        createGrpcTransport({
          baseUrl: `https://127.0.0.1:${port}`,
          // A node's certificate names no host: the server's AgentClient checks its identity instead.
          nodeOptions: { ca: ca.certPem, cert, key, checkServerIdentity: () => undefined },
        }),
      );
    try {
      const s = await issueServerCertificate(ca, { name: "s2", dnsNames: [], ipAddresses: [], ttlSeconds: 600 });
      assert.deepEqual((await as(s.certPem, s.keyPem).listImages({})).images, []);
      assert.equal(served, 1);
      // The connection is destroyed once the handshake shows a non-server: how the client words
      // that (cancelled, unavailable) is its own; what matters is that no handler ran.
      await refusal(as(robot.cert, robot.key).listImages({}));
      assert.equal(served, 1, "robot's call reached no handler");
    } finally {
      await endpoint.close();
    }
  });

  it("a server without TLS issues none: it has no CA to sign with", async () => {
    const plain = await startServerWithAccess("hv-user-cert-plain-");
    try {
      const transport = createConnectTransport({
        baseUrl: plain.server.url,
        httpVersion: "1.1",
        interceptors: [
          (next) => (req) => {
            req.header.set("Authorization", `Bearer ${plain.admin}`);
            return next(req);
          },
        ],
      });
      const r = await refusal(
        createClient(AccessService, transport).issueUserCertificate({
          user: "robot",
          csrPem: (await generateKeyAndCsr("user:robot")).csrPem,
        }),
      );
      assert.equal(r.code, Code.FailedPrecondition);
      assert.match(r.message, /serves without TLS/);
    } finally {
      await plain.stop();
    }
  });
});

/** A server certificate of `ca` for loopback, as TLS settings. */
async function serverTlsOf(ca: CertificateAuthority): Promise<{ keyPem: string; certPem: string; caPem: string }> {
  const s = await issueServerCertificate(ca, { name: "s3", dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"], ttlSeconds: 600 });
  return { keyPem: s.keyPem, certPem: s.certPem, caPem: ca.certPem };
}
