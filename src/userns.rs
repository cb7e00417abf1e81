//! The machine's user namespace (PrivateUsers=): which host IDs it maps,
//! and the claim that keeps two machines off one range.
//!
//! `pick` (the default) takes a range of 65536 IDs, 65536-aligned, between
//! 524288 and 1879048191 (the range systemd-nspawn picks from, so the two
//! tools agree on what is a container's ID). A candidate is refused when it
//! overlaps /etc/subuid or /etc/subgid (IDs handed to users for rootless
//! containers), a user or group of the host (the files and NSS at both
//! ends of the range), or the ID map of any running process (a machine of
//! another manager). The first candidate is derived from the machine's
//! name, so a machine gets the same range on every start while it is free
//! (its files written under one range stay its own).
//!
//! The claim is an exclusive flock(2) on /run/berth/users/BASE.lock, held by
//! the supervisor for the machine's life: the kernel drops it when berth
//! dies, so a SIGKILLed berth leaves nothing that stops the next start.

use std::fs::File;
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

pub use crate::config::value::PrivateUsers;

/// IDs a machine maps with `pick`.
pub const RANGE: u32 = 65536;
/// The first base `pick` considers.
pub const PICK_FIRST: u32 = 0x0008_0000;
/// The end (exclusive) of what `pick` considers.
pub const PICK_END: u32 = 0x7000_0000;

/// The IDs a machine's user namespace maps: its 0 is the host's `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub base: u32,
    pub size: u32,
}

impl IdRange {
    fn end(&self) -> u64 {
        self.base as u64 + self.size as u64
    }

    fn overlaps(&self, start: u64, count: u64) -> bool {
        (self.base as u64) < start + count && start < self.end()
    }

    /// The line for /proc/PID/uid_map and gid_map.
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.base, self.size)
    }

    /// The host ID of the machine's `id`.
    pub fn host_id(&self, id: u32) -> u32 {
        self.base + id
    }
}

/// A claimed range; the claim ends when this is dropped (or berth dies).
#[derive(Debug)]
pub struct Claim {
    pub range: IdRange,
    _locks: Vec<Flock<File>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("creating {}: {}", .0.display(), crate::util::os_error(.1))]
    LockDir(PathBuf, io::Error),
    #[error("machine \"{name}\": no free range of {RANGE} user IDs between {PICK_FIRST} and {PICK_END} (each is taken by a running machine, /etc/subuid, /etc/subgid or a host user)")]
    Exhausted { name: String },
    #[error("machine \"{name}\": PrivateUsers={range} is in use by another running machine (its lock {} is held)", lock.display())]
    Taken { name: String, range: String, lock: PathBuf },
    #[error("machine \"{name}\": PrivateUsers={range} overlaps the ID map of running process {pid}")]
    Mapped { name: String, range: String, pid: u32 },
    #[error("machine \"{name}\": PrivateUsers={range} overlaps IDs the host gives out ({file}): that user would own the machine; choose a range outside it, or pick")]
    HostIds { name: String, range: String, file: String },
}

/// What is known of the host's IDs, read once per claim.
#[derive(Debug, Default)]
pub struct HostIds {
    /// (start, count) ranges a candidate must not overlap.
    taken: Vec<(u64, u64, String)>,
    /// nsswitch.conf names a source beyond files and systemd (see
    /// `known_to_nss`).
    nss: bool,
}

impl HostIds {
    /// Read /etc/subuid, /etc/subgid, /etc/passwd, /etc/group, the ID maps
    /// of running processes and nsswitch.conf.
    pub fn read() -> Self {
        let mut h = HostIds {
            nss: nss_beyond_files(&std::fs::read_to_string("/etc/nsswitch.conf").unwrap_or_default()),
            ..HostIds::default()
        };
        for f in ["/etc/subuid", "/etc/subgid"] {
            h.add_sub_ids(Path::new(f));
        }
        for f in ["/etc/passwd", "/etc/group"] {
            h.add_database(Path::new(f));
        }
        h.add_process_maps();
        h
    }

