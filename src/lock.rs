//! Two flocks per running machine, taken in this order:
//! - its name: /run/berth/NAME.lock, exclusive (one instance per name);
//! - its tree: /run/berth/trees/DEV-INO.lock, keyed by the (st_dev, st_ino)
//!   of the tree directory, so every path to one tree meets the same lock.
//!   A machine that may write its tree takes it exclusive; one that cannot
//!   (ReadOnly=yes, or any Volatile= but no) takes it shared, so many such
//!   machines can boot from one tree at once.
//!
//! All locks are non-blocking; the kernel drops them when berth exits in any
//! way (SIGKILL too), so a stale lock file never stops the next start. An
//! exclusive tree holder writes its machine name into the lock file, so a
//! refused start can name it.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::name::MachineName;
use crate::util::os_error;

pub const LOCK_DIR: &str = "/run/berth";

/// Below the lock directory: the tree locks.
const TREES_DIR: &str = "trees";

/// Lock files are root's alone, and so are the directories berth creates.
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("machine \"{name}\" is already running (lock {} is held)", path.display())]
    Held { name: MachineName, path: PathBuf },
    #[error("machine \"{name}\": its tree {} is in use by {holder} (lock {} is held)", tree.display(), path.display())]
    TreeHeld {
        name: MachineName,
        tree: PathBuf,
        holder: Holder,
        path: PathBuf,
    },
    #[error("cannot lock {}: {}", path.display(), os_error(source))]
    Io { path: PathBuf, source: io::Error },
}

/// Who holds a tree lock that was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// An exclusive holder, by the name it wrote into the lock file.
    Machine(MachineName),
    /// Shared holders, or an exclusive one that has not written its name yet.
    Unknown,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Machine(name) => write!(f, "machine \"{name}\""),
            Holder::Unknown => f.write_str("another machine"),
        }
    }
}

/// How a machine uses its tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeAccess {
    /// The machine may write its tree: nobody else may use it meanwhile.
    Exclusive,
    /// The machine cannot write its tree: other such machines may share it.
    Shared,
}

/// The locks of a running machine, released when dropped (or when berth
/// exits in any way).
pub struct MachineLocks {
    // Fields drop in order: the tree first, then the name, the reverse of
    // taking them.
    _tree: Flock<File>,
    _name: Flock<File>,
}

/// Take the name lock, then the tree lock, of machine `name` booting the tree
/// at `tree`. `dir` is the lock directory (LOCK_DIR).
/// `tree` names the tree in messages; `identity` is the (st_dev, st_ino)
/// of the directory berth opened and will boot (from its descriptor, so
/// the inode locked is the inode booted).
pub fn acquire_machine(
    dir: &Path,
    name: &MachineName,
    tree: &Path,
    identity: (u64, u64),
    access: TreeAccess,
) -> Result<MachineLocks, LockError> {
    let name_lock = acquire_name(dir, name)?;
    let tree_lock = acquire_tree(dir, name, tree, identity, access)?;
    Ok(MachineLocks {
        _tree: tree_lock,
        _name: name_lock,
    })
}

fn acquire_name(dir: &Path, name: &MachineName) -> Result<Flock<File>, LockError> {
    let path = dir.join(format!("{name}.lock"));
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    ensure_dir(dir).map_err(io)?;
    let file = open_lock_file(&path).map_err(io)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, Errno::EWOULDBLOCK)) => Err(LockError::Held {
            name: name.clone(),
            path,
        }),
        Err((_, e)) => Err(io(io::Error::from(e))),
    }
}

/// Whether machine `name` runs: a berth holds its name lock. (A missing
/// lock file: it does not.)
pub fn is_running(dir: &Path, name: &str) -> bool {
    let path = dir.join(format!("{name}.lock"));
    let Ok(file) = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path) else {
        return false;
    };
    matches!(
        Flock::lock(file, FlockArg::LockSharedNonblock),
        Err((_, Errno::EWOULDBLOCK))
    )
}

