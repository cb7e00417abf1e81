//! The machine's file system view: API file systems from tables, the
//! /run/host directory, and the switch of root with pivot_root.
//!
//! Everything here runs in the machine's init process, in its new mount
//! namespace, before it executes the init; nothing is mounted on the host.
//! Paths in the tables are inside the machine; `root` is the tree on the host.

use std::fs;
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, pivot_root};

use crate::spawn::{Files, LinkJournal, ResolvConf, Timezone, Volatile};

/// A failed setup step, as the child reports it to the supervisor.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {}", path.display(), errno.desc())]
pub struct SetupError {
    pub what: &'static str,
    pub path: PathBuf,
    pub errno: Errno,
}

pub type Result<T> = std::result::Result<T, SetupError>;

pub(crate) fn step<T, E: Into<Errno>>(what: &'static str, path: &Path, r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| SetupError {
        what,
        path: path.to_path_buf(),
        errno: e.into(),
    })
}

pub(crate) fn io_step<T>(what: &'static str, path: &Path, r: std::io::Result<T>) -> Result<T> {
    step(
        what,
        path,
        r.map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
    )
}

struct ApiMount {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// API file systems, mounted in this order (a later target may lie inside an
/// earlier mount: /sys/fs/cgroup in /sys, /dev/pts in /dev).
const API_MOUNTS: &[ApiMount] = &[
    ApiMount {
        fstype: "proc",
        target: "/proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    ApiMount {
        fstype: "sysfs",
        target: "/sys",
        flags: NOSUID_NODEV_NOEXEC.union(MsFlags::MS_RDONLY),
        data: None,
    },
    // Inside the machine's cgroup namespace this shows the machine's own
    // cgroup as the root, for its systemd to manage.
    ApiMount {
        fstype: "cgroup2",
        target: "/sys/fs/cgroup",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    ApiMount {
        fstype: "tmpfs",
        target: "/dev",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_STRICTATIME),
        data: Some("mode=755,size=4m"),
    },
    ApiMount {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=620,gid=5"),
    },
    ApiMount {
        fstype: "tmpfs",
        target: "/dev/shm",
        flags: NOSUID_NODEV.union(MsFlags::MS_STRICTATIME),
        data: Some("mode=1777"),
    },
    ApiMount {
        fstype: "mqueue",
        target: "/dev/mqueue",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    ApiMount {
        fstype: "tmpfs",
        target: "/run",
        flags: NOSUID_NODEV.union(MsFlags::MS_STRICTATIME),
        data: Some("mode=755,size=20%"),
    },
    ApiMount {
        fstype: "tmpfs",
        target: "/tmp",
        flags: NOSUID_NODEV.union(MsFlags::MS_STRICTATIME),
        data: Some("mode=1777"),
    },
];

/// Kernel interfaces hidden behind an empty, inaccessible file.
pub const PROC_MASKED: &[&str] = &[
    "/proc/kallsyms",
    "/proc/kcore",
    "/proc/keys",
    "/proc/sysrq-trigger",
    "/proc/timer_list",
];

/// Kernel interfaces the machine may read but not change. /proc/sys/net
/// stays read-only too while the machine shares the host's network.
pub const PROC_READ_ONLY: &[&str] = &[
    "/proc/sys",
    "/proc/acpi",
    "/proc/apm",
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/scsi",
];

/// The only device nodes a machine gets: (name in /dev, major, minor).
pub const DEVICE_NODES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
    ("net/tun", 10, 200),
];

const DEV_LINKS: &[(&str, &str)] = &[
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
    ("/dev/ptmx", "pts/ptmx"),
];

/// /run/host: what the host tells the machine about itself.
pub const RUN_HOST: &str = "/run/host";
pub const NOTIFY_SOCKET: &str = "/run/host/notify";
const INACCESSIBLE_DIR: &str = "/run/host/inaccessible";
const INACCESSIBLE_FILE: &str = "/run/host/inaccessible/reg";

/// Mode-0 nodes of every type in /run/host/inaccessible. The machine's
/// systemd links /run/systemd/inaccessible there and masks paths with them
/// (ProtectHome= and friends need `dir`), so all must exist.
const INACCESSIBLE_NODES: &[(&str, SFlag)] = &[
    ("reg", SFlag::S_IFREG),
    ("fifo", SFlag::S_IFIFO),
    ("sock", SFlag::S_IFSOCK),
    ("chr", SFlag::S_IFCHR),
    ("blk", SFlag::S_IFBLK),
];

fn inside(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn mkdir_p(path: &Path) -> Result<()> {
    io_step(
        "creating directory",
        path,
        fs::DirBuilder::new().recursive(true).mode(0o755).create(path),
    )
}

/// An empty file to mount on (kept if it exists).
fn touch(path: &Path) -> Result<()> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path);
    io_step("creating", path, file.map(|_| ()))
}

