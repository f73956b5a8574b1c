/*
 * libvirt's numeric enums and flag sets (libvirt-domain.h, libvirt-host.h), named, for the
 * procedures this client speaks. Flags combine with |; every flag argument defaults to 0.
 */

type Values<T> = T[keyof T];

/** virDomainState: GET_STATE, GET_INFO. */
export const DomainState = {
  NOSTATE: 0,
  RUNNING: 1,
  BLOCKED: 2,
  PAUSED: 3,
  /** Being shut down. */
  SHUTDOWN: 4,
  SHUTOFF: 5,
  CRASHED: 6,
  PMSUSPENDED: 7,
} as const;
export type DomainState = Values<typeof DomainState>;

/** virDomainRunningReason */
export const RunningReason = {
  UNKNOWN: 0,
  BOOTED: 1,
  MIGRATED: 2,
  RESTORED: 3,
  FROM_SNAPSHOT: 4,
  UNPAUSED: 5,
  MIGRATION_CANCELED: 6,
  SAVE_CANCELED: 7,
  WAKEUP: 8,
  CRASHED: 9,
  POSTCOPY: 10,
  POSTCOPY_FAILED: 11,
} as const;

/** virDomainPausedReason */
export const PausedReason = {
  UNKNOWN: 0,
  USER: 1,
  MIGRATION: 2,
  SAVE: 3,
  DUMP: 4,
  IOERROR: 5,
  WATCHDOG: 6,
  FROM_SNAPSHOT: 7,
  SHUTTING_DOWN: 8,
  SNAPSHOT: 9,
  CRASHED: 10,
  STARTING_UP: 11,
  POSTCOPY: 12,
  POSTCOPY_FAILED: 13,
  API_ERROR: 14,
} as const;

/** virDomainShutoffReason: tells a guest's own poweroff (SHUTDOWN) from a destroy or a crash. */
export const ShutoffReason = {
  UNKNOWN: 0,
  SHUTDOWN: 1,
  DESTROYED: 2,
  CRASHED: 3,
  MIGRATED: 4,
  SAVED: 5,
  FAILED: 6,
  FROM_SNAPSHOT: 7,
  DAEMON: 8,
} as const;

/** virDomainEventID: the eventID of CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY. */
export const DomainEventId = {
  LIFECYCLE: 0,
  REBOOT: 1,
  RTC_CHANGE: 2,
  WATCHDOG: 3,
  IO_ERROR: 4,
  GRAPHICS: 5,
  IO_ERROR_REASON: 6,
  CONTROL_ERROR: 7,
  BLOCK_JOB: 8,
  DISK_CHANGE: 9,
  TRAY_CHANGE: 10,
  PMWAKEUP: 11,
  PMSUSPEND: 12,
  BALLOON_CHANGE: 13,
} as const;

/** virDomainEventType: the `event` of a lifecycle event (DomainLifecycleEvent). */
export const LifecycleEvent = {
  DEFINED: 0,
  UNDEFINED: 1,
  STARTED: 2,
  SUSPENDED: 3,
  RESUMED: 4,
  STOPPED: 5,
  SHUTDOWN: 6,
  PMSUSPENDED: 7,
  CRASHED: 8,
} as const;
export type LifecycleEvent = Values<typeof LifecycleEvent>;

/** `detail` values, one set per LifecycleEvent. */
export const DefinedDetail = { ADDED: 0, UPDATED: 1, RENAMED: 2, FROM_SNAPSHOT: 3 } as const;
export const UndefinedDetail = { REMOVED: 0, RENAMED: 1 } as const;
export const StartedDetail = { BOOTED: 0, MIGRATED: 1, RESTORED: 2, FROM_SNAPSHOT: 3, WAKEUP: 4, RECREATED: 5 } as const;
export const SuspendedDetail = {
  PAUSED: 0,
  MIGRATED: 1,
  IOERROR: 2,
  WATCHDOG: 3,
  RESTORED: 4,
  FROM_SNAPSHOT: 5,
  API_ERROR: 6,
  POSTCOPY: 7,
  POSTCOPY_FAILED: 8,
} as const;
export const ResumedDetail = { UNPAUSED: 0, MIGRATED: 1, FROM_SNAPSHOT: 2, POSTCOPY: 3, POSTCOPY_FAILED: 4 } as const;
export const StoppedDetail = {
  /** The guest powered off. */
  SHUTDOWN: 0,
  DESTROYED: 1,
  CRASHED: 2,
  MIGRATED: 3,
  SAVED: 4,
  FAILED: 5,
  FROM_SNAPSHOT: 6,
  RECREATED: 7,
} as const;
export const ShutdownDetail = { FINISHED: 0, GUEST: 1, HOST: 2 } as const;