    fn add(&mut self, start: u64, count: u64, why: String) {
        self.taken.push((start, count, why));
    }

    /// NAME:START:COUNT lines.
    fn add_sub_ids(&mut self, path: &Path) {
        for line in lines(path) {
            let mut it = line.split(':');
            let (Some(_), Some(start), Some(count)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if let (Ok(s), Ok(c)) = (start.trim().parse::<u64>(), count.trim().parse::<u64>()) {
                self.add(s, c, path.display().to_string());
            }
        }
    }

    /// NAME:x:ID:... lines (the ID is the third field in both files).
    fn add_database(&mut self, path: &Path) {
        for line in lines(path) {
            if let Some(id) = line.split(':').nth(2).and_then(|f| f.parse::<u64>().ok()) {
                self.add(id, 1, path.display().to_string());
            }
        }
    }

    /// "INSIDE OUTSIDE COUNT" lines of every process's uid_map, except the
    /// host's own full map.
    fn add_process_maps(&mut self) {
        let Ok(dir) = std::fs::read_dir("/proc") else { return };
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/uid_map")) else {
                continue;
            };
            for line in text.lines() {
                let f: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
                if let [_, outside, count] = f[..] {
                    if count < u32::MAX as u64 {
                        self.add(outside, count, format!("pid {pid}"));
                    }
                }
            }
        }
    }

    /// Why `range` may not be used, if it may not.
    pub fn conflict(&self, range: IdRange) -> Option<&str> {
        self.taken
            .iter()
            .find(|(s, c, _)| range.overlaps(*s, *c))
            .map(|(.., why)| why.as_str())
    }
}

fn lines(path: &Path) -> Vec<String> {
    // Host files, bounded anyway: a huge passwd must not stall a start.
    match File::open(path) {
        Ok(f) => io::BufReader::new(f)
            .lines()
            .take(1_000_000)
            .map_while(Result::ok)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The first base `pick` tries for `name`: a stable hash (FNV-1a) of the
/// name, so the same machine gets the same range while it is free.
pub fn preferred_base(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    let slots = (PICK_END - PICK_FIRST) / RANGE;
    PICK_FIRST + (h % slots) * RANGE
}

/// Whether NSS (LDAP, sssd...) knows a user or group at either end of the
/// range, beyond the files read above. Asked only when nsswitch.conf names
/// such a source: loading NSS costs a start milliseconds, and the two
/// usual sources are covered already (`files` read directly; `systemd`'s
/// container users are the ID maps of running machines, scanned).
fn known_to_nss(host: &HostIds, range: IdRange) -> bool {
    if !host.nss {
        return false;
    }
    let last = range.base + (range.size - 1);
    [range.base, last].iter().any(|id| {
        matches!(
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(*id)),
            Ok(Some(_))
        ) || matches!(
            nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(*id)),
            Ok(Some(_))
        )
    })
}

/// Whether the passwd or group line of nsswitch.conf names a source other
/// than files and systemd (no file at all: glibc's default, files).
fn nss_beyond_files(conf: &str) -> bool {
    conf.lines()
        .filter_map(|l| l.split('#').next())
        .filter_map(|l| l.split_once(':'))
        .filter(|(db, _)| matches!(db.trim(), "passwd" | "group"))
        .flat_map(|(_, sources)| sources.split_whitespace())
        .any(|s| !s.starts_with('[') && !matches!(s, "files" | "systemd" | "compat"))
}

fn try_lock(dir: &Path, range: IdRange) -> Result<Option<Flock<File>>, ClaimError> {
    let path = lock_path(dir, range.base);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ClaimError::LockDir(path.clone(), e))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(ClaimError::LockDir(path, io::Error::from(e))),
    }
}

/// The mounts at or below `path` in berth's mount table, for an error
/// (an idmapped or locked one there makes the kernel refuse an idmapping).
fn mounts_below(path: &Path) -> String {
    let Ok(table) = std::fs::read("/proc/self/mountinfo") else {
        return String::new();
    };
    let found: Vec<String> = crate::mountinfo::at_or_under(&table, path)
        .map(|m| {
            format!(
                "{} ({}, {})",
                m.point.display(),
                String::from_utf8_lossy(m.fs_type),
                String::from_utf8_lossy(m.options)
            )
        })
        .collect();
    if found.is_empty() {
        String::new()
    } else {
        format!(" (mounts there: {})", found.join("; "))
    }
}

