//! Every `unsafe` block of berth lives here: thin wrappers over system calls
//! that `nix` does not cover (or covers only as `unsafe fn`). Each wrapper is
//! safe to call; the reasons are in the `// SAFETY:` comments.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, RawFd};

/// What `clone_process` returned in the calling process.
pub enum Cloned {
    Parent {
        child: libc::pid_t,
        pidfd: std::os::fd::OwnedFd,
    },
    Child,
}

/// `CLONE_INTO_CGROUP` from linux/sched.h (not yet exported by every libc).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` from linux/sched.h (version 2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Fork-like `clone3(2)`: the child runs on a copy of the caller's stack, as
/// after fork(2), but in the new namespaces given by `flags` and, when
/// `cgroup` is given, directly inside that cgroup2 directory (so a new cgroup
/// namespace is rooted there). The parent also gets a pidfd of the child.
///
/// # Threads
/// Cloning a process that has more than one thread is unsound here: the
/// child gets a copy of the whole address space but only the calling
/// thread, so a lock held by another thread (the allocator's, stdio's) stays
/// locked forever in the child, and `unshare(CLONE_NEWUSER)` and `setns`
/// into a mount namespace refuse multi-threaded callers anyway. berth's
/// choice: it stays single-threaded (the asynchronous D-Bus and netlink
/// work that comes later runs on a current-thread runtime, on this thread),
/// and every clone first checks that the process has exactly one thread,
/// failing with a clear error otherwise (`ensure_single_threaded`). A
/// re-exec of berth for the child, as runc does, would cost an execve and a
/// second start-up on every boot; the check costs one read of
/// /proc/self/stat.
pub fn clone_process(flags: libc::c_int, cgroup: Option<BorrowedFd<'_>>) -> io::Result<Cloned> {
    ensure_single_threaded()?;
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: flags as u32 as u64 | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    // SAFETY: clone3 with stack == 0 behaves like fork(2): the child continues
    // on a copy of this stack. `args` is a valid, fully initialised clone_args
    // of the size passed, and `pidfd` outlives the call. The process is
    // single-threaded (checked above), so no lock can be held by a thread
    // that does not exist in the child.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Cloned::Child),
        pid => Ok(Cloned::Parent {
            child: pid as libc::pid_t,
            // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor in
            // `pidfd` that nothing else owns.
            pidfd: unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd) },
        }),
    }
}

/// The number of threads of this process, from /proc/self/stat (field 20).
pub fn thread_count() -> io::Result<usize> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name (field 2) may hold spaces and parentheses: count
    // fields after its closing parenthesis.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("unreadable /proc/self/stat"))?;
    after
        .split_whitespace()
        .nth(17)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::other("unreadable /proc/self/stat"))
}

/// Fail unless the process has exactly one thread (see `clone_process`).
pub fn ensure_single_threaded() -> io::Result<()> {
    match thread_count()? {
        1 => Ok(()),
        n => Err(io::Error::other(format!(
            "berth has {n} threads and cannot safely create a process (a bug: berth must stay single-threaded while it starts machines)"
        ))),
    }
}

/// `struct mount_attr` of linux/mount.h.
#[repr(C)]
#[derive(Default)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// `mount_setattr(2)` with `attr` on the mount `fd` refers to and, with
/// `recursive`, every mount below it.
fn setattr(fd: BorrowedFd<'_>, attr: &MountAttr, recursive: bool) -> io::Result<()> {
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: the path is an empty NUL-terminated string, `attr` is a fully
    // initialised mount_attr of the size passed; both outlive the call (a
    // userns_fd in it is a descriptor the caller borrows for the call).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the `set` attributes (MOUNT_ATTR_*) and clears none, so flags a
/// mount already had are kept.
pub fn mount_setattr(fd: BorrowedFd<'_>, set: u64, recursive: bool) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        ..Default::default()
    };
    setattr(fd, &attr, recursive)
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// Only propagation: the mount becomes private. A clone made by
/// open_tree(OPEN_TREE_CLONE) of a shared mount is a peer of its source:
/// attached elsewhere, what is mounted under it would appear at the source.
pub fn mount_make_private(fd: BorrowedFd<'_>, recursive: bool) -> io::Result<()> {
    let attr = MountAttr {
        propagation: libc::MS_PRIVATE,
        ..Default::default()
    };
    setattr(fd, &attr, recursive)
}

/// MOUNT_ATTR_IDMAP: the detached mount shows files through the ID map of
/// the user namespace `userns`. The kernel refuses it for a mount that is
/// attached, already idmapped, or of a file system without idmapping
/// support (EINVAL).
pub fn mount_setattr_idmap(fd: BorrowedFd<'_>, userns: BorrowedFd<'_>, recursive: bool) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        userns_fd: userns.as_raw_fd() as u64,
        ..Default::default()
    };
    setattr(fd, &attr, recursive)
}