/// The lock file of a tree: its name is the (st_dev, st_ino) of the tree's
/// directory.
pub fn tree_lock_path(dir: &Path, identity: (u64, u64)) -> PathBuf {
    dir.join(TREES_DIR).join(format!("{}-{}.lock", identity.0, identity.1))
}

/// The (st_dev, st_ino) of the directory a path resolves to.
pub fn identity_of(path: &Path) -> io::Result<(u64, u64)> {
    let meta = fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

fn acquire_tree(
    dir: &Path,
    name: &MachineName,
    tree: &Path,
    identity: (u64, u64),
    access: TreeAccess,
) -> Result<Flock<File>, LockError> {
    let path = tree_lock_path(dir, identity);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    ensure_dir(&dir.join(TREES_DIR)).map_err(io)?;
    let file = open_lock_file(&path).map_err(io)?;
    let arg = match access {
        TreeAccess::Exclusive => FlockArg::LockExclusiveNonblock,
        TreeAccess::Shared => FlockArg::LockSharedNonblock,
    };
    match Flock::lock(file, arg) {
        Ok(lock) => {
            // An exclusive holder leaves its name for whoever is refused;
            // a shared one clears the name of an earlier exclusive holder.
            lock.set_len(0).map_err(io)?;
            if access == TreeAccess::Exclusive {
                lock.write_all_at(format!("{name}\n").as_bytes(), 0).map_err(io)?;
            }
            Ok(lock)
        }
        Err((file, Errno::EWOULDBLOCK)) => Err(LockError::TreeHeld {
            name: name.clone(),
            tree: tree.to_path_buf(),
            holder: holder(&file),
            path,
        }),
        Err((_, e)) => Err(io(io::Error::from(e))),
    }
}

/// The holder named in a tree lock file that could not be locked.
fn holder(file: &File) -> Holder {
    let mut buf = [0u8; 256];
    let n = file.read_at(&mut buf, 0).unwrap_or(0);
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|s| MachineName::parse(s.trim_end_matches('\n')).ok())
        .map_or(Holder::Unknown, Holder::Machine)
}