fn bind(src: &Path, dst: &Path, flags: MsFlags) -> Result<()> {
    step(
        "bind-mounting onto",
        dst,
        mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND | flags, None::<&str>),
    )
}

fn make_read_only_noexec(path: &Path) -> Result<()> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | NOSUID_NODEV_NOEXEC;
    step(
        "making read-only",
        path,
        mount(None::<&str>, path, None::<&str>, flags, None::<&str>),
    )
}

/// Step 1: cut propagation to the host, and make the machine's root a mount
/// point of its own (pivot_root needs one): the tree itself, or for
/// Volatile= a tmpfs holding the parts of it the machine may see.
pub fn isolate(root: &Path, volatile: Volatile, machine_id: &str) -> Result<()> {
    let flags = MsFlags::MS_REC | MsFlags::MS_SLAVE;
    step(
        "changing propagation of",
        Path::new("/"),
        mount(None::<&str>, "/", None::<&str>, flags, None::<&str>),
    )?;
    match volatile {
        Volatile::No => bind(root, root, MsFlags::MS_REC),
        Volatile::State => {
            bind(root, root, MsFlags::MS_REC)?;
            make_read_only(root)?;
            let var = inside(root, "/var");
            step(
                "mounting a temporary /var on",
                &var,
                mount(Some("tmpfs"), &var, Some("tmpfs"), NOSUID_NODEV, Some("mode=0755")),
            )
        }
        Volatile::Yes | Volatile::Overlay => {
            // Keep a way to the tree before a tmpfs hides it.
            let flags = nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC;
            let tree = step("opening", root, nix::fcntl::open(root, flags, Mode::empty()))?;
            let tree_path = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&tree)));
            let tmpfs = mount(Some("tmpfs"), root, Some("tmpfs"), MsFlags::empty(), Some("mode=0755"));
            step("mounting a temporary root on", root, tmpfs)?;
            if volatile == Volatile::Overlay {
                let (upper, work) = (inside(root, "/upper"), inside(root, "/work"));
                mkdir_p(&upper)?;
                mkdir_p(&work)?;
                let data = format!(
                    "lowerdir={},upperdir={},workdir={}",
                    tree_path.display(),
                    upper.display(),
                    work.display()
                );
                let overlay = mount(
                    Some("overlay"),
                    root,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(data.as_str()),
                );
                return step("mounting an overlay on", root, overlay);
            }
            // Volatile=yes: only /usr comes from the tree, read-only; the
            // merged-/usr links make it bootable.
            let usr = inside(root, "/usr");
            mkdir_p(&usr)?;
            bind(&tree_path.join("usr"), &usr, MsFlags::MS_REC)?;
            make_read_only(&usr)?;
            for (link, target) in [
                ("bin", "usr/bin"),
                ("sbin", "usr/sbin"),
                ("lib", "usr/lib"),
                ("lib64", "usr/lib64"),
            ] {
                if inside(root, target).exists() {
                    let path = inside(root, link);
                    io_step("creating symlink", &path, symlink(target, &path))?;
                }
            }
            for dir in ["etc", "var", "proc", "sys", "dev", "run", "tmp", "root"] {
                mkdir_p(&inside(root, dir))?;
            }
            // An /etc with a machine id is not a "first boot": without it,
            // systemd-firstboot would wait for answers on the console.
            let path = inside(root, "/etc/machine-id");
            io_step("writing", &path, fs::write(&path, format!("{machine_id}\n")))
        }
    }
}

