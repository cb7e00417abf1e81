//! The machine's OS tree: where it is, whether it is one, which init it has,
//! and its identity. The tree is opened once; paths inside it are resolved
//! inside it ([`InRoot`]), so the tree's absolute symlinks (/sbin/init ->
//! /lib/systemd/systemd) are followed inside the tree, never on the host,
//! and the files berth reads from it are bounded regular files.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::inroot::{InRoot, PathError, MAX_READ};

use crate::name::MachineName;
use crate::spawn::Credentials;
use crate::util::os_error;

/// Where `berth boot NAME` looks for NAME's tree.
pub const MACHINES_DIR: &str = "/var/lib/machines";

/// Init search order (systemd-nspawn's).
pub const INIT_CANDIDATES: &[&str] = &["/usr/lib/systemd/systemd", "/lib/systemd/systemd", "/sbin/init"];

const OS_RELEASE: &[&str] = &["/etc/os-release", "/usr/lib/os-release"];

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("machine \"{name}\": {} does not exist", path.display())]
    Missing { name: MachineName, path: PathBuf },
    #[error("machine \"{name}\": cannot open {}: {}", path.display(), os_error(source))]
    Unreadable {
        name: MachineName,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("machine \"{name}\": {} is not a directory", path.display())]
    NotADirectory { name: MachineName, path: PathBuf },
    #[error(
        "machine \"{name}\": {} is not an OS tree: neither etc/os-release nor usr/lib/os-release exists in it",
        path.display()
    )]
    NoOsRelease { name: MachineName, path: PathBuf },
    #[error(
        "machine \"{name}\": no init found in {}: tried {} (use --init PATH)",
        path.display(), INIT_CANDIDATES.join(", ")
    )]
    NoInit { name: MachineName, path: PathBuf },
    #[error("machine \"{name}\": init {} is not an executable file in {}", init.display(), path.display())]
    BadInit {
        name: MachineName,
        path: PathBuf,
        init: PathBuf,
    },
    #[error("the directory {} has no usable name: give NAME explicitly", path.display())]
    Unnamed { path: PathBuf },
    #[error("machine \"{name}\": no user \"{user}\" in the tree's /etc/passwd")]
    NoUser { name: MachineName, user: String },
    // The path error is part of this one line, not a separate cause
    // (main prints causes after a colon).
    #[error("machine \"{name}\": {error}")]
    BadFile { name: MachineName, error: PathError },
}

/// A machine tree that passed the checks.
#[derive(Debug)]
pub struct Tree {
    pub name: MachineName,
    /// The tree on the host, absolute.
    pub root: PathBuf,
    /// The tree, opened once; every read resolves inside it, and the
    /// machine boots this very directory.
    dir: std::sync::Arc<InRoot>,
}

/// The most berth reads of /etc/machine-id (33 bytes when valid).
const MAX_MACHINE_ID: u64 = 4096;

