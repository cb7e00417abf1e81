//! File operations inside a machine's tree, which is untrusted input.
//!
//! The tree is opened once as a directory descriptor, and every path in it
//! is resolved with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS): an
//! absolute or `..`-laden symlink in the tree resolves inside the tree, as
//! it will for the machine, never on the host. What berth creates is created
//! with `*at()` calls relative to a parent resolved that way, and never
//! through a symlink (O_NOFOLLOW, O_EXCL); what it mounts it mounts onto
//! `/proc/self/fd/N` of a resolved descriptor, which is that exact inode.
//! Files berth reads from the tree must be regular files of bounded size,
//! opened non-blocking, so a FIFO or a device there is an error, not a hang.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, mkdirat, mknodat, Mode, SFlag};

/// A directory every path is resolved in.
#[derive(Debug)]
pub struct InRoot {
    fd: OwnedFd,
    /// Where it is on the host, for error messages only.
    shown: PathBuf,
    /// A writable view of the same tree (a detached clone of its mounts),
    /// through which missing mount points are made when this view is
    /// read-only (ReadOnly=yes, Volatile=state). Only mount points: file
    /// contents are never written through it.
    mount_points: Option<Box<InRoot>>,
}

/// A failed operation on a path of the tree: what, which path (as the host
/// sees it, for the admin), and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {}: {}", path.display(), why)]
pub struct PathError {
    pub what: &'static str,
    pub path: PathBuf,
    pub why: String,
}

impl PathError {
    pub fn errno(what: &'static str, path: PathBuf, e: Errno) -> Self {
        let why = match e {
            Errno::ELOOP => "too many levels of symbolic links (a link loop in the tree?)".to_string(),
            Errno::EXDEV => "the path leaves the tree".to_string(),
            e => e.desc().to_string(),
        };
        PathError { what, path, why }
    }
}

pub type Result<T> = std::result::Result<T, PathError>;

/// The most berth reads of any one file of a tree (os-release, passwd...).
pub const MAX_READ: u64 = 1 << 20;

const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_IN_ROOT.union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

/// `/proc/self/fd/N`: a path naming exactly the inode of `fd`, for calls
/// that take only paths (mount(2), bind(2), overlayfs options).
pub fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Open for I/O exactly the inode an O_PATH descriptor `looked` names (its
/// magic link), after the caller looked at its type; the same inode or an
/// error (EAGAIN when something else is there now). Opening is the step
/// that has effects (a FIFO blocks, a device acts), so it comes last.
pub fn reopen(looked: BorrowedFd<'_>, flags: OFlag) -> std::result::Result<OwnedFd, Errno> {
    let before = fstat(looked)?;
    let fd = nix::fcntl::open(&fd_path(looked), flags | OFlag::O_CLOEXEC, Mode::empty())?;
    let after = fstat(&fd)?;
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino) {
        return Err(Errno::EAGAIN);
    }
    Ok(fd)
}

/// Split an in-tree path into its parent and last component; "/" has none.
fn split(path: &str) -> Option<(&str, &str)> {
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
    if name.is_empty() || name == "." || name == ".." {
        return None;
    }
    Some((if parent.is_empty() { "/" } else { parent }, name))
}

impl InRoot {
    /// Open `dir` (a host path chosen by the admin) as the root to resolve in.
    pub fn open(dir: &Path) -> Result<Self> {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(dir, flags, Mode::empty())
            .map_err(|e| PathError::errno("opening", dir.to_path_buf(), e))?;
        Ok(InRoot {
            fd,
            shown: dir.to_path_buf(),
            mount_points: None,
        })
    }

    /// Wrap a directory descriptor already resolved (e.g. a subdirectory).
    pub fn from_fd(fd: OwnedFd, shown: PathBuf) -> Self {
        InRoot {
            fd,
            shown,
            mount_points: None,
        }
    }

