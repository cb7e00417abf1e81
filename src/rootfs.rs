//! The machine's file system view: API file systems from tables, the
//! /run/host directory, the admin's mounts, and the switch of root.
//!
//! Everything here runs in the machine's init process, in its new mount
//! namespace, before it executes the init; nothing is mounted on the host.
//! Paths in the tables are inside the machine. The tree is untrusted: every
//! path in it is resolved inside it ([`InRoot`]), and every mount lands on a
//! descriptor resolved that way, never on a path joined on the host.
//!
//! Binds are made with the new mount API: a detached clone of the source
//! (`open_tree`), its flags set on every mount in it (`mount_setattr` with
//! AT_RECURSIVE: additive, so a flag the host mount had is never cleared),
//! then attached onto the resolved target (`move_mount`).

use std::fs;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fstat, makedev, Mode, SFlag};
use nix::unistd::{chdir, fchdir, pivot_root};

use crate::inroot::{fd_path, InRoot, PathError};
use crate::spec::{Files, LinkJournal, ResolvConf, Timezone, Volatile};
use crate::sys;

/// A failed setup step, as the child reports it to the supervisor.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {why}", path.display())]
pub struct SetupError {
    pub what: &'static str,
    pub path: PathBuf,
    pub why: String,
}

impl From<PathError> for SetupError {
    fn from(e: PathError) -> Self {
        SetupError {
            what: e.what,
            path: e.path,
            why: e.why,
        }
    }
}

pub type Result<T> = std::result::Result<T, SetupError>;

pub(crate) fn step<T, E: Into<Errno>>(what: &'static str, path: &Path, r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| SetupError {
        what,
        path: path.to_path_buf(),
        why: e.into().desc().to_string(),
    })
}

pub(crate) fn io_step<T>(what: &'static str, path: &Path, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| SetupError {
        what,
        path: path.to_path_buf(),
        why: crate::util::os_error(&e),
    })
}

struct ApiMount {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);
const NOSUID_NODEV_NOEXEC_ATTRS: u64 = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_NOEXEC;
const RO_NOSUID_NODEV_NOEXEC: u64 = sys::MOUNT_ATTR_RDONLY | NOSUID_NODEV_NOEXEC_ATTRS;

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
/// stays read-only too while the machine shares the host's network; with a
/// network namespace of its own, it is the machine's to change.
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

/// The most of a host file berth copies into a machine (resolv.conf, the
/// zone file, os-release).
const MAX_HOST_FILE: u64 = 1 << 20;

/// Attach a detached clone of `source` (every mount below it with
/// `recursive`) onto `target`, with the MOUNT_ATTR_* flags `attrs` added to
/// every mount of the clone.
fn bind_fd(source: BorrowedFd<'_>, target: BorrowedFd<'_>, recursive: bool, attrs: u64, shown: &Path) -> Result<()> {
    let clone = io_step("cloning the mount for", shown, sys::clone_mount(source, recursive))?;
    if attrs != 0 {
        io_step(
            "setting mount flags for",
            shown,
            sys::mount_setattr(clone.as_fd(), attrs, recursive),
        )?;
    }
    io_step("mounting onto", shown, sys::move_mount_onto(clone.as_fd(), target))
}

/// Open a path of the host (trusted: chosen by the admin or berth) for a
/// bind's source.
fn host_path_fd(path: &Path) -> Result<OwnedFd> {
    let flags = nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC;
    step("opening", path, nix::fcntl::open(path, flags, Mode::empty()))
}

/// Mount a new file system of `fstype` onto the resolved `target`.
fn mount_on(fstype: &str, target: BorrowedFd<'_>, flags: MsFlags, data: Option<&str>, shown: &Path) -> Result<()> {
    step(
        "mounting",
        shown,
        mount(Some(fstype), &fd_path(target), Some(fstype), flags, data),
    )
}

/// Step 1: cut propagation to and from the host, and make the machine's
/// root a mount of its own (pivot_root needs one): a recursive clone of the
/// tree, or for Volatile= a tmpfs holding the parts of it the machine may
/// see. Returns the new root. `read_only` (ReadOnly=yes) makes the tree and
/// every mount in it read-only here, before anything is mounted on top, so
/// the API file systems stay writable.
/// The tree as the supervisor mounted it for a machine with a user
/// namespace: idmapped, so files owned by 0..65535 on disk show as the
/// machine's own. It is attached over the tree, and the rest of the setup
/// (ReadOnly=, Volatile=) works on it as on the tree itself.
pub struct Premade {
    pub tree: OwnedFd,
}