/// Send any signal number, including real-time ones (`nix::sys::signal::Signal`
/// has no SIGRTMIN+n).
pub fn send_signal(pid: libc::pid_t, signo: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signo) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Install a classic BPF seccomp filter *without* setting no_new_privs, so
/// set-uid programs (su, sudo, login) keep working inside the machine. The
/// caller must hold CAP_SYS_ADMIN, which berth's machine init does.
pub fn install_seccomp_filter(program: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: program
            .len()
            .try_into()
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points to `program`, which outlives the call; the kernel
    // copies the filter before prctl returns.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Make `fd` (a terminal) the controlling terminal of this session.
pub fn set_controlling_tty(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal).
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn get_winsize(fd: BorrowedFd<'_>) -> io::Result<libc::winsize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` to the pointer given.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(ws)
}

pub fn set_winsize(fd: BorrowedFd<'_>, ws: &libc::winsize) -> io::Result<()> {
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer given.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, ws) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mark every descriptor from `first` on close-on-exec, so nothing berth
/// inherited leaks into the machine's init.
pub fn cloexec_from(first: RawFd) -> io::Result<()> {
    // SAFETY: close_range takes plain integers; CLOSE_RANGE_CLOEXEC only sets
    // a flag and closes nothing, so no owned descriptor is invalidated.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Take ownership of a descriptor the kernel just passed to this process by
/// SCM_RIGHTS.
pub fn own_received_fd(fd: RawFd) -> std::os::fd::OwnedFd {
    // SAFETY: the kernel installed `fd` in this process for this message
    // alone; nothing else in the process knows or owns it.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// fork(2) for berth's single-threaded processes (the stub init).
pub fn fork_single_threaded() -> nix::Result<nix::unistd::ForkResult> {
    ensure_single_threaded().map_err(|_| nix::errno::Errno::EAGAIN)?;
    // SAFETY: the process has one thread (checked above), so the child's
    // copy of the process holds no lock owned by a thread that does not
    // exist there.
    unsafe { nix::unistd::fork() }
}

/// Close every descriptor above stderr except those in `keep` (the child,
/// right after clone: nothing of the supervisor's, such as its connection
/// to the host's system bus, may reach the machine).
pub fn close_all_except(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|f| *f > 2).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from: RawFd = 3;
    for k in keep.iter().copied().chain(std::iter::once(RawFd::MAX)) {
        if from < k {
            let last = if k == RawFd::MAX {
                libc::c_uint::MAX
            } else {
                (k - 1) as libc::c_uint
            };
            // SAFETY: close_range takes plain integers; the caller owns no
            // descriptor it will use again in this range (it keeps `keep`).
            let ret = unsafe { libc::syscall(libc::SYS_close_range, from as libc::c_uint, last, 0) };
            if ret == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        if k == RawFd::MAX {
            break;
        }
        from = k + 1;
    }
    Ok(())
}

/// Close every descriptor from `first` on (the stub init, before it runs
/// the command: nothing of the host may stay open in the machine).
pub fn close_from(first: RawFd) -> io::Result<()> {
    // SAFETY: close_range takes plain integers. The caller owns no
    // descriptor at or above `first` that it will use again (the stub init
    // calls this when it holds only stdin, stdout and stderr).
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, libc::c_uint::MAX, 0) };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Give SIGPIPE its default action back (Rust starts programs with it
/// ignored, and an ignored signal stays ignored across execve).
pub fn default_sigpipe() {
    // SAFETY: installing SIG_DFL runs no code of ours in signal context.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// A path or name as the NUL-terminated string a system call takes.
fn c_string(bytes: &[u8]) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `setxattr(2)`: set the extended attribute `name` (e.g.
/// `trusted.berth.machine`) of `path` to `value`, creating or replacing it.
/// Written here rather than with the `xattr` crate: berth needs two calls
/// on directories, and this module already holds every other system call.
pub fn set_xattr(path: &std::path::Path, name: &str, value: &[u8]) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = c_string(path.as_os_str().as_bytes())?;
    let c_name = c_string(name.as_bytes())?;
    // SAFETY: `c_path` and `c_name` are NUL-terminated strings and `value` is
    // a buffer of the length passed; all outlive the call, and the kernel
    // only reads them.
    let ret = unsafe { libc::setxattr(c_path.as_ptr(), c_name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `getxattr(2)`: the value of the extended attribute `name` of `path`, or
/// `None` when `path` exists but has no such attribute (ENODATA).
pub fn get_xattr(path: &std::path::Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    /// XATTR_SIZE_MAX of linux/limits.h: no value is longer.
    const MAX: usize = 65536;
    let c_path = c_string(path.as_os_str().as_bytes())?;
    let c_name = c_string(name.as_bytes())?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: the strings are NUL-terminated, and the kernel writes at
        // most `buf.len()` bytes to `buf`, which outlives the call.
        let ret = unsafe { libc::getxattr(c_path.as_ptr(), c_name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if ret >= 0 {
            buf.truncate(ret as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA) => return Ok(None),
            // The value grew since the buffer was sized: try a larger one.
            Some(libc::ERANGE) if buf.len() < MAX => buf.resize(buf.len() * 4, 0),
            _ => return Err(e),
        }
    }
}

/// `listxattr(2)`: the names of the extended attributes of `path` (links
/// followed; `/proc/self/fd/N` names exactly the inode of N, a symbolic
/// link's too when N was opened O_PATH|O_NOFOLLOW). For export-tar.
pub fn list_xattr(path: &std::path::Path) -> io::Result<Vec<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    /// XATTR_LIST_MAX of linux/limits.h: no list is longer.
    const MAX: usize = 65536;
    let c_path = c_string(path.as_os_str().as_bytes())?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: the path is NUL-terminated, and the kernel writes at most
        // `buf.len()` bytes to `buf`, which outlives the call.
        let ret = unsafe { libc::listxattr(c_path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if ret >= 0 {
            buf.truncate(ret as usize);
            let names = buf.split(|b| *b == 0).filter(|n| !n.is_empty());
            return Ok(names.map(<[u8]>::to_vec).collect());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // The list grew since the buffer was sized: try a larger one.
            Some(libc::ERANGE) if buf.len() < MAX => buf.resize(buf.len() * 4, 0),
            _ => return Err(e),
        }
    }
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

fn owned_fd_or_error(ret: libc::c_long) -> io::Result<std::os::fd::OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(ret as RawFd) })
}

/// `open_tree(OPEN_TREE_CLONE)`: a detached copy of the mount at `fd` (with
/// every mount below it when `recursive`), to change with `mount_setattr`
/// and attach with `move_mount_onto`.
pub fn clone_mount(fd: BorrowedFd<'_>, recursive: bool) -> io::Result<std::os::fd::OwnedFd> {
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: the path is an empty NUL-terminated string that outlives the
    // call; the other arguments are integers.
    let ret = unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) };
    owned_fd_or_error(ret)
}

/// `move_mount(2)`: attach the mount `from` (detached, or attached
/// elsewhere) on exactly the inode `onto` refers to.
pub fn move_mount_onto(from: BorrowedFd<'_>, onto: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: both paths are empty NUL-terminated strings that outlive the
    // call; the descriptors are borrowed for its duration.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            c"".as_ptr(),
            onto.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A new, detached mount of a file system with string options
/// (`fsopen`, `fsconfig`, `fsmount`); its descriptor is the mount's root.
pub fn new_fs_mount(fstype: &str, options: &[(&str, &str)]) -> io::Result<std::os::fd::OwnedFd> {
    use std::ffi::CString;
    let c = |s: &str| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let name = c(fstype)?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let fs = owned_fd_or_error(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) })?;
    for (key, value) in options {
        let (k, v) = (c(key)?, c(value)?);
        // SAFETY: `k` and `v` are NUL-terminated strings that outlive the
        // call; `fs` is a file system context descriptor.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                k.as_ptr(),
                v.as_ptr(),
                0,
            )
        };
        if ret == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: CMD_CREATE takes no key and no value (NULL pointers).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            0,
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fsmount takes the context descriptor and two integer flags.
    owned_fd_or_error(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) })
}