    /// Make missing mount points through `writable` when this view is
    /// read-only.
    pub fn with_mount_points_through(mut self, writable: InRoot) -> Self {
        self.mount_points = Some(Box::new(writable));
        self
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The host path of an in-tree path, for messages.
    pub fn show(&self, path: &str) -> PathBuf {
        let rel = path.trim_start_matches('/');
        if rel.is_empty() {
            self.shown.clone()
        } else {
            self.shown.join(rel)
        }
    }

    fn err(&self, what: &'static str, path: &str, e: Errno) -> PathError {
        PathError::errno(what, self.show(path), e)
    }

    /// Resolve `path` inside the root and open it with `flags`.
    pub fn open_at(&self, path: &str, flags: OFlag) -> std::result::Result<OwnedFd, Errno> {
        let rel = path.trim_start_matches('/');
        let rel = if rel.is_empty() { "." } else { rel };
        let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(RESOLVE);
        openat2(self.fd.as_fd(), rel, how)
    }

    /// Open `path` only if no component of it is a symbolic link (so the
    /// same path joined on the host names the same file).
    pub fn open_without_links(&self, path: &str, flags: OFlag) -> std::result::Result<OwnedFd, Errno> {
        let rel = path.trim_start_matches('/');
        let rel = if rel.is_empty() { "." } else { rel };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(RESOLVE | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV);
        openat2(self.fd.as_fd(), rel, how)
    }

    /// An O_PATH descriptor of `path` (symlinks followed inside the root).
    pub fn path_fd(&self, what: &'static str, path: &str) -> Result<OwnedFd> {
        self.open_at(path, OFlag::O_PATH).map_err(|e| self.err(what, path, e))
    }

    /// Whether `path` exists inside the root (following links inside it).
    pub fn exists(&self, path: &str) -> bool {
        self.open_at(path, OFlag::O_PATH).is_ok()
    }

    /// The file type of `path` itself (a symlink is reported as one), or
    /// None when it does not exist.
    pub fn kind_of(&self, path: &str) -> Option<SFlag> {
        let fd = self.open_at(path, OFlag::O_PATH | OFlag::O_NOFOLLOW).ok()?;
        let st = fstat(&fd).ok()?;
        Some(SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()))
    }