/// The lock file of the range starting at `base`.
pub fn lock_path(dir: &Path, base: u32) -> PathBuf {
    dir.join("users").join(format!("{base}.lock"))
}

/// Claim the IDs of machine `name` under `mode`; None for PrivateUsers=no.
/// `dir` is berth's lock directory (LOCK_DIR).
pub fn claim(name: &str, mode: PrivateUsers, dir: &Path) -> Result<Option<Claim>, ClaimError> {
    let users = dir.join("users");
    let fixed = |range: IdRange| -> Result<Option<Claim>, ClaimError> {
        Ok(Some(Claim {
            range,
            _locks: Vec::new(),
        }))
    };
    match mode {
        PrivateUsers::No => return Ok(None),
        // Nothing to claim: the IDs are the host's own.
        PrivateUsers::Identity => return fixed(IdRange { base: 0, size: RANGE }),
        _ => {}
    }
    std::fs::create_dir_all(&users).map_err(|e| ClaimError::LockDir(users.clone(), e))?;
    let host = HostIds::read();
    match mode {
        PrivateUsers::Fixed { base, size } => {
            // The admin's choice, refused only where it would be shared:
            // with another machine of berth's (the lock of every 65536-ID
            // slot it touches, in order, as `pick` locks its one slot),
            // another manager's (its ID map), or a host user, group or
            // subordinate range (whose owner would own the machine).
            let range = IdRange { base, size };
            let shown = mode.to_string();
            let mut locks = Vec::new();
            for slot in (base / RANGE)..=((base as u64 + size as u64 - 1) / RANGE as u64) as u32 {
                let slot_range = IdRange {
                    base: slot * RANGE,
                    size: RANGE,
                };
                match try_lock(dir, slot_range)? {
                    Some(lock) => locks.push(lock),
                    None => {
                        return Err(ClaimError::Taken {
                            name: name.into(),
                            range: shown,
                            lock: lock_path(dir, slot_range.base),
                        })
                    }
                }
            }
            match host.conflict(range) {
                Some(why) if why.starts_with("pid ") => {
                    return Err(ClaimError::Mapped {
                        name: name.into(),
                        range: shown,
                        pid: why.trim_start_matches("pid ").parse().unwrap_or_default(),
                    })
                }
                Some(why) => {
                    return Err(ClaimError::HostIds {
                        name: name.into(),
                        range: shown,
                        file: why.to_string(),
                    })
                }
                None => {}
            }
            Ok(Some(Claim { range, _locks: locks }))
        }
        _ => {
            let slots = (PICK_END - PICK_FIRST) / RANGE;
            let first = (preferred_base(name) - PICK_FIRST) / RANGE;
            for i in 0..slots {
                let base = PICK_FIRST + ((first + i) % slots) * RANGE;
                let range = IdRange { base, size: RANGE };
                if host.conflict(range).is_some() || known_to_nss(&host, range) {
                    continue;
                }
                if let Some(lock) = try_lock(dir, range)? {
                    // Mapped by a process that started since the scan?
                    // The lock is ours now; one more look settles it.
                    let mut now = HostIds::default();
                    now.add_process_maps();
                    if now.conflict(range).is_none() {
                        return Ok(Some(Claim {
                            range,
                            _locks: vec![lock],
                        }));
                    }
                }
            }
            Err(ClaimError::Exhausted { name: name.into() })
        }
    }
}

/// The parent step of a machine with a user namespace (between clone and
/// `Go`): write its ID maps, give it its cgroup and console, and make the
/// idmapped mounts it boots from. Descriptors handed to the child, in this
/// order: the tree; one per Bind= (idmapped with its `idmap` option).
pub struct UserNamespace {
    pub range: IdRange,
    pub tree: std::sync::Arc<crate::inroot::InRoot>,
    pub files: crate::spec::Files,
    /// The console's pty slave on the host.
    pub console: Option<PathBuf>,
    /// LinkJournal= and the machine's id: a journal kept on the host is
    /// made here and given to the machine's root, which may not create it.
    pub link_journal: crate::spec::LinkJournal,
    pub machine_id: String,
    /// The cgroup2 mount.
    pub cgroup_mount: PathBuf,
}