/** virConnectListAllDomainsFlags (273); 0 lists every domain. */
export const ListAllDomainsFlags = {
  ACTIVE: 1,
  INACTIVE: 2,
  PERSISTENT: 4,
  TRANSIENT: 8,
  RUNNING: 16,
  PAUSED: 32,
  SHUTOFF: 64,
  OTHER: 128,
  MANAGEDSAVE: 256,
  NO_MANAGEDSAVE: 512,
  AUTOSTART: 1024,
  NO_AUTOSTART: 2048,
  HAS_SNAPSHOT: 4096,
  NO_SNAPSHOT: 8192,
  HAS_CHECKPOINT: 16384,
  NO_CHECKPOINT: 32768,
} as const;

/** virDomainCreateFlags (10, 196) */
export const DomainCreateFlags = {
  NONE: 0,
  START_PAUSED: 1,
  /** The domain is destroyed when this connection closes. */
  START_AUTODESTROY: 2,
  START_BYPASS_CACHE: 4,
  START_FORCE_BOOT: 8,
  START_VALIDATE: 16,
  START_RESET_NVRAM: 32,
} as const;

/** virDomainDefineFlags (350) */
export const DomainDefineFlags = { VALIDATE: 1 } as const;

/** virDomainShutdownFlagValues (258); DOMAIN_REBOOT (27) takes the same values. */
export const DomainShutdownFlags = { DEFAULT: 0, ACPI_POWER_BTN: 1, GUEST_AGENT: 2, INITCTL: 4, SIGNAL: 8, PARAVIRT: 16 } as const;
export const DomainRebootFlags = DomainShutdownFlags;

/** virDomainDestroyFlagsValues (234) */
export const DomainDestroyFlags = { DEFAULT: 0, GRACEFUL: 1, REMOVE_LOGS: 2 } as const;

/** virDomainUndefineFlagsValues (231) */
export const DomainUndefineFlags = {
  MANAGED_SAVE: 1,
  SNAPSHOTS_METADATA: 2,
  NVRAM: 4,
  KEEP_NVRAM: 8,
  CHECKPOINTS_METADATA: 16,
  TPM: 32,
  KEEP_TPM: 64,
} as const;

/** virDomainXMLFlags (14) */
export const DomainXmlFlags = { SECURE: 1, INACTIVE: 2, UPDATE_CPU: 4, MIGRATABLE: 8 } as const;

/** virDomainMemoryModFlags (204, 308): CURRENT means live if running, config otherwise. */
export const DomainMemoryModFlags = { CURRENT: 0, LIVE: 1, CONFIG: 2, MAXIMUM: 4 } as const;

/** virDomainModificationImpact */
export const DomainModificationImpact = { AFFECT_CURRENT: 0, AFFECT_LIVE: 1, AFFECT_CONFIG: 2 } as const;

/** virDomainMemoryStatTags (159). Values are KiB except the fault counters and LAST_UPDATE (seconds). */
export const MemoryStatTag = {
  SWAP_IN: 0,
  SWAP_OUT: 1,
  MAJOR_FAULT: 2,
  MINOR_FAULT: 3,
  UNUSED: 4,
  AVAILABLE: 5,
  ACTUAL_BALLOON: 6,
  RSS: 7,
  USABLE: 8,
  LAST_UPDATE: 9,
  DISK_CACHES: 10,
  HUGETLB_PGALLOC: 11,
  HUGETLB_PGFAIL: 12,
} as const;

/** CONNECT_OPEN flags. */
export const ConnectFlags = { RO: 1, NO_ALIASES: 2 } as const;

/** remote_auth_type, as listed by AUTH_LIST. */
export const AuthType = { NONE: 0, SASL: 1, POLKIT: 2 } as const;

/** virDrvFeature, asked with CONNECT_SUPPORTS_FEATURE. */
export const DrvFeature = {
  TYPED_PARAM_STRING: 9,
  /** Asking for it makes the daemon start sending keepalive PINGs. */
  PROGRAM_KEEPALIVE: 10,
  MIGRATION_PARAMS: 13,
  REMOTE_EVENT_CALLBACK: 14,
  REMOTE_CLOSE_CALLBACK: 15,
} as const;