/// Step 2: API file systems, device nodes and /dev links. `console` is the
/// host's pty slave to show as /dev/console (None: no console device).
pub fn mount_api(root: &Path, console: Option<&Path>) -> Result<()> {
    for m in API_MOUNTS {
        let target = inside(root, m.target);
        mkdir_p(&target)?;
        step(
            "mounting",
            &target,
            mount(Some(m.fstype), &target, Some(m.fstype), m.flags, m.data),
        )?;
    }
    for (name, major, minor) in DEVICE_NODES {
        let path = inside(root, &format!("/dev/{name}"));
        if let Some(parent) = path.parent() {
            mkdir_p(parent)?;
        }
        let mode = Mode::from_bits_truncate(0o666);
        step(
            "creating device node",
            &path,
            mknod(&path, SFlag::S_IFCHR, mode, makedev(*major, *minor)),
        )?;
    }
    for (link, target) in DEV_LINKS {
        let path = inside(root, link);
        io_step("creating symlink", &path, symlink(target, &path))?;
    }
    if let Some(pty) = console {
        let path = inside(root, "/dev/console");
        io_step(
            "creating",
            &path,
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path),
        )?;
        bind(pty, &path, MsFlags::empty())?;
    }
    Ok(())
}

/// Step 3: /run/host with the host's os-release, the manager's name, and an
/// inaccessible file used to mask /proc entries. The notify socket is added
/// by the caller before `restrict` makes the directory read-only.
pub fn populate_run_host(root: &Path) -> Result<()> {
    let dir = inside(root, RUN_HOST);
    let inaccessible = inside(root, INACCESSIBLE_DIR);
    mkdir_p(&inaccessible.join("dir"))?;
    for (name, kind) in INACCESSIBLE_NODES {
        let path = inaccessible.join(name);
        step("creating", &path, mknod(&path, *kind, Mode::empty(), makedev(0, 0)))?;
    }
    let path = inaccessible.join("dir");
    io_step(
        "restricting",
        &path,
        fs::set_permissions(&path, fs::Permissions::from_mode(0o000)),
    )?;
    let os_release = fs::read("/etc/os-release")
        .or_else(|_| fs::read("/usr/lib/os-release"))
        .unwrap_or_default();
    let path = dir.join("os-release");
    io_step("writing", &path, fs::write(&path, os_release))?;
    let path = dir.join("container-manager");
    io_step("writing", &path, fs::write(&path, "berth\n"))?;
    Ok(())
}

/// Step 4: masks and read-only parts of /proc, read-only /run/host.
pub fn restrict(root: &Path) -> Result<()> {
    let inaccessible = inside(root, INACCESSIBLE_FILE);
    for p in PROC_MASKED {
        let target = inside(root, p);
        if target.exists() {
            bind(&inaccessible, &target, MsFlags::empty())?;
            make_read_only_noexec(&target)?;
        }
    }
    for p in PROC_READ_ONLY {
        let target = inside(root, p);
        if target.exists() {
            bind(&target, &target, MsFlags::MS_REC)?;
            make_read_only_noexec(&target)?;
        }
    }
    let run_host = inside(root, RUN_HOST);
    bind(&run_host, &run_host, MsFlags::empty())?;
    make_read_only_noexec(&run_host)
}

