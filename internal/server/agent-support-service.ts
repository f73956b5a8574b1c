/*
 * AgentSupportService: what the servers tell an agent that its node's etcd role cannot read. A
 * node finding an instance it was not assigned asks what the cluster knows of that name (its
 * uid, where it is placed, whether it is being deleted) to decide between fencing, keeping and
 * destroying it (internal/agent/orphans.ts). Callers must be nodes, proven by a client
 * certificate of the cluster CA over mutual TLS; the answer carries nothing of the spec.
 */
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { AgentSupportService } from "../../api/gen/hypervisor/v1/agent_pb.js";
import { codecs, keys } from "../../pkg/cluster/state/index.js";
import type { ServerContext } from "./context.js";
import { peerOf } from "./peer.js";
import { requestRef } from "./validate.js";

export function agentSupportService(ctx: ServerContext): ServiceImpl<typeof AgentSupportService> {
  return {
    async lookupInstance(req, hctx) {
      const peer = peerOf(hctx);
      if (peer?.kind !== "node")
        throw new ConnectError("only a node of this cluster (a node certificate over mutual TLS) may ask", Code.Unauthenticated);
      const kv = await ctx.store.get(keys.instance(requestRef(req)), { signal: hctx.signal });
      if (!kv) return { found: false };
      const i = codecs.instance.decode(kv.value);
      return {
        found: true,
        uid: i.uid,
        node: i.status?.node ?? "",
        deleting: Boolean(i.deleteTime),
        ephemeralDisks: Boolean(i.spec?.ephemeralDisks),
      };
    },
  };
}
