/*
 * The server's settings (configs/server.yaml documents each one). YAML keys are the flag names:
 * `listen: 0.0.0.0:7070` is `--listen 0.0.0.0:7070` is HYPERVISOR_LISTEN=0.0.0.0:7070.
 */
import { checkName, issuerProblem } from "../../pkg/validation/index.js";
import { AUDIT_LEVELS } from "./access/audit.js";
import { etcdSchema } from "../../pkg/cluster/etcd/index.js";
import { ConfigError, type ConfigOf, type Schema } from "../../pkg/config/index.js";
import type { Algorithm } from "./scheduler.js";
import { hasControl, type OidcSettings } from "./access/oidc.js";

export const serverSchema = {
  listen: {
    type: "string",
    default: "127.0.0.1:7070",
    description: "HOST:PORT of the API (gRPC, gRPC-Web, Connect), /metrics and /healthz",
  },
  tls: {
    type: "boolean",
    default: true,
    description: "serve the API over TLS with a certificate from the cluster CA (made in pki-dir at the first start); false: cleartext",
  },
  "pki-dir": {
    type: "string",
    default: "",
    description:
      "the cluster CA (ca.crt, ca.key: servers only; a second server gets a copy before its first start) and this server's certificate; empty: data-dir/pki",
  },
  "tls-names": {
    type: "string[]",
    default: [],
    description: "DNS names and IPs clients dial this server by, besides localhost, loopback, the hostname and the listen address",
  },
  "node-cert-ttl": {
    type: "number",
    default: 86400,
    integer: true,
    min: 10,
    max: 365 * 86400,
    description: "seconds a node certificate from a join lives; agents renew at two thirds of it",
  },
  "dangerously-allow-plaintext": {
    type: "boolean",
    default: false,
    description: "allow tls: false on a listen address that is not loopback: every token and secret crosses the network readable",
  },
  "dangerously-disable-access": {
    type: "boolean",
    default: false,
    description:
      "no authentication, authorization or audit: every caller may do everything (benchmarks against the same build); refused unless listen is loopback",
  },
  "audit-level": {
    type: "string",
    default: "metadata",
    description:
      "audit events of refusals and changes: none, metadata (who, what, when, decision, result) or request (also the request, secrets redacted)",
  },
  "audit-dir": { type: "string", default: "", description: "where this server's audit.log (0600, rotated) goes; empty: data-dir/audit" },
  "audit-max-file-mib": {
    type: "number",
    default: 64,
    integer: true,
    min: 1,
    max: 4096,
    description: "rotate the audit file past this size",
  },
  "audit-max-files": {
    type: "number",
    default: 5,
    integer: true,
    min: 1,
    max: 100,
    description: "audit files kept, the current one included",
  },
  "oidc-issuer": {
    type: "string",
    default: "",
    description:
      "OIDC logins (docs/access.md): the identity provider's issuer URL, https (http on loopback only); empty: off, API tokens and certificates only",
  },
  "oidc-client-id": {
    type: "string",
    default: "",
    description: "the public client (no secret) the UI and ctl log in with; ID tokens must name it as their audience",
  },
  "oidc-username-claim": { type: "string", default: "sub", description: "the ID token claim whose value names the user" },
  "oidc-groups-claim": { type: "string", default: "groups", description: "the ID token claim listing the user's groups (absent: none)" },
  "oidc-username-prefix": {
    type: "string",
    default: "oidc:",
    description: "put before every OIDC user name, so none can be taken for a token's user (admin) or another issuer's",
  },
  "oidc-groups-prefix": { type: "string", default: "", description: "put before every OIDC group name" },
  "oidc-scopes": {
    type: "string[]",
    default: ["openid", "offline_access", "profile", "email"],
    description:
      "scopes the UI and ctl ask for: openid, and whatever releases the username and groups claims (Dex: add groups); offline_access gives ctl a refresh token",
  },
  "oidc-ca-file": {
    type: "string",
    default: "",
    description: "PEM CA the issuer's certificate chains to, instead of the system's trust store (the server's discovery and key fetches)",
  },
  "etcd-enable-auth": {
    type: "boolean",
    default: false,
    description:
      "store etcd: at start, make etcd's root and hypervisor-server users and turn its auth on (idempotent); joined nodes then get a role confined to their own keys",
  },
  store: { type: "string", default: "embedded", description: "cluster state: etcd or embedded (one machine, kept in data-dir)" },
  ...etcdSchema,
  "data-dir": { type: "string", default: "/var/lib/hypervisor/server", description: "embedded store (and --dev agent state)" },
  "scheduler-algorithm": { type: "string", default: "binpack", description: "placement: binpack (fill nodes first) or spread (even load)" },
  "server-id": { type: "string", default: "", description: "identity of this replica in leader election; empty: random per start" },
  dev: { type: "boolean", default: false, description: "one-machine mode: also run an agent in this process" },
  "node-name": { type: "string", default: "", description: "node name of the in-process agent (--dev); empty: the hostname" },
  "write-ctl-config": {
    type: "boolean",
    default: true,
    description:
      "--dev with tls: write the ctl context \"dev\" (this server's URL and CA) to ctl's config file (HYPERVISOR_CONFIG, else ~/.config/hypervisor/config.yaml) and make it current",
  },
  "dev-drivers": {
    type: "string[]",
    default: ["mock", "libvirt", "containerd"],
    description: "drivers of the in-process agent (--dev); one whose runtime does not answer is reported unhealthy until it does",
  },
  "libvirt-socket": { type: "string", default: "/var/run/libvirt/libvirt-sock", description: "libvirtd's unix socket (--dev agent)" },
  "containerd-socket": {
    type: "string",
    default: "/run/hypervisor-containerd/containerd.sock",
    description: "containerd's gRPC socket (--dev agent; scripts/start-containerd.sh starts one there)",
  },
  "allow-host-network": {
    type: "boolean",
    default: false,
    description: "let containers of the --dev agent share this machine's network namespace (driver_config network=host)",
  },
  "allowed-bridges": {
    type: "string[]",
    default: [],
    description: "host bridges VMs of the --dev agent may join (driver_config network=bridge:<name>), comma-separated; empty: none",
  },
  "containerd-pids-limit": {
    type: "number",
    default: 1024,
    integer: true,
    min: 1,
    description: "processes and threads per container of the --dev agent (cgroup pids.max); the most driver_config pids-limit may ask",
  },
  "libvirt-image-dir": {
    type: "string",
    default: "",
    description: "base images, kernels and initrds VM specs may name (--dev agent); empty: data-dir/images",
  },
  "console-ticket-ttl": {
    type: "number",
    default: 30,
    integer: true,
    min: 1,
    description: "seconds a console ticket may wait to be used (it works once)",
  },
  "ha-grace-period": {
    type: "number",
    default: 60,
    integer: true,
    min: 1,
    description: "seconds a node stays NotReady before its instances (restart policy other than never) are placed on other nodes",
  },
  controllers: {
    type: "boolean",
    default: true,
    description:
      "run for leader (etcd) and, when elected, the scheduler and controllers; false: an API-only replica that never places or collects",
  },
  "console-local-direct": {
    type: "boolean",
    default: true,
    description:
      "dial the VNC unix socket of a VM whose agent is on this machine (loopback endpoint) directly; false: always through the agent",
  },
  "allowed-hosts": {
    type: "string[]",
    default: [],
    description:
      "host names clients may address the server by (any IP address is accepted); empty: localhost names, this machine's hostname and the listen address",
  },
  "allowed-origins": {
    type: "string[]",
    default: [],
    description: "origins (scheme://host:port) besides the server's own whose pages may call the API and open consoles",
  },
  "desktop-frame-ancestors": {
    type: "string[]",
    default: [],
    description: "origins that may show the desktop page (/desktop/) in a frame, e.g. a VDI portal; empty: none",
  },
  "max-watches-per-client": {
    type: "number",
    default: 32,
    integer: true,
    min: 1,
    max: 100000,
    description: "WatchInstances streams one client (address) may have open at once",
  },
  "max-log-follows-per-client": {
    type: "number",
    default: 16,
    integer: true,
    min: 1,
    max: 100000,
    description: "followed log streams (instance logs -f) one client may have open at once",
  },
  "console-ticket-burst": {
    type: "number",
    default: 20,
    integer: true,
    min: 1,
    max: 100000,
    description: "console tickets one client may get at once (each is an etcd lease)…",
  },
  "console-tickets-per-minute": {
    type: "number",
    default: 30,
    integer: true,
    min: 1,
    max: 100000,
    description: "…and per minute after that",
  },
  "watch-backlog": {
    type: "number",
    default: 1000,
    integer: true,
    min: 1,
    max: 1000000,
    description: "messages a watch may fall behind (beyond its initial list) before it is ended with resource_exhausted",
  },
  "max-image-bytes": {
    type: "number",
    default: 16 * 1024 ** 3,
    integer: true,
    min: 1,
    description: "largest image an import may upload; it is streamed on to the nodes, never stored on the server",
  },
  "refusal-burst": {
    type: "number",
    default: 20,
    integer: true,
    min: 1,
    max: 1000000,
    description: "refused requests (4xx, gRPC errors) one connection may collect before its requests wait…",
  },
  "refusals-per-second": {
    type: "number",
    default: 10,
    integer: true,
    min: 1,
    max: 1000000,
    description: "…and per second after that; past it, each request on that connection waits for the next (a timer, no CPU)",
  },
  "header-timeout": {
    type: "number",
    default: 60,
    integer: true,
    min: 1,
    max: 3600,
    description: "seconds a connection may take to show its protocol and each request's headers (nginx client_header_timeout)",
  },
  "request-read-timeout": {
    type: "number",
    default: 300,
    integer: true,
    min: 1,
    max: 86400,
    description: "seconds an HTTP/1.1 request may take to arrive whole, headers and body (Node's requestTimeout)",
  },
  "idle-timeout": {
    type: "number",
    default: 75,
    integer: true,
    min: 1,
    max: 86400,
    description: "seconds a connection with no request or stream in flight stays open (nginx keepalive_timeout)",
  },
  "unary-timeout": {
    type: "number",
    default: 60,
    integer: true,
    min: 1,
    max: 3600,
    description: "seconds a unary call may run before it fails with deadline_exceeded (a client may ask for less)",
  },
  "keepalive-interval": {
    type: "number",
    default: 60,
    integer: true,
    min: 1,
    max: 86400,
    description: "seconds between HTTP/2 PINGs to each client (gRPC keepalive), so dead watchers are found",
  },
  "keepalive-timeout": {
    type: "number",
    default: 20,
    integer: true,
    min: 1,
    max: 3600,
    description: "seconds a client has to answer a PING before its connection is closed",
  },
  "max-concurrent-streams": {
    type: "number",
    default: 128,
    integer: true,
    min: 1,
    max: 10000,
    description: "HTTP/2 streams one connection may have open at once (nginx http2_max_concurrent_streams)",
  },
  "shutdown-timeout": {
    type: "number",
    default: 15,
    integer: true,
    min: 1,
    max: 3600,
    description: "seconds a SIGTERM'd server may take to stop cleanly before it exits anyway (status 1)",
  },
  "heartbeat-ttl": {
    type: "number",
    default: 10,
    integer: true,
    min: 1,
    description: "heartbeat TTL in seconds of the in-process agent (--dev)",
  },
} satisfies Schema;

