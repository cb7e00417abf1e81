//! `berth import-tar` and `berth export-tar`: a machine's tree from and to a
//! tarball (plain, gzip, xz or zstd).
//!
//! A tarball is untrusted input, and extracting one as root is where
//! archivers have let files escape for decades. So import-tar does not use
//! an archiver's "unpack": the stream is parsed here ([`TarStream`]: the
//! `tar` crate's reader splits PAX records at newlines, which binary xattr
//! values and GNU tar's ACL text contain), and every entry is created here,
//! relative to a directory descriptor, never through a link:
//!
//! - entry names are normalized ("./etc//x" is "etc/x"); an absolute name
//!   or any `..` component is refused;
//! - the parent of an entry is opened with openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV) from the
//!   new tree's root: a path through a symlink extracted earlier fails
//!   (ELOOP) and is refused, naming the link;
//! - the entry itself is made with openat(O_CREAT|O_EXCL|O_NOFOLLOW),
//!   mkdirat, symlinkat, mknodat or linkat in that parent, and its owner,
//!   mode, extended attributes and times are set on its descriptor (or
//!   with AT_SYMLINK_NOFOLLOW, or through /proc/self/fd/N of an
//!   O_PATH|O_NOFOLLOW descriptor, which names exactly that inode);
//! - a symlink's relative target may not climb above the tree's root from
//!   the link's directory; absolute targets are normal in OS trees and
//!   resolve inside the tree at boot (berth resolves in root), so they are
//!   kept. A hard link's target must be an earlier entry, named without
//!   `..` and not absolute; a hard link to a symlink is checked as a symlink
//!   at its new place;
//! - device nodes: only the harmless character devices a container's /dev
//!   has (null, zero, full, random, urandom, tty); console, ptmx and
//!   net/tun nodes are left out with a note (berth gives machines their
//!   own); every block device and any other character device is refused.
//!
//! Everything goes into a hidden directory next to the trees,
//! `.import-NAME-RANDOM`, which becomes NAME by one rename(2) only when the
//! whole stream was read, its SHA-256 matched (--checksum: of the bytes as
//! read, compressed; a FILE is also hashed before anything is extracted),
//! and the tree has an os-release. The tarball's own entry for the root
//! ("./": mode, owner, ACLs) is applied last: until then the tree is 0700
//! and root's. Any error, and
//! SIGINT, SIGTERM or SIGHUP (blocked, and watched through a signalfd, also
//! while waiting for input), removes it; one left by a SIGKILLed import is
//! removed by the next import of that name (the name lock of NAME is held
//! meanwhile, so it cannot belong to a running import). `--force` replaces
//! an existing tree with renameat2(RENAME_EXCHANGE), then removes the old
//! one, under the name lock and the tree's lock, so never under a machine.
//!
//! Owners are numeric (the uname/gname fields are ignored: names would be
//! looked up in the host's passwd, not the tree's). Extended attributes come
//! from PAX `SCHILY.xattr.*` records; ACLs from `SCHILY.xattr.system.posix_acl_*`
//! when present (GNU tar --xattrs writes them), else from GNU tar's
//! `SCHILY.acl.access` / `SCHILY.acl.default` text, converted to the kernel's
//! xattr form; names in that text are looked up in the imported tree's own
//! /etc/passwd and /etc/group, never the host's.
//!
//! export-tar walks the tree the same way (openat with O_NOFOLLOW, fstatat
//! with AT_SYMLINK_NOFOLLOW) and writes a POSIX (PAX) tarball: numeric
//! owners, modes, mtimes with nanoseconds, every xattr as SCHILY.xattr
//! (ACLs also as GNU tar's SCHILY.acl text, with numeric ids), hard links as
//! links, devices and FIFOs; sockets are skipped with a note.
//!
//! Trees live in /var/lib/machines (tree::MACHINES_DIR), which must be
//! root's and not writable by group or others (refused otherwise, not
//! fixed). The tests and the bench give another directory with the hidden
//! `--machines-dir DIR` of these two commands: a flag, written on the
//! command line, where an environment variable (the former
//! BERTH_MACHINES_DIR) would be inherited unseen through sudo -E, a unit
//! or a shell and redirect where root writes; the same binary (debug,
//! release or the package's, as the VM tier runs them) serves the tests.
//! tree.rs has no such setting; `berth boot -D` takes any directory.
//!
//! Trees are removed (--force, leftovers, failures) by a walk of our own:
//! refused when /proc/self/mountinfo lists a mount at or below the tree,
//! and the walk opens nothing across a mount (RESOLVE_NO_XDEV) or on
//! another device; --force removes the old tree only while it is still
//! the inode (device, inode) it checked.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Read, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, renameat2, AtFlags, Flock, FlockArg, OFlag, OpenHow, RenameFlags, ResolveFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::UtimensatFlags;
use nix::sys::stat::{fchmod, fstat, fstatat, futimens, mkdirat, mknodat, utimensat, FileStat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use sha2::{Digest, Sha256};

use crate::cli::{ExportTarArgs, ImportTarArgs};
use crate::inroot::{fd_path, InRoot, MAX_READ};
use crate::lock::{tree_lock_path, LOCK_DIR};
use crate::name::MachineName;
use crate::util::os_error;

/// Prefix of the hidden directory an import extracts into.
const TEMP_PREFIX: &str = ".import-";

const OS_RELEASE: &[&str] = &["/etc/os-release", "/usr/lib/os-release"];

/// Character devices an imported tree may hold: the harmless ones of a
/// container's /dev.
const ALLOWED_CHAR_DEVICES: &[(u64, u64, &str)] = &[
    (1, 3, "null"),
    (1, 5, "zero"),
    (1, 7, "full"),
    (1, 8, "random"),
    (1, 9, "urandom"),
    (5, 0, "tty"),
];

/// Character devices an OS tree usually has (debootstrap makes console
/// and ptmx) that are left out of the imported tree, with a note: console
/// (5:1) is the host's console, ptmx (5:2) opens a pty of the host's
/// initial devpts instance, net/tun (10:200) reaches the network stack;
/// berth gives a machine its own /dev with what it needs of those at boot,
/// and a tree's own nodes would work for anyone who can reach the tree on
/// the host. Refusing them would refuse every debootstrap tree.
const SKIPPED_CHAR_DEVICES: &[(u64, u64, &str)] = &[(5, 1, "console"), (5, 2, "ptmx"), (10, 200, "net/tun")];

/// The extended attributes import-tar sets: user.*, the POSIX ACLs and
/// file capabilities.
fn importable_xattr(name: &str) -> bool {
    name.starts_with("user.")
        || name == "system.posix_acl_access"
        || name == "system.posix_acl_default"
        || name == "security.capability"
}

/// Reads and writes of file data go through buffers of this size.
const BUF_SIZE: usize = 256 * 1024;

/// Where the trees are: /var/lib/machines, or the hidden
/// `--machines-dir` of the tests (see the module's documentation).
pub fn machines_dir(given: Option<&Path>) -> PathBuf {
    match given {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from(crate::tree::MACHINES_DIR),
    }
}

/// Open the machines directory, refused unless it is root's and nobody
/// else may write it. Refused rather than fixed with fchmod: a directory
/// that others could write may already hold what they put there (a
/// symbolic link or a fake leftover named like a tree), and changing an
/// administrator's permissions silently would hide that.
fn open_machines_dir(dir: &Path) -> anyhow::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| anyhow!("cannot open {}: {}", dir.display(), e.desc()))?;
    let st = fstat(&fd).map_err(|e| anyhow!("cannot look at {}: {}", dir.display(), e.desc()))?;
    if st.st_uid != 0 {
        bail!(
            "{} belongs to uid {}, not root: refusing to use it (its owner could change the trees in it)",
            dir.display(),
            st.st_uid
        );
    }
    if st.st_mode & 0o022 != 0 {
        bail!(
            "{} may be written by its group or others (mode {:04o}): refusing to use it (chmod go-w it)",
            dir.display(),
            st.st_mode & 0o7777
        );
    }
    Ok(fd)
}

// ---------------------------------------------------------------------------
// Removing a tree (--force, leftovers, a failed import): never across a
// mount. A tree can hold mounts (a machine's bind mount left behind, an
// administrator's): std::fs::remove_dir_all would empty them.

/// The first mount point /proc/self/mountinfo lists at `target` or below.
fn mount_at_or_under(target: &Path) -> anyhow::Result<Option<PathBuf>> {
    let table =
        std::fs::read("/proc/self/mountinfo").map_err(|e| anyhow!("reading /proc/self/mountinfo: {}", os_error(&e)))?;
    let first = crate::mountinfo::at_or_under(&table, target).next().map(|m| m.point);
    Ok(first)
}

/// The kernel's name of a directory descriptor (its path from the root).
fn real_path(fd: BorrowedFd<'_>) -> anyhow::Result<PathBuf> {
    std::fs::read_link(fd_path(fd)).map_err(|e| anyhow!("cannot tell where a directory is: {}", os_error(&e)))
}

fn identity(st: &FileStat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

/// A directory being emptied: its descriptor (closed when deep, opened
/// again from the root), identity, name in its parent, subdirectories left.
struct Level {
    fd: Option<OwnedFd>,
    id: (u64, u64),
    name: Vec<u8>,
    subdirs: Vec<Vec<u8>>,
}

/// Descriptors the walk keeps open at most (the rest are reopened).
const OPEN_LEVELS: usize = 32;

/// Remove `name` in `parent` (shown as `shown`) and everything in it, when
/// it is still `expect` (device, inode) if given; never across a mount
/// (one /proc/self/mountinfo lists at or below it is refused before
/// anything is removed, and the walk neither opens a mount point nor a
/// directory of another device), never through a symbolic link.
fn remove_tree(parent: &OwnedFd, name: &str, shown: &Path, expect: Option<(u64, u64)>) -> anyhow::Result<()> {
    let st = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => bail!("cannot look at {}: {}", shown.display(), e.desc()),
    };
    if expect.is_some_and(|id| id != identity(&st)) {
        bail!(
            "{} is not the one berth checked (it was replaced meanwhile): not removing it",
            shown.display()
        );
    }
    if kind_of(&st) != SFlag::S_IFDIR {
        return unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| anyhow!("cannot remove {}: {}", shown.display(), e.desc()));
    }
    let real = real_path(parent.as_fd())?.join(name);
    if let Some(m) = mount_at_or_under(&real)? {
        bail!(
            "{} holds a mount at {}: not removing it (unmount it first)",
            shown.display(),
            m.display()
        );
    }
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
    let open_err = |path: &[u8], e: Errno| match e {
        Errno::EXDEV => anyhow!(
            "{}: {} is a mount point: not removing it (unmount it first)",
            shown.display(),
            show(path)
        ),
        e => anyhow!("cannot open {}: {}: {}", shown.display(), show(path), e.desc()),
    };
    let top = beneath(parent.as_fd(), name.as_bytes(), dir_flags).map_err(|e| open_err(b".", e))?;
    let top_st = fstat(&top).map_err(|e| anyhow!("cannot look at {}: {}", shown.display(), e.desc()))?;
    if identity(&top_st) != identity(&st) {
        bail!("{} changed while berth looked at it: not removing it", shown.display());
    }
    let dev = top_st.st_dev;
    let mut path: Vec<Vec<u8>> = Vec::new();
    let subdirs = empty_dir(&top, shown, b".")?;
    let mut stack = vec![Level {
        fd: Some(top),
        id: identity(&top_st),
        name: name.as_bytes().to_vec(),
        subdirs,
    }];
    while let Some(last) = stack.last_mut() {
        if let Some(sub) = last.subdirs.pop() {
            let here = stack.len() - 1;
            let fd = level_fd(&mut stack, here, shown)?;
            path.push(sub.clone());
            let shown_path = join(&path.iter().map(Vec::as_slice).collect::<Vec<_>>());
            let child = match beneath(fd.as_fd(), &sub, dir_flags) {
                Ok(c) => c,
                Err(Errno::ENOENT) => {
                    path.pop();
                    continue;
                }
                Err(e) => return Err(open_err(&shown_path, e)),
            };
            let cst = fstat(&child).map_err(|e| anyhow!("cannot look at {}: {}", shown.display(), e.desc()))?;
            if cst.st_dev != dev {
                bail!(
                    "{}: {} is on another file system: not removing it",
                    shown.display(),
                    show(&shown_path)
                );
            }
            let subdirs = empty_dir(&child, shown, &shown_path)?;
            stack.push(Level {
                fd: Some(child),
                id: identity(&cst),
                name: sub,
                subdirs,
            });
            if stack.len() > OPEN_LEVELS + 1 {
                let n = stack.len();
                stack[n - OPEN_LEVELS - 1].fd = None;
            }
        } else {
            let done = stack.pop().expect("not empty");
            path.pop();
            match stack.len() {
                0 => unlinkat(parent, name, UnlinkatFlags::RemoveDir),
                n => {
                    let fd = level_fd(&mut stack, n - 1, shown)?;
                    unlinkat(&fd, as_path(&done.name), UnlinkatFlags::RemoveDir)
                }
            }
            .map_err(|e| anyhow!("cannot remove {}: {}", shown.display(), e.desc()))?;
        }
    }
    Ok(())
}

/// The descriptor of level `i`, opened again (one component at a time
/// from the nearest open level, each checked to be the same directory)
/// when it was closed.
fn level_fd(stack: &mut [Level], i: usize, shown: &Path) -> anyhow::Result<OwnedFd> {
    if let Some(fd) = &stack[i].fd {
        return fd.try_clone().context("duplicating a descriptor");
    }
    let j = (0..i)
        .rev()
        .find(|j| stack[*j].fd.is_some())
        .expect("the top stays open");
    let mut fd = stack[j]
        .fd
        .as_ref()
        .expect("open")
        .try_clone()
        .context("duplicating a descriptor")?;
    for level in &stack[j + 1..=i] {
        fd = beneath(fd.as_fd(), &level.name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .map_err(|e| anyhow!("cannot open a directory of {} again: {}", shown.display(), e.desc()))?;
        let st = fstat(&fd).map_err(|e| anyhow!("cannot look at {}: {}", shown.display(), e.desc()))?;
        if identity(&st) != level.id {
            bail!("{} changed while berth removed it: stopped", shown.display());
        }
    }
    stack[i].fd = Some(fd.try_clone().context("duplicating a descriptor")?);
    Ok(fd)
}

/// Remove what is in `dir` except directories; returns their names.
fn empty_dir(dir: &OwnedFd, shown: &Path, path: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    {
        let mut list = nix::dir::Dir::openat(
            dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| anyhow!("cannot read {}: {}: {}", shown.display(), show(path), e.desc()))?;
        for ent in list.iter() {
            let ent = ent.map_err(|e| anyhow!("cannot read {}: {}: {}", shown.display(), show(path), e.desc()))?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push((n.to_vec(), ent.file_type()));
            }
        }
    }
    let mut subdirs = Vec::new();
    for (n, t) in names {
        let is_dir = match t {
            Some(nix::dir::Type::Directory) => true,
            Some(_) => false,
            None => match fstatat(dir, as_path(&n), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => kind_of(&st) == SFlag::S_IFDIR,
                Err(Errno::ENOENT) => continue,
                Err(e) => bail!("cannot look at {}: {}: {}", shown.display(), show(&n), e.desc()),
            },
        };
        if is_dir {
            subdirs.push(n);
            continue;
        }
        match unlinkat(dir, as_path(&n), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            // A directory after all (replaced since the listing).
            Err(Errno::EISDIR) => subdirs.push(n),
            Err(e) => bail!("cannot remove {}: {}: {}", shown.display(), show(&n), e.desc()),
        }
    }
    Ok(subdirs)
}