pub fn isolate(
    tree: &InRoot,
    read_only: bool,
    volatile: Volatile,
    machine_id: &str,
    premade: Option<Premade>,
) -> Result<InRoot> {
    // Private, not slave: host mounts made later under the tree do not
    // appear in the machine, and nothing the machine mounts reaches the host.
    let flags = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
    step(
        "changing propagation of",
        Path::new("/"),
        mount(None::<&str>, "/", None::<&str>, flags, None::<&str>),
    )?;
    let root = match premade {
        Some(p) => {
            let shown = tree.show("/");
            io_step(
                "mounting the idmapped tree on",
                &shown,
                sys::move_mount_onto(p.tree.as_fd(), tree.fd()),
            )?;
            attach(&InRoot::from_fd(p.tree, shown), read_only, volatile, machine_id)?
        }
        None => attach(tree, read_only, volatile, machine_id)?,
    };
    // Where berth mounts the machine's own file systems, the tree must have
    // plain directories: a link there could resolve to one place when berth
    // mounts and to another when it masks (through berth's own mounts).
    for dir in API_DIRS {
        root.require_plain_dir_or_missing(dir, "berth mounts the machine's own file system there")?;
    }
    Ok(root)
}

/// The top-level directories berth mounts file systems of its own on.
const API_DIRS: &[&str] = &["/proc", "/sys", "/dev", "/run", "/tmp"];

fn attach(tree: &InRoot, read_only: bool, volatile: Volatile, machine_id: &str) -> Result<InRoot> {
    let shown = tree.show("/");
    let tree_path = shown.as_path();
    // A read-only tree is made so here, on every mount in it and before
    // anything is mounted on top (so the API file systems stay writable);
    // mount points it lacks are then made through a writable clone of it.
    let attach_tree = |read_only: bool| -> Result<InRoot> {
        let clone = io_step("cloning the mount of", tree_path, sys::clone_mount(tree.fd(), true))?;
        let writable = if read_only {
            let w = io_step("cloning the mount of", tree_path, sys::clone_mount(tree.fd(), true))?;
            io_step(
                "making read-only",
                tree_path,
                sys::mount_setattr(clone.as_fd(), sys::MOUNT_ATTR_RDONLY, true),
            )?;
            Some(InRoot::from_fd(w, tree_path.to_path_buf()))
        } else {
            None
        };
        io_step(
            "mounting the tree on",
            tree_path,
            sys::move_mount_onto(clone.as_fd(), tree.fd()),
        )?;
        let root = InRoot::from_fd(clone, tree_path.to_path_buf());
        Ok(match writable {
            Some(w) => root.with_mount_points_through(w),
            None => root,
        })
    };
    match volatile {
        Volatile::No => attach_tree(read_only),
        Volatile::State => {
            let root = attach_tree(true)?;
            root.require_plain_dir_or_missing("/var", "berth mounts a temporary /var there")?;
            let var = root.path_fd("opening", "/var")?;
            mount_on(
                "tmpfs",
                var.as_fd(),
                NOSUID_NODEV,
                Some("mode=0755"),
                &root.show("/var"),
            )?;
            Ok(root)
        }
        Volatile::Yes | Volatile::Overlay => {
            let tmpfs = io_step(
                "creating a temporary root for",
                tree_path,
                sys::new_fs_mount("tmpfs", &[("mode", "0755")]),
            )?;
            io_step(
                "mounting a temporary root on",
                tree_path,
                sys::move_mount_onto(tmpfs.as_fd(), tree.fd()),
            )?;
            let scratch = InRoot::from_fd(tmpfs, tree_path.to_path_buf());
            if volatile == Volatile::Overlay {
                let upper = scratch.mkdir_all("/upper", 0o755)?;
                let work = scratch.mkdir_all("/work", 0o755)?;
                let lower = fd_path(tree.fd());
                let (upper, work) = (fd_path(upper.as_fd()), fd_path(work.as_fd()));
                let options = [
                    ("lowerdir", lower.to_string_lossy().into_owned()),
                    ("upperdir", upper.to_string_lossy().into_owned()),
                    ("workdir", work.to_string_lossy().into_owned()),
                ];
                let options: Vec<(&str, &str)> = options.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let overlay = io_step(
                    "creating an overlay of",
                    tree_path,
                    sys::new_fs_mount("overlay", &options),
                )?;
                io_step(
                    "mounting an overlay on",
                    tree_path,
                    sys::move_mount_onto(overlay.as_fd(), scratch.fd()),
                )?;
                return Ok(InRoot::from_fd(overlay, tree_path.to_path_buf()));
            }
            // Volatile=yes: only /usr comes from the tree (resolved inside
            // it), read-only; the merged-/usr links make it bootable.
            let root = scratch;
            let usr_src = tree.path_fd("opening", "/usr")?;
            let usr = root.mkdir_all("/usr", 0o755)?;
            bind_fd(
                usr_src.as_fd(),
                usr.as_fd(),
                true,
                sys::MOUNT_ATTR_RDONLY,
                &root.show("/usr"),
            )?;
            for (link, target) in [
                ("/bin", "usr/bin"),
                ("/sbin", "usr/sbin"),
                ("/lib", "usr/lib"),
                ("/lib64", "usr/lib64"),
            ] {
                if root.exists(target) {
                    root.symlink(target, link)?;
                }
            }
            for dir in ["/etc", "/var", "/proc", "/sys", "/dev", "/run", "/tmp", "/root"] {
                root.mkdir_all(dir, 0o755)?;
            }
            // An /etc with a machine id is not a "first boot": without it,
            // systemd-firstboot would wait for answers on the console.
            root.replace_file("/etc/machine-id", format!("{machine_id}\n").as_bytes(), 0o444)?;
            Ok(root)
        }
    }
}

