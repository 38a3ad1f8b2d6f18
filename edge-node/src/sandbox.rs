//! The second boundary around workers, after V8's: on Linux, `serve` limits
//! what the whole process may do, so a V8 escape lands in a process that
//! cannot exec, trace, mount, load modules or read files beyond its own.
//!
//! Two layers, each switched by `[sandbox]` in edge.toml:
//!
//! - **Landlock** (file access): read-write beneath the data dir; read
//!   beneath the config file's folder, the certificate and key files, the
//!   static workers' folders, and what TLS, DNS, time zones and CPU/RSS
//!   stats read in `/etc`, `/usr/share`, `/proc/self`, `/sys`; read and
//!   execute beneath the library folders (NSS modules glibc may load for a
//!   lookup). Nothing else. Before Landlock ABI 8 a ruleset covers the
//!   calling thread and the threads it starts afterwards only, so
//!   [`landlock`] runs on the main thread before the V8 pool, the async
//!   runtime or any other thread starts (should one run already, it asks
//!   the kernel to cover it too, which ABI 8 can). Best effort: what the
//!   kernel enforces (fully, partially, not) is logged.
//! - **seccomp** (system calls): an allow list ([`ALLOWED`]) found by
//!   tracing the serve and e2e tests, installed with TSYNC on every thread
//!   once start-up is done. Anything else fails with `EPERM` rather than
//!   killing the process: a syscall the list missed shows as an error in
//!   the log, where an operator can see it, instead of a dead node.

use std::path::Path;
use std::path::PathBuf;

use crate::config::EdgeConfig;

/// What one layer ended up as, for the `sandbox in force` log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layer {
  /// Turned off in `[sandbox]`.
  Disabled,
  /// Asked for, but this kernel or platform does not have it.
  Unsupported(String),
  /// Landlock: enforced as far as the kernel's ABI allows.
  Partial,
  /// Landlock: every requested restriction is enforced.
  Full,
  /// seccomp: in force, with this many syscalls allowed.
  Syscalls(usize),
}

impl std::fmt::Display for Layer {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    match self {
      Layer::Disabled => f.write_str("off(disabled)"),
      Layer::Unsupported(why) => write!(f, "off({why})"),
      Layer::Partial => f.write_str("partial"),
      Layer::Full => f.write_str("full"),
      Layer::Syscalls(n) => write!(f, "on({n} syscalls)"),
    }
  }
}

/// The folders and files the process may touch after Landlock is on.
#[derive(Debug, Default)]
pub struct Paths {
  pub read_write: Vec<PathBuf>,
  pub read: Vec<PathBuf>,
  pub read_exec: Vec<PathBuf>,
}

/// Read-only system paths the edge's libraries read after start-up:
/// resolver config (getaddrinfo), CA certificates (fetch over TLS), time
/// zones (ICU), this process's stats and the CPU/cgroup topology. Missing
/// ones are skipped.
const SYSTEM_READ: &[&str] = &[
  "/etc/resolv.conf",
  "/etc/hosts",
  "/etc/host.conf",
  "/etc/gai.conf",
  "/etc/nsswitch.conf",
  "/etc/services",
  "/etc/protocols",
  "/etc/localtime",
  "/etc/ssl",
  "/etc/pki",
  "/etc/ca-certificates",
  "/usr/share/ca-certificates",
  "/usr/share/zoneinfo",
  "/proc/self",
  "/proc/sys/vm/overcommit_memory",
  "/sys/devices/system/cpu",
  "/sys/fs/cgroup",
  "/dev/urandom",
  "/dev/random",
];

/// Shared libraries glibc may `dlopen` for a name lookup (NSS modules).
const SYSTEM_READ_EXEC: &[&str] = &["/lib", "/lib64", "/usr/lib", "/usr/lib64"];

