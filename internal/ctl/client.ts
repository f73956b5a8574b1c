/*
 * The API clients a command uses, over the Connect protocol on HTTP/1.1: it passes through any
 * proxy and is what `curl` speaks, and the server serves it on the same port as gRPC. Image
 * imports stream from the client, which needs HTTP/2 (h2c, or h2 over TLS, on the same port).
 *
 * TLS (an https server URL): the server's certificate is verified against the connection's CA
 * when one is given, and then only against it (node's `ca` replaces the system store), else
 * against the system store; the client certificate is presented when one is configured. The
 * same settings go to both transports (connect-node's nodeOptions: https.request options for
 * HTTP/1.1, http2.connect options for HTTP/2) and to the console's WebSocket.
 */
import { ProjectService } from "../../api/gen/hypervisor/v1/project_pb.js";
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { httpsAgent } from "../../pkg/httpclient/index.js";
import type { ClientOptions } from "ws";
import { AccessService } from "../../api/gen/hypervisor/v1/access_pb.js";
import { AuditService } from "../../api/gen/hypervisor/v1/audit_pb.js";
import { ClusterService } from "../../api/gen/hypervisor/v1/cluster_pb.js";
import { ConsoleService } from "../../api/gen/hypervisor/v1/console_pb.js";
import { IdentityService } from "../../api/gen/hypervisor/v1/identity_pb.js";
import { ImageService } from "../../api/gen/hypervisor/v1/image_pb.js";
import { InstanceService } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { NodeService } from "../../api/gen/hypervisor/v1/node_pb.js";
import { checkServerUrl } from "./config-file.js";
import type { Connection, TlsMaterial } from "./connection.js";
import { OidcBearer } from "./oidc.js";

export { DEFAULT_SERVER } from "./connection.js";

export interface Clients {
  readonly server: string;
  readonly instances: Client<typeof InstanceService>;
  readonly nodes: Client<typeof NodeService>;
  readonly cluster: Client<typeof ClusterService>;
  /** Over HTTP/2: an image import streams the upload, which HTTP/1.1 cannot carry. */
  readonly images: Client<typeof ImageService>;
  readonly consoles: Client<typeof ConsoleService>;
  readonly identity: Client<typeof IdentityService>;
  /** Who the caller is, API tokens, roles. */
  readonly access: Client<typeof AccessService>;
  readonly audit: Client<typeof AuditService>;
  readonly projects: Client<typeof ProjectService>;
  /** TLS settings and headers for a WebSocket to the same server (the console). */
  readonly webSocketOptions: ClientOptions;
}

/** Checks the URL first so a typo is a usage error naming it, not a confusing network error. */
export function serverUrl(value: string): string {
  return checkServerUrl(value, "--server");
}

/** Clients for a resolved connection; `tls` is its material as loadTls read it. */
export function createClients(conn: Connection | string, tls: TlsMaterial = {}): Clients {
  const server = typeof conn === "string" ? serverUrl(conn) : conn.server;
  const token = typeof conn === "string" ? undefined : conn.token?.value;
  // An OIDC login's ID token is refreshed (and saved) before a call that would send it expired.
  const oidc = typeof conn === "string" || token !== undefined || conn.oidc === undefined ? undefined : new OidcBearer(conn.oidc);
  const secure = server.startsWith("https:");
  const nodeOptions = secure
    ? { ...(tls.ca !== undefined ? { ca: tls.ca } : {}), ...(tls.cert !== undefined ? { cert: tls.cert, key: tls.key } : {}) }
    : {};
  const interceptors: Interceptor[] = [];
  if (token !== undefined) {
    interceptors.push((next) => (req) => {
      req.header.set("Authorization", `Bearer ${token}`);
      return next(req);
    });
  } else if (oidc !== undefined) {
    interceptors.push((next) => async (req) => {
      req.header.set("Authorization", `Bearer ${await oidc.bearer()}`);
      return next(req);
    });
  }
  // TCP_NODELAY on every socket (pkg/httpclient): over TLS each call would otherwise wait ~40 ms.
  const transport = createConnectTransport({
    baseUrl: server,
    httpVersion: "1.1",
    nodeOptions: secure ? { ...nodeOptions, agent: httpsAgent() } : nodeOptions,
    interceptors,
  });
  const h2 = createConnectTransport({ baseUrl: server, httpVersion: "2", nodeOptions, interceptors });
  return {
    server,
    instances: createClient(InstanceService, transport),
    nodes: createClient(NodeService, transport),
    cluster: createClient(ClusterService, transport),
    images: createClient(ImageService, h2),
    consoles: createClient(ConsoleService, transport),
    identity: createClient(IdentityService, transport),
    access: createClient(AccessService, transport),
    audit: createClient(AuditService, transport),
    projects: createClient(ProjectService, transport),
    // A getter: a console asks for its ticket first (a call, which refreshes an OIDC login), then opens the socket.
    get webSocketOptions(): ClientOptions {
      const bearer = token ?? oidc?.current;
      return { ...nodeOptions, ...(bearer !== undefined ? { headers: { Authorization: `Bearer ${bearer}` } } : {}) };
    },
  };
}
