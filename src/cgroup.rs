//! The machine's cgroup on the host's cgroup2 hierarchy.
//!
//! Written against cgroupfs directly rather than with cgroups-rs: that crate
//! hard-codes /sys/fs/cgroup as the cgroup2 root (hybrid hosts mount it at
//! /sys/fs/cgroup/unified), writes `+controller` into every ancestor and
//! ignores the errors (inside a delegated subtree that hides EACCES/EBUSY),
//! and pulls a second zbus and an old nix. What berth needs is mkdir,
//! `cgroup.subtree_control`, `cgroup.procs`, `cgroup.kill` and rmdir, each
//! with an error naming the file.
//!
//! Layout:
//! - under a unit (`--keep-unit`): the unit's cgroup C gets `C/supervisor`
//!   (berth moves itself there) and `C/payload` (the machine), and every
//!   controller C has is enabled for its children;
//! - standalone: `machine.slice/machine-NAME.scope` below the cgroup2 root,
//!   created and removed by berth (this is for hosts without systemd; with
//!   systemd, use the unit), with `pids.max` = TASKS_MAX where the pids
//!   controller is on cgroup2.
//!
//! Every cgroup berth creates for a machine carries berth's mark (MARK). A
//! scope left by a killed berth is removed on the next start; a scope of the
//! same name without the mark belongs to another manager (systemd-nspawn
//! uses the same name) and is never touched: the start fails instead.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::name::MachineName;
use crate::util::os_error;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 file system is mounted on this host (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("cannot tell berth's own cgroup from /proc/self/cgroup")]
    NoOwnCgroup,
    #[error("cgroup {}: {what}: {}", path.display(), os_error(source))]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error("cgroup {}: cannot set {file}: this host's cgroup2 does not offer that controller there", path.display())]
    NoController { path: PathBuf, file: &'static str },
    #[error("cgroup {}: processes of an earlier run are still there after SIGKILL", path.display())]
    Busy { path: PathBuf },
    #[error("cgroup {} exists and is not berth's: is another manager running a machine named \"{name}\"?", path.display())]
    Foreign { path: PathBuf, name: MachineName },
}

/// The extended attribute marking a cgroup as berth's; its value is the
/// machine name. A `trusted.*` attribute: only CAP_SYS_ADMIN can set or
/// read it, so no unprivileged process can forge the mark, and cgroup2
/// (kernfs) keeps it on the directory (checked on a 6.18 hybrid host;
/// systemd marks its cgroups the same way, e.g. `trusted.delegate`).
pub const MARK: &str = "trusted.berth.machine";

/// `pids.max` of a standalone machine's scope: the TasksMax= of the systemd
/// template unit (as in systemd-nspawn@.service), so a machine gets the
/// same limit with or without systemd.
pub const TASKS_MAX: u32 = 16384;

/// Whether an existing cgroup carrying `mark` (the value of MARK, if any)
/// is berth's cgroup for machine `name`, which berth may kill and remove.
pub fn is_berths(mark: Option<&[u8]>, name: &MachineName) -> bool {
    mark == Some(name.as_str().as_bytes())
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// The cgroup2 mount point, from a mountinfo text: /sys/fs/cgroup on unified
/// hosts, /sys/fs/cgroup/unified on hybrid ones.
pub fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = crate::mountinfo::mounts(mountinfo.as_bytes())
        .filter(|m| m.fs_type == b"cgroup2")
        .map(|m| m.point)
        .collect();
    found.sort_by_key(|p| p != Path::new("/sys/fs/cgroup"));
    found.into_iter().next()
}

