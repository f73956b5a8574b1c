// Access control of the API: API tokens, the built-in roles and their rights, the rule of every
// RPC, the interceptor that authenticates and authorizes each call, and AccessService.
export { accessService, type AuthConfig } from "./access-service.js";
export { AUDIT_FILE, AUDIT_LEVELS, AuditLog, redactedJson, type AuditEventInit, type AuditLevel, type AuditOptions } from "./audit.js";
export { auditService } from "./audit-service.js";
export {
  ANONYMOUS,
  Authorizer,
  callerKey,
  may,
  projectFilter,
  UNRESTRICTED,
  withGrants,
  type Caller,
  type Decision,
} from "./authorizer.js";
export {
  ALL_RIGHTS,
  grant,
  holds,
  isRoleName,
  noGrants,
  PROJECT_SCOPED,
  RESOURCES,
  ROLE_NAMES,
  ROLES,
  rightsOf,
  SHARED,
  type Grants,
  type Right,
  type RoleName,
} from "./rights.js";
export { checkSubject, RoleBindingIndex } from "./role-bindings.js";
export { METRICS_RULE, RULES, type Rule } from "./rules.js";
export { ADMIN_TOKEN_FILE, ensureBootstrapToken, newToken, parseToken, publicToken, tokenRecord, TOKEN_PREFIX } from "./tokens.js";
export {
  ALGORITHMS as OIDC_ALGORITHMS,
  isOidcToken,
  OidcVerifier,
  type OidcIdentity,
  type OidcSettings,
  type OidcVerifierOptions,
} from "./oidc.js";
export { TOKEN_RETENTION_MS, TokenGc, tokensToForget } from "./token-gc.js";