// ---------------------------------------------------------------------------
// Signals: blocked for the whole command, read from a signalfd, so that a
// Ctrl-C is an error like any other and the cleanup runs.

/// SIGINT, SIGTERM or SIGHUP arrived.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {0}")]
pub struct Interrupted(&'static str);

struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Block SIGINT, SIGTERM and SIGHUP and watch them.
    fn block() -> anyhow::Result<Self> {
        let mut set = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            set.add(s);
        }
        set.thread_block().context("blocking signals")?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .context("creating a signalfd")?;
        Ok(Signals { fd })
    }

    /// An error if one of the signals is pending.
    fn check(&self) -> Result<(), Interrupted> {
        match self.fd.read_signal() {
            Ok(Some(info)) => Err(Interrupted(
                Signal::try_from(info.ssi_signo as i32).map_or("a signal", |s| s.as_str()),
            )),
            _ => Ok(()),
        }
    }
}

/// An I/O error carrying an interruption, for readers and writers.
fn interrupted_io(i: Interrupted) -> io::Error {
    io::Error::other(i)
}

/// The interruption inside an I/O error, if it is one.
fn as_interrupted(e: &io::Error) -> Option<Interrupted> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Interrupted>())
        .map(|i| Interrupted(i.0))
}

// ---------------------------------------------------------------------------
// Progress on a terminal.

struct Progress(ProgressBar);

impl Progress {
    /// A progress line on stderr when it is a terminal: bytes (of `len`
    /// when known), rate, and the entries counted in the message.
    fn new(len: Option<u64>, prefix: &'static str) -> Self {
        if !io::stderr().is_terminal() {
            return Progress(ProgressBar::hidden());
        }
        let template = if len.is_some() {
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} ({elapsed})"
        } else {
            "{spinner} {prefix} {bytes} {binary_bytes_per_sec} {msg} ({elapsed})"
        };
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let pb = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr()).with_style(style);
        pb.set_prefix(prefix);
        Progress(pb)
    }

    fn entries(&self, n: u64) {
        if n % 64 == 0 && !self.0.is_hidden() {
            self.0.set_message(format!("{n} entries"));
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

// ---------------------------------------------------------------------------
// Locks (see lock.rs for the scheme: one per name, one per tree).

/// The name lock of `name`, exclusive, or an error saying who holds it.
fn lock_name(name: &MachineName) -> anyhow::Result<Flock<File>> {
    let path = Path::new(LOCK_DIR).join(format!("{name}.lock"));
    let file = open_lock_file(&path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, Errno::EWOULDBLOCK)) => bail!(
            "machine \"{name}\" is running, or being imported (lock {} is held)",
            path.display()
        ),
        Err((_, e)) => bail!("cannot lock {}: {}", path.display(), e.desc()),
    }
}

/// The lock of the tree at `tree` (its directory's identity, as boot
/// takes it), exclusive for import --force, shared for export.
fn lock_tree(tree: &Path, identity: (u64, u64), exclusive: bool) -> anyhow::Result<Flock<File>> {
    let path = tree_lock_path(Path::new(LOCK_DIR), identity);
    let file = open_lock_file(&path)?;
    let arg = if exclusive {
        FlockArg::LockExclusiveNonblock
    } else {
        FlockArg::LockSharedNonblock
    };
    match Flock::lock(file, arg) {
        Ok(lock) => Ok(lock),
        Err((file, Errno::EWOULDBLOCK)) => {
            let holder = lock_holder(&file);
            if exclusive {
                bail!(
                    "{} is in use by {holder} (lock {} is held): stop it first",
                    tree.display(),
                    path.display()
                )
            }
            bail!(
                "{} is in use by {holder}, which may write it (lock {} is held): stop it first, or run it read-only",
                tree.display(),
                path.display()
            )
        }
        Err((_, e)) => bail!("cannot lock {}: {}", path.display(), e.desc()),
    }
}

/// Who holds a tree lock: an exclusive holder writes its name into it.
fn lock_holder(file: &File) -> String {
    let mut text = String::new();
    let _ = file.take(256).read_to_string(&mut text);
    match MachineName::parse(text.trim_end()) {
        Ok(n) => format!("machine \"{n}\""),
        Err(_) => "a machine".to_string(),
    }
}

fn open_lock_file(path: &Path) -> anyhow::Result<File> {
    let dir = path.parent().expect("lock files are in a directory");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| anyhow!("cannot create {}: {}", dir.display(), os_error(&e)))?;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| anyhow!("cannot open {}: {}", path.display(), os_error(&e)))
}

// ---------------------------------------------------------------------------
// import-tar

pub fn import_tar(args: ImportTarArgs) -> anyhow::Result<i32> {
    let name = MachineName::parse(&args.name)?;
    crate::log::set_machine(name.as_str());
    let want = args.checksum.as_deref().map(parse_checksum).transpose()?;
    let stdin = args.file.as_os_str() == "-";
    let shown = if stdin {
        "standard input".to_string()
    } else {
        args.file.display().to_string()
    };
    let signals = Signals::block()?;
    let done = import(&args, &name, want, stdin, &signals)
        .with_context(|| format!("cannot import {shown} as machine \"{name}\""))?;
    tracing::info!(
        "imported machine \"{name}\" into {} ({} entries, {} bytes read{})",
        done.tree.display(),
        done.entries,
        done.bytes,
        if done.replaced { ", the old tree replaced" } else { "" }
    );
    Ok(0)
}

/// `sha256:HEX` (64 hex digits, either case) as the digest's bytes.
pub fn parse_checksum(text: &str) -> anyhow::Result<[u8; 32]> {
    let bad = || anyhow!("invalid --checksum \"{text}\": expected sha256: and 64 hexadecimal digits");
    let hex = text.strip_prefix("sha256:").ok_or_else(bad)?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Imported {
    tree: PathBuf,
    entries: u64,
    bytes: u64,
    replaced: bool,
}

fn import(
    args: &ImportTarArgs,
    name: &MachineName,
    want: Option<[u8; 32]>,
    stdin: bool,
    signals: &Signals,
) -> anyhow::Result<Imported> {
    let dir = machines_dir(args.machines_dir.as_deref());
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| anyhow!("cannot create {}: {}", dir.display(), os_error(&e)))?;
    }
    let dir_fd = open_machines_dir(&dir)?;

    // Held to the end: no other import of NAME, no machine NAME.
    let _name_lock = lock_name(name)?;
    remove_leftovers(&dir, &dir_fd, name);

    let target = dir.join(name.as_str());
    // What --force replaces, by identity: checked again before the
    // exchange and before the old tree is removed.
    let old = match fstatat(&dir_fd, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Some(identity(&st)),
        Err(Errno::ENOENT) => None,
        Err(e) => bail!("cannot look at {}: {}", target.display(), e.desc()),
    };
    let _tree_lock = if old.is_some() {
        if !args.force {
            bail!("{} exists (use --force to replace it)", target.display());
        }
        // Before anything is read: a mount in the old tree would stop its
        // removal after the exchange, when the new tree is already in place.
        let real = real_path(dir_fd.as_fd())?.join(name.as_str());
        if let Some(m) = mount_at_or_under(&real)? {
            bail!(
                "{} holds a mount at {}: refusing to replace it (unmount it first)",
                target.display(),
                m.display()
            );
        }
        match std::fs::metadata(&target) {
            Ok(m) => Some(lock_tree(&target, (m.dev(), m.ino()), true)?),
            Err(_) => None,
        }
    } else {
        None
    };

    let (input, len) = if stdin {
        if io::stdin().is_terminal() {
            bail!("refusing to read a tarball from a terminal: redirect standard input, or give a FILE");
        }
        let fd = nix::unistd::dup(io::stdin().as_fd()).context("duplicating standard input")?;
        (fd, None)
    } else {
        let file = File::open(&args.file).map_err(|e| anyhow!("cannot open it: {}", os_error(&e)))?;
        let meta = file
            .metadata()
            .map_err(|e| anyhow!("cannot open it: {}", os_error(&e)))?;
        if meta.is_dir() {
            bail!("it is a directory");
        }
        (OwnedFd::from(file), meta.is_file().then_some(meta.len()))
    };
    // A file is checked before anything of it is extracted (and hashed
    // again while it is, in case it changes meanwhile); a pipe can be
    // hashed only as it streams, and is refused before the rename.
    if let (Some(want), Some(len)) = (want, len) {
        check_digest(&hash_file(&input, len, signals)?, &want)?;
        nix::unistd::lseek(&input, 0, nix::unistd::Whence::SeekSet)
            .map_err(|e| anyhow!("cannot read it again from its start: {}", e.desc()))?;
    }

    let progress = Progress::new(len, "importing");
    let mut temp = TempTree::create(&dir, &dir_fd, name)?;
    let root_fd = temp.open(&dir_fd)?;
    let mut input = Input::new(input, signals, want.is_some(), progress.0.clone());
    let entries = extract(&mut input, &root_fd, &temp.path(), &progress)?;
    let (digest, bytes) = input.finish()?;
    if let (Some(want), Some(digest)) = (want, digest) {
        check_digest(&digest, &want)?;
    }
    check_os_release(&root_fd, &temp.path())?;
    progress.0.set_message(format!("{entries} entries, syncing to disk"));
    nix::unistd::syncfs(&root_fd).map_err(|e| anyhow!("syncing the new tree: {}", e.desc()))?;
    signals.check()?;
    drop(progress);

    // Into place: exchanged with the old tree (--force), or renamed where
    // nothing is.
    let mut replaced = false;
    if let Some(old) = old {
        match fstatat(&dir_fd, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if identity(&st) == old => {}
            Ok(_) => bail!(
                "{} was replaced by something else while importing: not replacing it",
                target.display()
            ),
            Err(Errno::ENOENT) => {}
            Err(e) => bail!("cannot look at {}: {}", target.display(), e.desc()),
        }
        match renameat2(
            &dir_fd,
            temp.name.as_str(),
            &dir_fd,
            name.as_str(),
            RenameFlags::RENAME_EXCHANGE,
        ) {
            Ok(()) => replaced = true,
            Err(Errno::ENOENT) => {}
            Err(e) => bail!("cannot replace {}: {}", target.display(), e.desc()),
        }
    }
    if !replaced {
        match renameat2(
            &dir_fd,
            temp.name.as_str(),
            &dir_fd,
            name.as_str(),
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => temp.disarm(),
            Err(Errno::EEXIST) => bail!(
                "{} appeared while importing (use --force to replace it)",
                target.display()
            ),
            Err(e) => bail!(
                "cannot rename {} to {}: {}",
                temp.path().display(),
                target.display(),
                e.desc()
            ),
        }
    } else {
        // The old tree is now at the temporary name: remove it, if it is
        // still the one checked above.
        let old_path = temp.path();
        temp.disarm();
        if let Err(e) = remove_tree(&dir_fd, &temp.name, &old_path, old) {
            tracing::warn!(
                "the old tree, moved to {}, was not removed: {e:#} (the next import of \"{name}\" removes it)",
                old_path.display(),
            );
        }
    }
    Ok(Imported {
        tree: target,
        entries,
        bytes,
        replaced,
    })
}

/// The SHA-256 of the `len` bytes of a file, read from where it is (with
/// the import's own reader, on a duplicate sharing the file's offset).
fn hash_file(fd: &OwnedFd, len: u64, signals: &Signals) -> anyhow::Result<[u8; 32]> {
    let progress = Progress::new(Some(len), "verifying");
    let fd = fd.try_clone().context("duplicating a descriptor")?;
    let (digest, _) = Input::new(fd, signals, true, progress.0.clone()).finish()?;
    Ok(digest.expect("Input hashes when asked to"))
}

/// `digest` is the SHA-256 that --checksum wants, or the mismatch.
fn check_digest(digest: &[u8; 32], want: &[u8; 32]) -> anyhow::Result<()> {
    if digest != want {
        bail!(
            "checksum mismatch: its SHA-256 is sha256:{}, --checksum says sha256:{}",
            hex(digest),
            hex(want)
        );
    }
    Ok(())
}

/// The machine name a temporary directory was made for, if it is one.
fn leftover_of(file_name: &str) -> Option<&str> {
    let rest = file_name.strip_prefix(TEMP_PREFIX)?;
    let (name, random) = rest.rsplit_once('-')?;
    (random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit())).then_some(name)
}

/// Remove what interrupted imports of `name` left (the caller holds the
/// name lock, so no import of it runs).
fn remove_leftovers(dir: &Path, dir_fd: &OwnedFd, name: &MachineName) {
    let Ok(list) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in list.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if leftover_of(file_name) != Some(name.as_str()) {
            continue;
        }
        let path = entry.path();
        match remove_tree(dir_fd, file_name, &path, None) {
            Ok(()) => tracing::info!(
                "removed {}, left by an interrupted import of \"{name}\"",
                path.display()
            ),
            Err(e) => tracing::warn!("{e:#}"),
        }
    }
}

/// The hidden directory an import extracts into; removed when dropped
/// unless disarmed.
struct TempTree {
    dir: PathBuf,
    dir_fd: OwnedFd,
    name: String,
    armed: bool,
}

impl TempTree {
    fn create(dir: &Path, dir_fd: &OwnedFd, name: &MachineName) -> anyhow::Result<Self> {
        use std::hash::{BuildHasher, Hasher};
        for _ in 0..16 {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            let temp = format!("{TEMP_PREFIX}{name}-{:016x}", h.finish());
            match mkdirat(dir_fd, temp.as_str(), Mode::from_bits_truncate(0o700)) {
                Ok(()) => {
                    return Ok(TempTree {
                        dir: dir.to_path_buf(),
                        dir_fd: dir_fd.try_clone().context("duplicating a descriptor")?,
                        name: temp,
                        armed: true,
                    })
                }
                Err(Errno::EEXIST) => continue,
                Err(e) => bail!("cannot create {}: {}", dir.join(&temp).display(), e.desc()),
            }
        }
        bail!("cannot create a temporary directory in {}", dir.display())
    }

    fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    fn open(&self, dir_fd: &OwnedFd) -> anyhow::Result<OwnedFd> {
        openat(
            dir_fd,
            self.name.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| anyhow!("cannot open {}: {}", self.path().display(), e.desc()))
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = remove_tree(&self.dir_fd, &self.name, &self.path(), None) {
                tracing::warn!("{e:#}");
            }
        }
    }
}

/// The bytes of the tarball as read: hashed, counted, and read only when
/// no signal is pending (poll waits on the input and the signalfd both, so
/// a stalled pipe does not hold off a Ctrl-C).
struct Input<'s> {
    fd: OwnedFd,
    signals: &'s Signals,
    /// Only when a checksum is to be checked.
    hasher: Option<Sha256>,
    bytes: u64,
    progress: ProgressBar,
}

impl<'s> Input<'s> {
    fn new(fd: OwnedFd, signals: &'s Signals, hash: bool, progress: ProgressBar) -> Self {
        Input {
            fd,
            signals,
            hasher: hash.then(Sha256::new),
            bytes: 0,
            progress,
        }
    }