/// Step 2: API file systems, device nodes and /dev links. `console` is the
/// host's pty slave to show as /dev/console (None: no console device).
/// Returns the machine's proc, by its own descriptor, for `restrict`.
///
/// With a user namespace (`users`) the kernel refuses device nodes made
/// there and a sysfs for the host's network namespace: the device nodes
/// are the host's, bound one by one, and /sys is the host's, read-only.
pub fn mount_api(root: &InRoot, console: Option<&Path>, users: bool) -> Result<InRoot> {
    let mut proc = None;
    for m in API_MOUNTS {
        let target = root.mkdir_all(m.target, 0o755)?;
        let shown = root.show(m.target);
        if m.fstype == "proc" {
            // A detached mount whose descriptor is its root: the masks go
            // on exactly this proc, whatever a path would resolve to later.
            let fresh = io_step(
                "mounting",
                &shown,
                sys::new_fs_mount("proc", &[]).and_then(|fd| {
                    sys::mount_setattr(fd.as_fd(), NOSUID_NODEV_NOEXEC_ATTRS, false)?;
                    sys::move_mount_onto(fd.as_fd(), target.as_fd())?;
                    Ok(fd)
                }),
            )?;
            proc = Some(InRoot::from_fd(fresh, shown));
            continue;
        }
        if users && m.fstype == "sysfs" {
            match mount(Some("sysfs"), &fd_path(target.as_fd()), Some("sysfs"), m.flags, m.data) {
                Err(Errno::EPERM) => {
                    let host = host_path_fd(Path::new("/sys"))?;
                    bind_fd(host.as_fd(), target.as_fd(), true, RO_NOSUID_NODEV_NOEXEC, &shown)?;
                    // The host's cgroup mounts came along (locked: they
                    // cannot be left out). A tmpfs covers them: the
                    // machine's cgroup2 is the very superblock of the host's
                    // on a pure cgroup2 host, which the kernel will not
                    // mount on its own root (EBUSY).
                    let cgroup = root.mkdir_all("/sys/fs/cgroup", 0o755)?;
                    mount_on(
                        "tmpfs",
                        cgroup.as_fd(),
                        NOSUID_NODEV_NOEXEC,
                        Some("mode=755,size=64k"),
                        &root.show("/sys/fs/cgroup"),
                    )?;
                    continue;
                }
                r => step("mounting", &shown, r)?,
            }
            continue;
        }
        mount_on(m.fstype, target.as_fd(), m.flags, m.data, &shown)?;
    }
    for (name, major, minor) in DEVICE_NODES {
        let path = format!("/dev/{name}");
        if users {
            let host = Path::new("/dev").join(name);
            // /dev/net/tun only where the host has it.
            if *name == "net/tun" && !host.exists() {
                continue;
            }
            if let Some(dir) = path.rsplit_once('/').map(|(d, _)| d).filter(|d| *d != "/dev") {
                root.mkdir_all(dir, 0o755)?;
            }
            let target = root.mount_point_file(&path)?;
            let source = host_path_fd(&host)?;
            // Read-only: the node still opens for writing, but its owner
            // and mode (the host's node's) cannot be changed from inside,
            // where root may be its owner (PrivateUsers=identity).
            bind_fd(
                source.as_fd(),
                target.as_fd(),
                false,
                sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOEXEC,
                &root.show(&path),
            )?;
            continue;
        }
        root.mknod(&path, SFlag::S_IFCHR, 0o666, makedev(*major, *minor))?;
    }
    for (link, target) in DEV_LINKS {
        root.symlink(target, link)?;
    }
    if let Some(pty) = console {
        let target = root.mount_point_file("/dev/console")?;
        let source = host_path_fd(pty)?;
        bind_fd(source.as_fd(), target.as_fd(), false, 0, &root.show("/dev/console"))?;
    }
    Ok(proc.expect("the API mounts include proc"))
}