/// Step 5 (host network only): the host's resolver configuration. `Auto`:
/// read-only over the tree's /etc/resolv.conf when that is a plain file (a
/// tree whose resolv.conf is a link, to systemd-resolved's say, keeps its
/// own); `BindHost`: always, creating the file if needed; `CopyHost`: a
/// copy written into the tree.
pub fn resolv_conf(root: &Path, mode: ResolvConf) -> Result<()> {
    let target = inside(root, "/etc/resolv.conf");
    let host = Path::new("/etc/resolv.conf");
    if mode == ResolvConf::Off || !host.exists() {
        return Ok(());
    }
    if mode == ResolvConf::CopyHost {
        let _ = fs::remove_file(&target);
        return io_step(
            "copying the host's resolv.conf to",
            &target,
            fs::copy(host, &target).map(|_| ()),
        );
    }
    let is_plain_file = fs::symlink_metadata(&target).map(|m| m.is_file()).unwrap_or(false);
    if mode == ResolvConf::BindHost && !is_plain_file {
        let _ = fs::remove_file(&target);
        touch(&target)?;
    }
    if is_plain_file || mode == ResolvConf::BindHost {
        bind(host, &target, MsFlags::empty())?;
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | NOSUID_NODEV;
        step(
            "making read-only",
            &target,
            mount(None::<&str>, &target, None::<&str>, flags, None::<&str>),
        )?;
    }
    Ok(())
}

/// Timezone=: the host's zone for the machine. Off leaves the tree alone;
/// Copy writes the host's zone file into the tree; Bind shows it read-only
/// over the tree's /etc/localtime (a link there is replaced by a plain file
/// once); Auto binds only when that needs no change to the tree.
pub fn timezone(root: &Path, mode: Timezone) -> Result<()> {
    let Ok(host) = fs::canonicalize("/etc/localtime") else {
        return Ok(());
    };
    let target = inside(root, "/etc/localtime");
    let is_plain_file = fs::symlink_metadata(&target).map(|m| m.is_file()).unwrap_or(false);
    match mode {
        Timezone::Off => Ok(()),
        Timezone::Auto if !is_plain_file => Ok(()),
        Timezone::Copy => {
            let _ = fs::remove_file(&target);
            io_step(
                "copying the host's time zone to",
                &target,
                fs::copy(&host, &target).map(|_| ()),
            )
        }
        Timezone::Bind | Timezone::Auto => {
            if !is_plain_file {
                let _ = fs::remove_file(&target);
                touch(&target)?;
            }
            bind(&host, &target, MsFlags::empty())?;
            make_read_only(&target)
        }
    }
}

/// LinkJournal=: the machine's journal directory lives on the host, as
/// /var/log/journal/MACHINE-ID, bound to the same path in the machine.
pub fn link_journal(root: &Path, mode: LinkJournal, machine_id: &str) -> Result<()> {
    let wanted = match mode {
        LinkJournal::No => false,
        LinkJournal::Auto => Path::new("/var/log/journal").is_dir(),
        LinkJournal::Host | LinkJournal::TryHost => true,
    };
    if !wanted || machine_id.len() != 32 {
        return Ok(());
    }
    let host_dir = Path::new("/var/log/journal").join(machine_id);
    let target = inside(root, &format!("/var/log/journal/{machine_id}"));
    let result = mkdir_p(&host_dir)
        .and_then(|_| mkdir_p(&target))
        .and_then(|_| bind(&host_dir, &target, MsFlags::empty()));
    match (result, mode) {
        (Err(e), LinkJournal::Host) => Err(e),
        _ => Ok(()),
    }
}