    /// Read what is left (for the checksum), then the digest and the count.
    fn finish(mut self) -> anyhow::Result<(Option<[u8; 32]>, u64)> {
        io::copy(&mut self, &mut io::sink()).map_err(read_error)?;
        Ok((self.hasher.map(|h| h.finalize().into()), self.bytes))
    }
}

impl Read for Input<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut fds = [
                PollFd::new(self.fd.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.signals.fd.as_fd(), PollFlags::POLLIN),
            ];
            match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            self.signals.check().map_err(interrupted_io)?;
            match nix::unistd::read(&self.fd, buf) {
                Ok(n) => {
                    if let Some(h) = &mut self.hasher {
                        h.update(&buf[..n]);
                    }
                    self.bytes += n as u64;
                    self.progress.inc(n as u64);
                    return Ok(n);
                }
                Err(Errno::EINTR | Errno::EAGAIN) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// An error of reading the tarball, as a message (or the interruption).
fn read_error(e: io::Error) -> anyhow::Error {
    if let Some(i) = as_interrupted(&e) {
        return i.into();
    }
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return anyhow!("it is cut short: a truncated tarball?");
    }
    anyhow!("reading the tarball: {}", os_error(&e))
}

// ---------------------------------------------------------------------------
// The tar stream, parsed here: ustar, GNU and PAX headers, GNU long names,
// base-256 numbers, PAX records by their length (values are binary: an
// xattr may hold '\n', GNU tar's ACL text does), old GNU and PAX sparse
// files. (The `tar` crate splits PAX records at '\n' and then skips its
// own size/uid/gid records: a parser and the crate would disagree on where
// entries are. It still writes the tarballs of export-tar.)

const BLOCK: usize = 512;

/// The most the extension headers of one entry may hold.
const MAX_EXTENSION: u64 = 16 << 20;
/// The most the extension headers of one entry (x, L, K) may add up to,
/// and all global (g) headers together.
const MAX_EXTENSIONS_PER_ENTRY: u64 = 16 << 20;
const MAX_GLOBAL: u64 = 1 << 20;
/// The most regions a sparse file's map may list (16 bytes each in
/// memory): GNU tar writes one per run of data, and a file needing more is
/// better imported whole.
pub const MAX_SPARSE_REGIONS: usize = 1 << 20;
/// The xz decoder's memory limit (xz -9 needs 65 MiB).
const XZ_MEMLIMIT: u64 = 256 << 20;

/// One entry of the stream; its data (`size` bytes) is read next.
#[derive(Debug, Default, Clone)]
pub struct TarEntry {
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: (i64, i64),
    pub size: u64,
    pub major: u64,
    pub minor: u64,
    /// SCHILY.xattr.NAME records.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// SCHILY.acl.access / .default, as (xattr name, text).
    pub acl_text: Vec<(&'static str, String)>,
    /// A sparse file: its data regions (offset, length) and real size.
    pub sparse: Option<(Vec<(u64, u64)>, u64)>,
}

pub struct TarStream<R> {
    r: R,
    /// Data of the current entry not read yet, and its padding.
    left: u64,
    pad: u64,
    /// PAX global records ('g'), under every later entry's own; a later
    /// global header's record replaces an earlier one of the same key.
    global: std::collections::BTreeMap<String, Vec<u8>>,
    /// The bytes of all global headers read (bounded by MAX_GLOBAL).
    global_bytes: u64,
    /// Headers read, and bytes (for messages).
    headers: u64,
    pos: u64,
}

/// A number field: octal (space or NUL terminated), or base-256.
fn number(field: &[u8]) -> Result<u64, String> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] == 0xff {
            return Err("a negative number".into());
        }
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(*b)))
                .ok_or("a number too large")?;
        }
        return below_i64(v);
    }
    let text = field
        .iter()
        .skip_while(|b| **b == b' ' || **b == 0)
        .take_while(|b| **b != b' ' && **b != 0);
    let mut v: u64 = 0;
    for b in text {
        if !(b'0'..=b'7').contains(b) {
            return Err(format!("a bad octal number {}", show(field)));
        }
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or("a number too large")?;
    }
    below_i64(v)
}

/// Sizes, offsets and times are off_t and time_t: a number above i64::MAX
/// would turn negative on the way to the kernel.
fn below_i64(v: u64) -> Result<u64, String> {
    if v > i64::MAX as u64 {
        return Err("a number too large".into());
    }
    Ok(v)
}

fn until_nul(field: &[u8]) -> &[u8] {
    &field[..field.iter().position(|b| *b == 0).unwrap_or(field.len())]
}

/// PAX records "LEN KEY=VALUE\n", LEN counting the whole record.
pub fn parse_pax(mut data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let bad = || "a malformed PAX record".to_string();
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|b| *b == 0) {
            break;
        }
        let sp = data.iter().position(|b| *b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &data[sp + 1..len - 1];
        let eq = record.iter().position(|b| *b == b'=').ok_or_else(bad)?;
        let key = std::str::from_utf8(&record[..eq]).map_err(|_| "a PAX record's key is not UTF-8".to_string())?;
        out.push((key.to_string(), record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

fn record_number(value: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| *n <= i64::MAX as u64)
        .ok_or_else(|| format!("a bad number {} in a PAX record", show(value)))
}

impl<R: Read> TarStream<R> {
    pub fn new(r: R) -> Self {
        TarStream {
            r,
            left: 0,
            pad: 0,
            global: Default::default(),
            global_bytes: 0,
            headers: 0,
            pos: 0,
        }
    }

    /// Fill `buf`; Ok(false) at the end of the stream before any byte.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the tarball is cut short")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pos += buf.len() as u64;
        Ok(true)
    }

    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            if !self.fill(&mut buf[..k])? {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the tarball is cut short"));
            }
            n -= k as u64;
        }
        Ok(())
    }

    /// The data of an extension header (bounded).
    fn extension(&mut self, size: u64) -> anyhow::Result<Vec<u8>> {
        if size > MAX_EXTENSION {
            bail!("an extension header of {size} bytes, more than berth reads");
        }
        let mut data = vec![0u8; size as usize];
        if !self.fill(&mut data).map_err(read_error)? {
            bail!("it is cut short: a truncated tarball?");
        }
        self.skip(padding(size)).map_err(read_error)?;
        Ok(data)
    }

    /// The next entry, after the extension headers that describe it; None
    /// at the end-of-archive block.
    pub fn next_entry(&mut self) -> anyhow::Result<Option<TarEntry>> {
        let rest = self
            .left
            .checked_add(self.pad)
            .ok_or_else(|| anyhow!("an entry's size is too large"))?;
        self.skip(rest).map_err(read_error)?;
        self.left = 0;
        self.pad = 0;
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut extension_bytes: u64 = 0;
        let mut long_name = None;
        let mut long_link = None;
        loop {
            let mut h = [0u8; BLOCK];
            if !self.fill(&mut h).map_err(read_error)? {
                bail!("it ends without its end-of-archive block: a truncated tarball?");
            }
            if h.iter().all(|b| *b == 0) {
                return Ok(None);
            }
            if !checksum_ok(&h) {
                if self.headers == 0 {
                    bail!("it is not a tar archive (nor a gzip, xz or zstd compressed one)");
                }
                bail!(
                    "a damaged header (bad checksum) at byte {} of the tar stream",
                    self.pos - BLOCK as u64
                );
            }
            self.headers += 1;
            let field =
                |what: &str, r: std::ops::Range<usize>| number(&h[r]).map_err(|e| anyhow!("a header's {what} is {e}"));
            let size = field("size", 124..136)?;
            if matches!(h[156], b'x' | b'L' | b'K') {
                extension_bytes = extension_bytes.saturating_add(size);
                if extension_bytes > MAX_EXTENSIONS_PER_ENTRY {
                    bail!("extension headers of more than {MAX_EXTENSIONS_PER_ENTRY} bytes for one entry, more than berth reads");
                }
            }
            if h[156] == b'g' {
                self.global_bytes = self.global_bytes.saturating_add(size);
                if self.global_bytes > MAX_GLOBAL {
                    bail!("global extension headers of more than {MAX_GLOBAL} bytes, more than berth reads");
                }
            }
            match h[156] {
                b'x' => pax.extend(parse_pax(&self.extension(size)?).map_err(|e| anyhow!(e))?),
                b'g' => {
                    // By key: a stream of global headers replaces in
                    // O(log n) each, not a scan of all the earlier ones.
                    let records = parse_pax(&self.extension(size)?).map_err(|e| anyhow!(e))?;
                    self.global.extend(records);
                }
                b'L' => long_name = Some(until_nul(&self.extension(size)?).to_vec()),
                b'K' => long_link = Some(until_nul(&self.extension(size)?).to_vec()),
                _ => {
                    let mut e = self.header(&h, size, long_name, long_link, pax)?;
                    self.left = e.size;
                    self.pad = padding(e.size);
                    if let Some((map, _)) = &e.sparse {
                        if map.is_empty() {
                            // PAX sparse 1.0: the map leads the data.
                            let map = self.sparse_map_in_data(&e)?;
                            e.sparse.as_mut().expect("sparse").0 = map;
                        }
                    }
                    return Ok(Some(e));
                }
            }
        }
    }

    fn header(
        &mut self,
        h: &[u8; BLOCK],
        size: u64,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
        local: Vec<(String, Vec<u8>)>,
    ) -> anyhow::Result<TarEntry> {
        let field =
            |what: &str, r: std::ops::Range<usize>| number(&h[r]).map_err(|e| anyhow!("a header's {what} is {e}"));
        let ustar = &h[257..263] == b"ustar\0";
        let gnu = &h[257..265] == b"ustar  \0";
        let mut path = until_nul(&h[0..100]).to_vec();
        if ustar && h[345] != 0 {
            let mut p = until_nul(&h[345..500]).to_vec();
            p.push(b'/');
            p.extend_from_slice(&path);
            path = p;
        }
        let mut e = TarEntry {
            path: long_name.unwrap_or(path),
            link: long_link.unwrap_or_else(|| until_nul(&h[157..257]).to_vec()),
            typeflag: if h[156] == 0 { b'0' } else { h[156] },
            mode: (field("mode", 100..108)? & 0o7777) as u32,
            uid: field("uid", 108..116)?,
            gid: field("gid", 116..124)?,
            mtime: (field("mtime", 136..148)? as i64, 0),
            size,
            ..TarEntry::default()
        };
        if ustar || gnu {
            e.major = field("device major", 329..337)?;
            e.minor = field("device minor", 337..345)?;
        }
        if e.typeflag == b'S' {
            if !gnu {
                bail!("a sparse entry without a GNU header");
            }
            e.sparse = Some((self.gnu_sparse_map(h)?, field("real size", 483..495)?));
        }
        // PAX records: the global ones first, the entry's own over them
        // (borrowed: the global ones are not copied for every entry).
        let global = self.global.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
        let records = global.chain(local.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        let mut sparse = (None, None, None, Vec::new(), None::<Vec<u8>>);
        let sparse_number = |value: &[u8], numbers: &Vec<u64>| -> anyhow::Result<u64> {
            if numbers.len() >= 2 * MAX_SPARSE_REGIONS {
                bail!("a PAX sparse map of more than {MAX_SPARSE_REGIONS} regions, more than berth reads");
            }
            record_number(value).map_err(|s| anyhow!(s))
        };
        // Copied only where an entry keeps the value.
        for (key, value) in records {
            match key {
                "path" => e.path = value.to_vec(),
                "linkpath" => e.link = value.to_vec(),
                "size" => e.size = record_number(value).map_err(|s| anyhow!(s))?,
                "uid" => e.uid = record_number(value).map_err(|s| anyhow!(s))?,
                "gid" => e.gid = record_number(value).map_err(|s| anyhow!(s))?,
                "mtime" => e.mtime = parse_pax_time(value).ok_or_else(|| anyhow!("a bad PAX mtime {}", show(value)))?,
                "SCHILY.acl.access" => e.acl_text.push(("system.posix_acl_access", lossy(value))),
                "SCHILY.acl.default" => e.acl_text.push(("system.posix_acl_default", lossy(value))),
                "GNU.sparse.major" => sparse.0 = Some(lossy(value)),
                "GNU.sparse.minor" => sparse.1 = Some(lossy(value)),
                "GNU.sparse.realsize" | "GNU.sparse.size" => {
                    sparse.2 = Some(record_number(value).map_err(|s| anyhow!(s))?)
                }
                "GNU.sparse.offset" | "GNU.sparse.numbytes" => {
                    let n = sparse_number(value, &sparse.3)?;
                    sparse.3.push(n)
                }
                "GNU.sparse.map" => {
                    for n in value.split(|b| *b == b',') {
                        let n = sparse_number(n, &sparse.3)?;
                        sparse.3.push(n);
                    }
                }
                "GNU.sparse.name" => sparse.4 = Some(value.to_vec()),
                k => {
                    if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                        e.xattrs.push((name.to_string(), value.to_vec()));
                    }
                }
            }
        }
        if let Some(real) = sparse.2 {
            if e.typeflag != b'0' {
                bail!("a PAX sparse record on an entry that is not a regular file");
            }
            if let Some(name) = sparse.4 {
                e.path = name;
            }
            let map = match (sparse.0.as_deref(), sparse.1.as_deref()) {
                // 1.0: the map is at the start of the data, read next.
                (Some("1"), Some("0")) => Vec::new(),
                (None | Some("0"), _) => {
                    if sparse.3.len() % 2 != 0 {
                        bail!("a PAX sparse map with an odd count");
                    }
                    sparse.3.chunks(2).map(|c| (c[0], c[1])).collect()
                }
                (major, minor) => bail!(
                    "a PAX sparse format {}.{} berth does not read",
                    show(major.unwrap_or("?").as_bytes()),
                    show(minor.unwrap_or("?").as_bytes())
                ),
            };
            if map.is_empty() && sparse.0.is_none() {
                bail!("a PAX sparse entry without a map");
            }
            e.sparse = Some((map, real));
        }
        if let Some((map, real)) = &e.sparse {
            check_sparse_map(map, *real).map_err(|why| anyhow!("entry {}: {why}", show(&e.path)))?;
        }
        Ok(e)
    }

    /// The old GNU sparse map: in the header, then in extension blocks.
    fn gnu_sparse_map(&mut self, h: &[u8; BLOCK]) -> anyhow::Result<Vec<(u64, u64)>> {
        let mut map = Vec::new();
        let mut push = |block: &[u8], count: usize| -> anyhow::Result<()> {
            for i in 0..count {
                let off = number(&block[i * 24..i * 24 + 12]).map_err(|e| anyhow!("a sparse map holds {e}"))?;
                let len = number(&block[i * 24 + 12..i * 24 + 24]).map_err(|e| anyhow!("a sparse map holds {e}"))?;
                if off != 0 || len != 0 {
                    map.push((off, len));
                }
            }
            Ok(())
        };
        push(&h[386..482], 4)?;
        let mut extended = h[482] != 0;
        let mut blocks = 0;
        while extended {
            // 21 regions a block: as many blocks as MAX_SPARSE_REGIONS needs.
            blocks += 1;
            if blocks > MAX_SPARSE_REGIONS / 21 + 1 {
                bail!("a GNU sparse map of more than {MAX_SPARSE_REGIONS} regions, more than berth reads");
            }
            let mut b = [0u8; BLOCK];
            if !self.fill(&mut b).map_err(read_error)? {
                bail!("it is cut short: a truncated tarball?");
            }
            push(&b[..504], 21)?;
            extended = b[504] != 0;
        }
        Ok(map)
    }

    /// PAX sparse 1.0: "COUNT\n" then "OFFSET\nLENGTH\n" pairs, padded to
    /// a block, at the start of the entry's data.
    fn sparse_map_in_data(&mut self, e: &TarEntry) -> anyhow::Result<Vec<(u64, u64)>> {
        let mut text = Vec::new();
        let mut numbers = Vec::new();
        let mut want = None;
        // 1 + 2 * COUNT numbers: COUNT is checked before it is used.
        while want.is_none_or(|w: usize| numbers.len() < 1 + 2 * w) {
            let mut b = [0u8; BLOCK];
            if self.left < BLOCK as u64 || !self.fill(&mut b).map_err(read_error)? {
                bail!("entry {}: a sparse map longer than its data", show(&e.path));
            }
            self.left -= BLOCK as u64;
            text.extend_from_slice(&b);
            while let Some(nl) = text.iter().position(|c| *c == b'\n') {
                let n = record_number(&text[..nl]).map_err(|s| anyhow!("entry {}: {s}", show(&e.path)))?;
                text.drain(..=nl);
                numbers.push(n);
                if want.is_none() {
                    // Each region takes at least 4 bytes of the data
                    // ("0\n0\n"): a count the data cannot hold is a lie,
                    // and reserving for it would be the tarball's choice.
                    let fits = (self.left + text.len() as u64) / 4;
                    if n > fits || n > MAX_SPARSE_REGIONS as u64 {
                        bail!(
                            "entry {}: a sparse map of {n} regions, more than {}",
                            show(&e.path),
                            if n > fits {
                                "its data can hold".to_string()
                            } else {
                                format!("berth reads ({MAX_SPARSE_REGIONS})")
                            }
                        );
                    }
                    want = Some(n as usize);
                    numbers.reserve(2 * n as usize);
                }
                if want.is_some_and(|w| numbers.len() == 1 + 2 * w) {
                    break;
                }
            }
            if text.len() > BLOCK * 64 {
                bail!("entry {}: a bad sparse map", show(&e.path));
            }
        }
        self.pad = padding(self.left);
        let map: Vec<(u64, u64)> = numbers[1..].chunks(2).map(|c| (c[0], c[1])).collect();
        let real = e.sparse.as_ref().map_or(0, |s| s.1);
        check_sparse_map(&map, real).map_err(|why| anyhow!("entry {}: {why}", show(&e.path)))?;
        Ok(map)
    }

    /// Read data of the current entry.
    pub fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.r.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the tarball is cut short"));
        }
        self.left -= n as u64;
        self.pos += n as u64;
        Ok(n)
    }

    /// After the end-of-archive block: the rest of the stream.
    pub fn into_inner(self) -> R {
        self.r
    }
}