/// Step 3: /run/host with the host's os-release, the manager's name, and
/// inaccessible nodes used to mask paths. Returns the directory, for the
/// notify socket, which the caller binds before `restrict` makes it
/// read-only.
/// With a user namespace (`users`) there is no block node (the kernel
/// allows only the character node 0:0 there); the machine's systemd does
/// without.
pub fn populate_run_host(root: &InRoot, dns: &[std::net::IpAddr], users: bool) -> Result<OwnedFd> {
    root.mkdir_all(INACCESSIBLE_DIR, 0o755)?;
    root.mkdir_all(&format!("{INACCESSIBLE_DIR}/dir"), 0o000)?;
    for (name, kind) in INACCESSIBLE_NODES {
        if users && *kind == SFlag::S_IFBLK {
            continue;
        }
        root.mknod(&format!("{INACCESSIBLE_DIR}/{name}"), *kind, 0, makedev(0, 0))?;
    }
    let os_release = read_host_file(Path::new("/etc/os-release"))
        .or_else(|_| read_host_file(Path::new("/usr/lib/os-release")))
        .unwrap_or_default();
    write_new(root, "/run/host/os-release", &os_release)?;
    write_new(root, "/run/host/container-manager", b"berth\n")?;
    if !dns.is_empty() {
        write_new(root, RESOLV_CONF, resolv_conf_text(dns).as_bytes())?;
    }
    Ok(root.path_fd("opening", RUN_HOST)?)
}

fn write_new(root: &InRoot, path: &str, contents: &[u8]) -> Result<()> {
    let mut f = root.create(path, 0o444)?;
    io_step("writing", &root.show(path), std::io::Write::write_all(&mut f, contents))
}

/// A host file berth shows to the machine (bounded: /etc/resolv.conf could
/// be anything on a badly configured host).
fn read_host_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    fs::File::open(path)?.take(MAX_HOST_FILE).read_to_end(&mut buf)?;
    Ok(buf)
}

/// A file of the machine's proc: None when this kernel has none (only
/// then may a mask be skipped).
fn proc_entry(proc: &InRoot, path: &str) -> Result<Option<OwnedFd>> {
    let rel = path.strip_prefix("/proc").unwrap_or(path);
    match proc.open_at(rel, nix::fcntl::OFlag::O_PATH) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(PathError::errno("opening", proc.show(rel), e).into()),
    }
}