/// _exit(2): end a process made by `clone_process` without running any of
/// the parent's atexit handlers or destructors (async-signal-safe).
pub fn exit_now(code: libc::c_int) -> ! {
    // SAFETY: _exit takes an integer and does not return.
    unsafe { libc::_exit(code) }
}

/// `NS_GET_USERNS` of linux/nsfs.h: the user namespace owning a namespace.
const NS_GET_USERNS: libc::c_ulong = 0xb701;

/// Whether this process's mount namespace is owned by its own user
/// namespace (for a process of the host's user namespace: whether its
/// mounts are unlocked). Reads the machine's own /proc.
pub fn mount_ns_owned_by_own_user_ns() -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let mnt = std::fs::File::open("/proc/thread-self/ns/mnt")?;
    // SAFETY: NS_GET_USERNS takes no argument and returns a new descriptor.
    let owner = owned_fd_or_error(unsafe { libc::ioctl(mnt.as_raw_fd(), NS_GET_USERNS) } as libc::c_long)?;
    let owner_ino = std::fs::File::from(owner).metadata()?.ino();
    let own_ino = std::fs::metadata("/proc/thread-self/ns/user")?.ino();
    Ok(owner_ino == own_ino)
}

/// `struct bpf_insn` from linux/bpf.h: one eBPF instruction, the
/// destination register in the low four bits of `regs`, the source in the
/// high four.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpfInsn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// bpf(2) commands, program and attach types, from linux/bpf.h.
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_QUERY: libc::c_int = 16;
pub const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
pub const BPF_CGROUP_DEVICE: u32 = 6;
pub const BPF_F_ALLOW_MULTI: u32 = 1 << 1;

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to
/// `expected_attach_type` (the kernel takes a shorter attr as zeros beyond).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// The `BPF_PROG_QUERY` part of `union bpf_attr`, up to `prog_cnt`.
#[repr(C)]
#[derive(Default)]
struct ProgQueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
}