/// A sparse map's regions lie within the file's real size (which is no
/// more than i64::MAX, as every number read is).
fn check_sparse_map(map: &[(u64, u64)], real: u64) -> Result<(), String> {
    for (offset, len) in map {
        if offset.checked_add(*len).is_none_or(|end| end > real) {
            return Err(format!(
                "a sparse map region of {len} bytes at {offset}, beyond its size {real}: refused"
            ));
        }
    }
    Ok(())
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn lossy(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// The header checksum: the unsigned sum of its bytes with the checksum
/// field as spaces (or the signed sum, as some old tars wrote).
fn checksum_ok(h: &[u8; BLOCK]) -> bool {
    let Ok(want) = number(&h[148..156]) else {
        return false;
    };
    let sum = |f: fn(u8) -> i64| -> i64 {
        h.iter()
            .enumerate()
            .map(|(i, b)| if (148..156).contains(&i) { f(b' ') } else { f(*b) })
            .sum()
    };
    sum(i64::from) == want as i64 || sum(|b| i64::from(b as i8)) == want as i64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Plain,
    Gzip,
    Xz,
    Zstd,
}

/// The compression of a stream, from its first bytes (not its name).
pub fn sniff(head: &[u8]) -> anyhow::Result<Compression> {
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if head.starts_with(b"BZh") {
        bail!("it is compressed with bzip2, which berth does not read: recompress it with zstd, xz or gzip")
    } else {
        Compression::Plain
    })
}

/// Extract the stream into the directory `root_fd` (shown as `shown`);
/// returns the number of entries.
fn extract(input: &mut Input<'_>, root_fd: &OwnedFd, shown: &Path, progress: &Progress) -> anyhow::Result<u64> {
    let signals = input.signals;
    // The first bytes say the compression; they are read again after.
    let mut head = Vec::with_capacity(8);
    while head.len() < 6 {
        let mut b = [0u8; 6];
        let n = input.read(&mut b[..6 - head.len()]).map_err(read_error)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&b[..n]);
    }
    if head.is_empty() {
        bail!("it is empty");
    }
    let compression = sniff(&head)?;
    let raw = BufReader::with_capacity(BUF_SIZE, io::Cursor::new(head).chain(input));
    let decoded: Box<dyn Read + '_> = match compression {
        Compression::Plain => Box::new(raw),
        Compression::Gzip => Box::new(BufReader::with_capacity(
            BUF_SIZE,
            flate2::bufread::MultiGzDecoder::new(raw),
        )),
        // A memory limit: the stream's header chooses the dictionary size,
        // and xz2's own decoders accept any.
        Compression::Xz => Box::new(BufReader::with_capacity(
            BUF_SIZE,
            xz2::bufread::XzDecoder::new_stream(
                raw,
                xz2::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, xz2::stream::CONCATENATED)
                    .context("starting the xz decoder")?,
            ),
        )),
        Compression::Zstd => Box::new(BufReader::with_capacity(
            BUF_SIZE,
            zstd::stream::read::Decoder::with_buffer(raw).context("starting the zstd decoder")?,
        )),
    };
    let mut stream = TarStream::new(decoded);
    let mut x = Extractor::new(root_fd, shown, signals);
    while let Some(entry) = stream.next_entry()? {
        x.entry(&entry, &mut stream)?;
        progress.entries(x.entries);
    }
    // What follows the end-of-archive block (padding), for the checksum.
    io::copy(&mut stream.into_inner(), &mut io::sink()).map_err(read_error)?;
    x.finish()?;
    Ok(x.entries)
}

/// The entry name as shown in messages: quoted, escaped.
fn show(raw: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(raw))
}

/// The components of an entry name, or why it is refused. "./", "//" and
/// "." are dropped; the root itself has none.
pub fn normalize(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("an absolute path is refused");
    }
    let parts: Vec<&[u8]> = raw
        .split(|b| *b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .collect();
    if parts.iter().any(|p| *p == b"..") {
        return Err("a \"..\" component is refused");
    }
    Ok(parts)
}

/// Whether a relative symlink target, read from a link `depth` directories
/// below the root, climbs above the root.
pub fn climbs_out(target: &[u8], depth: usize) -> bool {
    if target.first() == Some(&b'/') {
        return false;
    }
    let mut depth = depth as i64;
    for part in target.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

/// The name of a character device left out of an imported tree.
pub fn skipped_char_device(major: u64, minor: u64) -> Option<&'static str> {
    SKIPPED_CHAR_DEVICES
        .iter()
        .find(|(a, b, _)| (*a, *b) == (major, minor))
        .map(|(_, _, n)| *n)
}

/// Whether a character device may be in an imported tree.
pub fn allowed_char_device(major: u64, minor: u64) -> bool {
    ALLOWED_CHAR_DEVICES.iter().any(|(a, b, _)| (*a, *b) == (major, minor))
}