/// [Files]: bind mounts, temporary file systems and inaccessible paths.
pub fn mount_files(root: &Path, files: &Files) -> Result<()> {
    for b in &files.binds {
        let source = Path::new(&b.source);
        let target = inside(root, &b.target);
        let is_dir = io_step("looking at", source, fs::metadata(source))?.is_dir();
        if is_dir {
            mkdir_p(&target)?;
        } else if !target.exists() {
            if let Some(parent) = target.parent() {
                mkdir_p(parent)?;
            }
            touch(&target)?;
        }
        bind(
            source,
            &target,
            if b.recursive { MsFlags::MS_REC } else { MsFlags::empty() },
        )?;
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
        for (on, f) in [
            (b.read_only, MsFlags::MS_RDONLY),
            (b.nosuid, MsFlags::MS_NOSUID),
            (b.nodev, MsFlags::MS_NODEV),
            (b.noexec, MsFlags::MS_NOEXEC),
        ] {
            if on {
                flags |= f;
            }
        }
        if flags != MsFlags::MS_BIND | MsFlags::MS_REMOUNT {
            step(
                "setting the options of",
                &target,
                mount(None::<&str>, &target, None::<&str>, flags, None::<&str>),
            )?;
        }
    }
    for (path, options) in &files.tmpfs {
        let target = inside(root, path);
        mkdir_p(&target)?;
        let data = if options.is_empty() {
            "mode=0755".to_string()
        } else {
            options.clone()
        };
        step(
            "mounting a temporary file system on",
            &target,
            mount(Some("tmpfs"), &target, Some("tmpfs"), NOSUID_NODEV, Some(data.as_str())),
        )?;
    }
    for path in &files.inaccessible {
        let target = inside(root, path);
        let meta = io_step("looking at", &target, fs::symlink_metadata(&target))?;
        let kind = meta.file_type();
        use std::os::unix::fs::FileTypeExt;
        let node = if kind.is_dir() {
            "dir"
        } else if kind.is_char_device() {
            "chr"
        } else if kind.is_block_device() {
            "blk"
        } else if kind.is_fifo() {
            "fifo"
        } else if kind.is_socket() {
            "sock"
        } else {
            "reg"
        };
        let source = inside(root, &format!("{INACCESSIBLE_DIR}/{node}"));
        bind(&source, &target, MsFlags::empty())?;
        make_read_only_noexec(&target)?;
    }
    Ok(())
}

/// Make a mount (the tree for ReadOnly=yes, or one bind mount) read-only,
/// changing nothing else: mounts on top keep their own options.
pub fn make_read_only(root: &Path) -> Result<()> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    step(
        "making read-only",
        root,
        mount(None::<&str>, root, None::<&str>, flags, None::<&str>),
    )
}

/// Step 6: make the tree the root. pivot_root puts the old root on top of
/// the new one; detaching it leaves no path back to the host's file system,
/// so chroot("..") tricks end at the machine's own root.
pub fn enter(root: &Path) -> Result<()> {
    step("changing directory to", root, chdir(root))?;
    step("pivot_root into", root, pivot_root(".", "."))?;
    step(
        "detaching the host's root from",
        root,
        umount2(".", MntFlags::MNT_DETACH),
    )?;
    step("changing directory to", Path::new("/"), chdir("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_consistent() {
        // Every nested API mount comes after the mount that contains it.
        for (i, m) in API_MOUNTS.iter().enumerate() {
            for later in &API_MOUNTS[i + 1..] {
                assert!(
                    !m.target.starts_with(&format!("{}/", later.target)),
                    "{} before {}",
                    m.target,
                    later.target
                );
            }
        }
        assert!(PROC_MASKED
            .iter()
            .chain(PROC_READ_ONLY)
            .all(|p| p.starts_with("/proc/")));
        assert!(!DEVICE_NODES
            .iter()
            .any(|(n, ..)| n.starts_with("sd") || *n == "mem" || *n == "kmsg"));
        assert_eq!(inside(Path::new("/t"), "/run/host"), PathBuf::from("/t/run/host"));
    }

    #[test]
    fn setup_errors_read_as_one_line() {
        let e = step::<(), Errno>("mounting", Path::new("/t/proc"), Err(Errno::EPERM)).unwrap_err();
        assert_eq!(e.to_string(), "mounting /t/proc: Operation not permitted");
    }
}