impl Paths {
  /// What `config` needs: its data dir, its own folder, its certificates
  /// and static workers.
  pub fn for_config(config: &EdgeConfig, config_path: &Path) -> Paths {
    let mut read = vec![config.base_dir.clone()];
    if let Ok(file) = config_path.canonicalize() {
      read.push(file);
    }
    for cert in &config.certificates {
      read.push(config.resolve(&cert.cert));
      read.push(config.resolve(&cert.key));
    }
    if let Some(control) = &config.control {
      read.extend([
        control.ca.clone(),
        control.cert.clone(),
        control.key.clone(),
      ]);
    }
    for worker in &config.workers {
      if let Some(folder) = config.resolve(&worker.entry).parent() {
        read.push(folder.to_path_buf());
      }
    }
    read.extend(SYSTEM_READ.iter().map(PathBuf::from));
    Paths {
      read_write: vec![absolute(&config.data_dir()), PathBuf::from("/dev/null")],
      read: read.iter().map(|p| absolute(p)).collect(),
      read_exec: SYSTEM_READ_EXEC.iter().map(PathBuf::from).collect(),
    }
  }
}

/// `p` against the working directory; a config file named without a
/// folder has `""` as its folder.
fn absolute(p: &Path) -> PathBuf {
  if p.as_os_str().is_empty() {
    return std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
  }
  std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Limits file access of the calling thread and every thread it starts
/// from now on (and, on Landlock ABI 8+, of every thread) to `paths`.
#[cfg(target_os = "linux")]
pub fn landlock(paths: &Paths, all_threads: bool) -> anyhow::Result<Layer> {
  use landlock::Access as _;
  use landlock::AccessFs;
  use landlock::PathBeneath;
  use landlock::PathFd;
  use landlock::RestrictSelfAttr as _;
  use landlock::Ruleset;
  use landlock::RulesetAttr as _;
  use landlock::RulesetCreatedAttr as _;
  use landlock::RulesetStatus;
  use landlock::ABI;

  let abi = ABI::V6;
  let all = AccessFs::from_all(abi);
  let read = AccessFs::ReadFile | AccessFs::ReadDir;
  let read_exec = AccessFs::from_read(abi);
  let mut ruleset = Ruleset::default().handle_access(all)?.create()?;
  let groups = [
    (&paths.read_write, all),
    (&paths.read, read),
    (&paths.read_exec, read_exec),
  ];
  for (list, access) in groups {
    for path in list {
      // A path that does not exist (yet) has nothing to allow.
      let Ok(fd) = PathFd::new(path) else { continue };
      let access = if path.is_dir() {
        access
      } else {
        access & AccessFs::from_file(abi)
      };
      ruleset = ruleset.add_rule(PathBeneath::new(fd, access))?;
    }
  }
  // With other threads running, ask the kernel to cover them too (ABI 8;
  // older kernels drop the flag and report partial enforcement).
  let status = if all_threads {
    ruleset.all_threads(true)?.restrict_self()?
  } else {
    ruleset.restrict_self()?
  };
  Ok(match status.ruleset {
    RulesetStatus::FullyEnforced => Layer::Full,
    RulesetStatus::PartiallyEnforced => Layer::Partial,
    _ => Layer::Unsupported("kernel without Landlock".into()),
  })
}

#[cfg(not(target_os = "linux"))]
pub fn landlock(_: &Paths, _: bool) -> anyhow::Result<Layer> {
  Ok(Layer::Unsupported("not Linux".into()))
}

/// The syscalls the edge makes after start-up: memory and threads (V8,
/// tokio), time and signals, files beneath the Landlock rules, sockets
/// (HTTP, QUIC with GSO/GRO, fetch), epoll. Missing on purpose: `execve`,
/// `fork`, `ptrace`, `process_vm_*`, `mount`, `pivot_root`, `chroot`,
/// `unshare`, `setns`, `bpf`, `perf_event_open`, `userfaultfd`, `keyctl`,
/// `add_key`, `*_module`, `kexec_*`, `io_uring_*`, `setuid` and friends,
/// `reboot`, `swapon`, `*_handle_at`, `personality`. Traced, then kept to
/// what was seen plus what glibc, tokio and V8 reach on rarer paths (pkeys
/// and memfd for V8's code space, `tgkill` for `abort`).
#[cfg(target_os = "linux")]
pub const ALLOWED: &[(&str, libc::c_long)] = &{
  use libc::*;
  [
    // Memory: V8's heaps and code space, the allocator.
    ("brk", SYS_brk),
    ("mmap", SYS_mmap),
    ("munmap", SYS_munmap),
    ("mprotect", SYS_mprotect),
    ("mremap", SYS_mremap),
    ("madvise", SYS_madvise),
    ("membarrier", SYS_membarrier),
    ("memfd_create", SYS_memfd_create),
    ("pkey_alloc", SYS_pkey_alloc),
    ("pkey_free", SYS_pkey_free),
    ("pkey_mprotect", SYS_pkey_mprotect),
    // Threads and scheduling.
    ("clone", SYS_clone),
    ("clone3", SYS_clone3),
    ("exit", SYS_exit),
    ("exit_group", SYS_exit_group),
    ("futex", SYS_futex),
    ("set_robust_list", SYS_set_robust_list),
    ("rseq", SYS_rseq),
    ("set_tid_address", SYS_set_tid_address),
    ("gettid", SYS_gettid),
    ("getpid", SYS_getpid),
    ("getppid", SYS_getppid),
    ("tgkill", SYS_tgkill),
    ("sched_yield", SYS_sched_yield),
    ("sched_getaffinity", SYS_sched_getaffinity),
    ("sched_getparam", SYS_sched_getparam),
    ("sched_getscheduler", SYS_sched_getscheduler),
    ("sched_get_priority_max", SYS_sched_get_priority_max),
    ("sched_get_priority_min", SYS_sched_get_priority_min),
    ("getpriority", SYS_getpriority),
    ("setpriority", SYS_setpriority),
    ("prctl", SYS_prctl),
    ("getrusage", SYS_getrusage),
    ("prlimit64", SYS_prlimit64),
    ("sysinfo", SYS_sysinfo),
    ("uname", SYS_uname),
    ("getuid", SYS_getuid),
    ("geteuid", SYS_geteuid),
    ("getgid", SYS_getgid),
    ("getegid", SYS_getegid),
    // Time and signals.
    ("clock_gettime", SYS_clock_gettime),
    ("clock_getres", SYS_clock_getres),
    ("clock_nanosleep", SYS_clock_nanosleep),
    ("nanosleep", SYS_nanosleep),
    ("gettimeofday", SYS_gettimeofday),
    ("rt_sigaction", SYS_rt_sigaction),
    ("rt_sigprocmask", SYS_rt_sigprocmask),
    ("rt_sigreturn", SYS_rt_sigreturn),
    ("rt_sigtimedwait", SYS_rt_sigtimedwait),
    ("sigaltstack", SYS_sigaltstack),
    ("restart_syscall", SYS_restart_syscall),
    // Files (beneath the Landlock rules) and descriptors.
    ("read", SYS_read),
    ("write", SYS_write),
    ("readv", SYS_readv),
    ("writev", SYS_writev),
    ("pread64", SYS_pread64),
    ("pwrite64", SYS_pwrite64),
    ("openat", SYS_openat),
    ("close", SYS_close),
    ("fstat", SYS_fstat),
    ("newfstatat", SYS_newfstatat),
    ("statx", SYS_statx),
    ("statfs", SYS_statfs),
    ("fstatfs", SYS_fstatfs),
    ("lseek", SYS_lseek),
    ("fcntl", SYS_fcntl),
    ("ioctl", SYS_ioctl),
    ("fsync", SYS_fsync),
    ("fdatasync", SYS_fdatasync),
    ("dup", SYS_dup),
    ("dup3", SYS_dup3),
    ("pipe2", SYS_pipe2),
    ("getdents64", SYS_getdents64),
    ("getcwd", SYS_getcwd),
    ("readlinkat", SYS_readlinkat),
    ("faccessat", SYS_faccessat),
    ("faccessat2", SYS_faccessat2),
    ("mkdirat", SYS_mkdirat),
    ("renameat", SYS_renameat),
    ("renameat2", SYS_renameat2),
    ("unlinkat", SYS_unlinkat),
    ("getrandom", SYS_getrandom),
    ("eventfd2", SYS_eventfd2),
    ("epoll_create1", SYS_epoll_create1),
    ("epoll_ctl", SYS_epoll_ctl),
    ("epoll_pwait", SYS_epoll_pwait),
    ("epoll_pwait2", SYS_epoll_pwait2),
    ("ppoll", SYS_ppoll),
    // Sockets: HTTP listeners, QUIC (GSO/GRO via sendmsg/recvmsg), fetch.
    ("socket", SYS_socket),
    ("socketpair", SYS_socketpair),
    ("bind", SYS_bind),
    ("listen", SYS_listen),
    ("accept4", SYS_accept4),
    ("connect", SYS_connect),
    ("getsockname", SYS_getsockname),
    ("getpeername", SYS_getpeername),
    ("setsockopt", SYS_setsockopt),
    ("getsockopt", SYS_getsockopt),
    ("sendto", SYS_sendto),
    ("recvfrom", SYS_recvfrom),
    ("sendmsg", SYS_sendmsg),
    ("recvmsg", SYS_recvmsg),
    ("sendmmsg", SYS_sendmmsg),
    ("recvmmsg", SYS_recvmmsg),
    ("shutdown", SYS_shutdown),
    // x86_64's older spellings, which glibc and std still use there.
    #[cfg(target_arch = "x86_64")]
    ("arch_prctl", SYS_arch_prctl),
    #[cfg(target_arch = "x86_64")]
    ("open", SYS_open),
    #[cfg(target_arch = "x86_64")]
    ("stat", SYS_stat),
    #[cfg(target_arch = "x86_64")]
    ("lstat", SYS_lstat),
    #[cfg(target_arch = "x86_64")]
    ("access", SYS_access),
    #[cfg(target_arch = "x86_64")]
    ("readlink", SYS_readlink),
    #[cfg(target_arch = "x86_64")]
    ("mkdir", SYS_mkdir),
    #[cfg(target_arch = "x86_64")]
    ("rename", SYS_rename),
    #[cfg(target_arch = "x86_64")]
    ("unlink", SYS_unlink),
    #[cfg(target_arch = "x86_64")]
    ("rmdir", SYS_rmdir),
    #[cfg(target_arch = "x86_64")]
    ("dup2", SYS_dup2),
    #[cfg(target_arch = "x86_64")]
    ("pipe", SYS_pipe),
    #[cfg(target_arch = "x86_64")]
    ("poll", SYS_poll),
    #[cfg(target_arch = "x86_64")]
    ("epoll_wait", SYS_epoll_wait),
    #[cfg(target_arch = "x86_64")]
    ("accept", SYS_accept),
    #[cfg(target_arch = "x86_64")]
    ("time", SYS_time),
  ]
};

/// Installs the [`ALLOWED`] filter on every thread of the process (TSYNC).
#[cfg(target_os = "linux")]
pub fn seccomp() -> anyhow::Result<Layer> {
  use seccompiler::SeccompAction;
  use seccompiler::SeccompFilter;
  use seccompiler::TargetArch;

  let arch = if cfg!(target_arch = "x86_64") {
    TargetArch::x86_64
  } else if cfg!(target_arch = "aarch64") {
    TargetArch::aarch64
  } else {
    return Ok(Layer::Unsupported("no filter for this CPU".into()));
  };
  let rules = ALLOWED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
  let filter = SeccompFilter::new(
    rules,
    SeccompAction::Errno(libc::EPERM as u32),
    SeccompAction::Allow,
    arch,
  )?;
  let program: seccompiler::BpfProgram = filter.try_into()?;
  seccompiler::apply_filter_all_threads(&program)?;
  Ok(Layer::Syscalls(ALLOWED.len()))
}

#[cfg(not(target_os = "linux"))]
pub fn seccomp() -> anyhow::Result<Layer> {
  Ok(Layer::Unsupported("not Linux".into()))
}

/// Threads running in this process now; Landlock before ABI 8 only covers
/// the ones started after it, so [`landlock`] warns when there are others.
pub fn thread_count() -> Option<usize> {
  std::fs::read_dir("/proc/self/task")
    .ok()
    .map(|tasks| tasks.count())
}

/// `serve --sandbox-selftest PATH`: tries what the sandbox must refuse and
/// logs what happened, so a test (or an operator checking a new kernel)
/// sees the layers work. Touches nothing either way: it only opens a file
/// for reading, and `unshare(CLONE_NEWUSER)` cannot succeed in a process
/// that already runs threads.
pub fn selftest(path: &Path) {
  let open = match std::fs::File::open(path) {
    Ok(_) => "allowed".to_string(),
    Err(e) => refused(e.raw_os_error()),
  };
  #[cfg(target_os = "linux")]
  let unshare = match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER) {
    Ok(()) => "allowed".to_string(),
    Err(e) => refused(Some(e as i32)),
  };
  #[cfg(not(target_os = "linux"))]
  let unshare = "not Linux".to_string();
  tracing::warn!(
    path = %path.display(),
    open = %open,
    unshare = %unshare,
    "sandbox self-test"
  );
}