fn allowed_char_devices() -> String {
    ALLOWED_CHAR_DEVICES
        .iter()
        .map(|(a, b, n)| format!("{n} {a}:{b}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn as_path(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&b'/')
}

/// openat2 below `dir`, no symlink anywhere (ELOOP), no mount crossed.
fn beneath(dir: BorrowedFd<'_>, path: &[u8], flags: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let path = if path.is_empty() { b"." as &[u8] } else { path };
    openat2(dir, as_path(path), how)
}

fn kind_of(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// An ACL given as text with user or group names, resolved at the end
/// through the tree's own /etc/passwd and /etc/group.
struct PendingAcl {
    shown: String,
    entries: Vec<AclEntry>,
}

/// The most the ACLs waiting for the tree's passwd and group may hold
/// (GNU tar writes the xattr form as well, which needs no waiting: only a
/// tarball of ACL text alone has any).
pub const MAX_PENDING_ACLS: usize = 4 << 20;

/// ACLs with names, by (path, xattr): the last entry of a path wins, and
/// their memory is counted and capped.
#[derive(Default)]
pub struct PendingAcls {
    acls: HashMap<(Vec<u8>, &'static str), PendingAcl>,
    bytes: usize,
}

impl PendingAcls {
    fn cost(path: &[u8], acl: &PendingAcl) -> usize {
        let names: usize = acl
            .entries
            .iter()
            .map(|e| match &e.qualifier {
                Qualifier::Name(n) => n.len(),
                _ => 0,
            })
            .sum();
        path.len() + acl.shown.len() + names + acl.entries.len() * std::mem::size_of::<AclEntry>() + 64
    }

    /// Keep `entries` for `path`, in place of what it had; an error when
    /// the total would pass MAX_PENDING_ACLS.
    pub fn insert(
        &mut self,
        path: Vec<u8>,
        shown: String,
        xattr: &'static str,
        entries: Vec<AclEntry>,
    ) -> Result<(), String> {
        self.remove(&path, xattr);
        let acl = PendingAcl { shown, entries };
        let cost = Self::cost(&path, &acl);
        if self.bytes + cost > MAX_PENDING_ACLS {
            return Err(format!(
                "ACLs naming users or groups (resolved at the end, in the tree's /etc/passwd and /etc/group) add up to more than {MAX_PENDING_ACLS} bytes, more than berth keeps"
            ));
        }
        self.bytes += cost;
        self.acls.insert((path, xattr), acl);
        Ok(())
    }

    /// Forget what `path` had (a later entry of that name replaced it).
    pub fn remove(&mut self, path: &[u8], xattr: &'static str) {
        if let Some(old) = self.acls.remove(&(path.to_vec(), xattr)) {
            self.bytes -= Self::cost(path, &old);
        }
    }

    pub fn len(&self) -> usize {
        self.acls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.acls.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

struct Extractor<'a> {
    root: &'a OwnedFd,
    shown: &'a Path,
    /// The last parent directory used, by its normalized path.
    cache: Option<(Vec<u8>, OwnedFd)>,
    signals: &'a Signals,
    /// Directories' mtimes, set at the end (creating entries changes
    /// them), by path: a directory named again keeps one, the last.
    dir_times: HashMap<Vec<u8>, TimeSpec>,
    /// The tree root's own entry ("./"), applied at the end: until then
    /// the root stays root's and 0700, so that whatever mode or ACL the
    /// tarball gives it, nobody else can reach the tree while it is made.
    root_entry: Option<(TarEntry, Owner)>,
    pending_acls: PendingAcls,
    /// Extended attributes not imported, each said once.
    skipped_xattrs: std::collections::HashSet<String>,
    /// Device nodes left out, each kind said once.
    skipped_devices: std::collections::HashSet<&'static str>,
    buf: Vec<u8>,
    entries: u64,
}

type Fail<'s> = dyn Fn(String) -> anyhow::Error + 's;

/// What an entry's header says about its inode, checked.
#[derive(Clone, Copy)]
struct Owner {
    uid: Uid,
    gid: Gid,
    mode: Mode,
    mtime: TimeSpec,
}

impl<'a> Extractor<'a> {
    fn new(root: &'a OwnedFd, shown: &'a Path, signals: &'a Signals) -> Self {
        Extractor {
            root,
            shown,
            cache: None,
            signals,
            dir_times: HashMap::new(),
            root_entry: None,
            pending_acls: PendingAcls::default(),
            skipped_xattrs: Default::default(),
            skipped_devices: Default::default(),
            buf: vec![0; BUF_SIZE],
            entries: 0,
        }
    }

    fn entry<R: Read>(&mut self, e: &TarEntry, stream: &mut TarStream<R>) -> anyhow::Result<()> {
        // Decompressed data can come without a read of the input (where
        // signals are checked otherwise): check them for every entry.
        self.signals.check()?;
        self.entries += 1;
        let shown = show(&e.path);
        let fail = |why: String| anyhow!("entry {shown}: {why}");
        let parts = normalize(&e.path).map_err(|w| fail(w.to_string()))?;
        let (uid, gid) = match (u32::try_from(e.uid), u32::try_from(e.gid)) {
            (Ok(u), Ok(g)) if u != u32::MAX && g != u32::MAX => (u, g),
            _ => return Err(fail(format!("its owner {}:{} is out of range", e.uid, e.gid))),
        };
        let owner = Owner {
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(gid),
            mode: Mode::from_bits_truncate(e.mode),
            mtime: TimeSpec::new(e.mtime.0, e.mtime.1),
        };
        let is_dir = e.typeflag == b'5' || (e.typeflag == b'0' && e.path.ends_with(b"/"));

        if parts.is_empty() {
            if !is_dir {
                return Err(fail("it names the tree's root, but is not a directory".into()));
            }
            // A later "./" replaces an earlier one, as for any entry.
            let mut kept = e.clone();
            kept.sparse = None;
            self.root_entry = Some((kept, owner));
            return Ok(());
        }
        // What named ACLs an earlier entry of this name left are not this one's.
        if !self.pending_acls.is_empty() {
            let key = join(&parts);
            for xattr in ["system.posix_acl_access", "system.posix_acl_default"] {
                self.pending_acls.remove(&key, xattr);
            }
        }
        let depth = parts.len() - 1;
        let name = parts[depth];

        // A hard link's target is resolved first, apart from the parent.
        let link_source = if e.typeflag == b'1' {
            Some(self.hard_link_source(e, depth, &fail)?)
        } else {
            None
        };
        let parent = self.parent(&parts[..depth], &fail)?;
        let result = self.create(e, stream, is_dir, &parent, name, &parts, &owner, link_source, &fail);
        if !is_dir {
            self.cache = Some((join(&parts[..depth]), parent));
        }
        result
    }

    /// The directory `parts` (created, 0755, when missing), never through
    /// a symlink.
    fn parent(&mut self, parts: &[&[u8]], fail: &Fail<'_>) -> anyhow::Result<OwnedFd> {
        let key = join(parts);
        if let Some((k, fd)) = self.cache.take() {
            if k == key {
                return Ok(fd);
            }
        }
        match beneath(self.root.as_fd(), &key, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
            Ok(fd) => Ok(fd),
            Err(Errno::ENOENT) => self.make_dirs(parts, fail),
            Err(e) => Err(self.path_error(parts, e, fail)),
        }
    }

    /// Walk `parts` from the root, creating missing directories.
    fn make_dirs(&self, parts: &[&[u8]], fail: &Fail<'_>) -> anyhow::Result<OwnedFd> {
        let mut dir = self.root.try_clone().context("duplicating a descriptor")?;
        for (i, part) in parts.iter().enumerate() {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
            dir = match beneath(dir.as_fd(), part, flags) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    mkdirat(&dir, as_path(part), Mode::from_bits_truncate(0o755))
                        .map_err(|e| self.path_error(&parts[..=i], e, fail))?;
                    let fd = beneath(dir.as_fd(), part, flags).map_err(|e| self.path_error(&parts[..=i], e, fail))?;
                    fchmod(&fd, Mode::from_bits_truncate(0o755))
                        .map_err(|e| fail(format!("setting the mode of a directory: {}", e.desc())))?;
                    fd
                }
                Err(e) => return Err(self.path_error(&parts[..=i], e, fail)),
            };
        }
        Ok(dir)
    }

    /// Why `parts` cannot be opened as a directory, naming the link or
    /// the file in the way.
    fn path_error(&self, parts: &[&[u8]], e: Errno, fail: &Fail<'_>) -> anyhow::Error {
        if matches!(e, Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV) {
            let Ok(mut dir) = self.root.try_clone() else {
                return fail(e.desc().into());
            };
            for i in 0..parts.len() {
                let Ok(st) = fstatat(&dir, as_path(parts[i]), AtFlags::AT_SYMLINK_NOFOLLOW) else {
                    break;
                };
                let here = show(&join(&parts[..=i]));
                match kind_of(&st) {
                    SFlag::S_IFLNK => return fail(format!("its path goes through the symbolic link {here}: refused")),
                    SFlag::S_IFDIR => {}
                    _ => return fail(format!("its path goes through {here}, which is not a directory")),
                }
                match beneath(dir.as_fd(), parts[i], OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
                    Ok(d) => dir = d,
                    Err(_) => break,
                }
            }
        }
        fail(format!("opening its directory: {}", e.desc()))
    }

    /// The (directory, name) a hard link entry links to, checked.
    fn hard_link_source(&self, e: &TarEntry, depth: usize, fail: &Fail<'_>) -> anyhow::Result<(OwnedFd, Vec<u8>)> {
        let t = show(&e.link);
        if e.link.is_empty() {
            return Err(fail("a hard link without a target".into()));
        }
        let parts = normalize(&e.link).map_err(|_| {
            fail(format!(
                "hard link to {t}, which is outside the tree (absolute, or with \"..\"): refused"
            ))
        })?;
        let Some((name, dir)) = parts.split_last() else {
            return Err(fail(format!("hard link to {t}, the tree's root: refused")));
        };
        let missing = || {
            fail(format!(
                "hard link to {t}, which is not an earlier entry of the tarball"
            ))
        };
        let dir_fd = match beneath(self.root.as_fd(), &join(dir), OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Err(missing()),
            Err(e) => return Err(self.path_error(dir, e, fail)),
        };
        let st = match fstatat(&dir_fd, as_path(name), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Err(missing()),
            Err(e) => return Err(fail(format!("hard link to {t}: {}", e.desc()))),
        };
        match kind_of(&st) {
            SFlag::S_IFDIR => return Err(fail(format!("hard link to {t}, a directory: refused"))),
            SFlag::S_IFLNK => {
                // The same link at a new place: check it from there.
                let dest = nix::fcntl::readlinkat(&dir_fd, as_path(name))
                    .map_err(|e| fail(format!("reading the symbolic link {t}: {}", e.desc())))?;
                if climbs_out(dest.as_bytes(), depth) {
                    return Err(fail(format!(
                        "hard link to the symbolic link {t}, whose target {} climbs out of the tree from here: refused",
                        show(dest.as_bytes())
                    )));
                }
            }
            _ => {}
        }
        Ok((dir_fd, name.to_vec()))
    }

    #[allow(clippy::too_many_arguments)]
    fn create<R: Read>(
        &mut self,
        e: &TarEntry,
        stream: &mut TarStream<R>,
        is_dir: bool,
        parent: &OwnedFd,
        name: &[u8],
        parts: &[&[u8]],
        owner: &Owner,
        link_source: Option<(OwnedFd, Vec<u8>)>,
        fail: &Fail<'_>,
    ) -> anyhow::Result<()> {
        let at = as_path(name);
        let sys = |what: &str, e: Errno| fail(format!("{what}: {}", e.desc()));
        if is_dir {
            match mkdirat(parent, at, Mode::from_bits_truncate(0o700)) {
                Ok(()) => {}
                Err(Errno::EEXIST) => {
                    let st = fstatat(parent, at, AtFlags::AT_SYMLINK_NOFOLLOW)
                        .map_err(|e| sys("looking at what is there", e))?;
                    if kind_of(&st) != SFlag::S_IFDIR {
                        unlinkat(parent, at, UnlinkatFlags::NoRemoveDir)
                            .map_err(|e| sys("replacing an earlier entry", e))?;
                        mkdirat(parent, at, Mode::from_bits_truncate(0o700)).map_err(|e| sys("creating it", e))?;
                    }
                }
                Err(e) => return Err(sys("creating it", e)),
            }
            let fd = beneath(parent.as_fd(), name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                .map_err(|e| sys("opening it", e))?;
            self.apply_fd(&fd, e, owner, fail)?;
            self.dir_times.insert(join(parts), owner.mtime);
            // Its entries likely come next.
            self.cache = Some((join(parts), fd));
            return Ok(());
        }
        match e.typeflag {
            b'0' | b'7' | b'S' => {
                let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let fd = self.replacing(parent, at, fail, || {
                    openat(parent, at, flags, Mode::from_bits_truncate(0o600))
                })?;
                let mut file = File::from(fd);
                self.write_data(e, stream, &mut file, fail)?;
                let fd = OwnedFd::from(file);
                self.apply_fd(&fd, e, owner, fail)?;
                futimens(&fd, &TimeSpec::UTIME_OMIT, &owner.mtime).map_err(|e| sys("setting its mtime", e))
            }
            b'2' => {
                if e.link.is_empty() {
                    return Err(fail("a symbolic link with an empty target: refused".into()));
                }
                if climbs_out(&e.link, parts.len() - 1) {
                    return Err(fail(format!(
                        "symbolic link to {}, which climbs out of the tree: refused",
                        show(&e.link)
                    )));
                }
                self.replacing(parent, at, fail, || symlinkat(as_path(&e.link), parent, at))?;
                self.apply_at(parent, at, e, owner, false, fail)
            }
            b'1' => {
                let (dir, source) = link_source.expect("resolved before");
                self.replacing(parent, at, fail, || {
                    linkat(&dir, as_path(&source), parent, at, AtFlags::empty())
                })?;
                Ok(())
            }
            b'3' | b'4' | b'6' => {
                let (sflag, dev) = match e.typeflag {
                    b'6' => (SFlag::S_IFIFO, 0),
                    b'4' => return Err(fail(format!("block device {}:{}: refused", e.major, e.minor))),
                    _ if skipped_char_device(e.major, e.minor).is_some() => {
                        let what = skipped_char_device(e.major, e.minor).expect("just found");
                        if self.skipped_devices.insert(what) {
                            tracing::info!(
                                "not importing the character device {} ({what} {}:{}, and any other): berth gives machines their own /dev",
                                show(&e.path),
                                e.major,
                                e.minor
                            );
                        }
                        return Ok(());
                    }
                    _ if !allowed_char_device(e.major, e.minor) => {
                        return Err(fail(format!(
                            "character device {}:{}: refused (allowed: {})",
                            e.major,
                            e.minor,
                            allowed_char_devices()
                        )))
                    }
                    _ => (SFlag::S_IFCHR, nix::sys::stat::makedev(e.major, e.minor)),
                };
                self.replacing(parent, at, fail, || {
                    mknodat(parent, at, sflag, Mode::from_bits_truncate(0o600), dev)
                })?;
                self.apply_at(parent, at, e, owner, true, fail)
            }
            t => Err(fail(format!("its type {:?} is not supported", char::from(t)))),
        }
    }

    /// The entry's data into `file` (sparse: its regions at their offsets,
    /// the holes left as holes).
    fn write_data<R: Read>(
        &mut self,
        e: &TarEntry,
        stream: &mut TarStream<R>,
        file: &mut File,
        fail: &Fail<'_>,
    ) -> anyhow::Result<()> {
        let whole = [(0, e.size)];
        let regions: &[(u64, u64)] = match &e.sparse {
            Some((map, _)) => map,
            None => &whole,
        };
        let write_err = |err: io::Error| fail(format!("writing it: {}", os_error(&err)));
        for &(offset, mut len) in regions {
            if e.sparse.is_some() {
                file.seek(io::SeekFrom::Start(offset)).map_err(write_err)?;
            }
            while len > 0 {
                self.signals.check()?;
                let max = self.buf.len().min(len.min(usize::MAX as u64) as usize);
                let n = stream.read_data(&mut self.buf[..max]).map_err(read_error)?;
                if n == 0 {
                    return Err(fail("its sparse map is larger than its data".into()));
                }
                file.write_all(&self.buf[..n]).map_err(write_err)?;
                len -= n as u64;
            }
        }
        if let Some((_, real)) = &e.sparse {
            file.set_len(*real).map_err(write_err)?;
        }
        // Start writing it out now (DONTNEED starts writeback of dirty
        // pages and drops none of them: sync_file_range(WRITE), as dpkg
        // does), so the disk works while the next entries are made and the
        // syncfs before the rename has little left to wait for.
        if e.size > 0 {
            let _ = nix::fcntl::posix_fadvise(&*file, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
        }
        Ok(())
    }

    /// Run `make`; when something is in the way, remove it (unless it is
    /// a directory) and run `make` once more, as tar replaces files.
    fn replacing<T>(
        &self,
        parent: &OwnedFd,
        at: &Path,
        fail: &Fail<'_>,
        make: impl Fn() -> nix::Result<T>,
    ) -> anyhow::Result<T> {
        match make() {
            Err(Errno::EEXIST) => {}
            Ok(v) => return Ok(v),
            Err(e) => return Err(fail(format!("creating it: {}", e.desc()))),
        }
        let st = fstatat(parent, at, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| fail(format!("looking at what is there: {}", e.desc())))?;
        if kind_of(&st) == SFlag::S_IFDIR {
            return Err(fail("a directory of that name is already in the tree".into()));
        }
        unlinkat(parent, at, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| fail(format!("replacing an earlier entry: {}", e.desc())))?;
        make().map_err(|e| fail(format!("creating it: {}", e.desc())))
    }

    /// Owner, mode and xattrs of a file or directory, on its descriptor
    /// (chown first: it clears set-id bits and file capabilities).
    fn apply_fd(&mut self, fd: &OwnedFd, e: &TarEntry, owner: &Owner, fail: &Fail<'_>) -> anyhow::Result<()> {
        fchown(fd, Some(owner.uid), Some(owner.gid)).map_err(|e| fail(format!("setting its owner: {}", e.desc())))?;
        fchmod(fd, owner.mode).map_err(|e| fail(format!("setting its mode: {}", e.desc())))?;
        self.set_xattrs(fd.as_fd(), e, fail)
    }

    /// The same for a symlink, device or FIFO, by name in `parent`, never
    /// following it: through an O_PATH|O_NOFOLLOW descriptor.
    fn apply_at(
        &mut self,
        parent: &OwnedFd,
        at: &Path,
        e: &TarEntry,
        owner: &Owner,
        chmod: bool,
        fail: &Fail<'_>,
    ) -> anyhow::Result<()> {
        fchownat(
            parent,
            at,
            Some(owner.uid),
            Some(owner.gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| fail(format!("setting its owner: {}", e.desc())))?;
        if chmod || !e.xattrs.is_empty() || !e.acl_text.is_empty() {
            let fd = openat(
                parent,
                at,
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| fail(format!("opening it: {}", e.desc())))?;
            if chmod {
                std::fs::set_permissions(fd_path(fd.as_fd()), std::fs::Permissions::from_mode(owner.mode.bits()))
                    .map_err(|e| fail(format!("setting its mode: {}", os_error(&e))))?;
            }
            self.set_xattrs(fd.as_fd(), e, fail)?;
        }
        utimensat(
            parent,
            at,
            &TimeSpec::UTIME_OMIT,
            &owner.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| fail(format!("setting its mtime: {}", e.desc())))
    }

    fn set_xattrs(&mut self, fd: BorrowedFd<'_>, e: &TarEntry, fail: &Fail<'_>) -> anyhow::Result<()> {
        let path = fd_path(fd);
        for (name, value) in &e.xattrs {
            // Only what a tree's files may carry for the machine: user
            // xattrs, ACLs and file capabilities. trusted.* is read by the
            // host's kernel (overlayfs takes trusted.overlay.* of a lower
            // layer, as Volatile=overlay makes the tree) and security.*
            // labels are the host's policy's: never set from a tarball.
            if !importable_xattr(name) {
                if self.skipped_xattrs.len() < 64 && self.skipped_xattrs.insert(name.clone()) {
                    tracing::info!(
                        "not importing the extended attribute {} (only user.*, ACLs and security.capability are)",
                        show(name.as_bytes())
                    );
                }
                continue;
            }
            crate::sys::set_xattr(&path, name, value).map_err(|err| {
                fail(format!(
                    "setting its extended attribute {}: {}",
                    show(name.as_bytes()),
                    os_error(&err)
                ))
            })?;
        }
        for (xattr, text) in &e.acl_text {
            if e.xattrs.iter().any(|(n, _)| n == xattr) {
                continue;
            }
            let entries = parse_acl_text(text).map_err(|why| fail(format!("its ACL {text:?}: {why}")))?;
            if entries.iter().any(|a| matches!(a.qualifier, Qualifier::Name(_))) {
                let parts = normalize(&e.path).unwrap_or_default();
                self.pending_acls
                    .insert(join(&parts), show(&e.path), xattr, entries)
                    .map_err(fail)?;
                continue;
            }
            let value = acl_to_xattr(&entries, |_, _| None).expect("no names");
            crate::sys::set_xattr(&path, xattr, &value)
                .map_err(|err| fail(format!("setting its ACL ({xattr}): {}", os_error(&err))))?;
        }
        Ok(())
    }

    /// After the last entry: the root's own entry, ACLs with names, then
    /// directory mtimes.
    fn finish(&mut self) -> anyhow::Result<()> {
        let root_mtime = match self.root_entry.take() {
            Some((e, owner)) => {
                let fail = |why: String| anyhow!("entry {}: {why}", show(&e.path));
                let root = self.root.try_clone().context("duplicating a descriptor")?;
                self.apply_fd(&root, &e, &owner, &fail)?;
                Some(owner.mtime)
            }
            None => None,
        };
        if !self.pending_acls.is_empty() {
            let tree = InRoot::from_fd(
                self.root.try_clone().context("duplicating a descriptor")?,
                self.shown.to_path_buf(),
            );
            let users = id_map(&tree, "/etc/passwd");
            let groups = id_map(&tree, "/etc/group");
            for ((path, xattr), acl) in std::mem::take(&mut self.pending_acls).acls {
                self.signals.check()?;
                let fail = |why: String| anyhow!("entry {}: {why}", acl.shown);
                let value = acl_to_xattr(&acl.entries, |user, name| {
                    if user { users.get(name) } else { groups.get(name) }.copied()
                })
                .map_err(|(user, name)| {
                    let (what, file) = if user { ("user", "passwd") } else { ("group", "group") };
                    fail(format!(
                        "its ACL names the {what} {}, which the tree's /etc/{file} does not list",
                        show(name.as_bytes())
                    ))
                })?;
                let fd = beneath(self.root.as_fd(), &path, OFlag::O_PATH)
                    .map_err(|e| fail(format!("opening it: {}", e.desc())))?;
                crate::sys::set_xattr(&fd_path(fd.as_fd()), xattr, &value)
                    .map_err(|e| fail(format!("setting its ACL ({xattr}): {}", os_error(&e))))?;
            }
        }
        for (path, mtime) in std::mem::take(&mut self.dir_times) {
            self.signals.check()?;
            let fd = beneath(self.root.as_fd(), &path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                .map_err(|e| anyhow!("entry {}: opening it: {}", show(&path), e.desc()))?;
            futimens(&fd, &TimeSpec::UTIME_OMIT, &mtime)
                .map_err(|e| anyhow!("entry {}: setting its mtime: {}", show(&path), e.desc()))?;
        }
        match root_mtime {
            Some(mtime) => futimens(self.root, &TimeSpec::UTIME_OMIT, &mtime),
            // No entry for the root: the usual mode of a tree's root.
            None => fchmod(self.root, Mode::from_bits_truncate(0o755)),
        }
        .map_err(|e| anyhow!("setting the tree root's metadata: {}", e.desc()))?;
        Ok(())
    }
}

/// "1795630522.106932545" (a PAX time) as a TimeSpec.
pub fn parse_pax_time(value: &[u8]) -> Option<(i64, i64)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let negative = secs.starts_with('-');
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nanos: i64 = digits.parse().ok()?;
    Some(if negative && nanos > 0 {
        (secs.checked_sub(1)?, 1_000_000_000 - nanos)
    } else {
        (secs, nanos)
    })
}

/// Names to ids from a passwd or group file of the tree (third field).
fn id_map(tree: &InRoot, path: &str) -> HashMap<String, u32> {
    let text = tree.read_small(path, MAX_READ).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.first()?.to_string(), f.get(2)?.parse().ok()?))
        })
        .collect()
}

/// The tree must hold an os-release (a regular file, or a link to one
/// inside the tree).
fn check_os_release(root_fd: &OwnedFd, shown: &Path) -> anyhow::Result<()> {
    let tree = InRoot::from_fd(root_fd.try_clone()?, shown.to_path_buf());
    match OS_RELEASE.iter().find(|p| tree.exists(p)) {
        None => bail!(
            "it holds no OS tree: neither /etc/os-release nor /usr/lib/os-release is in it (as a file, or a link to one in the tree)"
        ),
        Some(p) => match tree.read_small(p, MAX_READ) {
            Ok(_) => Ok(()),
            Err(e) => bail!("its {p} is unusable: {}", e.why),
        },
    }
}

// ---------------------------------------------------------------------------
// POSIX ACLs: GNU tar's text form and the kernel's xattr form.

const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const ACL_UNDEFINED_ID: u32 = u32::MAX;
const ACL_XATTR_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Qualifier {
    None,
    Id(u32),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclEntry {
    pub tag: u16,
    pub perm: u16,
    pub qualifier: Qualifier,
}

/// Parse the text form (entries separated by commas or newlines,
/// `user:NAME:rwx`, short tags, `#` comments, a fourth field with the
/// numeric id as acl_to_any_text may add).
pub fn parse_acl_text(text: &str) -> Result<Vec<AclEntry>, String> {
    let mut out = Vec::new();
    for item in text.split([',', '\n']) {
        let item = item.split('#').next().unwrap_or("").trim();
        if item.is_empty() {
            continue;
        }
        let fields: Vec<&str> = item.split(':').map(str::trim).collect();
        if fields.len() < 3 || fields.len() > 4 {
            return Err(format!("bad entry {item:?}"));
        }
        let named = !fields[1].is_empty();
        let tag = match (fields[0], named) {
            ("user" | "u", false) => ACL_USER_OBJ,
            ("user" | "u", true) => ACL_USER,
            ("group" | "g", false) => ACL_GROUP_OBJ,
            ("group" | "g", true) => ACL_GROUP,
            ("mask" | "m", false) => ACL_MASK,
            ("other" | "o", false) => ACL_OTHER,
            _ => return Err(format!("bad entry {item:?}")),
        };
        let mut perm = 0;
        for c in fields[2].chars() {
            perm |= match c {
                'r' => 4,
                'w' => 2,
                'x' => 1,
                '-' => 0,
                _ => return Err(format!("bad permissions in {item:?}")),
            };
        }
        let qualifier = if !named {
            Qualifier::None
        } else if let Some(id) = fields.get(3).and_then(|f| f.parse().ok()) {
            Qualifier::Id(id)
        } else if let Ok(id) = fields[1].parse() {
            Qualifier::Id(id)
        } else {
            Qualifier::Name(fields[1].to_string())
        };
        out.push(AclEntry { tag, perm, qualifier });
    }
    if out.is_empty() {
        return Err("no entries".into());
    }
    Ok(out)
}

/// The kernel's xattr form (version 2, entries sorted as it wants them);
/// `resolve(is_user, name)` gives the id of a name. Err: the name it could
/// not resolve.
pub fn acl_to_xattr(
    entries: &[AclEntry],
    resolve: impl Fn(bool, &str) -> Option<u32>,
) -> Result<Vec<u8>, (bool, String)> {
    let mut list = Vec::new();
    for e in entries {
        let id = match &e.qualifier {
            Qualifier::None => ACL_UNDEFINED_ID,
            Qualifier::Id(id) => *id,
            Qualifier::Name(n) => resolve(e.tag == ACL_USER, n).ok_or_else(|| (e.tag == ACL_USER, n.clone()))?,
        };
        list.push((e.tag, id, e.perm));
    }
    list.sort();
    let mut out = ACL_XATTR_VERSION.to_le_bytes().to_vec();
    for (tag, id, perm) in list {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Ok(out)
}

/// GNU tar's text form of an ACL xattr, with numeric ids.
pub fn acl_xattr_to_text(value: &[u8]) -> Option<String> {
    let version = u32::from_le_bytes(value.get(..4)?.try_into().ok()?);
    if version != ACL_XATTR_VERSION || (value.len() - 4) % 8 != 0 {
        return None;
    }
    let mut out = String::new();
    for e in value[4..].chunks(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let (name, qualifier) = match tag {
            ACL_USER_OBJ => ("user", String::new()),
            ACL_USER => ("user", id.to_string()),
            ACL_GROUP_OBJ => ("group", String::new()),
            ACL_GROUP => ("group", id.to_string()),
            ACL_MASK => ("mask", String::new()),
            ACL_OTHER => ("other", String::new()),
            _ => return None,
        };
        let bit = |b: u16, c: char| if perm & b != 0 { c } else { '-' };
        out.push_str(&format!(
            "{name}:{qualifier}:{}{}{}\n",
            bit(4, 'r'),
            bit(2, 'w'),
            bit(1, 'x')
        ));
    }
    Some(out)
}

// ---------------------------------------------------------------------------
// export-tar

pub fn export_tar(args: ExportTarArgs) -> anyhow::Result<i32> {
    let name = MachineName::parse(&args.name)?;
    crate::log::set_machine(name.as_str());
    let stdout = args.file.as_os_str() == "-";
    let shown = if stdout {
        "standard output".to_string()
    } else {
        args.file.display().to_string()
    };
    let signals = Signals::block()?;
    let done = export(&args, &name, stdout, &signals)
        .with_context(|| format!("cannot export machine \"{name}\" to {shown}"))?;
    if !stdout {
        tracing::info!(
            "exported machine \"{name}\" to {shown} ({} entries, {} bytes of files)",
            done.0,
            done.1
        );
    }
    Ok(0)
}

/// The compression a tarball's name asks for.
pub fn compression_of(file: &Path) -> anyhow::Result<Compression> {
    let name = file.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let table: &[(&str, Compression)] = &[
        (".tar", Compression::Plain),
        (".tar.gz", Compression::Gzip),
        (".tgz", Compression::Gzip),
        (".tar.xz", Compression::Xz),
        (".txz", Compression::Xz),
        (".tar.zst", Compression::Zstd),
        (".tzst", Compression::Zstd),
    ];
    table
        .iter()
        .find(|(ext, _)| name.len() > ext.len() && name.ends_with(ext))
        .map(|(_, c)| *c)
        .ok_or_else(|| {
            anyhow!(
                "cannot tell the compression from its name: use .tar, .tar.gz (.tgz), .tar.xz (.txz) or .tar.zst (.tzst), or - for a plain tar on standard output"
            )
        })
}

/// FILE.tmp while it is written; removed when dropped unless disarmed.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn export(args: &ExportTarArgs, name: &MachineName, stdout: bool, signals: &Signals) -> anyhow::Result<(u64, u64)> {
    let dir = machines_dir(args.machines_dir.as_deref());
    let dir_fd = open_machines_dir(&dir)?;
    let tree = dir.join(name.as_str());
    let root = nix::fcntl::openat(
        &dir_fd,
        name.as_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ENOENT => anyhow!("{} does not exist", tree.display()),
        e => anyhow!("cannot open {}: {}", tree.display(), e.desc()),
    })?;
    let st = fstat(&root).context("looking at the tree")?;
    // Shared: refused while a machine that may write the tree runs on it;
    // one that cannot (ReadOnly=, Volatile=) does not stop an export.
    let _tree_lock = lock_tree(&tree, (st.st_dev as u64, st.st_ino as u64), false)?;

    let (out, temp, compression) = if stdout {
        if io::stdout().is_terminal() {
            bail!("refusing to write a tarball to a terminal: redirect standard output, or give a FILE");
        }
        let fd = nix::unistd::dup(io::stdout().as_fd()).context("duplicating standard output")?;
        (File::from(fd), None, Compression::Plain)
    } else {
        let compression = compression_of(&args.file)?;
        if args.file.symlink_metadata().is_ok() && !args.force {
            bail!("it exists (use --force to replace it)");
        }
        let mut tmp = args.file.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        if tmp.symlink_metadata().is_ok() {
            if !args.force {
                bail!(
                    "{} exists (left by an interrupted export?): remove it, or use --force",
                    tmp.display()
                );
            }
            std::fs::remove_file(&tmp).map_err(|e| anyhow!("cannot remove {}: {}", tmp.display(), os_error(&e)))?;
        }
        // The tree's /etc/shadow is in it: root's alone.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| anyhow!("cannot create {}: {}", tmp.display(), os_error(&e)))?;
        (file, Some(TempFile { path: tmp, armed: true }), compression)
    };

    let progress = Progress::new(None, "exporting");
    let writer = Compressed::new(io::BufWriter::with_capacity(BUF_SIZE, out), compression)?;
    let mut builder = tar::Builder::new(writer);
    let mut walker = Walker {
        signals,
        links: HashMap::new(),
        entries: 0,
        bytes: 0,
        progress: &progress,
    };
    walker.entry(&mut builder, &root, b"./", &st, None)?;
    walker.walk(&mut builder, &root, b"./")?;
    let write_err = |e: io::Error| anyhow!("writing: {}", os_error(&e));
    builder.finish().map_err(write_err)?;
    let out = builder.into_inner().map_err(write_err)?.finish().map_err(write_err)?;
    let out = out.into_inner().map_err(|e| write_err(e.into_error()))?;
    signals.check()?;
    if let Some(mut temp) = temp {
        out.sync_all().map_err(write_err)?;
        let flags = if args.force {
            RenameFlags::empty()
        } else {
            RenameFlags::RENAME_NOREPLACE
        };
        match renameat2(
            nix::fcntl::AT_FDCWD,
            &temp.path,
            nix::fcntl::AT_FDCWD,
            &args.file,
            flags,
        ) {
            Ok(()) => temp.armed = false,
            Err(Errno::EEXIST) => bail!("it appeared while exporting (use --force to replace it)"),
            Err(e) => bail!("cannot rename {} to it: {}", temp.path.display(), e.desc()),
        }
    }
    Ok((walker.entries, walker.bytes))
}

/// The output, compressed as asked.
enum Compressed<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Xz(xz2::write::XzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Compressed<W> {
    fn new(w: W, c: Compression) -> anyhow::Result<Self> {
        Ok(match c {
            Compression::Plain => Compressed::Plain(w),
            Compression::Gzip => Compressed::Gzip(flate2::write::GzEncoder::new(w, flate2::Compression::default())),
            Compression::Xz => {
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
                let stream = xz2::stream::MtStreamBuilder::new()
                    .threads(threads)
                    .preset(6)
                    .check(xz2::stream::Check::Crc64)
                    .encoder()
                    .context("starting the xz encoder")?;
                Compressed::Xz(xz2::write::XzEncoder::new_stream(w, stream))
            }
            Compression::Zstd => {
                Compressed::Zstd(zstd::stream::write::Encoder::new(w, 3).context("starting the zstd encoder")?)
            }
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Compressed::Plain(mut w) => {
                w.flush()?;
                Ok(w)
            }
            Compressed::Gzip(e) => e.finish(),
            Compressed::Xz(e) => e.finish(),
            Compressed::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Compressed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressed::Plain(w) => w.write(buf),
            Compressed::Gzip(w) => w.write(buf),
            Compressed::Xz(w) => w.write(buf),
            Compressed::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressed::Plain(w) => w.flush(),
            Compressed::Gzip(w) => w.flush(),
            Compressed::Xz(w) => w.flush(),
            Compressed::Zstd(w) => w.flush(),
        }
    }
}

struct Walker<'a> {
    signals: &'a Signals,
    /// Inodes with more than one link already archived, by their name.
    links: HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
    bytes: u64,
    progress: &'a Progress,
}

/// A file's bytes, exactly `left` of them (an error if it shrank).
struct Exact<'a> {
    file: File,
    left: u64,
    signals: &'a Signals,
    progress: ProgressBar,
}

impl Read for Exact<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        self.signals.check().map_err(interrupted_io)?;
        let max = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.file.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::other("it shrank while berth read it"));
        }
        self.left -= n as u64;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