/// Open (creating) a lock file, mode 0600 whatever the umask or an earlier
/// version left.
fn open_lock_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Create `dir` and missing parents, mode 0700 whatever the umask. An
/// existing directory is left as it is (/run/berth may also hold
/// machines.d, made by an administrator).
fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        ensure_dir(parent)?;
    }
    match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> MachineName {
        MachineName::parse(n).unwrap()
    }

    /// A lock directory and a tree directory, both temporary.
    struct Setup {
        t: tempfile::TempDir,
        locks: PathBuf,
        tree: PathBuf,
    }

    fn setup() -> Setup {
        let t = tempfile::tempdir().unwrap();
        let locks = t.path().join("run/berth");
        let tree = t.path().join("machines/debian");
        fs::create_dir_all(&tree).unwrap();
        Setup { locks, tree, t }
    }

    impl Setup {
        fn lock(&self, n: &str, access: TreeAccess) -> Result<MachineLocks, LockError> {
            acquire_machine(
                &self.locks,
                &name(n),
                &self.tree,
                identity_of(&self.tree).unwrap(),
                access,
            )
        }
        fn tree_lock(&self) -> PathBuf {
            tree_lock_path(&self.locks, identity_of(&self.tree).unwrap())
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn second_lock_of_a_name_is_refused_until_the_first_is_gone() {
        let s = setup();
        let first = s.lock("web", TreeAccess::Shared).unwrap();
        let e = s.lock("web", TreeAccess::Shared).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "machine \"web\" is already running (lock {}/web.lock is held)",
                s.locks.display()
            )
        );
        drop(first);
        s.lock("web", TreeAccess::Shared).unwrap();
    }

    #[test]
    fn second_exclusive_user_of_a_tree_is_refused_with_the_holders_name() {
        let s = setup();
        let first = s.lock("debian", TreeAccess::Exclusive).unwrap();
        let e = s.lock("other", TreeAccess::Exclusive).err().unwrap();
        let meta = fs::metadata(&s.tree).unwrap();
        let lock = s.locks.join(format!("trees/{}-{}.lock", meta.dev(), meta.ino()));
        assert_eq!(s.tree_lock(), lock);
        assert_eq!(
            e.to_string(),
            format!(
                "machine \"other\": its tree {} is in use by machine \"debian\" (lock {} is held)",
                s.tree.display(),
                lock.display()
            )
        );
        // The refused start released its name lock again.
        acquire_name(&s.locks, &name("other")).unwrap();
        drop(first);
        s.lock("other", TreeAccess::Exclusive).unwrap();
    }

    #[test]
    fn the_tree_lock_follows_the_directory_not_the_path() {
        let s = setup();
        let link = s.t.path().join("link");
        std::os::unix::fs::symlink(&s.tree, &link).unwrap();
        let _first = s.lock("debian", TreeAccess::Exclusive).unwrap();
        let e = acquire_machine(
            &s.locks,
            &name("other"),
            &link,
            identity_of(&link).unwrap(),
            TreeAccess::Exclusive,
        )
        .err()
        .unwrap();
        assert!(matches!(e, LockError::TreeHeld { holder: Holder::Machine(ref h), .. } if h.as_str() == "debian"));
        // A different tree is independent.
        let other_tree = s.t.path().join("machines/other");
        fs::create_dir(&other_tree).unwrap();
        acquire_machine(
            &s.locks,
            &name("other"),
            &other_tree,
            identity_of(&other_tree).unwrap(),
            TreeAccess::Exclusive,
        )
        .unwrap();
    }

    #[test]
    fn shared_users_of_a_tree_coexist() {
        let s = setup();
        let a = s.lock("a", TreeAccess::Shared).unwrap();
        let b = s.lock("b", TreeAccess::Shared).unwrap();
        let c = s.lock("c", TreeAccess::Shared).unwrap();
        drop((a, b, c));
        s.lock("d", TreeAccess::Exclusive).unwrap();
    }

    #[test]
    fn shared_is_refused_while_an_exclusive_user_runs() {
        let s = setup();
        let first = s.lock("debian", TreeAccess::Exclusive).unwrap();
        let e = s.lock("ro", TreeAccess::Shared).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "machine \"ro\": its tree {} is in use by machine \"debian\" (lock {} is held)",
                s.tree.display(),
                s.tree_lock().display()
            )
        );
        drop(first);
        s.lock("ro", TreeAccess::Shared).unwrap();
    }

    #[test]
    fn exclusive_is_refused_while_shared_users_run() {
        let s = setup();
        // An earlier exclusive holder's name must not be reported.
        drop(s.lock("old", TreeAccess::Exclusive).unwrap());
        let first = s.lock("ro", TreeAccess::Shared).unwrap();
        let e = s.lock("debian", TreeAccess::Exclusive).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "machine \"debian\": its tree {} is in use by another machine (lock {} is held)",
                s.tree.display(),
                s.tree_lock().display()
            )
        );
        drop(first);
        s.lock("debian", TreeAccess::Exclusive).unwrap();
    }

    #[test]
    fn lock_files_are_0600_and_directories_0700() {
        let s = setup();
        let _l = s.lock("debian", TreeAccess::Exclusive).unwrap();
        assert_eq!(mode(&s.locks.join("debian.lock")), 0o600);
        assert_eq!(mode(&s.tree_lock()), 0o600);
        assert_eq!(mode(&s.locks), 0o700);
        assert_eq!(mode(s.locks.parent().unwrap()), 0o700);
        assert_eq!(mode(&s.locks.join("trees")), 0o700);
        assert_eq!(fs::read_to_string(s.tree_lock()).unwrap(), "debian\n");
    }

    #[test]
    fn a_lock_file_left_with_other_permissions_is_made_0600() {
        let s = setup();
        fs::create_dir_all(&s.locks).unwrap();
        let path = s.locks.join("web.lock");
        fs::write(&path, "").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        let _l = s.lock("web", TreeAccess::Shared).unwrap();
        assert_eq!(mode(&path), 0o600);
    }
}