/// `denied (EPERM)` for the sandbox's own answers; other errors are the
/// kernel's ordinary ones.
fn refused(errno: Option<i32>) -> String {
  match errno {
    Some(libc::EPERM) => "denied (EPERM)".into(),
    Some(libc::EACCES) => "denied (EACCES)".into(),
    Some(n) => format!("failed (errno {n}), not by the sandbox"),
    None => "failed".into(),
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn a_config_named_without_a_folder_gets_absolute_rules() {
    let mut config: EdgeConfig = toml::from_str(
      r#"
      [[certificate]]
      hosts = ["a.test"]
      cert = "certs/a.pem"
      key = "/etc/isola/a-key.pem"

      [[worker]]
      name = "site"
      entry = "site/worker.js"
    "#,
    )
    .unwrap();
    config.base_dir = PathBuf::new();
    let paths = Paths::for_config(&config, Path::new("edge.toml"));
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(paths.read_write[0], cwd.join(".isola-edge"));
    assert!(paths.read.contains(&cwd.join("certs/a.pem")));
    assert!(paths.read.contains(&PathBuf::from("/etc/isola/a-key.pem")));
    assert!(paths.read.contains(&cwd.join("site")));
    assert!(paths
      .read
      .iter()
      .all(|p| p.is_absolute() || p == Path::new(".")));
  }

  #[cfg(target_os = "linux")]
  #[test]
  fn the_allow_list_leaves_out_what_an_escape_would_want() {
    let names: Vec<&str> = ALLOWED.iter().map(|(name, _)| *name).collect();
    for denied in [
      "execve",
      "execveat",
      "fork",
      "vfork",
      "ptrace",
      "process_vm_readv",
      "process_vm_writev",
      "mount",
      "umount2",
      "pivot_root",
      "chroot",
      "unshare",
      "setns",
      "bpf",
      "perf_event_open",
      "userfaultfd",
      "keyctl",
      "add_key",
      "init_module",
      "finit_module",
      "kexec_load",
      "io_uring_setup",
      "setuid",
      "open_by_handle_at",
      "personality",
    ] {
      assert!(!names.contains(&denied), "{denied} is allowed");
    }
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "a syscall is listed twice");
  }
}