/// Open the regular file `at` in `dir` that fstatat saw as `st`, to read
/// it: O_NONBLOCK, so that a FIFO or device put there since (a running
/// machine's root may) does not block or act on open, and the inode's type
/// and identity checked on the descriptor before a byte is read.
pub fn open_regular(dir: &OwnedFd, at: &Path, st: &FileStat) -> Result<OwnedFd, String> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = openat(dir, at, flags, Mode::empty()).map_err(|e| format!("opening it: {}", e.desc()))?;
    let now = fstat(&fd).map_err(|e| e.desc().to_string())?;
    if kind_of(&now) != SFlag::S_IFREG || (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
        return Err("it changed while berth read it".into());
    }
    Ok(fd)
}

impl Walker<'_> {
    fn walk<W: Write>(&mut self, b: &mut tar::Builder<W>, dir: &OwnedFd, prefix: &[u8]) -> anyhow::Result<()> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        {
            let list = nix::dir::Dir::openat(
                dir,
                ".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            );
            let mut list = list.map_err(|e| anyhow!("reading {}: {}", show(prefix), e.desc()))?;
            for ent in list.iter() {
                let ent = ent.map_err(|e| anyhow!("reading {}: {}", show(prefix), e.desc()))?;
                let n = ent.file_name().to_bytes();
                if n != b"." && n != b".." {
                    names.push(n.to_vec());
                }
            }
        }
        names.sort();
        for n in names {
            self.signals.check()?;
            let at = as_path(&n);
            let mut path = prefix.to_vec();
            path.extend_from_slice(&n);
            let st = match fstatat(dir, at, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Gone since the listing: nothing to archive.
                Err(Errno::ENOENT) => continue,
                Err(e) => bail!("looking at {}: {}", show(&path), e.desc()),
            };
            let kind = kind_of(&st);
            if kind == SFlag::S_IFSOCK {
                tracing::info!("note: skipping the socket {} (a tarball cannot hold one)", show(&path));
                continue;
            }
            if kind == SFlag::S_IFDIR {
                path.push(b'/');
                let sub = match beneath(dir.as_fd(), &n, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
                    Ok(fd) => fd,
                    Err(Errno::EXDEV) => {
                        tracing::info!("note: skipping {}, a mount point on the host", show(&path));
                        continue;
                    }
                    Err(e) => bail!("opening {}: {}", show(&path), e.desc()),
                };
                self.entry(b, &sub, &path, &st, None)?;
                self.walk(b, &sub, &path)?;
            } else {
                self.entry(b, dir, &path, &st, Some(at))?;
            }
        }
        Ok(())
    }

    /// Archive one entry: `at` in `dir`, or `dir` itself when `at` is None.
    fn entry<W: Write>(
        &mut self,
        b: &mut tar::Builder<W>,
        dir: &OwnedFd,
        path: &[u8],
        st: &FileStat,
        at: Option<&Path>,
    ) -> anyhow::Result<()> {
        let fail = |why: String| anyhow!("{}: {why}", show(path));
        let kind = kind_of(st);
        self.entries += 1;
        self.progress.entries(self.entries);
        let mut h = tar::Header::new_ustar();
        h.set_mode(st.st_mode & 0o7777);
        h.set_uid(st.st_uid as u64);
        h.set_gid(st.st_gid as u64);
        h.set_mtime(st.st_mtime.max(0) as u64);
        h.set_size(0);
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if st.st_mtime_nsec != 0 || st.st_mtime < 0 {
            let t = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
            pax.push(("mtime".into(), pax_time(t).into_bytes()));
        }
        for (key, v) in [("uid", st.st_uid as u64), ("gid", st.st_gid as u64)] {
            if v > 0o7777777 {
                pax.push((key.into(), v.to_string().into_bytes()));
            }
        }
        set_name(&mut h, &mut pax, "path", path);

        // Hard links: the second name of an inode is a link to the first.
        if kind != SFlag::S_IFDIR && st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key) {
                h.set_entry_type(tar::EntryType::Link);
                set_name(&mut h, &mut pax, "linkpath", &first.clone());
                return self.append(b, h, &pax, io::empty(), &fail);
            }
            self.links.insert(key, path.to_vec());
        }

        // The inode itself, never through a link: its descriptor.
        let (fd, file) = match (kind, at) {
            (_, None) => (dir.try_clone().context("duplicating a descriptor")?, None),
            (SFlag::S_IFREG, Some(at)) => {
                let fd = open_regular(dir, at, st).map_err(fail)?;
                (fd.try_clone()?, Some(File::from(fd)))
            }
            (_, Some(at)) => {
                let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let fd =
                    openat(dir, at, flags, Mode::empty()).map_err(|e| fail(format!("opening it: {}", e.desc())))?;
                (fd, None)
            }
        };
        self.xattrs(fd.as_fd(), &mut pax, &fail)?;

        match kind {
            SFlag::S_IFDIR => {
                h.set_entry_type(tar::EntryType::Directory);
                self.append(b, h, &pax, io::empty(), &fail)
            }
            SFlag::S_IFREG => {
                h.set_entry_type(tar::EntryType::Regular);
                let size = st.st_size as u64;
                h.set_size(size);
                if size > 0o77777777777 {
                    pax.push(("size".into(), size.to_string().into_bytes()));
                }
                self.bytes += size;
                let data = Exact {
                    file: file.expect("opened above"),
                    left: size,
                    signals: self.signals,
                    progress: self.progress.0.clone(),
                };
                let data = BufReader::with_capacity(BUF_SIZE, data);
                self.append(b, h, &pax, data, &fail)
            }
            SFlag::S_IFLNK => {
                h.set_entry_type(tar::EntryType::Symlink);
                let target = nix::fcntl::readlinkat(dir, at.expect("not the root"))
                    .map_err(|e| fail(format!("reading the link: {}", e.desc())))?;
                set_name(&mut h, &mut pax, "linkpath", target.as_bytes());
                self.append(b, h, &pax, io::empty(), &fail)
            }
            SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO => {
                h.set_entry_type(match kind {
                    SFlag::S_IFCHR => tar::EntryType::Char,
                    SFlag::S_IFBLK => tar::EntryType::Block,
                    _ => tar::EntryType::Fifo,
                });
                if kind != SFlag::S_IFIFO {
                    let (major, minor) = (nix::sys::stat::major(st.st_rdev), nix::sys::stat::minor(st.st_rdev));
                    h.set_device_major(major as u32)?;
                    h.set_device_minor(minor as u32)?;
                }
                self.append(b, h, &pax, io::empty(), &fail)
            }
            _ => {
                tracing::info!("note: skipping {}, of an unknown type", show(path));
                Ok(())
            }
        }
    }

    /// Every xattr as SCHILY.xattr; ACLs also as GNU tar's text.
    fn xattrs(&self, fd: BorrowedFd<'_>, pax: &mut Vec<(String, Vec<u8>)>, fail: &Fail<'_>) -> anyhow::Result<()> {
        let path = fd_path(fd);
        let names = match crate::sys::list_xattr(&path) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(()),
            Err(e) => return Err(fail(format!("listing its extended attributes: {}", os_error(&e)))),
        };
        for n in names {
            let Ok(name) = String::from_utf8(n) else {
                return Err(fail("an extended attribute's name is not UTF-8".into()));
            };
            let Some(value) = crate::sys::get_xattr(&path, &name).map_err(|e| {
                fail(format!(
                    "reading its extended attribute {}: {}",
                    show(name.as_bytes()),
                    os_error(&e)
                ))
            })?
            else {
                continue;
            };
            let acl = match name.as_str() {
                "system.posix_acl_access" => Some("SCHILY.acl.access"),
                "system.posix_acl_default" => Some("SCHILY.acl.default"),
                _ => None,
            };
            if let Some(text) = acl.and_then(|k| Some((k, acl_xattr_to_text(&value)?))) {
                pax.push((text.0.to_string(), text.1.into_bytes()));
            }
            pax.push((format!("SCHILY.xattr.{name}"), value));
        }
        Ok(())
    }

    fn append<W: Write, R: Read>(
        &mut self,
        b: &mut tar::Builder<W>,
        mut h: tar::Header,
        pax: &[(String, Vec<u8>)],
        data: R,
        fail: &Fail<'_>,
    ) -> anyhow::Result<()> {
        let write_err = |e: io::Error| match as_interrupted(&e) {
            Some(i) => anyhow::Error::from(i),
            None => fail(format!("archiving it: {}", os_error(&e))),
        };
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(write_err)?;
        }
        h.set_cksum();
        b.append(&h, data).map_err(write_err)
    }
}

