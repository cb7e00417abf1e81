//! Starting the machine's init: clone into new namespaces and the machine's
//! cgroup, then (in the child) the setup steps in order, then execve.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::stat::{umask, Mode};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, execve, sethostname, setsid, ForkResult, Pid};

use crate::protocol::{self, Channel, ToChild, ToParent};
use crate::rootfs::{self, io_step, step, SetupError};
use crate::seccomp;
pub use crate::spec::{Files, LinkJournal, ResolvConf, Timezone, Volatile};
use crate::sys::{self, Cloned};

/// What runs as the machine's PID 1.
#[derive(Debug, Clone)]
pub enum Payload {
    /// The tree's own init (`berth boot`).
    Init { path: PathBuf, args: Vec<String> },
    /// A command under berth's stub init (`berth run`).
    Command { argv: Vec<String> },
}

/// Everything the child needs, prepared by the supervisor.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// The tree, opened once by `Tree::open` (shared with the child).
    pub tree: std::sync::Arc<crate::inroot::InRoot>,
    pub hostname: String,
    /// The machine's id (32 hex digits), also given to the init as
    /// `container_uuid`.
    pub machine_id: String,
    /// The pty slave to show as /dev/console; None for --console=pipe.
    pub console: Option<PathBuf>,
    pub payload: Payload,
    pub env: Vec<String>,
    /// The capability bounding set the machine keeps.
    pub kept_caps: Vec<caps::Capability>,
    /// Where the init or command starts, inside the machine.
    pub working_directory: Option<PathBuf>,
    pub resolv_conf: ResolvConf,
    /// [Files] settings.
    pub files: Files,
    /// What the machine may call: nspawn's list for `kept_caps`, with
    /// SystemCallFilter='s additions and removals.
    pub seccomp: seccomp::Filter,
    /// User= (Boot=no): who runs the command.
    pub user: Option<Credentials>,
    pub link_journal: LinkJournal,
    pub timezone: Timezone,
    /// [Network]: a network namespace of its own when `private`, and DNS=.
    pub network: crate::spec::Network,
    /// PrivateUsers=: the host IDs the machine's user namespace maps (None:
    /// no user namespace). Its owner is the range's base, not root.
    pub users: Option<crate::userns::IdRange>,
}

/// A user of the machine's tree, as its /etc/passwd and /etc/group say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("opening the machine's cgroup {}: {}", path.display(), source.desc())]
    OpenCgroup { path: PathBuf, source: nix::Error },
    #[error("creating the machine's namespaces: {}", crate::util::os_error(.0))]
    Clone(std::io::Error),
    #[error(transparent)]
    Protocol(#[from] protocol::ProtocolError),
    #[error("creating the channel to the machine's init: {0}")]
    Channel(nix::Error),
}

const NAMESPACES: libc::c_int = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;

/// The machine's init, cloned and waiting for `Go`: the window in which the
/// supervisor's parent steps act on it (cgroup, later registration, links,
/// ID maps). Dropped without `go`, it kills and reaps the child, so a
/// failed parent step never leaves a half-started machine.
pub struct Pending {
    pid: Pid,
    pidfd: OwnedFd,
    chan: Option<Channel>,
    /// The child was born in its cgroup (clone3 with CLONE_INTO_CGROUP).
    pub in_cgroup: bool,
}

impl Pending {
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// What the supervisor's parent steps see of the child.
    pub fn handle(&self) -> crate::setup::Child<'_> {
        crate::setup::Child {
            pid: self.pid,
            pidfd: self.pidfd.as_fd(),
            in_cgroup: self.in_cgroup,
        }
    }

    /// Let the child go on with its setup, handing it `fds`; returns its
    /// pid and the supervisor's end of the channel.
    pub fn go(mut self, fds: Vec<OwnedFd>) -> Result<(Pid, Channel), SpawnError> {
        let chan = self.chan.take().expect("a pending child has its channel");
        match chan.send_to_child(ToChild::Go(fds)) {
            Ok(()) => Ok((self.pid, chan)),
            Err(e) => Err(e.into()), // dropping self kills the child
        }
    }

    fn kill_and_reap(&mut self) {
        // The child is ours and not reaped, so its pid cannot be reused.
        let _ = nix::sys::signal::kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.chan.is_some() {
            self.kill_and_reap();
        }
    }
}