    /// Create `path` and its missing parents as directories; returns an
    /// O_PATH descriptor of it. An existing non-directory is an error.
    pub fn mkdir_all(&self, path: &str, mode: u32) -> Result<OwnedFd> {
        let mut built = String::new();
        let mut dir = self.path_fd("opening", "/")?;
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if part == ".." {
                return Err(self.err("creating directory", path, Errno::EINVAL));
            }
            built.push('/');
            built.push_str(part);
            match self.open_at(&built, OFlag::O_PATH | OFlag::O_DIRECTORY) {
                Ok(fd) => dir = fd,
                Err(Errno::ENOENT) => {
                    // `part` is missing (or a link to something missing):
                    // create it in the resolved parent, never through a link.
                    match mkdirat(&dir, part, Mode::from_bits_truncate(mode)) {
                        Ok(()) => {}
                        // Another machine of a shared tree made it meanwhile.
                        Err(Errno::EEXIST) if self.is_dir(&built) => {}
                        Err(Errno::EEXIST) => {
                            return Err(PathError {
                                what: "creating directory",
                                path: self.show(&built),
                                why: "is a symbolic link to nothing inside the tree".into(),
                            })
                        }
                        Err(Errno::EROFS) if self.mount_points.is_some() => {
                            let writable = self.mount_points.as_ref().expect("checked");
                            writable.mkdir_all(&built, mode)?;
                        }
                        Err(e) => return Err(self.err("creating directory", &built, e)),
                    }
                    let how = OpenHow::new()
                        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
                        .resolve(RESOLVE | ResolveFlag::RESOLVE_NO_SYMLINKS);
                    dir = openat2(dir.as_fd(), part, how).map_err(|e| self.err("opening", &built, e))?;
                }
                Err(Errno::ENOTDIR) => {
                    return Err(PathError {
                        what: "creating directory",
                        path: self.show(&built),
                        why: "is not a directory".into(),
                    })
                }
                Err(e) => return Err(self.err("opening", &built, e)),
            }
        }
        Ok(dir)
    }

    /// The parent directory of `path` (created if missing) and the last
    /// component's name.
    fn parent_of<'p>(&self, path: &'p str) -> Result<(OwnedFd, &'p str)> {
        let (parent, name) = split(path).ok_or_else(|| self.err("creating", path, Errno::EINVAL))?;
        Ok((self.mkdir_all(parent, 0o755)?, name))
    }

    /// A file to mount on: the existing `path` (any type but a directory,
    /// links followed inside the tree), or a new empty file. Returns an
    /// O_PATH descriptor.
    pub fn mount_point_file(&self, path: &str) -> Result<OwnedFd> {
        match self.open_at(path, OFlag::O_PATH) {
            Ok(fd) => {
                let st = fstat(&fd).map_err(|e| self.err("looking at", path, e))?;
                if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits() {
                    return Err(PathError {
                        what: "mounting a file on",
                        path: self.show(path),
                        why: "is a directory".into(),
                    });
                }
                Ok(fd)
            }
            Err(Errno::ENOENT) => {
                match self.create(path, 0o644) {
                    Ok(_) => {}
                    // Another machine of a shared tree made it meanwhile.
                    Err(_) if self.exists(path) => {}
                    Err(e) => match &self.mount_points {
                        Some(writable) if e.why == Errno::EROFS.desc() => {
                            writable.create(path, 0o644)?;
                        }
                        _ => return Err(e),
                    },
                }
                self.path_fd("opening", path)
            }
            Err(e) => Err(self.err("opening", path, e)),
        }
    }

    /// Create a new regular file (never through a link, never over an
    /// existing one); returns it open for writing.
    pub fn create(&self, path: &str, mode: u32) -> Result<File> {
        let (dir, name) = self.parent_of(path)?;
        // O_PATH descriptors cannot be used with openat(): reopen the
        // parent as a real directory descriptor first.
        let dir = reopen_dir(&dir).map_err(|e| self.err("opening the directory of", path, e))?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match nix::fcntl::openat(&dir, name, flags, Mode::from_bits_truncate(mode)) {
            Ok(fd) => Ok(File::from(fd)),
            Err(Errno::EEXIST) if self.kind_of(path) == Some(SFlag::S_IFLNK) => Err(PathError {
                what: "creating",
                path: self.show(path),
                why: "is a symbolic link to nothing inside the tree".into(),
            }),
            Err(e) => Err(self.err("creating", path, e)),
        }
    }

    /// Replace `path` (a file or a link; not a directory) with a new file
    /// holding `contents`.
    pub fn replace_file(&self, path: &str, contents: &[u8], mode: u32) -> Result<()> {
        self.remove(path)?;
        let mut f = self.create(path, mode)?;
        std::io::Write::write_all(&mut f, contents).map_err(|e| self.err("writing", path, io_errno(&e)))
    }

    /// Remove the file or link `path` itself (a missing one is fine).
    pub fn remove(&self, path: &str) -> Result<()> {
        let (parent, name) = split(path).ok_or_else(|| self.err("removing", path, Errno::EINVAL))?;
        let dir = match self.open_at(parent, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
            Ok(d) => d,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(self.err("opening the directory of", path, e)),
        };
        match nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(self.err("removing", path, e)),
        }
    }

    pub fn symlink(&self, target: &str, path: &str) -> Result<()> {
        let (dir, name) = self.parent_of(path)?;
        nix::unistd::symlinkat(target, &dir, name).map_err(|e| self.err("creating symlink", path, e))
    }

    pub fn mknod(&self, path: &str, kind: SFlag, mode: u32, dev: u64) -> Result<()> {
        let (dir, name) = self.parent_of(path)?;
        mknodat(&dir, name, kind, Mode::from_bits_truncate(mode), dev)
            .map_err(|e| self.err("creating device node", path, e))
    }

    /// Read a small regular file of the tree: links followed inside it,
    /// at most `max` bytes. The file is looked at (O_PATH, fstat) before it
    /// is opened, so a FIFO, a device, a socket or a directory there is an
    /// error naming the path, and a device is never opened.
    pub fn read_small(&self, path: &str, max: u64) -> Result<Vec<u8>> {
        let fail = |why: String| PathError {
            what: "reading",
            path: self.show(path),
            why,
        };
        let looked = self
            .open_at(path, OFlag::O_PATH)
            .map_err(|e| self.err("reading", path, e))?;
        let st = fstat(&looked).map_err(|e| self.err("reading", path, e))?;
        let kind = st.st_mode & SFlag::S_IFMT.bits();
        if kind != SFlag::S_IFREG.bits() {
            return Err(fail(format!("is {}, not a regular file", kind_name(kind))));
        }
        if st.st_size as u64 > max {
            return Err(fail(format!("larger than {} bytes ({} bytes)", max, st.st_size)));
        }
        // That very inode, non-blocking.
        let fd = match reopen(looked.as_fd(), OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY) {
            Ok(fd) => fd,
            Err(Errno::EAGAIN) => return Err(fail("changed while berth read it".into())),
            Err(e) => return Err(self.err("reading", path, e)),
        };
        let mut buf = Vec::with_capacity(st.st_size as usize);
        File::from(fd)
            .take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| self.err("reading", path, io_errno(&e)))?;
        if buf.len() as u64 > max {
            return Err(fail(format!("larger than {max} bytes")));
        }
        Ok(buf)
    }

    /// `path` must be a plain directory of the tree (not a link) or
    /// missing: where berth mounts the machine's own /proc, /sys, /dev,
    /// /run and /tmp. A link there could resolve to one place when berth
    /// mounts and to another when it masks.
    pub fn require_plain_dir_or_missing(&self, path: &str, why: &str) -> Result<()> {
        match self.kind_of(path) {
            None => Ok(()),
            Some(k) if k == SFlag::S_IFDIR => Ok(()),
            Some(k) => Err(PathError {
                what: "checking",
                path: self.show(path),
                why: format!("is {}, not a directory ({why})", kind_name(k.bits())),
            }),
        }
    }

    /// (st_dev, st_ino) of the root itself.
    pub fn identity(&self) -> Result<(u64, u64)> {
        let st = fstat(&self.fd).map_err(|e| self.err("looking at", "/", e))?;
        Ok((st.st_dev as u64, st.st_ino as u64))
    }

    /// Whether `path` is an executable regular file (links followed inside
    /// the tree), looked at without opening it for reading.
    pub fn is_executable_file(&self, path: &str) -> bool {
        let Ok(fd) = self.open_at(path, OFlag::O_PATH) else {
            return false;
        };
        fstat(&fd)
            .map(|st| st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits() && st.st_mode & 0o111 != 0)
            .unwrap_or(false)
    }

    /// Whether `path` is a directory (links followed inside the root).
    pub fn is_dir(&self, path: &str) -> bool {
        self.open_at(path, OFlag::O_PATH | OFlag::O_DIRECTORY).is_ok()
    }
}

