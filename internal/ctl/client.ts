/*
 * The API clients a command uses, over the Connect protocol on HTTP/1.1: it passes through any
 * proxy and is what `curl` speaks, and the server serves it on the same port as gRPC. Image
 * imports stream from the client, which needs HTTP/2 (h2c on the same port).
 */
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { ClusterService } from "../../api/gen/hypervisor/v1/cluster_pb.js";
import { ConsoleService } from "../../api/gen/hypervisor/v1/console_pb.js";
import { IdentityService } from "../../api/gen/hypervisor/v1/identity_pb.js";
import { ImageService } from "../../api/gen/hypervisor/v1/image_pb.js";
import { InstanceService } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { NodeService } from "../../api/gen/hypervisor/v1/node_pb.js";
import { usageError } from "./errors.js";

export const DEFAULT_SERVER = "http://127.0.0.1:7070";

export interface Clients {
  readonly server: string;
  readonly instances: Client<typeof InstanceService>;
  readonly nodes: Client<typeof NodeService>;
  readonly cluster: Client<typeof ClusterService>;
  /** Over HTTP/2: an image import streams the upload, which HTTP/1.1 cannot carry. */
  readonly images: Client<typeof ImageService>;
  readonly consoles: Client<typeof ConsoleService>;
  readonly identity: Client<typeof IdentityService>;
}

/** Checks the URL first so a typo is a usage error naming it, not a confusing network error. */
export function serverUrl(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw usageError(`--server must be an http(s) URL, got "${value}"`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw usageError(`--server must be an http(s) URL, got "${value}"`);
  return value.replace(/\/+$/, "");
}

export function createClients(server: string): Clients {
  const transport = createConnectTransport({ baseUrl: serverUrl(server), httpVersion: "1.1" });
  return {
    server,
    instances: createClient(InstanceService, transport),
    nodes: createClient(NodeService, transport),
    cluster: createClient(ClusterService, transport),
    images: createClient(ImageService, createConnectTransport({ baseUrl: serverUrl(server), httpVersion: "2" })),
    consoles: createClient(ConsoleService, transport),
    identity: createClient(IdentityService, transport),
  };
}
