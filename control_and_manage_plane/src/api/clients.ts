// One Connect transport to the server that served this page (same origin: no CORS, the API and
// the UI share hypervisor-server's port), sending this tab's API token on every call (auth/), and
// a typed client per service.
import { AuditService } from "../../../api/gen/hypervisor/v1/audit_pb.js";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { AccessService } from "../../../api/gen/hypervisor/v1/access_pb.js";
import { ClusterService } from "../../../api/gen/hypervisor/v1/cluster_pb.js";
import { ConsoleService } from "../../../api/gen/hypervisor/v1/console_pb.js";
import { ImageService } from "../../../api/gen/hypervisor/v1/image_pb.js";
import { InstanceService } from "../../../api/gen/hypervisor/v1/instance_pb.js";
import { NodeService } from "../../../api/gen/hypervisor/v1/node_pb.js";
import { ProjectService } from "../../../api/gen/hypervisor/v1/project_pb.js";
import { bearer } from "../auth/index.js";

export const transport = createConnectTransport({ baseUrl: window.location.origin, interceptors: [bearer] });

export const accessClient: Client<typeof AccessService> = createClient(AccessService, transport);
export const instanceClient: Client<typeof InstanceService> = createClient(InstanceService, transport);
export const nodeClient: Client<typeof NodeService> = createClient(NodeService, transport);
export const clusterClient: Client<typeof ClusterService> = createClient(ClusterService, transport);
export const imageClient: Client<typeof ImageService> = createClient(ImageService, transport);
export const projectClient: Client<typeof ProjectService> = createClient(ProjectService, transport);
export const consoleClient: Client<typeof ConsoleService> = createClient(ConsoleService, transport);
export const auditClient: Client<typeof AuditService> = createClient(AuditService, transport);