/// The cgroup2 path of the process, from a /proc/PID/cgroup text.
pub fn own_cgroup(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// The machine's cgroup, created fresh for each boot.
#[derive(Debug)]
pub struct MachineCgroup {
    /// Where the machine's init is placed (the root of its cgroup namespace).
    pub payload: PathBuf,
    /// The cgroup above it that carries the machine's limits, where the
    /// machine cannot change them.
    pub limits: PathBuf,
    /// What berth removes when the machine is gone.
    remove: PathBuf,
    /// Parents berth created and removes when they end up empty.
    parents: Vec<PathBuf>,
}

/// Choose and create the machine's cgroup, marked as berth's. `mount` is
/// the cgroup2 mount, `own` berth's own cgroup path in it. A standalone
/// scope that already exists is killed and removed only if it carries
/// berth's mark for `name`; otherwise this fails and kills nothing.
pub fn prepare(mount: &Path, own: &str, keep_unit: bool, name: &MachineName) -> Result<MachineCgroup, CgroupError> {
    if keep_unit {
        let unit = mount.join(own.trim_start_matches('/'));
        // The unit's cgroup must hold no process itself before controllers
        // can be enabled for its children ("no internal processes").
        let supervisor = unit.join("supervisor");
        mkdir(&supervisor)?;
        let procs = supervisor.join("cgroup.procs");
        fs::write(&procs, std::process::id().to_string()).map_err(io_err(&procs, "moving berth into it"))?;
        enable_controllers(&unit)?;
        // systemd gave the unit to berth: whatever is in its payload cgroup
        // is berth's, marked or not.
        let payload = unit.join("payload");
        remove_tree(&payload)?;
        mkdir(&payload)?;
        if let Err(e) = mark(&payload, name) {
            let _ = fs::remove_dir(&payload);
            return Err(e);
        }
        Ok(MachineCgroup {
            remove: payload.clone(),
            payload,
            limits: unit,
            parents: vec![],
        })
    } else {
        let slice = mount.join("machine.slice");
        let scope = slice.join(scope_name(name));
        // systemd-nspawn and others use the same scope name: only a scope
        // berth marked for this machine (left by a killed berth) is removed.
        remove_if_berths(&scope, name)?;
        mkdir(&slice)?;
        enable_controllers(mount)?;
        enable_controllers(&slice)?;
        // Created here and now, or it is someone else's.
        match fs::create_dir(&scope) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(CgroupError::Foreign {
                    path: scope,
                    name: name.clone(),
                })
            }
            r => r.map_err(io_err(&scope, "creating it"))?,
        }
        // The machine runs in scope/payload, the root of its cgroup
        // namespace; its limits sit on the scope above, out of its reach.
        let payload = scope.join("payload");
        let made = mark(&scope, name)
            .and_then(|()| limit_tasks(&scope))
            .and_then(|()| mkdir(&payload))
            .and_then(|()| enable_controllers(&scope));
        if let Err(e) = made {
            let _ = fs::remove_dir(&payload);
            let _ = fs::remove_dir(&scope);
            let _ = fs::remove_dir(&slice); // still used by other machines: fine
            return Err(e);
        }
        Ok(MachineCgroup {
            payload,
            limits: scope.clone(),
            remove: scope,
            parents: vec![slice],
        })
    }
}

/// Remove an existing cgroup (killing what runs there) if it is berth's
/// for machine `name`; fail, touching nothing, if it is anyone else's.
fn remove_if_berths(path: &Path, name: &MachineName) -> Result<(), CgroupError> {
    let found = match crate::sys::get_xattr(path, MARK) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        r => r.map_err(io_err(path, "reading berth's mark"))?,
    };
    if !is_berths(found.as_deref(), name) {
        // Not marked as berth's: removed only when rmdir can, i.e. it holds
        // no process and no child cgroup (a berth killed between mkdir and
        // marking, or an older berth's). rmdir kills nothing.
        return fs::remove_dir(path).map_err(|_| CgroupError::Foreign {
            path: path.into(),
            name: name.clone(),
        });
    }
    remove_tree(path)
}

/// The scope of a machine, named as systemd-machined names it
/// (`machine-web\x2d1.scope` for web-1: systemd escapes '-' in unit
/// names), so it is the same cgroup whoever made it.
pub fn scope_name(name: &MachineName) -> String {
    let mut escaped = String::new();
    for (i, b) in name.as_str().bytes().enumerate() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' => escaped.push(b as char),
            b'.' if i > 0 => escaped.push('.'),
            b => escaped.push_str(&format!("\\x{b:02x}")),
        }
    }
    format!("machine-{escaped}.scope")
}

