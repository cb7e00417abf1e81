//! How berth asks a machine's init for an orderly halt. systemd halts on
//! SIGRTMIN+3. sysvinit (and OpenRC, which Debian runs under sysvinit)
//! ignores that signal, and systemd-nspawn leaves such a machine running
//! until its stop timeout kills it; sysvinit halts on a request for
//! runlevel 0 written to its control FIFO, /run/initctl (what `telinit 0`
//! does). berth writes that request itself: running the machine's own
//! telinit would run a binary of the machine with the host's privileges.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, SFlag};
use nix::unistd::Pid;

use crate::inroot::{fd_path, InRoot};

/// How to ask the machine's init to halt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// Send this signal to PID 1 (systemd: SIGRTMIN+3; KillSignal=).
    Signal(libc::c_int),
    /// Ask sysvinit for runlevel 0 through /run/initctl.
    Initctl,
}

/// sysvinit's `struct init_request` (initreq.h): magic, command, runlevel,
/// sleep time, and 368 bytes of data; 384 bytes in all.
const INIT_MAGIC: i32 = 0x0309_1969;
const INIT_CMD_RUNLVL: i32 = 1;
const REQUEST_SIZE: usize = 384;
/// Seconds init waits between TERM and KILL for the processes it stops.
const SLEEP_TIME: i32 = 5;

pub fn runlevel_request(runlevel: u8) -> [u8; REQUEST_SIZE] {
    let mut req = [0u8; REQUEST_SIZE];
    for (i, v) in [INIT_MAGIC, INIT_CMD_RUNLVL, runlevel as i32, SLEEP_TIME]
        .iter()
        .enumerate()
    {
        req[4 * i..4 * i + 4].copy_from_slice(&v.to_ne_bytes());
    }
    req
}

/// Whether the init at `init` (a path inside the tree) is systemd, its
/// links followed inside the tree.
pub fn is_systemd(tree: &InRoot, init: &Path) -> bool {
    let Ok(fd) = tree.open_at(&init.to_string_lossy(), OFlag::O_PATH) else {
        return false;
    };
    std::fs::read_link(fd_path(fd.as_fd()))
        .map(|p| p.file_name().is_some_and(|n| n == "systemd"))
        .unwrap_or(false)
}

/// Write the runlevel-0 request into the machine's /run/initctl, resolved
/// inside the machine's root (/proc/LEADER/root), and only if it is a FIFO.
pub fn request_halt(leader: Pid) -> std::io::Result<()> {
    let root = InRoot::open(Path::new(&format!("/proc/{leader}/root"))).map_err(std::io::Error::other)?;
    let looked = root.open_at("/run/initctl", OFlag::O_PATH)?;
    let st = fstat(&looked)?;
    if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFIFO.bits() {
        return Err(std::io::Error::other("the machine's /run/initctl is not a FIFO"));
    }
    let fd = crate::inroot::reopen(looked.as_fd(), OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)?;
    std::fs::File::from(fd).write_all(&runlevel_request(b'0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_initreq_h() {
        let r = runlevel_request(b'0');
        assert_eq!(r.len(), 384);
        assert_eq!(i32::from_ne_bytes(r[0..4].try_into().unwrap()), 0x03091969);
        assert_eq!(i32::from_ne_bytes(r[4..8].try_into().unwrap()), 1);
        assert_eq!(i32::from_ne_bytes(r[8..12].try_into().unwrap()), b'0' as i32);
        assert!(r[16..].iter().all(|b| *b == 0));
    }

    #[test]
    fn systemd_is_told_by_where_its_init_leads() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("usr/lib/systemd")).unwrap();
        std::fs::create_dir_all(t.path().join("sbin")).unwrap();
        std::fs::write(t.path().join("usr/lib/systemd/systemd"), "").unwrap();
        std::os::unix::fs::symlink("/usr/lib/systemd/systemd", t.path().join("sbin/init")).unwrap();
        std::fs::write(t.path().join("sbin/sysvinit"), "").unwrap();
        let tree = InRoot::open(t.path()).unwrap();
        assert!(is_systemd(&tree, Path::new("/sbin/init")));
        assert!(!is_systemd(&tree, Path::new("/sbin/sysvinit")));
        assert!(!is_systemd(&tree, Path::new("/nonexistent")));
    }
}