export type ServerConfig = ConfigOf<typeof serverSchema>;

/** 127.0.0.0/8, ::1 (bracketed too, as a URL's hostname has it) and localhost: an address no other machine reaches. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[(.*)\]$/, "$1");
  return h === "localhost" || h === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/** Checks what the schema's types cannot; returns the listen address split. */
export function checkServerConfig(c: ServerConfig): { host: string; port: number; algorithm: Algorithm } {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]]*):(\d{1,5})$/.exec(c.listen);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw new ConfigError(`listen: ${JSON.stringify(c.listen)} is not HOST:PORT (port 0-65535)`, "listen");
  const host = m[1]!.replace(/^\[|\]$/g, "") || "0.0.0.0";
  if (c.store !== "etcd" && c.store !== "embedded")
    throw new ConfigError(`store: ${JSON.stringify(c.store)} must be etcd or embedded`, "store");
  if (c.dangerouslyDisableAccess && !isLoopback(host))
    throw new ConfigError(
      `dangerously-disable-access on listen ${c.listen}, which is not loopback: anyone who reaches it could do everything`,
      "dangerously-disable-access",
    );
  if (!(AUDIT_LEVELS as readonly string[]).includes(c.auditLevel))
    throw new ConfigError(`audit-level: ${JSON.stringify(c.auditLevel)} must be one of ${AUDIT_LEVELS.join(", ")}`, "audit-level");
  checkOidc(c);
  if (c.schedulerAlgorithm !== "binpack" && c.schedulerAlgorithm !== "spread")
    throw new ConfigError(`scheduler-algorithm: ${JSON.stringify(c.schedulerAlgorithm)} must be binpack or spread`, "scheduler-algorithm");
  if (c.store === "etcd" && c.etcdEndpoints.length === 0)
    throw new ConfigError("etcd-endpoints: at least one endpoint is required with store: etcd", "etcd-endpoints");
  if (!c.controllers && (c.store !== "etcd" || c.dev))
    throw new ConfigError(
      "controllers: false (an API-only replica) needs store: etcd and no --dev: another replica must run the scheduler",
      "controllers",
    );
  if (!c.dataDir) throw new ConfigError("data-dir: must not be empty", "data-dir");
  if (!c.tls && !isLoopback(host) && !c.dangerouslyAllowPlaintext)
    throw new ConfigError(
      `tls: false on listen ${c.listen}, which is not loopback: clients' credentials would cross the network in cleartext; serve TLS, or set dangerously-allow-plaintext`,
      "tls",
    );
  // The in-process agent's node: the cluster's one name rule, as every agent's.
  const badNode = c.nodeName ? checkName("node-name", c.nodeName) : undefined;
  if (badNode) throw new ConfigError(badNode, "node-name");
  if (c.serverId && !/^[a-zA-Z0-9._-]{1,63}$/.test(c.serverId))
    throw new ConfigError(`server-id: ${JSON.stringify(c.serverId)} must be 1-63 of a-z A-Z 0-9 . _ -`, "server-id");
  return { host, port, algorithm: c.schedulerAlgorithm };
}