/// Clone the machine's PID 1 into its namespaces and, when the kernel can,
/// directly into `cgroup` (None: a parent step places it, e.g. machined's
/// scope). The child waits for `Pending::go`.
pub fn start(spec: &ChildSpec, cgroup: Option<&Path>) -> Result<Pending, SpawnError> {
    let (parent, child) = protocol::pair().map_err(SpawnError::Channel)?;
    let cgroup_fd = match cgroup {
        Some(cgroup) => Some(
            open(
                cgroup,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|source| SpawnError::OpenCgroup {
                path: cgroup.into(),
                source,
            })?,
        ),
        None => None,
    };
    // Preferred: the child is born in its cgroup, and its cgroup namespace is
    // rooted there (clone3 with CLONE_INTO_CGROUP, Linux 5.7). Otherwise a
    // parent step moves it, and the child unshares its cgroup namespace after.
    let mut namespaces = if spec.network.private {
        NAMESPACES | libc::CLONE_NEWNET
    } else {
        NAMESPACES
    };
    // With a user namespace, the clone is made as the range's owner (see
    // `Owner`), which may not write the cgroup's common ancestor: a parent
    // step moves the child instead.
    let owner = match spec.users {
        Some(range) => {
            namespaces |= libc::CLONE_NEWUSER;
            Some(Owner::become_(range, spec.tree.fd()).map_err(SpawnError::Clone)?)
        }
        None => None,
    };
    let born_in = match (&cgroup_fd, &owner) {
        (Some(fd), None) => sys::clone_process(namespaces | libc::CLONE_NEWCGROUP, Some(fd.as_fd())),
        _ => Err(std::io::Error::from_raw_os_error(libc::ENOSYS)),
    };
    let (cloned, in_cgroup) = match born_in {
        Ok(c) => (c, true),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP | libc::E2BIG)
            ) =>
        {
            match sys::clone_process(namespaces, None) {
                Ok(c) => (c, false),
                Err(e) => {
                    if let Some(o) = owner {
                        o.restore();
                    }
                    return Err(SpawnError::Clone(e));
                }
            }
        }
        Err(e) => return Err(SpawnError::Clone(e)),
    };
    // Back to root in berth; the child keeps the owner's IDs until its ID
    // maps are written.
    if let (Cloned::Parent { .. }, Some(o)) = (&cloned, owner) {
        o.restore();
    }
    match cloned {
        Cloned::Child => {
            drop(parent);
            drop(cgroup_fd);
            // Only the channel and the tree go on: not the supervisor's bus
            // connection, signalfd, pty master or locks. (Their owners live
            // on in this copy of the process but are never dropped here:
            // the child ends in execve or exit.)
            use std::os::fd::AsRawFd;
            if let Err(e) = sys::close_all_except(&[child.fd().as_raw_fd(), spec.tree.fd().as_raw_fd()]) {
                let _ = child.send_to_parent(ToParent::Failed(format!(
                    "closing the supervisor's descriptors: {}",
                    crate::util::os_error(&e)
                )));
                std::process::exit(crate::exit::EXIT_FAILURE);
            }
            child_main(spec, child, !in_cgroup)
        }
        Cloned::Parent { child: pid, pidfd } => {
            drop(child);
            Ok(Pending {
                pid: Pid::from_raw(pid),
                pidfd,
                chan: Some(parent),
                in_cgroup,
            })
        }
    }
}

/// berth's effective IDs and directory while it clones a machine with a user
/// namespace: the kernel makes the caller's effective UID the namespace's
/// owner, and charges the per-user limits (inotify instances, namespace
/// counts) of everything inside to it, so each machine gets its own instead
/// of sharing root's. The working directory is the tree, so the child finds
/// it without walking the host's paths (/var/lib/machines is 0700 root's,
/// which root in the new namespace may not search).
struct Owner {
    cwd: OwnedFd,
}

