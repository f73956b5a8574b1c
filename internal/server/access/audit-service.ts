/*
 * AuditService: this server's audit events, newest first (each server audits the calls it serves;
 * ask each server of an HA cluster, or collect their files).
 */
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { AuditService } from "../../../api/gen/hypervisor/v1/audit_pb.js";
import { invalid } from "../validate.js";
import type { AuditLog } from "./audit.js";

const DEFAULT_LIMIT = 100;
const MAX_LIMIT = 1000;

export function auditService(audit: AuditLog | undefined, serverId: string): ServiceImpl<typeof AuditService> {
  return {
    async listAuditEvents(req) {
      if (!audit || audit.level === "none")
        throw new ConnectError("this server keeps no audit log (audit-level none)", Code.FailedPrecondition);
      if (req.limit > MAX_LIMIT) throw invalid("limit", `${req.limit} is more than the maximum ${MAX_LIMIT}`);
      const events = await audit.list({
        ...(req.since ? { sinceMs: timestampMs(req.since) } : {}),
        user: req.user,
        limit: req.limit || DEFAULT_LIMIT,
      });
      return { events, server: serverId };
    },
  };
}