/// The files of a cgroup its delegate writes (cgroup v2's delegation
/// model): the directory itself and these.
const DELEGATED_FILES: &[&str] = &["cgroup.procs", "cgroup.threads", "cgroup.subtree_control"];

impl UserNamespace {
    fn write_maps(&self, pid: i32) -> anyhow::Result<()> {
        // setgroups stays allowed: root inside sets its users' groups.
        for file in ["uid_map", "gid_map"] {
            let path = format!("/proc/{pid}/{file}");
            std::fs::write(&path, self.range.map_line()).map_err(|e| {
                anyhow::anyhow!(
                    "writing {path} ({}): {}",
                    self.range.map_line().trim(),
                    crate::util::os_error(&e)
                )
            })?;
        }
        Ok(())
    }

    /// The machine's cgroup (where the earlier steps put it) and its
    /// delegated files become its root's.
    fn delegate_cgroup(&self, pid: i32) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let own = crate::cgroup::own_cgroup(&text)
            .ok_or_else(|| anyhow::anyhow!("the machine's init has no cgroup2 path"))?;
        let dir = self.cgroup_mount.join(own.trim_start_matches('/'));
        let owner = Some(nix::unistd::Uid::from_raw(self.range.base));
        let group = Some(nix::unistd::Gid::from_raw(self.range.base));
        let chown = |p: &Path| {
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                p,
                owner,
                group,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| anyhow::anyhow!("giving {} to the machine's root: {}", p.display(), e.desc()))
        };
        chown(&dir)?;
        for f in DELEGATED_FILES {
            let p = dir.join(f);
            if p.exists() {
                chown(&p)?;
            }
        }
        Ok(())
    }

    /// A detached clone of `source` (every mount below it with
    /// `recursive`), idmapped through `userns` when given, with `attrs` set.
    fn detached(
        &self,
        source: std::os::fd::BorrowedFd<'_>,
        userns: Option<std::os::fd::BorrowedFd<'_>>,
        recursive: bool,
        attrs: u64,
        shown: &Path,
    ) -> anyhow::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        let clone = crate::sys::clone_mount(source, recursive).map_err(|e| {
            anyhow::anyhow!(
                "cloning the mount of {}: {}",
                shown.display(),
                crate::util::os_error(&e)
            )
        })?;
        // Private before anything else: a clone of a shared mount (the
        // host's, under systemd) is its peer, and what the machine mounts
        // under it would appear on the host.
        crate::sys::mount_make_private(clone.as_fd(), recursive).map_err(|e| {
            anyhow::anyhow!(
                "making the mount of {} private: {}",
                shown.display(),
                crate::util::os_error(&e)
            )
        })?;
        // Identity maps need no idmapping: the IDs are the host's.
        if let Some(userns) = userns.filter(|_| self.range.base != 0) {
            crate::sys::mount_setattr_idmap(clone.as_fd(), userns, recursive).map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => anyhow::anyhow!(
                    "{} cannot be shown through an idmapped mount (its file system, or one mounted below it, does not support idmapping; Linux 5.12 or later idmaps ext4, xfs, btrfs, and tmpfs from 6.3): move it to such a file system, or set PrivateUsers=no{}",
                    shown.display(),
                    if shown == self.tree.show("/") { "" } else { " or the bind's noidmap option" }
                ),
                _ => anyhow::anyhow!(
                    "idmapping {}: {}{}",
                    shown.display(),
                    crate::util::os_error(&e),
                    mounts_below(shown)
                ),
            })?;
        }
        if attrs != 0 {
            crate::sys::mount_setattr(clone.as_fd(), attrs, recursive).map_err(|e| {
                anyhow::anyhow!(
                    "setting mount flags of {}: {}",
                    shown.display(),
                    crate::util::os_error(&e)
                )
            })?;
        }
        Ok(clone)
    }
}

