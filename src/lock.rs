//! One running instance per machine name: an flock on /run/berth/NAME.lock.
//! The kernel drops the lock when berth exits in any way (SIGKILL too), so a
//! stale lock file never stops the next start.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::name::MachineName;
use crate::util::os_error;

pub const LOCK_DIR: &str = "/run/berth";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("machine \"{name}\" is already running (lock {} is held)", path.display())]
    Held { name: MachineName, path: PathBuf },
    #[error("cannot lock {}: {}", path.display(), os_error(source))]
    Io { path: PathBuf, source: std::io::Error },
}

pub struct MachineLock {
    _lock: Flock<File>,
}

pub fn acquire(dir: &Path, name: &MachineName) -> Result<MachineLock, LockError> {
    let path = dir.join(format!("{name}.lock"));
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(dir).map_err(io)?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(MachineLock { _lock: lock }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(LockError::Held {
            name: name.clone(),
            path,
        }),
        Err((_, e)) => Err(io(std::io::Error::from(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let name = MachineName::parse("web").unwrap();
        let first = acquire(dir.path(), &name).unwrap();
        let e = acquire(dir.path(), &name).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "machine \"web\" is already running (lock {}/web.lock is held)",
                dir.path().display()
            )
        );
        drop(first);
        acquire(dir.path(), &name).unwrap();
    }
}