/// Resolve the NAME / --directory pair of the command line.
pub fn resolve_name(name: Option<&str>, directory: Option<&Path>) -> anyhow::Result<(MachineName, PathBuf)> {
    match (name, directory) {
        (Some(n), dir) => {
            let name = MachineName::parse(n)?;
            let root = match dir {
                Some(d) => absolute(d),
                None => Path::new(MACHINES_DIR).join(name.as_str()),
            };
            Ok((name, root))
        }
        (None, Some(d)) => {
            let root = absolute(d);
            let file_name = root
                .file_name()
                .and_then(|f| f.to_str())
                .ok_or_else(|| TreeError::Unnamed { path: root.clone() })?;
            Ok((MachineName::parse(file_name)?, root))
        }
        (None, None) => anyhow::bail!("no machine given: name one (berth boot NAME) or use --directory DIR"),
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

impl Tree {
    /// Check that `root` is a directory holding an OS tree.
    pub fn open(name: MachineName, root: PathBuf) -> Result<Self, TreeError> {
        match std::fs::metadata(&root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(TreeError::Missing { name, path: root }),
            Err(source) => {
                return Err(TreeError::Unreadable {
                    name,
                    path: root,
                    source,
                })
            }
            Ok(m) if !m.is_dir() => return Err(TreeError::NotADirectory { name, path: root }),
            Ok(_) => {}
        }
        let dir = match InRoot::open(&root) {
            Ok(d) => d,
            Err(error) => return Err(TreeError::BadFile { name, error }),
        };
        let tree = Tree {
            name,
            root,
            dir: std::sync::Arc::new(dir),
        };
        // The first os-release that exists must be a sane file.
        match OS_RELEASE.iter().find(|p| tree.dir.exists(p)) {
            None => Err(TreeError::NoOsRelease {
                name: tree.name,
                path: tree.root,
            }),
            Some(p) => {
                tree.read(p, MAX_READ)?;
                Ok(tree)
            }
        }
    }

    /// The opened tree, for the machine's setup.
    pub fn dir(&self) -> std::sync::Arc<InRoot> {
        self.dir.clone()
    }

    /// Read a small regular file of the tree (links followed inside it).
    pub fn read(&self, path: &str, max: u64) -> Result<Vec<u8>, TreeError> {
        self.dir.read_small(path, max).map_err(|error| TreeError::BadFile {
            name: self.name.clone(),
            error,
        })
    }

    /// Like `read`, but a missing file reads as empty.
    fn read_or_empty(&self, path: &str) -> Result<String, TreeError> {
        if !self.dir.exists(path) {
            return Ok(String::new());
        }
        Ok(String::from_utf8_lossy(&self.read(path, MAX_READ)?).into_owned())
    }

    /// The init to run: `wanted` if given, else the first candidate found.
    /// The path returned is the one inside the machine.
    pub fn find_init(&self, wanted: Option<&Path>) -> Result<PathBuf, TreeError> {
        let is_exec = |p: &str| self.dir.is_executable_file(p);
        if let Some(w) = wanted {
            let s = w.to_string_lossy();
            if w.is_absolute() && is_exec(&s) {
                return Ok(w.to_path_buf());
            }
            return Err(TreeError::BadInit {
                name: self.name.clone(),
                path: self.root.clone(),
                init: w.to_path_buf(),
            });
        }
        INIT_CANDIDATES
            .iter()
            .find(|c| is_exec(c))
            .map(PathBuf::from)
            .ok_or_else(|| TreeError::NoInit {
                name: self.name.clone(),
                path: self.root.clone(),
            })
    }

    /// A user of the tree, from its own /etc/passwd and /etc/group. A number
    /// that is not listed is taken as uid and gid, with / as home.
    pub fn lookup_user(&self, user: &str) -> Result<Credentials, TreeError> {
        let passwd = self.read_or_empty("/etc/passwd")?;
        let entry = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 7 && (f[0] == user || (user.parse::<u32>().is_ok() && f[2] == user)));
        let (name, uid, gid, home) = match entry {
            Some(f) => match (f[2].parse(), f[3].parse()) {
                (Ok(uid), Ok(gid)) => (f[0].to_string(), uid, gid, f[5].to_string()),
                _ => {
                    return Err(TreeError::NoUser {
                        name: self.name.clone(),
                        user: user.into(),
                    })
                }
            },
            None => match user.parse::<u32>() {
                Ok(n) => (user.to_string(), n, n, "/".to_string()),
                Err(_) => {
                    return Err(TreeError::NoUser {
                        name: self.name.clone(),
                        user: user.into(),
                    })
                }
            },
        };
        let mut groups = vec![gid];
        for f in self
            .read_or_empty("/etc/group")?
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
        {
            if f.len() >= 4 && f[3].split(',').any(|m| m == name) {
                if let Ok(g) = f[2].parse() {
                    if !groups.contains(&g) {
                        groups.push(g);
                    }
                }
            }
        }
        Ok(Credentials {
            name,
            uid,
            gid,
            groups,
            home,
        })
    }

    /// The tree's /etc/machine-id, when it holds a valid id. A missing or
    /// empty one is None; a FIFO, a device or a huge file there is an error.
    pub fn machine_id(&self) -> Result<Option<[u8; 16]>, TreeError> {
        if !self.dir.exists("/etc/machine-id") {
            return Ok(None);
        }
        let text = self.read("/etc/machine-id", MAX_MACHINE_ID)?;
        Ok(parse_machine_id(String::from_utf8_lossy(&text).trim()))
    }

    /// The machine's `container_uuid`: its own machine-id when it has one,
    /// else an id derived from the host's machine-id and the machine name,
    /// so it stays the same from boot to boot.
    pub fn container_uuid(&self, host_machine_id: Option<&str>) -> Result<String, TreeError> {
        let id = self
            .machine_id()?
            .unwrap_or_else(|| derived_id(host_machine_id, self.name.as_str()));
        Ok(format_uuid(&id))
    }
}

/// The host's machine id, for the stable ids of machines without their own.
pub fn host_machine_id() -> Option<String> {
    let text = std::fs::read_to_string("/etc/machine-id").ok()?;
    let t = text.trim();
    parse_machine_id(t).map(|_| t.to_string())
}

pub fn parse_machine_id(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    (id != [0; 16]).then_some(id)
}

pub fn derived_id(host_machine_id: Option<&str>, name: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"berth machine id\0");
    h.update(host_machine_id.unwrap_or("").as_bytes());
    h.update(b"\0");
    h.update(name.as_bytes());
    let digest = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    // A version 4, variant 1 UUID, as systemd expects of machine ids.
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

pub fn format_uuid(id: &[u8; 16]) -> String {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Whether the directory `dir` or one above it is root's and closed to
/// everyone else (no search permission for group or others), so no host
/// user but root reaches what lies in the tree.
pub fn shut_to_others(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mut here = Some(dir);
    while let Some(d) = here {
        if let Ok(m) = std::fs::metadata(d) {
            if m.uid() == 0 && m.mode() & 0o011 == 0 {
                return true;
            }
        }
        here = d.parent();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn name(n: &str) -> MachineName {
        MachineName::parse(n).unwrap()
    }

    fn fake_tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("usr/lib/systemd")).unwrap();
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        std::fs::create_dir_all(t.path().join("sbin")).unwrap();
        std::fs::write(t.path().join("usr/lib/os-release"), "ID=debian\n").unwrap();
        symlink("../usr/lib/os-release", t.path().join("etc/os-release")).unwrap();
        t
    }

    #[test]
    fn errors_name_the_path() {
        let e = Tree::open(name("nope"), "/nonexistent/nope".into()).unwrap_err();
        assert_eq!(e.to_string(), "machine \"nope\": /nonexistent/nope does not exist");
        let t = tempfile::tempdir().unwrap();
        let e = Tree::open(name("x"), t.path().into()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "machine \"x\": {} is not an OS tree: neither etc/os-release nor usr/lib/os-release exists in it",
                t.path().display()
            )
        );
    }

    #[test]
    fn init_is_found_through_in_tree_symlinks() {
        let t = fake_tree();
        let tree = Tree::open(name("x"), t.path().into()).unwrap();
        let e = tree.find_init(None).unwrap_err();
        assert!(e.to_string().contains("no init found in"), "{e}");
        assert!(e
            .to_string()
            .ends_with("tried /usr/lib/systemd/systemd, /lib/systemd/systemd, /sbin/init (use --init PATH)"));
        // An absolute link, as in Debian: it must resolve inside the tree.
        std::fs::write(t.path().join("usr/lib/systemd/systemd"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            t.path().join("usr/lib/systemd/systemd"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        symlink("/usr/lib/systemd/systemd", t.path().join("sbin/init")).unwrap();
        assert_eq!(tree.find_init(None).unwrap(), PathBuf::from("/usr/lib/systemd/systemd"));
        assert_eq!(
            tree.find_init(Some(Path::new("/sbin/init"))).unwrap(),
            PathBuf::from("/sbin/init")
        );
        let e = tree.find_init(Some(Path::new("/bin/nothing"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "machine \"x\": init /bin/nothing is not an executable file in {}",
                t.path().display()
            )
        );
    }

    #[test]
    fn machine_ids() {
        assert!(parse_machine_id("3d1219c7c4c5404aaa1f6d2a48adfda4").is_some());
        assert!(parse_machine_id("uninitialized").is_none());
        assert!(parse_machine_id(&"0".repeat(32)).is_none());
        let a = derived_id(Some("abc"), "web");
        assert_eq!(a, derived_id(Some("abc"), "web"));
        assert_ne!(a, derived_id(Some("abc"), "db"));
        let u = format_uuid(&a);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        let t = fake_tree();
        std::fs::write(t.path().join("etc/machine-id"), "3d1219c7c4c5404aaa1f6d2a48adfda4\n").unwrap();
        let tree = Tree::open(name("x"), t.path().into()).unwrap();
        assert_eq!(
            tree.container_uuid(None).unwrap(),
            "3d1219c7-c4c5-404a-aa1f-6d2a48adfda4"
        );
        // A FIFO in its place is an error, not a hang.
        std::fs::remove_file(t.path().join("etc/machine-id")).unwrap();
        nix::unistd::mkfifo(
            &t.path().join("etc/machine-id"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        assert_eq!(
            tree.container_uuid(None).unwrap_err().to_string(),
            format!(
                "machine \"x\": reading {}/etc/machine-id: is a FIFO, not a regular file",
                t.path().display()
            )
        );
    }

    #[test]
    fn os_release_must_be_a_small_regular_file() {
        let t = fake_tree();
        std::fs::remove_file(t.path().join("etc/os-release")).unwrap();
        std::os::unix::net::UnixListener::bind(t.path().join("etc/os-release")).unwrap();
        let e = Tree::open(name("x"), t.path().into()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "machine \"x\": reading {}/etc/os-release: is a socket, not a regular file",
                t.path().display()
            )
        );
    }

    #[test]
    fn users_from_the_trees_own_files() {
        let t = fake_tree();
        std::fs::write(
            t.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nweb:x:1001:1002::/srv/web:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            t.path().join("etc/group"),
            "root:x:0:\nweb:x:1002:\nadm:x:4:syslog,web\n",
        )
        .unwrap();
        let tree = Tree::open(name("x"), t.path().into()).unwrap();
        let u = tree.lookup_user("web").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.groups.clone(), u.home.as_str()),
            (1001, 1002, vec![1002, 4], "/srv/web")
        );
        assert_eq!(tree.lookup_user("1001").unwrap().name, "web");
        assert_eq!(tree.lookup_user("4242").unwrap().uid, 4242);
        assert_eq!(
            tree.lookup_user("nobody2").unwrap_err().to_string(),
            "machine \"x\": no user \"nobody2\" in the tree's /etc/passwd"
        );
    }

    #[test]
    fn name_from_directory() {
        let (n, root) = resolve_name(None, Some(Path::new("/srv/trees/web1"))).unwrap();
        assert_eq!((n.as_str(), root), ("web1", PathBuf::from("/srv/trees/web1")));
        let (n, root) = resolve_name(Some("db"), None).unwrap();
        assert_eq!((n.as_str(), root), ("db", PathBuf::from("/var/lib/machines/db")));
        let e = resolve_name(Some("a/b"), None).unwrap_err();
        assert_eq!(e.to_string(), "invalid machine name \"a/b\": it must not contain '/'");
    }
}