/// Step 4: masks and read-only parts of the machine's proc (by its own
/// descriptor from `mount_api`), and /run/host read-only (by the
/// descriptor from `populate_run_host`). `own_network`: /proc/sys/net
/// stays writable (the machine's network namespace is its own).
pub fn restrict(root: &InRoot, proc: &InRoot, run_host: BorrowedFd<'_>, own_network: bool) -> Result<()> {
    let inaccessible = root.path_fd("opening", &format!("{INACCESSIBLE_DIR}/reg"))?;
    for p in PROC_MASKED {
        if let Some(target) = proc_entry(proc, p)? {
            bind_fd(
                inaccessible.as_fd(),
                target.as_fd(),
                false,
                RO_NOSUID_NODEV_NOEXEC,
                &root.show(p),
            )?;
        }
    }
    // /proc/sys/net of a private network: a clone of the fresh proc's own
    // (writable) directory, taken before /proc/sys turns read-only and put
    // back over it after.
    let net = match own_network {
        true => proc_entry(proc, "/proc/sys/net")?
            .map(|d| {
                io_step(
                    "cloning",
                    &root.show("/proc/sys/net"),
                    sys::clone_mount(d.as_fd(), false),
                )
            })
            .transpose()?,
        false => None,
    };
    for p in PROC_READ_ONLY {
        if let Some(target) = proc_entry(proc, p)? {
            bind_fd(
                target.as_fd(),
                target.as_fd(),
                true,
                RO_NOSUID_NODEV_NOEXEC,
                &root.show(p),
            )?;
        }
    }
    if let Some(net) = net {
        // Resolved through the machine's proc again: the read-only bind
        // is on top now.
        let target = proc_entry(proc, "/proc/sys/net")?.ok_or_else(|| SetupError {
            what: "opening",
            path: root.show("/proc/sys/net"),
            why: Errno::ENOENT.desc().into(),
        })?;
        io_step(
            "mounting",
            &root.show("/proc/sys/net"),
            sys::mount_setattr(net.as_fd(), NOSUID_NODEV_NOEXEC_ATTRS, false)
                .and_then(|()| sys::move_mount_onto(net.as_fd(), target.as_fd())),
        )?;
    }
    bind_fd(run_host, run_host, false, RO_NOSUID_NODEV_NOEXEC, &root.show(RUN_HOST))
}

/// Whether the tree's `path` is a plain file (not a link, not anything else).
fn is_plain_file(root: &InRoot, path: &str) -> bool {
    root.kind_of(path) == Some(SFlag::S_IFREG)
}

/// A host file shown read-only over the tree's `path`.
fn bind_host_file(root: &InRoot, host: &Path, path: &str) -> Result<()> {
    let target = root.mount_point_file(path)?;
    let source = host_path_fd(host)?;
    bind_fd(
        source.as_fd(),
        target.as_fd(),
        false,
        sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
        &root.show(path),
    )
}

/// The resolver configuration made from DNS=, in /run/host.
const RESOLV_CONF: &str = "/run/host/resolv.conf";

fn resolv_conf_text(dns: &[std::net::IpAddr]) -> String {
    let mut text = String::from("# Written by berth from [Network] DNS= of this machine's settings.\n");
    for a in dns {
        text.push_str(&format!("nameserver {a}\n"));
    }
    text
}

/// DNS=: the resolver configuration berth wrote in /run/host, read-only
/// over the tree's /etc/resolv.conf: over the file, or over the link when
/// it is one (the tree is not changed; the machine's resolved, if any, may
/// not replace it), or on a new empty file when there is none.
pub fn generated_resolv_conf(root: &InRoot) -> Result<()> {
    const TARGET: &str = "/etc/resolv.conf";
    let target = match root.open_at(TARGET, nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW) {
        Ok(fd) => {
            let st = fstat(&fd).map_err(|e| PathError::errno("looking at", root.show(TARGET), e))?;
            let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
            if kind != SFlag::S_IFREG && kind != SFlag::S_IFLNK {
                return Err(SetupError {
                    what: "mounting the DNS= resolver configuration on",
                    path: root.show(TARGET),
                    why: "is neither a file nor a link".into(),
                });
            }
            fd
        }
        Err(Errno::ENOENT) => root.mount_point_file(TARGET)?,
        Err(e) => return Err(PathError::errno("opening", root.show(TARGET), e).into()),
    };
    let source = root.path_fd("opening", RESOLV_CONF)?;
    bind_fd(
        source.as_fd(),
        target.as_fd(),
        false,
        sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_NOEXEC,
        &root.show(TARGET),
    )
}

/// Step 5 (host network only): the host's resolver configuration. `Auto`:
/// read-only over the tree's /etc/resolv.conf when that is a plain file (a
/// tree whose resolv.conf is a link, to systemd-resolved's say, keeps its
/// own); `BindHost`: always, creating the file if needed; `CopyHost`: a
/// copy written into the tree (replacing a link there, never through it).
pub fn resolv_conf(root: &InRoot, mode: ResolvConf) -> Result<()> {
    const TARGET: &str = "/etc/resolv.conf";
    let host = Path::new("/etc/resolv.conf");
    if mode == ResolvConf::Off || !host.exists() {
        return Ok(());
    }
    match mode {
        ResolvConf::Off => Ok(()),
        ResolvConf::CopyHost => {
            let text = io_step("reading", host, read_host_file(host))?;
            Ok(root.replace_file(TARGET, &text, 0o644)?)
        }
        ResolvConf::Auto if !is_plain_file(root, TARGET) => Ok(()),
        ResolvConf::Auto => bind_host_file(root, host, TARGET),
        ResolvConf::BindHost => {
            if !is_plain_file(root, TARGET) {
                root.replace_file(TARGET, b"", 0o644)?;
            }
            bind_host_file(root, host, TARGET)
        }
    }
}