/// bpf(2) with `attr`, a fully initialised `union bpf_attr` part. Private:
/// only the three wrappers below call it, each with its own attr type.
fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> libc::c_long {
    // SAFETY: the callers below pass, for each `cmd`, the #[repr(C)] struct
    // laid out as that command's part of `union bpf_attr`, fully
    // initialised, with its size; the kernel reads (and for a query writes)
    // only that many bytes. The pointers in it (instructions, licence, log
    // buffer) point to the callers' borrowed slices, which outlive the
    // call, with their lengths beside them.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) }
}

/// Load an eBPF program (`BPF_PROG_LOAD`); returns its descriptor. `name`
/// (at most 15 characters: letters, digits, `_`, `.`) shows in bpftool.
/// When the verifier refuses the program, its log is written to `log` (if
/// not empty).
pub fn bpf_prog_load(
    prog_type: u32,
    insns: &[BpfInsn],
    license: &std::ffi::CStr,
    name: &str,
    log: &mut [u8],
) -> io::Result<std::os::fd::OwnedFd> {
    let mut prog_name = [0u8; 16];
    if name.len() >= prog_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    prog_name[..name.len()].copy_from_slice(name.as_bytes());
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns
            .len()
            .try_into()
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        ..Default::default()
    };
    if !log.is_empty() {
        attr.log_level = 1;
        attr.log_size = log.len().min(u32::MAX as usize) as u32;
        attr.log_buf = log.as_mut_ptr() as u64;
    }
    owned_fd_or_error(bpf(BPF_PROG_LOAD, &mut attr))
}

/// Attach a loaded program to the object `target` (a cgroup directory for
/// cgroup programs) with `BPF_PROG_ATTACH`.
pub fn bpf_prog_attach(target: BorrowedFd<'_>, prog: BorrowedFd<'_>, attach_type: u32, flags: u32) -> io::Result<()> {
    let mut attr = ProgAttachAttr {
        target_fd: target.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        attach_flags: flags,
        ..Default::default()
    };
    if bpf(BPF_PROG_ATTACH, &mut attr) < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How many programs of `attach_type` are attached to `target` itself
/// (`BPF_PROG_QUERY`, not counting those inherited from above).
pub fn bpf_prog_count(target: BorrowedFd<'_>, attach_type: u32) -> io::Result<u32> {
    let mut attr = ProgQueryAttr {
        target_fd: target.as_raw_fd() as u32,
        attach_type,
        ..Default::default()
    };
    if bpf(BPF_PROG_QUERY, &mut attr) < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(attr.prog_cnt)
}

/// fork(2) in a test, whose process always has a second thread (the
/// harness runs each test on a thread of its own while its main thread
/// waits): refuses a third. The caller runs alone in a test binary executed
/// again for that one test (`--exact NAME --test-threads=1`), so the other
/// thread is the harness's main thread, parked waiting for the test.
#[cfg(test)]
pub fn fork_in_test_harness() -> nix::Result<nix::unistd::ForkResult> {
    if thread_count().map_err(|_| nix::errno::Errno::EIO)? > 2 {
        return Err(nix::errno::Errno::EAGAIN);
    }
    // SAFETY: besides the caller, the only thread is the harness's main
    // thread, blocked in a channel receive, which holds no lock while it
    // waits; glibc's fork resets the allocator's and stdio's locks in the
    // child. The child copies only the calling thread and runs its code.
    unsafe { nix::unistd::fork() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloning_refuses_a_multi_threaded_process() {
        // The test harness runs tests on threads of their own; one more
        // thread makes sure of at least two.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || rx.recv());
        assert!(thread_count().unwrap() >= 2);
        let e = ensure_single_threaded().unwrap_err().to_string();
        assert!(e.starts_with("berth has "), "{e}");
        assert!(
            e.ends_with("threads and cannot safely create a process (a bug: berth must stay single-threaded while it starts machines)"),
            "{e}"
        );
        match clone_process(0, None) {
            Err(e) => assert!(e.to_string().starts_with("berth has "), "{e}"),
            Ok(Cloned::Child) => exit_now(0),
            Ok(Cloned::Parent { .. }) => panic!("cloned a multi-threaded process"),
        }
        drop(tx);
        let _ = t.join();
    }
}