/// Put a name in the header's field (100 bytes), or in a PAX record when
/// it is longer (the field then holds its first bytes, for old readers).
fn set_name(h: &mut tar::Header, pax: &mut Vec<(String, Vec<u8>)>, key: &str, name: &[u8]) {
    let old = h.as_old_mut();
    let field: &mut [u8; 100] = if key == "path" {
        &mut old.name
    } else {
        &mut old.linkname
    };
    field.fill(0);
    let n = name.len().min(100);
    field[..n].copy_from_slice(&name[..n]);
    if name.len() > 100 {
        pax.push((key.to_string(), name.to_vec()));
    }
}

/// A TimeSpec as a PAX time ("SECS.NNNNNNNNN").
pub fn pax_time(t: TimeSpec) -> String {
    let (s, ns) = (t.tv_sec(), t.tv_nsec());
    if s < 0 && ns > 0 {
        format!("-{}.{:09}", -(s + 1), 1_000_000_000 - ns)
    } else {
        format!("{s}.{ns:09}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_and_escapes_refused() {
        assert_eq!(normalize(b"./etc//passwd").unwrap(), vec![b"etc" as &[u8], b"passwd"]);
        assert_eq!(normalize(b"etc/").unwrap(), vec![b"etc" as &[u8]]);
        assert!(normalize(b"./").unwrap().is_empty());
        assert!(normalize(b".").unwrap().is_empty());
        assert_eq!(normalize(b"/etc/passwd"), Err("an absolute path is refused"));
        assert_eq!(normalize(b"../escape"), Err("a \"..\" component is refused"));
        assert_eq!(normalize(b"./a/../b"), Err("a \"..\" component is refused"));
        assert_eq!(normalize(b"a/b.."), Ok(vec![b"a" as &[u8], b"b.."]));
    }

    #[test]
    fn relative_links_may_not_climb_out() {
        assert!(!climbs_out(b"/usr/share/zoneinfo/UTC", 1));
        assert!(!climbs_out(b"../usr/lib/os-release", 1));
        assert!(climbs_out(b"../usr/lib/os-release", 0));
        assert!(climbs_out(b"../../..", 1));
        assert!(!climbs_out(b"a/../../x", 1));
        assert!(climbs_out(b"a/../../x", 0));
        assert!(!climbs_out(b"./x", 0));
        assert!(!climbs_out(b"../../lib/x/../y", 2));
    }

    #[test]
    fn devices() {
        assert!(allowed_char_device(1, 3));
        assert!(!allowed_char_device(10, 200));
        assert!(!allowed_char_device(5, 1));
        assert!(!allowed_char_device(5, 2));
        assert_eq!(skipped_char_device(5, 1), Some("console"));
        assert_eq!(skipped_char_device(5, 2), Some("ptmx"));
        assert_eq!(skipped_char_device(10, 200), Some("net/tun"));
        assert_eq!(skipped_char_device(1, 3), None);
        assert!(!allowed_char_device(1, 1));
        assert!(!allowed_char_device(8, 0));
    }

    #[test]
    fn pending_acls_are_kept_once_per_path_and_capped() {
        let named = |n: usize| {
            parse_acl_text(&format!(
                "user::rw-,user:{}:r--,group::r--,mask::r--,other::---",
                "u".repeat(n)
            ))
            .unwrap()
        };
        let mut p = PendingAcls::default();
        // The same path again and again: one kept, the last.
        for _ in 0..1000 {
            p.insert(
                b"srv/f".to_vec(),
                "\"srv/f\"".into(),
                "system.posix_acl_access",
                named(1000),
            )
            .unwrap();
        }
        let one = p.bytes();
        assert_eq!(p.len(), 1);
        assert!(one > 1000 && one < 2000, "{one}");
        p.insert(
            b"srv/f".to_vec(),
            "\"srv/f\"".into(),
            "system.posix_acl_default",
            named(1000),
        )
        .unwrap();
        assert_eq!((p.len(), p.bytes()), (2, 2 * one));
        p.remove(b"srv/f", "system.posix_acl_default");
        assert_eq!((p.len(), p.bytes()), (1, one));
        // Many paths: refused past the cap.
        let mut i = 0;
        let err = loop {
            match p.insert(
                format!("srv/{i}").into_bytes(),
                String::new(),
                "system.posix_acl_access",
                named(100_000),
            ) {
                Ok(()) => i += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(i, MAX_PENDING_ACLS / 100_100);
        assert!(p.bytes() <= MAX_PENDING_ACLS);
        assert_eq!(err, format!("ACLs naming users or groups (resolved at the end, in the tree's /etc/passwd and /etc/group) add up to more than {MAX_PENDING_ACLS} bytes, more than berth keeps"));
    }

    #[test]
    fn export_opens_a_fifo_put_in_place_of_a_file_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "data").unwrap();
        let dfd = nix::fcntl::open(dir.path(), OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        let st = fstatat(&dfd, "f", AtFlags::AT_SYMLINK_NOFOLLOW).unwrap();
        assert!(open_regular(&dfd, Path::new("f"), &st).is_ok());
        // Swapped for a FIFO with no writer: an open without O_NONBLOCK
        // would wait for one forever.
        std::fs::remove_file(dir.path().join("f")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("f"), Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || tx.send(open_regular(&dfd, Path::new("f"), &st).err()));
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("open_regular blocked on a FIFO");
        assert_eq!(got.as_deref(), Some("it changed while berth read it"));
        t.join().unwrap().unwrap();
    }

    #[test]
    fn mounts_at_or_below_a_tree_are_found_escaped_names_too() {
        let table = b"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
            30 22 0:5 / /var/lib/machines/web/proc rw - proc proc rw\n\
            31 22 0:6 / /var/lib/machines/a\\040b rw - tmpfs tmpfs rw\n\
            32 22 0:7 / /var/lib/machines/webby rw - tmpfs tmpfs rw\n";
        let find = |t: &str| {
            crate::mountinfo::at_or_under(table, Path::new(t))
                .next()
                .map(|m| m.point.to_str().unwrap().to_string())
        };
        assert_eq!(
            find("/var/lib/machines/web").as_deref(),
            Some("/var/lib/machines/web/proc")
        );
        assert_eq!(
            find("/var/lib/machines/web/").as_deref(),
            Some("/var/lib/machines/web/proc")
        );
        assert_eq!(find("/var/lib/machines/a b").as_deref(), Some("/var/lib/machines/a b"));
        assert_eq!(find("/var/lib/machines/webb"), None);
        assert_eq!(find("/var/lib/machines/x"), None);
        assert_eq!(find("/").as_deref(), Some("/"));
    }

    #[test]
    fn remove_tree_removes_deep_trees_and_only_what_was_checked() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "keep").unwrap();
        let mut deep = dir.path().join("t");
        for i in 0..(3 * OPEN_LEVELS) {
            deep.push(format!("d{i}"));
            std::fs::create_dir_all(&deep).unwrap();
            std::fs::write(deep.join("f"), "x").unwrap();
            std::os::unix::fs::symlink(&outside, deep.join("l")).unwrap();
            std::fs::create_dir(deep.join("side")).unwrap();
        }
        let dfd = nix::fcntl::open(dir.path(), OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        remove_tree(&dfd, "t", &dir.path().join("t"), None).unwrap();
        assert!(!dir.path().join("t").exists());
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"keep");

        // Replaced since it was checked: left alone.
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        let st = fstatat(&dfd, "a", AtFlags::AT_SYMLINK_NOFOLLOW).unwrap();
        std::fs::rename(dir.path().join("b"), dir.path().join("a")).unwrap();
        let shown = dir.path().join("a");
        assert_eq!(
            remove_tree(&dfd, "a", &shown, Some(identity(&st)))
                .unwrap_err()
                .to_string(),
            format!(
                "{} is not the one berth checked (it was replaced meanwhile): not removing it",
                shown.display()
            )
        );
        assert!(shown.exists());
    }

    #[test]
    fn checksums() {
        let hex64 = "ab".repeat(32);
        assert_eq!(parse_checksum(&format!("sha256:{hex64}")).unwrap(), [0xab; 32]);
        assert_eq!(
            parse_checksum(&format!("sha256:{}", hex64.to_uppercase())).unwrap(),
            [0xab; 32]
        );
        for bad in ["", "sha256:", "md5:00", &hex64, &format!("sha256:{}", &hex64[1..])] {
            assert_eq!(
                parse_checksum(bad).unwrap_err().to_string(),
                format!("invalid --checksum \"{bad}\": expected sha256: and 64 hexadecimal digits")
            );
        }
    }

    #[test]
    fn leftovers_are_told_apart_by_name() {
        assert_eq!(leftover_of(".import-web-0123456789abcdef"), Some("web"));
        assert_eq!(leftover_of(".import-web-1-0123456789abcdef"), Some("web-1"));
        assert_eq!(leftover_of(".import-web-1"), None);
        assert_eq!(leftover_of("web"), None);
    }

    #[test]
    fn compression_by_magic_and_by_name() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]).unwrap(), Compression::Gzip);
        assert_eq!(sniff(b"\xfd7zXZ\0").unwrap(), Compression::Xz);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd]).unwrap(), Compression::Zstd);
        assert_eq!(sniff(b"./\0\0\0\0").unwrap(), Compression::Plain);
        assert!(sniff(b"BZh91AY").is_err());
        for (n, c) in [
            ("a.tar", Compression::Plain),
            ("a.tgz", Compression::Gzip),
            ("a.tar.gz", Compression::Gzip),
            ("a.tar.xz", Compression::Xz),
            ("a.tar.zst", Compression::Zstd),
            ("a.tzst", Compression::Zstd),
        ] {
            assert_eq!(compression_of(Path::new(n)).unwrap(), c, "{n}");
        }
        assert!(compression_of(Path::new("a.zip")).is_err());
        assert!(compression_of(Path::new(".tar")).is_err());
    }

    #[test]
    fn acl_text_and_xattr_forms() {
        let text = "user::rw-\nuser:12345:r--\ngroup::r--\nmask::r--\nother::r--\n";
        let entries = parse_acl_text(text).unwrap();
        let value = acl_to_xattr(&entries, |_, _| None).unwrap();
        // As GNU tar wrote it for the same ACL (SCHILY.xattr.system.posix_acl_access).
        let want: &[u8] = b"\x02\x00\x00\x00\x01\x00\x06\x00\xff\xff\xff\xff\x02\x00\x04\x0090\x00\x00\x04\x00\x04\x00\xff\xff\xff\xff\x10\x00\x04\x00\xff\xff\xff\xff \x00\x04\x00\xff\xff\xff\xff";
        assert_eq!(value, want);
        assert_eq!(acl_xattr_to_text(&value).unwrap(), text);
        // Names are resolved by the caller (the tree's passwd); order is the kernel's.
        let named = parse_acl_text("group:adm:r-x,u::rwx,g::r-x,m::r-x,o::---,user:root:rwx:0").unwrap();
        assert_eq!(named[5].qualifier, Qualifier::Id(0));
        let v = acl_to_xattr(&named, |user, n| (!user && n == "adm").then_some(4)).unwrap();
        assert_eq!(
            acl_xattr_to_text(&v).unwrap(),
            "user::rwx\nuser:0:rwx\ngroup::r-x\ngroup:4:r-x\nmask::r-x\nother::---\n"
        );
        assert_eq!(
            acl_to_xattr(&parse_acl_text("user:bob:r--").unwrap(), |_, _| None),
            Err((true, "bob".to_string()))
        );
        assert!(parse_acl_text("user::rwz").is_err());
        assert!(parse_acl_text("").is_err());
        assert!(parse_acl_text("bogus::r").is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1795630522.106932545"), Some((1795630522, 106932545)));
        assert_eq!(parse_pax_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(pax_time(TimeSpec::new(-2, 750_000_000)), "-1.250000000");
        assert_eq!(pax_time(TimeSpec::new(7, 5)), "7.000000005");
        assert!(parse_pax_time(b"x").is_none());
        assert!(parse_pax_time(b"1.x").is_none());
    }
    #[test]
    fn numbers_octal_and_base_256() {
        assert_eq!(number(b"0000644\0"), Ok(0o644));
        assert_eq!(number(b"  755 \0"), Ok(0o755));
        assert_eq!(number(b"\0\0\0\0"), Ok(0));
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 0x01, 0x00]), Ok(256));
        assert!(number(&[0xff; 8]).is_err());
        assert!(number(b"0009\0").is_err());
        assert!(number(&[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn pax_records_are_split_by_length_not_newline() {
        let value = b"\x02\x00\n\n=\0end";
        let mut data = Vec::new();
        for (k, v) in [("SCHILY.xattr.user.bin", &value[..]), ("mtime", b"12.5")] {
            let mut len = k.len() + v.len() + 3;
            len += len.to_string().len();
            if (len).to_string().len() != (len - 1).to_string().len() {
                len += 1;
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        let records = parse_pax(&data).unwrap();
        assert_eq!(records[0], ("SCHILY.xattr.user.bin".to_string(), value.to_vec()));
        assert_eq!(records[1], ("mtime".to_string(), b"12.5".to_vec()));
        assert!(parse_pax(b"99 path=x\n").is_err());
        assert!(parse_pax(b"9 pathx\n\n").is_err());
    }

    /// A tarball from the tar crate's writer, read back by TarStream.
    #[test]
    fn the_stream_reads_long_names_binary_xattrs_and_big_ids() {
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("./{}/file", "d".repeat(150));
        b.append_pax_extensions([("SCHILY.xattr.user.x", &b"a\nb"[..]), ("uid", b"4000000000")])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o4755);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "l", "t".repeat(120)).unwrap();
        let data = b.into_inner().unwrap();

        let mut s = TarStream::new(&data[..]);
        let e = s.next_entry().unwrap().unwrap();
        assert_eq!(e.path, long.as_bytes());
        assert_eq!((e.uid, e.mode, e.size, e.typeflag), (4_000_000_000, 0o4755, 3, b'0'));
        assert_eq!(e.xattrs, vec![("user.x".to_string(), b"a\nb".to_vec())]);
        let mut buf = [0u8; 16];
        assert_eq!(s.read_data(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
        let e = s.next_entry().unwrap().unwrap();
        assert_eq!((e.path.as_slice(), e.typeflag), (&b"l"[..], b'2'));
        assert_eq!(e.link, "t".repeat(120).as_bytes());
        assert!(s.next_entry().unwrap().is_none());

        // A damaged header, and a stream cut between entries.
        let mut bad = data.clone();
        bad[1024 + 10] ^= 1;
        let e = TarStream::new(&bad[..]).next_entry().unwrap_err();
        assert_eq!(
            e.to_string(),
            "a damaged header (bad checksum) at byte 1024 of the tar stream"
        );
        bad[10] ^= 1;
        let e = TarStream::new(&bad[..]).next_entry().unwrap_err();
        assert_eq!(
            e.to_string(),
            "it is not a tar archive (nor a gzip, xz or zstd compressed one)"
        );
        let mut s = TarStream::new(&data[..512 * 6]);
        s.next_entry().unwrap();
        let e = s.next_entry().unwrap_err();
        assert_eq!(
            e.to_string(),
            "it ends without its end-of-archive block: a truncated tarball?"
        );
    }

    /// A PAX header of these records, then a ustar entry with `data`.
    fn pax_entry(out: &mut Vec<u8>, kind: tar::EntryType, records: &[(&str, &str)], path: &str, data: &[u8]) {
        let mut text = Vec::new();
        for (k, v) in records {
            let body = format!(" {k}={v}\n");
            let mut len = body.len() + 1;
            while (len.to_string().len() + body.len()) != len {
                len = len.to_string().len() + body.len();
            }
            text.extend_from_slice(format!("{len}{body}").as_bytes());
        }
        let mut append = |h: &mut tar::Header, data: &[u8]| {
            h.set_size(data.len() as u64);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        };
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        append(&mut h, &text);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_path(path).unwrap();
        append(&mut h, data);
    }

    fn sparse_1_0(map_text: &[u8], real: &str) -> Vec<u8> {
        let mut data = map_text.to_vec();
        data.resize(data.len().div_ceil(512) * 512, 0);
        data.extend_from_slice(b"abcxyz");
        let mut out = Vec::new();
        pax_entry(
            &mut out,
            tar::EntryType::XHeader,
            &[
                ("GNU.sparse.major", "1"),
                ("GNU.sparse.minor", "0"),
                ("GNU.sparse.name", "./srv/sparse"),
                ("GNU.sparse.realsize", real),
            ],
            "./GNUSparseFile.1/sparse",
            &data,
        );
        out.extend_from_slice(&[0; 1024]);
        out
    }

    fn first_error(data: &[u8]) -> String {
        let mut s = TarStream::new(data);
        loop {
            match s.next_entry() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("no error"),
                Err(e) => return e.to_string(),
            }
        }
    }

    #[test]
    fn sparse_maps_may_not_claim_more_than_their_data_holds() {
        // 1.0: a count the map's data cannot hold, however large.
        for count in ["1000", "4611686018427387904", "9223372036854775807"] {
            let data = sparse_1_0(format!("{count}\n0\n3\n").as_bytes(), "10000");
            assert_eq!(
                first_error(&data),
                format!("entry \"./srv/sparse\": a sparse map of {count} regions, more than its data can hold")
            );
        }
        // A count above what fits in a u64 or i64 is a bad number.
        let data = sparse_1_0(b"18446744073709551616\n", "10000");
        assert_eq!(
            first_error(&data),
            "entry \"./srv/sparse\": a bad number \"18446744073709551616\" in a PAX record"
        );
        // A region past the real size.
        let data = sparse_1_0(b"2\n0\n3\n9998\n3\n", "10000");
        assert_eq!(
            first_error(&data),
            "entry \"./srv/sparse\": a sparse map region of 3 bytes at 9998, beyond its size 10000: refused"
        );
        let data = sparse_1_0(b"1\n9223372036854775807\n3\n", "9223372036854775807");
        assert_eq!(
            first_error(&data),
            "entry \"./srv/sparse\": a sparse map region of 3 bytes at 9223372036854775807, beyond its size 9223372036854775807: refused"
        );
        // 0.1: GNU.sparse.map in the PAX header, capped.
        let mut map = "0,1,".repeat(MAX_SPARSE_REGIONS);
        map.push_str("0,1");
        let mut data = Vec::new();
        pax_entry(
            &mut data,
            tar::EntryType::XHeader,
            &[("GNU.sparse.size", "10"), ("GNU.sparse.map", &map)],
            "./srv/sparse",
            b"x",
        );
        assert_eq!(
            first_error(&data),
            format!("a PAX sparse map of more than {MAX_SPARSE_REGIONS} regions, more than berth reads")
        );
    }

    /// An old GNU sparse header whose extension blocks never end.
    struct EndlessSparse {
        sent: u64,
        header: [u8; 512],
    }

    impl Read for EndlessSparse {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(512);
            let at = (self.sent % 512) as usize;
            let n = n.min(512 - at);
            if self.sent < 512 {
                buf[..n].copy_from_slice(&self.header[at..at + n]);
            } else {
                let mut b = [0u8; 512];
                b[504] = 1;
                buf[..n].copy_from_slice(&b[at..at + n]);
            }
            self.sent += n as u64;
            Ok(n)
        }
    }

    #[test]
    fn old_gnu_sparse_extension_blocks_are_bounded() {
        let mut h = tar::Header::new_gnu();
        h.set_path("sparse").unwrap();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_size(0);
        h.as_gnu_mut().unwrap().isextended[0] = 1;
        h.set_cksum();
        let mut r = EndlessSparse {
            sent: 0,
            header: [0; 512],
        };
        r.header.copy_from_slice(h.as_bytes());
        let mut s = TarStream::new(&mut r);
        assert_eq!(
            s.next_entry().unwrap_err().to_string(),
            format!("a GNU sparse map of more than {MAX_SPARSE_REGIONS} regions, more than berth reads")
        );
        assert!(r.sent < (MAX_SPARSE_REGIONS as u64 / 21 + 3) * 512);
    }

    #[test]
    fn global_records_replace_by_key_and_numbers_stay_below_i64_max() {
        let mut data = Vec::new();
        for i in 0..100 {
            pax_entry(
                &mut data,
                tar::EntryType::XGlobalHeader,
                &[("SCHILY.xattr.user.g", &i.to_string()), ("uid", "7")],
                &format!("f{i}"),
                b"",
            );
        }
        data.extend_from_slice(&[0; 1024]);
        let mut s = TarStream::new(&data[..]);
        let mut n = 0;
        while let Some(e) = s.next_entry().unwrap() {
            assert_eq!(e.xattrs, vec![("user.g".to_string(), n.to_string().into_bytes())]);
            assert_eq!(e.uid, 7);
            n += 1;
        }
        assert_eq!((n, s.global.len()), (100, 2));

        // base-256 and octal above i64::MAX, a PAX size and mtime at the edge.
        assert!(number(&[0x80, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert_eq!(
            number(&[0x80, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Ok(i64::MAX as u64)
        );
        assert_eq!(
            number(b"1000000000000000000000\0"),
            Err("a number too large".to_string())
        );
        assert!(record_number(b"9223372036854775808").is_err());
        assert_eq!(parse_pax_time(b"-9223372036854775808.5"), None);
        assert_eq!(parse_pax_time(b"-9223372036854775807.5"), Some((i64::MIN, 500_000_000)));
        let mut data = Vec::new();
        pax_entry(
            &mut data,
            tar::EntryType::XHeader,
            &[("size", "9223372036854775807")],
            "big",
            b"",
        );
        let mut s = TarStream::new(&data[..]);
        assert_eq!(s.next_entry().unwrap().unwrap().size, i64::MAX as u64);
        // Its padding on top of its size does not overflow: the stream ends.
        s.left = u64::MAX;
        assert_eq!(s.next_entry().unwrap_err().to_string(), "an entry's size is too large");
    }

    #[test]
    fn pax_sparse_maps() {
        // Format 1.0: the map leads the data.
        let mut data = Vec::new();
        let mut records = Vec::new();
        for (k, v) in [
            ("GNU.sparse.major", "1"),
            ("GNU.sparse.minor", "0"),
            ("GNU.sparse.name", "./srv/sparse"),
            ("GNU.sparse.realsize", "10000"),
        ] {
            let body = format!(" {k}={v}\n");
            let mut len = body.len() + 1;
            while (len.to_string().len() + body.len()) != len {
                len = len.to_string().len() + body.len();
            }
            records.extend_from_slice(format!("{len}{body}").as_bytes());
        }
        let mut map = b"2\n0\n3\n9997\n3\n".to_vec();
        map.resize(512, 0);
        map.extend_from_slice(b"abcxyz");
        let mut b = tar::Builder::new(&mut data);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(records.len() as u64);
        h.set_cksum();
        b.append(&h, &records[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(map.len() as u64);
        h.set_path("./GNUSparseFile.1/sparse").unwrap();
        h.set_cksum();
        b.append(&h, &map[..]).unwrap();
        b.finish().unwrap();
        drop(b);
        let mut s = TarStream::new(&data[..]);
        let e = s.next_entry().unwrap().unwrap();
        assert_eq!(e.path, b"./srv/sparse");
        assert_eq!(e.sparse, Some((vec![(0, 3), (9997, 3)], 10000)));
        let mut buf = [0u8; 16];
        assert_eq!(s.read_data(&mut buf).unwrap(), 6);
        assert_eq!(&buf[..6], b"abcxyz");
        assert!(s.next_entry().unwrap().is_none());
    }
}