impl crate::setup::ParentStep for UserNamespace {
    fn name(&self) -> String {
        format!(
            "giving the machine its user namespace (host IDs {}-{})",
            self.range.base,
            self.range.end() - 1
        )
    }

    fn run(&mut self, child: crate::setup::Child<'_>) -> anyhow::Result<Vec<std::os::fd::OwnedFd>> {
        use std::os::fd::AsFd;
        let pid = child.pid.as_raw();
        self.write_maps(pid)?;
        self.delegate_cgroup(pid)?;
        if let Some(pty) = &self.console {
            // Root's terminal group inside is tty (5), as on the host.
            give_console(pty, self.range.base, self.range.host_id(5))
                .map_err(|e| anyhow::anyhow!("giving the console {} to the machine's root: {e}", pty.display()))?;
        }
        if let Some(dir) = crate::rootfs::host_journal_dir(self.link_journal, &self.machine_id) {
            let base = self.range.base;
            let made = crate::rootfs::open_host_journal_dir(&dir)
                .map_err(anyhow::Error::from)
                .and_then(|fd| {
                    // Root's (new, or kept by a machine without a user
                    // namespace) or this range's: another range's belongs to
                    // another machine with the same machine id.
                    let owner = nix::sys::stat::fstat(&fd)?.st_uid;
                    if owner != 0 && owner != base {
                        anyhow::bail!(
                            "it belongs to host UID {owner}, another machine's range (two trees with one machine id?)"
                        );
                    }
                    nix::unistd::fchownat(
                        &fd,
                        "",
                        Some(nix::unistd::Uid::from_raw(base)),
                        Some(nix::unistd::Gid::from_raw(base)),
                        nix::fcntl::AtFlags::AT_EMPTY_PATH,
                    )
                    .map_err(anyhow::Error::from)
                });
            // Only LinkJournal=host fails the start (as in the machine).
            if let (Err(e), crate::spec::LinkJournal::Host) = (made, self.link_journal) {
                anyhow::bail!("making the machine's journal {}: {e}", dir.display());
            }
        }
        // The machine's user namespace, through the unreaped child's pid.
        let path = format!("/proc/{pid}/ns/user");
        let userns = nix::fcntl::open(
            path.as_str(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| anyhow::anyhow!("opening {path}: {}", e.desc()))?;
        let shown = self.tree.show("/");
        let mut fds = Vec::new();
        // nodev: the machine's devices are the ones berth binds on its
        // own /dev; a node root inside makes in the tree opens nothing.
        fds.push(self.detached(
            self.tree.fd(),
            Some(userns.as_fd()),
            true,
            crate::sys::MOUNT_ATTR_NODEV,
            &shown,
        )?);
        // Every bind is cloned here, on the host: root in the machine's
        // user namespace may not search the host's paths to its source.
        for b in &self.files.binds {
            let source = Path::new(&b.source);
            let fd = nix::fcntl::open(
                source,
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| anyhow::anyhow!("opening {}: {}", source.display(), e.desc()))?;
            fds.push(self.detached(
                fd.as_fd(),
                b.idmap.then_some(userns.as_fd()),
                b.recursive,
                crate::rootfs::bind_attrs(b),
                source,
            )?);
        }
        Ok(fds)
    }

    fn undo(&mut self) {
        // The console goes back to root, with the mode berth gave it (the
        // pty outlives a reboot, and root inside may have opened it up).
        if let Some(pty) = &self.console {
            let _ = give_console(pty, 0, 5);
        }
    }
}

/// The console pty to `uid`:`gid`, with the mode berth made it (root
/// inside may have changed it in an earlier boot, and the pty outlives a
/// reboot).
fn give_console(pty: &Path, uid: u32, gid: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(pty, std::fs::Permissions::from_mode(0o620))?;
    nix::unistd::chown(
        pty,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_ranges_lock_every_slot_they_touch_and_keep_off_host_users() {
        let dir = tempfile::tempdir().unwrap();
        // nobody (65534) is a host user on every Debian system.
        let e = claim(
            "fixed",
            PrivateUsers::Fixed {
                base: 60000,
                size: 10000,
            },
            dir.path(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("overlaps IDs the host gives out (/etc/passwd)"),
            "{e}"
        );
        // An unaligned range across two slots holds both: a pick of
        // either slot's base is refused while it runs.
        let base = 3_000_000_000u32;
        let held = claim(
            "fixed",
            PrivateUsers::Fixed {
                base: base + 1000,
                size: 65536,
            },
            dir.path(),
        )
        .unwrap()
        .unwrap();
        let slot = base / RANGE * RANGE;
        for b in [slot, slot + RANGE] {
            let e = claim("other", PrivateUsers::Fixed { base: b, size: 10 }, dir.path()).unwrap_err();
            assert!(e.to_string().contains(&format!("users/{b}.lock is held")), "{e}");
        }
        drop(held);
        assert!(claim("other", PrivateUsers::Fixed { base: slot, size: 10 }, dir.path()).is_ok());
    }

    #[test]
    fn nss_is_asked_only_for_sources_beyond_files() {
        assert!(!nss_beyond_files(
            "passwd:         files systemd\ngroup: files systemd\nhosts: files dns\n"
        ));
        assert!(!nss_beyond_files(
            "passwd: compat [SUCCESS=merge] files\n# group: ldap\n"
        ));
        assert!(nss_beyond_files("passwd: files sss\ngroup: files\n"));
        assert!(nss_beyond_files("group: files ldap\n"));
        assert!(!nss_beyond_files(""));
    }

    #[test]
    fn preferred_bases_are_aligned_in_range_and_stable() {
        for name in ["debian", "web", "a", "a-much-longer-machine-name"] {
            let b = preferred_base(name);
            assert_eq!(b % RANGE, 0, "{name}");
            assert!((PICK_FIRST..PICK_END).contains(&b), "{name}: {b}");
            assert_eq!(b, preferred_base(name));
        }
        assert_ne!(preferred_base("debian"), preferred_base("web"));
    }

    #[test]
    fn conflicts_come_from_sub_ids_databases_and_maps() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("subuid");
        std::fs::write(&sub, "alice:589824:65536\nbroken line\n").unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, "svc:x:700000:700000::/:/bin/false\n").unwrap();
        let mut h = HostIds::default();
        h.add_sub_ids(&sub);
        h.add_database(&passwd);
        let r = |base| IdRange { base, size: RANGE };
        assert_eq!(h.conflict(r(589824)), Some(sub.to_str().unwrap()));
        assert_eq!(h.conflict(r(524288)), None);
        assert_eq!(h.conflict(r(655360)), Some(passwd.to_str().unwrap()));
        // Adjacent ranges touch but do not overlap.
        h.add(720896, 65536, "pid 42".into());
        assert_eq!(h.conflict(r(720896)), Some("pid 42"));
        assert_eq!(h.conflict(r(786432)), None);
    }

    #[test]
    fn a_claimed_range_is_skipped_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let a = claim("claim-test", PrivateUsers::Pick, dir.path()).unwrap().unwrap();
        assert_eq!(a.range.size, RANGE);
        // The same name again, while the first holds it: another range.
        let b = claim("claim-test", PrivateUsers::Pick, dir.path()).unwrap().unwrap();
        assert_ne!(a.range.base, b.range.base);
        // A fixed range that is held is refused with the lock named.
        let fixed = PrivateUsers::Fixed {
            base: a.range.base,
            size: RANGE,
        };
        let e = claim("other", fixed, dir.path()).unwrap_err();
        assert!(e.to_string().contains("is in use by another running machine"), "{e}");
        let first = a.range.base;
        drop(a);
        // Released: the machine gets its range back.
        let again = claim("claim-test", PrivateUsers::Pick, dir.path()).unwrap().unwrap();
        assert_eq!(again.range.base, first);
        assert!(claim("x", PrivateUsers::No, dir.path()).unwrap().is_none());
    }
}