// RFC 6749's scope-token: visible ASCII but " and \.
const SCOPE = /^[\x21\x23-\x5b\x5d-\x7e]+$/;

function checkOidc(c: ServerConfig): void {
  const q = JSON.stringify;
  if (!c.oidcIssuer) {
    // A client id or CA without an issuer is a login setup with its key line missing, not "off".
    for (const [key, value] of [
      ["oidc-client-id", c.oidcClientId],
      ["oidc-ca-file", c.oidcCaFile],
    ] as const)
      if (value) throw new ConfigError(`${key}: ${q(value)} is set but oidc-issuer is empty (OIDC logins off): set oidc-issuer too`, key);
    return;
  }
  const bad = issuerProblem(c.oidcIssuer);
  if (bad) throw new ConfigError(`oidc-issuer: ${q(c.oidcIssuer)} ${bad}`, "oidc-issuer");
  if (!c.oidcClientId)
    throw new ConfigError("oidc-client-id: required with oidc-issuer (the client ID tokens are issued to)", "oidc-client-id");
  if (c.oidcCaFile && c.oidcIssuer.startsWith("http:"))
    throw new ConfigError(
      `oidc-ca-file: ${q(c.oidcCaFile)} with an http issuer ${c.oidcIssuer}: it would be unused; is the issuer https?`,
      "oidc-ca-file",
    );
  for (const [key, value] of [
    ["oidc-username-claim", c.oidcUsernameClaim],
    ["oidc-groups-claim", c.oidcGroupsClaim],
  ] as const)
    if (!value || hasControl(value)) throw new ConfigError(`${key}: ${q(value)} must be a claim name`, key);
  for (const [key, value] of [
    ["oidc-username-prefix", c.oidcUsernamePrefix],
    ["oidc-groups-prefix", c.oidcGroupsPrefix],
  ] as const)
    if (value.length > 64 || hasControl(value))
      throw new ConfigError(`${key}: ${q(value)} must be at most 64 characters, none a control character`, key);
  if (!c.oidcScopes.includes("openid"))
    throw new ConfigError(`oidc-scopes: ${q(c.oidcScopes.join(","))} must include openid (no ID token without it)`, "oidc-scopes");
  const badScope = c.oidcScopes.find((s) => !SCOPE.test(s));
  if (badScope !== undefined)
    throw new ConfigError(`oidc-scopes: ${q(badScope)} is not a scope (visible ASCII, no space, " or \\)`, "oidc-scopes");
}

/** The verifier's settings (access/oidc.ts), or undefined when OIDC logins are off. Call after checkServerConfig. */
export function oidcSettingsOf(c: ServerConfig): OidcSettings | undefined {
  if (!c.oidcIssuer) return undefined;
  return {
    issuer: c.oidcIssuer,
    clientId: c.oidcClientId,
    usernameClaim: c.oidcUsernameClaim,
    groupsClaim: c.oidcGroupsClaim,
    usernamePrefix: c.oidcUsernamePrefix,
    groupsPrefix: c.oidcGroupsPrefix,
    scopes: c.oidcScopes,
    ...(c.oidcCaFile ? { caFile: c.oidcCaFile } : {}),
  };
}
