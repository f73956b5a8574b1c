// The cluster's PKI: the CA (created once, kept in files), server, node and user certificates, the
// identities they carry (identity.ts), and join tokens that pin the CA and authenticate a join.
export { CA_CERT_FILE, CA_KEY_FILE, loadOrCreateCa, type LoadOrCreateCaOptions } from "./ca-files.js";
export {
  CA_COMMON_NAME,
  CLOCK_SKEW_MS,
  createCa,
  DEFAULT_CA_TTL_SECONDS,
  generateKeyAndCsr,
  issueEtcdCertificate,
  issueServerCertificate,
  MAX_CSR_PEM_BYTES,
  parseCa,
  signNodeCsr,
  signUserCsr,
  type CertificateAuthority,
  type CreateCaOptions,
  type EtcdCertificateParams,
  type KeyAndCertificate,
  type ServerCertificateParams,
  type SignNodeCsrParams,
  type SignUserCsrParams,
} from "./certificates.js";
export { CaFilesError, CertificateParamsError, CsrRejectedError, JoinTokenFormatError, PkiError, type CsrRejection } from "./errors.js";
export { caHash, commonNameOf, identityOf, ORGANIZATION, type CertificateInput, type Identity, type IdentityKind } from "./identity.js";
export {
  checkJoin,
  formatJoinToken,
  hashSecret,
  newJoinToken,
  parseJoinToken,
  secretMatches,
  TOKEN_ID_RE,
  TOKEN_PREFIX,
  type JoinDecision,
  type JoinRefusal,
  type JoinToken,
  type JoinTokenState,
} from "./join-token.js";
export { readLeaf, readTextIfExists, renewAt, writeLeaf, writePrivateFile, type LeafFiles } from "./leaf-files.js";
