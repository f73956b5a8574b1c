// A client for containerd's gRPC API (1.6) over its unix socket: typed service clients from our
// own subset of containerd's protos (./proto → ./gen), namespace and lease headers, and the Any
// encodings containerd uses (./typeurl).
export {
  ContainerdClient,
  DEFAULT_SOCKET,
  LEASE_EXPIRE_LABEL,
  LEASE_HEADER,
  NAMESPACE_HEADER,
  isAlreadyExists,
  isFailedPrecondition,
  isNotFound,
  sha256Digest,
  type ContainerdClientOptions,
  type ContentSource,
  type WriteContentOptions,
  type WrittenContent,
} from "./client.js";
export {
  LINUX_RESOURCES_TYPE_URL,
  PROCESS_TYPE_URL,
  SPEC_TYPE_URL,
  TypeUrlError,
  packJson,
  packMessage,
  unpackEvent,
  unpackJson,
  unpackMessage,
  type ContainerdEvent,
  type EventType,
} from "./typeurl.js";
export {
  ContainerdDriver,
  containerdCapabilities,
  createContainerdDriver,
  DEFAULT_NAMESPACE,
  DEFAULT_PIDS_LIMIT,
  LABEL_OWNER,
  LABEL_UID,
  type ContainerdDriverOptions,
} from "./driver.js";
export { importImageArchive, listImages, resolveImage } from "./images.js";
export { defaultSeccompProfile, type SeccompProfile } from "./seccomp.js";
export { CAPABILITIES } from "./spec.js";
