/*
 * The seccomp profile every container runs under: the OCI runtime spec's linux.seccomp, which runc
 * compiles to a BPF filter before it execs the container's process.
 *
 *   syscall ──► allowed by name (and by argument where the rule says) ──► runs
 *          └──► anything else ──► EPERM (clone3: ENOSYS, so libc falls back to clone, which is checked)
 *
 * The reference is the default profile Docker and containerd ship (moby profiles/seccomp/default.json,
 * containerd contrib/seccomp): the same allowlist, written here as data, and resolved for what our
 * containers are: a fixed capability set without CAP_SYS_ADMIN and the other administrative ones
 * (see CAPABILITIES in ./spec.ts), so the rules Docker gates on those capabilities are left out
 * and the ones it applies without them are always in: clone may not create namespaces, socket may
 * not open AF_VSOCK, personality takes only the harmless personas, chroot comes with
 * CAP_SYS_CHROOT. No mount, unshare, setns, bpf, perf_event_open, keyctl, add_key, userfaultfd,
 * kexec, module or clock-setting calls.
 */

/** Names allowed with any arguments, on every architecture (names a kernel lacks are skipped by runc). */
const ALLOWED = `
accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown chown32 clock_adjtime
clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep
clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3 epoll_create
epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd
eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate
fanotify_mark fchdir fchmod fchmodat fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr
flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync
ftruncate ftruncate64 futex futex_time64 futex_waitv futimesat getcpu getcwd getdents getdents64
getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername
getpgid getpgrp getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32
getrlimit get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid
gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch
io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set
io_setup io_submit io_uring_enter io_uring_register io_uring_setup ipc kill landlock_add_rule
landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat listen
listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise membarrier
memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2
mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause pidfd_open
pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl
pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev
pwritev2 read readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction
rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam
sched_get_priority_max sched_get_priority_min sched_getscheduler sched_rr_get_interval
sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam sched_setscheduler
sched_yield seccomp select semctl semget semop semtimedop semtimedop_time64 send sendfile
sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32
setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid setresgid32
setresuid setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid setsockopt
set_thread_area set_tid_address setuid setuid32 setxattr shmat shmctl shmdt shmget shutdown
sigaltstack signalfd signalfd4 sigprocmask sigreturn socketcall socketpair splice stat stat64
statfs statfs64 statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time
timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat utime
utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
ptrace process_vm_readv process_vm_writev
chroot
`
  .split(/\s+/)
  .filter(Boolean);

/** Per architecture (Node's process.arch): the seccomp architectures a process may use, and its extra calls. */
const ARCHES: Record<string, { arches: string[]; extra: string[] }> = {
  x64: { arches: ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"], extra: ["arch_prctl", "modify_ldt"] },
  arm64: {
    arches: ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    extra: ["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"],
  },
  arm: {
    arches: ["SCMP_ARCH_ARM"],
    extra: ["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"],
  },
  ppc64: { arches: ["SCMP_ARCH_PPC64LE"], extra: ["sync_file_range2", "swapcontext"] },
  s390x: { arches: ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"], extra: ["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"] },
  riscv64: { arches: ["SCMP_ARCH_RISCV64"], extra: ["riscv_flush_icache"] },
};

/** Every CLONE_NEW* flag (ns, uts, ipc, user, pid, net, cgroup): clone may create a thread or a process, not a namespace. */
const CLONE_NAMESPACE_FLAGS = 0x7e020000;
const AF_VSOCK = 40;
/** PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and 0xffffffff (query). */
const PERSONAS = [0x0, 0x8, 0x20000, 0x20008, 0xffffffff];
const EPERM = 1;
const ENOSYS = 38;

export interface SeccompArg {
  index: number;
  value: number;
  valueTwo?: number;
  op: "SCMP_CMP_NE" | "SCMP_CMP_EQ" | "SCMP_CMP_MASKED_EQ";
}

export interface SeccompRule {
  names: string[];
  action: "SCMP_ACT_ALLOW" | "SCMP_ACT_ERRNO";
  errnoRet?: number;
  args?: SeccompArg[];
}

export interface SeccompProfile {
  defaultAction: "SCMP_ACT_ERRNO";
  defaultErrnoRet: number;
  architectures: string[];
  syscalls: SeccompRule[];
}

/** The profile for a container on `arch` (process.arch); throws for an architecture it has no table for. */
export function defaultSeccompProfile(arch: string = process.arch): SeccompProfile {
  const a = ARCHES[arch];
  if (!a) throw new Error(`no seccomp profile for architecture ${JSON.stringify(arch)}`);
  // s390 passes clone's flags as its second argument.
  const cloneFlagsArg = arch === "s390x" ? 1 : 0;
  return {
    defaultAction: "SCMP_ACT_ERRNO",
    defaultErrnoRet: EPERM,
    architectures: a.arches,
    syscalls: [
      { names: [...ALLOWED, ...a.extra], action: "SCMP_ACT_ALLOW" },
      { names: ["socket"], action: "SCMP_ACT_ALLOW", args: [{ index: 0, value: AF_VSOCK, op: "SCMP_CMP_NE" }] },
      ...PERSONAS.map((p): SeccompRule => ({
        names: ["personality"],
        action: "SCMP_ACT_ALLOW",
        args: [{ index: 0, value: p, op: "SCMP_CMP_EQ" }],
      })),
      {
        names: ["clone"],
        action: "SCMP_ACT_ALLOW",
        args: [{ index: cloneFlagsArg, value: CLONE_NAMESPACE_FLAGS, valueTwo: 0, op: "SCMP_CMP_MASKED_EQ" }],
      },
      // clone3 passes its flags in memory, where a filter cannot look: refuse it as missing.
      { names: ["clone3"], action: "SCMP_ACT_ERRNO", errnoRet: ENOSYS },
    ],
  };
}