impl Owner {
    fn become_(range: crate::userns::IdRange, tree: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Owner> {
        use nix::unistd::{fchdir, setegid, seteuid, Gid, Uid};
        let cwd = open(
            ".",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        fchdir(tree)?;
        let owner = Owner { cwd };
        // Group first: once the effective UID is not 0, the capability to
        // change it is gone until it is 0 again.
        if let Err(e) = setegid(Gid::from_raw(range.base)).and_then(|()| seteuid(Uid::from_raw(range.base))) {
            owner.restore();
            return Err(e.into());
        }
        Ok(owner)
    }

    /// Root again (the saved UID is still 0), in the old directory.
    fn restore(self) {
        use nix::unistd::{fchdir, setegid, seteuid, Gid, Uid};
        // Cannot fail with a saved UID of 0; if it ever did, berth must
        // not go on with another user's IDs.
        seteuid(Uid::from_raw(0)).expect("returning to root after cloning the machine");
        setegid(Gid::from_raw(0)).expect("returning to root's group after cloning the machine");
        let _ = fchdir(&self.cwd);
    }
}

/// The child: set up, then become the init. Never returns.
fn child_main(spec: &ChildSpec, chan: Channel, unshare_cgroup: bool) -> ! {
    let err = match setup_and_exec(spec, &chan, unshare_cgroup) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = chan.send_to_parent(ToParent::Failed(err.to_string()));
    std::process::exit(crate::exit::EXIT_FAILURE)
}

fn setup_and_exec(spec: &ChildSpec, chan: &Channel, unshare_cgroup: bool) -> Result<Infallible, SetupError> {
    let here = Path::new("/");
    // Die with the supervisor: a SIGKILLed berth must not leave a machine
    // running without anyone to stop it. Set before waiting for Go, so a
    // supervisor that dies in between is noticed as end-of-file below.
    step(
        "setting the parent-death signal of",
        here,
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL),
    )?;
    // Descriptors the parent steps hand over: with a user namespace, the
    // idmapped mounts of `userns::UserNamespace`, in its order.
    let handed = match chan.recv_go() {
        Ok(Some(fds)) => fds,
        _ => std::process::exit(crate::exit::EXIT_FAILURE),
    };
    let mut handed = handed.into_iter();
    let mut mounts = None;
    if spec.users.is_some() {
        become_root_inside()?;
        let tree = handed.next();
        let binds: Vec<Option<OwnedFd>> = spec.files.binds.iter().map(|_| handed.next()).collect();
        match tree {
            Some(tree) => mounts = Some((rootfs::Premade { tree }, binds)),
            None => {
                return Err(SetupError {
                    what: "receiving the idmapped tree for",
                    path: spec.tree.show("/"),
                    why: "the supervisor passed no mount".into(),
                })
            }
        }
    }
    if unshare_cgroup {
        step(
            "creating the cgroup namespace of",
            here,
            unshare(CloneFlags::CLONE_NEWCGROUP),
        )?;
    }
    // Modes of the nodes created below are exactly as written.
    umask(Mode::empty());

    // Mounts first, while the host's files (os-release, the console pty)
    // are still reachable; pivot_root last. Every path in the tree is
    // resolved inside it (`InRoot`).
    // The tree again, in this mount namespace (open_tree clones only mounts
    // of the caller's namespace), and it must be the very directory berth
    // checked and locked.
    let shown = spec.tree.show("/");
    let tree = if spec.users.is_some() {
        // The working directory berth left (`Owner`): root in the machine's
        // user namespace may not search the host's path to it.
        let fd = step(
            "opening",
            &shown,
            open(
                ".",
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            ),
        )?;
        crate::inroot::InRoot::from_fd(fd, shown.clone())
    } else {
        crate::inroot::InRoot::open(&shown)?
    };
    if tree.identity()? != spec.tree.identity()? {
        return Err(SetupError {
            what: "opening",
            path: shown,
            why: "the tree was replaced while berth started the machine".into(),
        });
    }
    let (premade, bind_mounts) = match mounts {
        Some((p, b)) => (Some(p), b),
        None => (None, Vec::new()),
    };
    let users = spec.users.is_some();
    let root = rootfs::isolate(
        &tree,
        spec.files.read_only,
        spec.files.volatile,
        &spec.machine_id,
        premade,
    )?;
    let proc = rootfs::mount_api(&root, spec.console.as_deref(), users)?;
    let run_host = rootfs::populate_run_host(&root, &spec.network.dns, users)?;
    if matches!(spec.payload, Payload::Init { .. }) {
        // Bound before /run/host turns read-only, through the resolved
        // directory; the supervisor keeps the only other reference, so the
        // socket lives as long as it needs.
        let path = crate::inroot::fd_path(run_host.as_fd()).join("notify");
        let sock = io_step("binding the notify socket", &path, crate::notify::bind(&path))?;
        chan.send_to_parent(ToParent::NotifySocket(OwnedFd::from(sock)))
            .map_err(|_| SetupError {
                what: "passing the notify socket",
                path,
                why: nix::errno::Errno::EPIPE.desc().into(),
            })?;
    }
    // The admin's mounts go over the API file systems' and before the masks,
    // so /run/host/inaccessible exists for Inaccessible=.
    rootfs::mount_files(&root, &spec.files, bind_mounts)?;
    rootfs::restrict(&root, &proc, run_host.as_fd(), spec.network.private)?;
    drop((run_host, proc));
    if spec.network.dns.is_empty() {
        rootfs::resolv_conf(&root, spec.resolv_conf)?;
    } else {
        rootfs::generated_resolv_conf(&root)?;
    }
    rootfs::timezone(&root, spec.timezone)?;
    rootfs::link_journal(&root, spec.link_journal, &spec.machine_id)?;
    rootfs::enter(&root)?;
    drop(root);
    // With or without a user namespace: berth's masks must outlive root
    // inside (see `rootfs::lock_mounts`).
    rootfs::lock_mounts()?;
    if let Some(dir) = &spec.working_directory {
        step("changing directory to", dir, nix::unistd::chdir(dir.as_path()))?;
    }

    step("setting the hostname of", here, sethostname(&spec.hostname))?;
    // A session of its own, with the console as controlling terminal.
    step("creating a session for", here, setsid())?;
    if spec.console.is_some() {
        let console = Path::new("/dev/console");
        let fd = step(
            "opening",
            console,
            open(console, OFlag::O_RDWR | OFlag::O_NOCTTY, Mode::empty()),
        )?;
        io_step(
            "making the controlling terminal",
            console,
            sys::set_controlling_tty(fd.as_fd()),
        )?;
        step("connecting stdin to", console, dup2_stdin(&fd))?;
        step("connecting stdout to", console, dup2_stdout(&fd))?;
        step("connecting stderr to", console, dup2_stderr(&fd))?;
    }
    umask(Mode::from_bits_truncate(0o022));
    // Rust ignores SIGPIPE and berth blocks some signals: neither may be
    // inherited by the init.
    reset_signals();
    io_step(
        "marking inherited descriptors close-on-exec in",
        here,
        sys::cloexec_from(3),
    )?;

    // Privileges last: capability drop needs CAP_SETPCAP, and the seccomp
    // filter is installed without no_new_privs, which needs CAP_SYS_ADMIN.
    crate::caps::drop_bounding(&spec.kept_caps).map_err(|_| SetupError {
        what: "dropping capabilities in",
        path: here.into(),
        why: nix::errno::Errno::EPERM.desc().into(),
    })?;
    io_step("installing the seccomp filter in", here, spec.seccomp.install())?;

    match &spec.payload {
        Payload::Init { path, args } => {
            let argv: Vec<String> = std::iter::once(path.to_string_lossy().into_owned())
                .chain(args.iter().cloned())
                .collect();
            let err = execve(
                &cstring(&path.to_string_lossy()),
                &cstrings(&argv),
                &cstrings(&spec.env),
            )
            .unwrap_err();
            Err(SetupError {
                what: "executing",
                path: path.clone(),
                why: err.desc().into(),
            })
        }
        Payload::Command { argv } => stub_init(argv, &spec.env, spec.user.as_ref(), chan),
    }
}

/// With a user namespace whose ID maps the supervisor has written: become
/// its root (the child still has berth's real and saved IDs, which the
/// namespace does not map), with no supplementary group of the host's.
fn become_root_inside() -> Result<(), SetupError> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    let here = Path::new("/");
    let (root, group) = (Uid::from_raw(0), Gid::from_raw(0));
    step("becoming root's group in", here, setresgid(group, group, group))?;
    step("dropping the host's groups in", here, setgroups(&[]))?;
    step("becoming root in", here, setresuid(root, root, root))?;
    // A change of credentials may clear these; the init must still die
    // with berth, and /proc/self must stay its own.
    step(
        "setting the parent-death signal of",
        here,
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL),
    )?;
    step("making dumpable", here, nix::sys::prctl::set_dumpable(true))
}