/// Timezone=: the host's zone for the machine. Off leaves the tree alone;
/// Copy writes the host's zone file into the tree; Bind shows it read-only
/// over the tree's /etc/localtime (a link there is replaced by a plain file
/// once); Auto binds only when that needs no change to the tree.
pub fn timezone(root: &InRoot, mode: Timezone) -> Result<()> {
    const TARGET: &str = "/etc/localtime";
    let Ok(host) = fs::canonicalize("/etc/localtime") else {
        return Ok(());
    };
    match mode {
        Timezone::Off => Ok(()),
        Timezone::Auto if !is_plain_file(root, TARGET) => Ok(()),
        Timezone::Copy => {
            let zone = io_step("reading", &host, read_host_file(&host))?;
            Ok(root.replace_file(TARGET, &zone, 0o644)?)
        }
        Timezone::Bind | Timezone::Auto => {
            if !is_plain_file(root, TARGET) {
                root.replace_file(TARGET, b"", 0o644)?;
            }
            bind_host_file(root, &host, TARGET)
        }
    }
}

/// LinkJournal=: the machine's journal directory lives on the host, as
/// /var/log/journal/MACHINE-ID, bound (nosuid, nodev) to the same path in
/// the machine. The caller refuses a machine id equal to the host's.
pub fn link_journal(root: &InRoot, mode: LinkJournal, machine_id: &str) -> Result<()> {
    let Some(host_dir) = host_journal_dir(mode, machine_id) else {
        return Ok(());
    };
    let path = format!("/var/log/journal/{machine_id}");
    let result = io_step("opening", &host_dir, open_host_journal_dir(&host_dir))
        .and_then(|source| Ok((source, root.mkdir_all(&path, 0o755)?)))
        .and_then(|(source, target)| {
            bind_fd(
                source.as_fd(),
                target.as_fd(),
                false,
                sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
                &root.show(&path),
            )
        });
    match (result, mode) {
        (Err(e), LinkJournal::Host) => Err(e),
        _ => Ok(()),
    }
}

/// The host's directory of the machine's journal when `mode` keeps it on
/// the host (host, try-host, and auto on a host with a persistent journal).
pub fn host_journal_dir(mode: LinkJournal, machine_id: &str) -> Option<PathBuf> {
    let wanted = match mode {
        LinkJournal::No | LinkJournal::Guest | LinkJournal::TryGuest => false,
        LinkJournal::Auto => Path::new("/var/log/journal").is_dir(),
        LinkJournal::Host | LinkJournal::TryHost => true,
    };
    let valid = machine_id.len() == 32 && machine_id.bytes().all(|b| b.is_ascii_hexdigit());
    (wanted && valid).then(|| Path::new("/var/log/journal").join(machine_id))
}