/// Write the machine's limits (cgroupfs file, value) into `cgroup`. A
/// limit whose file is missing names the controller this host's cgroup2
/// lacks.
pub fn apply_limits(cgroup: &Path, files: &[(&'static str, String)]) -> Result<(), CgroupError> {
    for (file, value) in files {
        let path = cgroup.join(file);
        if !path.exists() {
            return Err(CgroupError::NoController {
                path: cgroup.into(),
                file,
            });
        }
        fs::write(&path, value).map_err(io_err(&path, "setting a limit"))?;
    }
    Ok(())
}

/// Mark a cgroup berth created as berth's (see MARK).
fn mark(path: &Path, name: &MachineName) -> Result<(), CgroupError> {
    crate::sys::set_xattr(path, MARK, name.as_str().as_bytes()).map_err(io_err(path, "marking it as berth's"))
}

/// Cap the number of tasks at TASKS_MAX where the pids controller is
/// enabled (on hybrid hosts it usually lives on cgroup v1: then nothing).
fn limit_tasks(cgroup: &Path) -> Result<(), CgroupError> {
    let file = cgroup.join("pids.max");
    if !file.exists() {
        return Ok(());
    }
    fs::write(&file, TASKS_MAX.to_string()).map_err(io_err(&file, "setting it"))
}

impl MachineCgroup {
    /// Kill what is left and remove the cgroups berth created.
    pub fn remove(&self) -> Result<(), CgroupError> {
        remove_tree(&self.remove)?;
        for p in &self.parents {
            let _ = fs::remove_dir(p); // still used by other machines: fine
        }
        Ok(())
    }
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io_err(path, "creating it")(e)),
        _ => Ok(()),
    }
}

/// Enable for the children of `cgroup` every controller it has (it must
/// hold no process itself).
pub fn enable_all_controllers(cgroup: &Path) -> Result<(), CgroupError> {
    enable_controllers(cgroup)
}

/// Enable for the children of `cgroup` every controller it has.
fn enable_controllers(cgroup: &Path) -> Result<(), CgroupError> {
    let file = cgroup.join("cgroup.controllers");
    let available = match fs::read_to_string(&file) {
        Ok(a) => a,
        // (Only outside cgroupfs, as in the unit tests' fake tree.)
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(&file, "reading it")(e)),
    };
    let control = cgroup.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&control).map_err(io_err(&control, "reading it"))?;
    for c in available.split_whitespace() {
        if !enabled.split_whitespace().any(|e| e == c) {
            fs::write(&control, format!("+{c}")).map_err(io_err(&control, "enabling a controller"))?;
        }
    }
    Ok(())
}

/// Remove a cgroup and everything below it, killing what still runs there.
/// A missing cgroup is fine: this also cleans up after a SIGKILLed berth.
pub fn remove_tree(path: &Path) -> Result<(), CgroupError> {
    if !path.exists() {
        return Ok(());
    }
    kill_all(path)?;
    wait_until_empty(path)?;
    rmdir_depth_first(path)
}

/// Wait until no process is left in the cgroup. The kernel wakes pollers
/// of cgroup.events (POLLPRI) when "populated" changes for the descriptor
/// that last read it, so each round reads and polls the same descriptor.
fn wait_until_empty(path: &Path) -> Result<(), CgroupError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::io::Read;
    use std::os::fd::AsFd;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let Ok(mut file) = fs::File::open(path.join("cgroup.events")) else {
            return Ok(());
        };
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        if !text.lines().any(|l| l == "populated 1") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CgroupError::Busy { path: path.into() });
        }
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLPRI)];
        let _ = poll(&mut fds, PollTimeout::from(50u16));
    }
}

fn populated(path: &Path) -> bool {
    fs::read_to_string(path.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

fn kill_all(path: &Path) -> Result<(), CgroupError> {
    if !populated(path) {
        return Ok(());
    }
    let kill = path.join("cgroup.kill");
    if kill.exists() {
        return fs::write(&kill, "1").map_err(io_err(&kill, "killing its processes"));
    }
    // Kernels before 5.14: signal each process, subtree by subtree.
    for entry in fs::read_dir(path).map_err(io_err(path, "listing it"))?.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            kill_all(&entry.path())?;
        }
    }
    let procs = fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.parse().ok()) {
        let _ = crate::sys::send_signal(pid, libc::SIGKILL);
    }
    Ok(())
}

