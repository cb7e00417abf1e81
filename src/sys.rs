//! Every `unsafe` block of berth lives here: thin wrappers over system calls
//! that `nix` does not cover (or covers only as `unsafe fn`). Each wrapper is
//! safe to call; the reasons are in the `// SAFETY:` comments.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// What `clone_process` returned in the calling process.
pub enum Cloned {
    Parent { child: libc::pid_t },
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
/// namespace is rooted there).
///
/// The caller must be single-threaded (berth never starts a thread), so the
/// child's copy of the address space is consistent.
pub fn clone_process(flags: libc::c_int, cgroup: Option<BorrowedFd<'_>>) -> io::Result<Cloned> {
    let mut args = CloneArgs {
        flags: flags as u32 as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    // SAFETY: clone3 with stack == 0 behaves like fork(2): the child continues
    // on a copy of this stack. `args` is a valid, fully initialised clone_args
    // of the size passed. The process is single-threaded (see above), so no
    // lock can be held by a thread that does not exist in the child.
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
        }),
    }
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
    use std::os::fd::FromRawFd;
    // SAFETY: the kernel installed `fd` in this process for this message
    // alone; nothing else in the process knows or owns it.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// fork(2) for berth's single-threaded processes (the stub init).
pub fn fork_single_threaded() -> nix::Result<nix::unistd::ForkResult> {
    // SAFETY: berth never starts threads, so the child's copy of the process
    // holds no lock owned by a thread that does not exist there.
    unsafe { nix::unistd::fork() }
}

/// Give SIGPIPE its default action back (Rust starts programs with it
/// ignored, and an ignored signal stays ignored across execve).
pub fn default_sigpipe() {
    // SAFETY: installing SIG_DFL runs no code of ours in signal context.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