fn reset_signals() {
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    sys::default_sigpipe();
}

fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "")).expect("no NUL left")
}

fn cstrings(v: &[String]) -> Vec<CString> {
    v.iter().map(|s| cstring(s)).collect()
}

/// Signals the stub init passes on to the command.
const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
];

/// Exit code of a command that could not be found / executed (as a shell's).
const EXIT_NOT_FOUND: i32 = 127;
const EXIT_NOT_EXECUTABLE: i32 = 126;

/// `berth run`: PID 1 stays berth code that starts the command, reaps every
/// orphan, forwards signals to the command, and exits with its status.
fn stub_init(
    argv: &[String],
    env: &[String],
    user: Option<&Credentials>,
    chan: &Channel,
) -> Result<Infallible, SetupError> {
    let _ = nix::sys::prctl::set_name(c"berth-stub");
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    FORWARDED.iter().for_each(|s| set.add(*s));
    step(
        "blocking signals in",
        Path::new("/"),
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None),
    )?;
    let path = find_in_path(&argv[0], env);
    let command = match sys::fork_single_threaded() {
        Ok(ForkResult::Child) => {
            reset_signals();
            if let Some(u) = user {
                if let Err(e) = become_user(u) {
                    eprintln!("berth: becoming user {}: {}", u.name, e.desc());
                    std::process::exit(crate::exit::EXIT_FAILURE);
                }
            }
            let err = execve(&cstring(&path.to_string_lossy()), &cstrings(argv), &cstrings(env)).unwrap_err();
            eprintln!("berth: {}: {}", argv[0], err.desc());
            std::process::exit(if err == nix::errno::Errno::ENOENT {
                EXIT_NOT_FOUND
            } else {
                EXIT_NOT_EXECUTABLE
            });
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            return Err(SetupError {
                what: "starting",
                path,
                why: e.desc().into(),
            })
        }
    };
    let _ = chan.send_to_parent(ToParent::Started);
    // Nothing of the host stays open in the machine's PID 1: not the
    // channel, the cgroup, the lock or a terminal berth held. (The process
    // only ever exits from here on, so no descriptor is closed twice.)
    let _ = sys::close_from(3);
    loop {
        let Ok(sig) = set.wait() else { continue };
        if sig != Signal::SIGCHLD {
            let _ = nix::sys::signal::kill(command, sig);
            continue;
        }
        // Reap everything that ended; exit when the command did.
        loop {
            match waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == command => std::process::exit(code),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == command => std::process::exit(128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

/// Groups first, then the group, then the user (which drops capabilities).
fn become_user(u: &Credentials) -> nix::Result<()> {
    use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
    let groups: Vec<Gid> = u.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    setgroups(&groups)?;
    setgid(Gid::from_raw(u.gid))?;
    setuid(Uid::from_raw(u.uid))?;
    nix::unistd::chdir(u.home.as_str()).or_else(|_| nix::unistd::chdir("/"))
}

/// Resolve a command name with the machine's PATH (from `env`).
fn find_in_path(name: &str, env: &[String]) -> PathBuf {
    if name.contains('/') {
        return PathBuf::from(name);
    }
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/bin:/bin");
    path_var
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .unwrap_or_else(|| PathBuf::from(name))
}