fn rmdir_depth_first(path: &Path) -> Result<(), CgroupError> {
    for entry in fs::read_dir(path).map_err(io_err(path, "listing it"))?.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            rmdir_depth_first(&entry.path())?;
        }
    }
    // The kernel may need a moment after the last process left.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(io_err(path, "removing it")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_named_as_machined_names_them() {
        let n = |s: &str| MachineName::parse(s).unwrap();
        assert_eq!(scope_name(&n("debian")), "machine-debian.scope");
        assert_eq!(scope_name(&n("web-1.v2")), "machine-web\\x2d1.v2.scope");
    }

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        let hybrid = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        assert_eq!(find_cgroup2(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "\
40 60 0:30 / /mnt/other rw - cgroup2 cgroup2 rw
31 25 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:9 - cgroup2 cgroup2 rw,nsdelegate
";
        assert_eq!(find_cgroup2(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(find_cgroup2("31 25 0:27 / /sys rw - sysfs sysfs rw\n"), None);
    }

    #[test]
    fn own_cgroup_from_proc() {
        let text = "9:name=systemd:/\n4:memory:/x\n0::/system.slice/machine@web.service\n";
        assert_eq!(own_cgroup(text).as_deref(), Some("/system.slice/machine@web.service"));
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn plain_directories_are_removed_depth_first() {
        // Outside cgroupfs the same code removes an empty tree of directories.
        let t = tempfile::tempdir().unwrap();
        let top = t.path().join("machine-x.scope");
        fs::create_dir_all(top.join("system.slice/a.service")).unwrap();
        fs::create_dir_all(top.join("init.scope")).unwrap();
        remove_tree(&top).unwrap();
        assert!(!top.exists());
        remove_tree(&top).unwrap(); // gone already: fine
    }

    fn name(n: &str) -> MachineName {
        MachineName::parse(n).unwrap()
    }

    #[test]
    fn only_berths_mark_for_the_same_machine_counts() {
        assert!(is_berths(Some(b"web"), &name("web")));
        assert!(!is_berths(None, &name("web")));
        assert!(!is_berths(Some(b""), &name("web")));
        assert!(!is_berths(Some(b"web2"), &name("web")));
        assert!(!is_berths(Some(b"web\n"), &name("web")));
        assert!(!is_berths(Some(b"db"), &name("web")));
    }

    /// A directory laid out as a cgroup2 mount with an empty machine.slice
    /// (no controllers): enough for `prepare` outside cgroupfs.
    fn fake_mount() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for d in [t.path().to_path_buf(), t.path().join("machine.slice")] {
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("cgroup.controllers"), "").unwrap();
            fs::write(d.join("cgroup.subtree_control"), "").unwrap();
        }
        t
    }

    fn can_set_trusted_xattrs(dir: &Path) -> bool {
        crate::sys::set_xattr(dir, "trusted.berth.probe", b"1").is_ok()
    }

    #[test]
    fn a_scope_without_berths_mark_is_refused_and_kept() {
        let t = fake_mount();
        let scope = t.path().join("machine.slice/machine-web.scope");
        fs::create_dir_all(scope.join("init.scope")).unwrap();
        let e = prepare(t.path(), "/", false, &name("web")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cgroup {} exists and is not berth's: is another manager running a machine named \"web\"?",
                scope.display()
            )
        );
        assert!(scope.join("init.scope").is_dir(), "a foreign scope was touched");
    }

    #[test]
    fn a_scope_marked_for_another_machine_is_refused_and_kept() {
        let t = fake_mount();
        if !can_set_trusted_xattrs(t.path()) {
            eprintln!("skipped: trusted.* extended attributes need root");
            return;
        }
        let scope = t.path().join("machine.slice/machine-web.scope");
        fs::create_dir_all(scope.join("init.scope")).unwrap();
        crate::sys::set_xattr(&scope, MARK, b"db").unwrap();
        assert!(matches!(
            prepare(t.path(), "/", false, &name("web")),
            Err(CgroupError::Foreign { .. })
        ));
        assert!(scope.join("init.scope").is_dir());
    }

    #[test]
    fn an_empty_unmarked_scope_is_removed_without_killing() {
        // What a berth killed between mkdir and marking leaves: nothing in
        // it, so rmdir takes it (rmdir kills nothing and fails on anything
        // in use).
        let t = fake_mount();
        let scope = t.path().join("machine.slice/machine-web.scope");
        fs::create_dir_all(&scope).unwrap();
        let cg = prepare(t.path(), "/", false, &name("web"));
        if can_set_trusted_xattrs(t.path()) {
            cg.unwrap();
        }
        // Without root the new scope cannot be marked; the old one is gone
        // all the same (the error is the mark's, not "not berth's").
        else {
            assert!(!matches!(cg, Err(CgroupError::Foreign { .. })));
        }
    }

    #[test]
    fn a_scope_berth_marked_is_replaced_and_the_new_one_marked() {
        let t = fake_mount();
        if !can_set_trusted_xattrs(t.path()) {
            eprintln!("skipped: trusted.* extended attributes need root");
            return;
        }
        let scope = t.path().join("machine.slice/machine-web.scope");
        fs::create_dir_all(scope.join("init.scope")).unwrap();
        crate::sys::set_xattr(&scope, MARK, b"web").unwrap();
        let cg = prepare(t.path(), "/", false, &name("web")).unwrap();
        // The machine's own cgroup is below the scope, which holds its limits.
        assert_eq!(cg.payload, scope.join("payload"));
        assert_eq!(cg.limits, scope);
        assert!(!scope.join("init.scope").exists(), "the stale scope was kept");
        assert_eq!(
            crate::sys::get_xattr(&scope, MARK).unwrap().as_deref(),
            Some(&b"web"[..])
        );
        assert!(
            !scope.join("pids.max").exists(),
            "pids.max written without the controller"
        );
        cg.remove().unwrap();
        assert!(!scope.exists());
    }

    #[test]
    fn the_units_payload_is_replaced_whatever_its_mark() {
        let t = fake_mount();
        if !can_set_trusted_xattrs(t.path()) {
            eprintln!("skipped: trusted.* extended attributes need root");
            return;
        }
        let unit = t.path().join("system.slice/machine@web.service");
        fs::create_dir_all(unit.join("payload/init.scope")).unwrap();
        fs::create_dir_all(unit.join("supervisor")).unwrap();
        fs::write(unit.join("cgroup.controllers"), "").unwrap();
        fs::write(unit.join("cgroup.subtree_control"), "").unwrap();
        let cg = prepare(t.path(), "/system.slice/machine@web.service", true, &name("web")).unwrap();
        assert_eq!(cg.payload, unit.join("payload"));
        assert!(!unit.join("payload/init.scope").exists());
        assert_eq!(
            crate::sys::get_xattr(&cg.payload, MARK).unwrap().as_deref(),
            Some(&b"web"[..])
        );
    }

    #[test]
    fn tasks_are_limited_only_where_pids_max_exists() {
        let t = tempfile::tempdir().unwrap();
        limit_tasks(t.path()).unwrap();
        assert!(!t.path().join("pids.max").exists());
        fs::write(t.path().join("pids.max"), "max\n").unwrap();
        limit_tasks(t.path()).unwrap();
        assert_eq!(fs::read_to_string(t.path().join("pids.max")).unwrap(), "16384");
    }

    #[test]
    fn xattrs_read_back_and_a_missing_one_is_none() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(crate::sys::get_xattr(t.path(), MARK).unwrap(), None);
        assert_eq!(
            crate::sys::get_xattr(&t.path().join("nothing"), MARK)
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        if can_set_trusted_xattrs(t.path()) {
            let long = vec![b'x'; 3000]; // longer than the first buffer
            crate::sys::set_xattr(t.path(), "trusted.berth.long", &long).unwrap();
            assert_eq!(
                crate::sys::get_xattr(t.path(), "trusted.berth.long").unwrap(),
                Some(long)
            );
        }
    }
}