/// The host's journal directory of a machine (`host_journal_dir`), made if
/// missing, opened without following a link in its last component: a
/// link there (berth's own for LinkJournal=guest, left by a killed run,
/// points into some machine's tree) must never send berth elsewhere.
pub fn open_host_journal_dir(dir: &Path) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{openat, OFlag};
    let (parent, name) = match (dir.parent(), dir.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => return Err(Errno::EINVAL.into()),
    };
    let parent = nix::fcntl::open(
        parent,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    match nix::sys::stat::mkdirat(&parent, name, Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(openat(
        &parent,
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// LinkJournal=guest|try-guest: the machine's journal stays in its tree
/// (/var/log/journal/MACHINE-ID, made for `guest`), and the host gets a link
/// to it at the same path, where `journalctl -m` looks. Run on the host,
/// before the machine starts. The in-tree path must hold no link and stay
/// on the tree's own file system, so the host's link names exactly that
/// directory. An existing entry on the host is left alone (an error for
/// `guest`, unless it is this very link).
///
/// Returns the link, which the caller removes when the machine ends: root
/// inside could later turn a directory of that path into a link, and the
/// host's `journalctl -m` would follow it.
pub fn link_guest_journal(tree: &InRoot, mode: LinkJournal, machine_id: &str) -> Result<Option<PathBuf>> {
    let must = match mode {
        LinkJournal::Guest => true,
        LinkJournal::TryGuest => false,
        _ => return Ok(None),
    };
    let attempt = || -> Result<Option<PathBuf>> {
        let host_dir = Path::new("/var/log/journal");
        if !host_dir.is_dir() {
            return Err(SetupError {
                what: "linking the machine's journal into",
                path: host_dir.into(),
                why: "the host keeps no persistent journal there".into(),
            });
        }
        let inside = format!("/var/log/journal/{machine_id}");
        let flags = nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY;
        // try-guest: only a tree that keeps a persistent journal.
        if !must && tree.open_without_links("/var/log/journal", flags).is_err() {
            return Ok(None);
        }
        tree.mkdir_all(&inside, 0o2755)?;
        if let Err(e) = tree.open_without_links(&inside, flags) {
            return Err(PathError::errno("linking the journal of", tree.show(&inside), e).into());
        }
        let link = host_dir.join(machine_id);
        let target = tree.show(&inside);
        match fs::read_link(&link) {
            // This very link, left by a berth that was killed.
            Ok(t) if t == target => Ok(Some(link)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !link.exists() => {
                io_step(
                    "linking the machine's journal at",
                    &link,
                    std::os::unix::fs::symlink(&target, &link),
                )?;
                Ok(Some(link))
            }
            _ => Err(SetupError {
                what: "linking the machine's journal at",
                path: link,
                why: "something else is there already".into(),
            }),
        }
    };
    match attempt() {
        Err(e) if must => Err(e),
        Err(_) => Ok(None),
        Ok(link) => Ok(link),
    }
}

/// The MOUNT_ATTR_* flags of a Bind= (ro, nosuid, nodev, noexec).
pub fn bind_attrs(b: &crate::config::value::Bind) -> u64 {
    [
        (b.read_only, sys::MOUNT_ATTR_RDONLY),
        (b.nosuid, sys::MOUNT_ATTR_NOSUID),
        (b.nodev, sys::MOUNT_ATTR_NODEV),
        (b.noexec, sys::MOUNT_ATTR_NOEXEC),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .fold(0, |acc, (_, a)| acc | a)
}

/// [Files]: bind mounts, temporary file systems and inaccessible paths.
///
/// `premade` holds, per bind, the detached mount the supervisor made for a
/// machine with a user namespace (idmapped or not, its flags already set),
/// or None.
pub fn mount_files(root: &InRoot, files: &Files, premade: Vec<Option<OwnedFd>>) -> Result<()> {
    let mut premade = premade.into_iter();
    for b in &files.binds {
        let source_path = Path::new(&b.source);
        if let Some(mount) = premade.next().flatten() {
            let is_dir =
                step("looking at", source_path, fstat(&mount))?.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits();
            let target = if is_dir {
                root.mkdir_all(&b.target, 0o755)?
            } else {
                root.mount_point_file(&b.target)?
            };
            io_step(
                "mounting onto",
                &root.show(&b.target),
                sys::move_mount_onto(mount.as_fd(), target.as_fd()),
            )?;
            continue;
        }
        let source = host_path_fd(source_path)?;
        let is_dir =
            step("looking at", source_path, fstat(&source))?.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits();
        let target = if is_dir {
            root.mkdir_all(&b.target, 0o755)?
        } else {
            root.mount_point_file(&b.target)?
        };
        let attrs = bind_attrs(b);
        bind_fd(
            source.as_fd(),
            target.as_fd(),
            b.recursive,
            attrs,
            &root.show(&b.target),
        )?;
    }
    for (path, options) in &files.tmpfs {
        let target = root.mkdir_all(path, 0o755)?;
        let data = if options.is_empty() { "mode=0755" } else { options };
        mount_on("tmpfs", target.as_fd(), NOSUID_NODEV, Some(data), &root.show(path))?;
    }
    for path in &files.inaccessible {
        let target = root.path_fd("looking at", path)?;
        let kind = step("looking at", &root.show(path), fstat(&target))?.st_mode & SFlag::S_IFMT.bits();
        let node = match SFlag::from_bits_truncate(kind) {
            k if k == SFlag::S_IFDIR => "dir",
            k if k == SFlag::S_IFCHR => "chr",
            k if k == SFlag::S_IFBLK => "blk",
            k if k == SFlag::S_IFIFO => "fifo",
            k if k == SFlag::S_IFSOCK => "sock",
            _ => "reg",
        };
        let source = root.path_fd("opening", &format!("{INACCESSIBLE_DIR}/{node}"))?;
        bind_fd(
            source.as_fd(),
            target.as_fd(),
            false,
            RO_NOSUID_NODEV_NOEXEC,
            &root.show(path),
        )?;
    }
    Ok(())
}

/// Step 6: make the tree the root. pivot_root puts the old root on top of
/// the new one; detaching it leaves no path back to the host's file system,
/// so chroot("..") tricks end at the machine's own root.
pub fn enter(root: &InRoot) -> Result<()> {
    let shown = root.show("/");
    step("changing directory to", &shown, fchdir(root.fd()))?;
    step("pivot_root into", &shown, pivot_root(".", "."))?;
    step(
        "detaching the host's root from",
        &shown,
        umount2(".", MntFlags::MNT_DETACH),
    )?;
    step("changing directory to", Path::new("/"), chdir("/"))
}

/// Step 7 (no user namespace of the machine's own): lock every mount.
///
/// Why: root of the host's user namespace may umount a mask, remount
/// /proc/sys read-write, or mount a fresh proc or sysfs, whose
/// /proc/sys/kernel/core_pattern and /sys/kernel/uevent_helper run programs
/// as host root; nothing in the kernel stops real root there, and a seccomp
/// filter cannot read mount(2)'s file system type or path (pointers). What
/// the kernel does enforce is keyed on the *mount namespace's owner*: when a
/// mount namespace is copied into one owned by another user namespace,
/// every mount is locked (MNT_LOCKED: it cannot be unmounted apart from its
/// parent, and its read-only, nosuid, nodev and noexec flags cannot be
/// cleared), and in a mount namespace not owned by the host's user
/// namespace a new proc or sysfs is refused unless an unmasked, equally
/// writable instance is already visible there ("mount_too_revealing").
///
/// So the machine gets a copy of its mount namespace owned by an empty user
/// namespace (no ID maps), made by a helper process cloned into it, which
/// the init joins with setns(2); the init itself stays in the host's user
/// namespace with its capabilities, so the tree is booted unchanged. The
/// remaining way round is a mount namespace of the machine's own making,
/// which would again be owned by the host's user namespace: the seccomp
/// filter refuses CLONE_NEWNS without CLONE_NEWUSER (see `seccomp`).
/// systemd-nspawn leaves all of this open without -U; its developers'
/// advice is a user namespace, which berth's PrivateUsers= brings.
pub fn lock_mounts() -> Result<()> {
    let here = Path::new("/");
    let (wait_read, wait_write) = step("creating a pipe in", here, nix::unistd::pipe())?;
    let flags = libc::CLONE_NEWUSER | libc::CLONE_NEWNS;
    let (helper, pidfd) = match io_step("creating the mount lock of", here, sys::clone_process(flags, None))? {
        sys::Cloned::Child => {
            // The helper only holds its namespaces until the init joined
            // them: it waits for end-of-file, then exits. (Async-signal-safe
            // calls only: this is a copy of the process after clone.)
            drop(wait_write);
            let mut b = [0u8; 1];
            let _ = nix::unistd::read(&wait_read, &mut b);
            sys::exit_now(0)
        }
        sys::Cloned::Parent { child, pidfd } => (child, pidfd),
    };
    drop(wait_read);
    // Through the helper's pidfd: no path the tree could redirect.
    let joined = step(
        "joining the locked mount namespace in",
        here,
        nix::sched::setns(&pidfd, nix::sched::CloneFlags::CLONE_NEWNS),
    );
    drop(wait_write);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(helper), None);
    joined?;
    // The point of it all: the mount namespace must not belong to the
    // host's user namespace.
    match sys::mount_ns_owned_by_own_user_ns() {
        Ok(false) => {}
        Ok(true) => {
            return Err(SetupError {
                what: "locking the mounts of",
                path: here.into(),
                why: "the mount namespace still belongs to the host's user namespace".into(),
            })
        }
        Err(e) => return io_step("checking the mount lock of", here, Err(e)),
    }
    step("changing directory to", here, chdir("/"))
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
    }

    #[test]
    fn setup_errors_read_as_one_line() {
        let e = step::<(), Errno>("mounting", Path::new("/t/proc"), Err(Errno::EPERM)).unwrap_err();
        assert_eq!(e.to_string(), "mounting /t/proc: Operation not permitted");
    }
}