/// Reopen an O_PATH directory descriptor as a readable one.
fn reopen_dir(fd: &OwnedFd) -> std::result::Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
    openat2(fd.as_fd(), ".", how)
}

fn kind_name(kind: u32) -> &'static str {
    match SFlag::from_bits_truncate(kind) {
        k if k == SFlag::S_IFDIR => "a directory",
        k if k == SFlag::S_IFIFO => "a FIFO",
        k if k == SFlag::S_IFCHR => "a character device",
        k if k == SFlag::S_IFBLK => "a block device",
        k if k == SFlag::S_IFSOCK => "a socket",
        k if k == SFlag::S_IFLNK => "a symbolic link",
        k if k == SFlag::S_IFREG => "a regular file",
        _ => "of an unknown type",
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, tempfile::TempDir, InRoot) {
        let tree = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = InRoot::open(tree.path()).unwrap();
        (tree, outside, root)
    }

    #[test]
    fn links_resolve_inside_the_root() {
        let (tree, outside, root) = setup();
        // etc -> a host directory: berth must create inside the tree.
        symlink(outside.path(), tree.path().join("etc")).unwrap();
        let e = root.create("/etc/localtime", 0o644).unwrap_err();
        assert!(e.to_string().starts_with("creating directory "), "{e}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // Relative and ..-laden links stay in too.
        std::fs::create_dir(tree.path().join("var")).unwrap();
        symlink("../../../../..", tree.path().join("var/up")).unwrap();
        root.mkdir_all("/var/up/made", 0o755).unwrap();
        assert!(tree.path().join("made").is_dir());
        // A dangling link at a mount point is an error, not a host file.
        symlink("/nonexistent-host-path", tree.path().join("target")).unwrap();
        let e = root.mount_point_file("/target").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "creating {}: is a symbolic link to nothing inside the tree",
                tree.path().join("target").display()
            )
        );
        assert!(!Path::new("/nonexistent-host-path").exists());
        // A loop is a clear error.
        symlink("loop2", tree.path().join("loop1")).unwrap();
        symlink("loop1", tree.path().join("loop2")).unwrap();
        let e = root.read_small("/loop1", MAX_READ).unwrap_err();
        assert!(e
            .to_string()
            .ends_with("too many levels of symbolic links (a link loop in the tree?)"));
    }

    #[test]
    fn reads_only_small_regular_files() {
        let (tree, _outside, root) = setup();
        std::fs::create_dir(tree.path().join("etc")).unwrap();
        nix::unistd::mkfifo(&tree.path().join("etc/machine-id"), Mode::from_bits_truncate(0o644)).unwrap();
        let e = root.read_small("/etc/machine-id", MAX_READ).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "reading {}: is a FIFO, not a regular file",
                tree.path().join("etc/machine-id").display()
            )
        );
        std::fs::write(tree.path().join("etc/big"), vec![b'x'; 100]).unwrap();
        let e = root.read_small("/etc/big", 10).unwrap_err();
        assert!(e.to_string().ends_with("larger than 10 bytes (100 bytes)"), "{e}");
        assert_eq!(root.read_small("/etc/big", 100).unwrap().len(), 100);
        let e = root.read_small("/dev-null-link", 10).unwrap_err();
        assert!(e.to_string().ends_with("No such file or directory"), "{e}");
    }

    #[test]
    fn replace_never_writes_through_a_link() {
        let (tree, outside, root) = setup();
        std::fs::create_dir(tree.path().join("etc")).unwrap();
        let host_file = outside.path().join("resolv.conf");
        std::fs::write(&host_file, "host\n").unwrap();
        symlink(&host_file, tree.path().join("etc/resolv.conf")).unwrap();
        root.replace_file("/etc/resolv.conf", b"tree\n", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "host\n");
        assert_eq!(
            std::fs::read_to_string(tree.path().join("etc/resolv.conf")).unwrap(),
            "tree\n"
        );
    }

    #[test]
    fn splits() {
        assert_eq!(split("/etc/machine-id"), Some(("/etc", "machine-id")));
        assert_eq!(split("/etc/"), Some(("/", "etc")));
        assert_eq!(split("/"), None);
        assert_eq!(split("/a/.."), None);
    }
}
