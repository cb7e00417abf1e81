//! PrivateUsers=: machines in user namespaces of their own, booted from
//! the cached tree without changing it. Run as root by `tests/run-all`.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// The "INSIDE OUTSIDE COUNT" line of a process's uid_map.
fn uid_map(pid: i32) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    let f: Vec<u64> = text.split_whitespace().map(|w| w.parse().unwrap()).collect();
    assert_eq!(f.len(), 3, "one line expected in the uid_map of {pid}: {text:?}");
    (f[0], f[1], f[2])
}

fn settings(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(format!("{name}.ini"));
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// `berth run NAME -D TREE --config INI -- sh -c SCRIPT`: its stdout.
fn run_in(name: &str, ini: &str, script: &str) -> String {
    let t = tree().display().to_string();
    let out = run_berth(&["run", name, "-D", &t, "--config", ini, "--", "sh", "-c", script]);
    assert!(
        out.status.success(),
        "{name}: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The tree's owners and modes of a few files, to show nothing changed.
fn fingerprint(tree: &Path) -> Vec<(String, u32, u32, u32)> {
    ["etc/shadow", "usr/bin/passwd", "root", "var/log", "etc/machine-id"]
        .iter()
        .map(|p| {
            let m = std::fs::symlink_metadata(tree.join(p)).unwrap();
            (p.to_string(), m.uid(), m.gid(), m.mode())
        })
        .collect()
}

#[test]
fn a_picked_range_is_the_machines_own_and_the_tree_stays_as_it_was() {
    let tree = tree();
    let before = fingerprint(&tree);
    let mut m = Machine::boot("t-ns-pick", &[]);
    m.wait_ready();
    assert_eq!(m.exec_ok(&["systemctl", "is-system-running", "--wait"]), "running");
    assert_eq!(m.exec_ok(&["systemctl", "--failed", "--no-legend"]), "");
    let (inside, base, count) = uid_map(m.leader());
    assert_eq!((inside, count), (0, 65536));
    assert!(
        (524288..0x7000_0000).contains(&base) && base % 65536 == 0,
        "base {base}"
    );
    // The range is claimed while the machine runs.
    assert!(Path::new(&format!("/run/berth/users/{base}.lock")).exists());
    // Inside, the tree's files are root's as on disk; the init is root
    // there and the range's base here.
    assert_eq!(m.exec_ok(&["stat", "-c", "%u:%g %U", "/etc/shadow"]), "0:42 root");
    assert_eq!(m.exec_ok(&["id", "-u"]), "0");
    let status = std::fs::read_to_string(format!("/proc/{}/status", m.leader())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    assert_eq!(uid_line.split_whitespace().nth(1), Some(base.to_string().as_str()));
    // What root inside writes lands on disk as 0, not as the base: the
    // tree stays bootable by any other manager.
    m.exec_ok(&["sh", "-c", "echo x > /root/t-ns-pick && chown 0:0 /root/t-ns-pick"]);
    let written = std::fs::metadata(tree.join("root/t-ns-pick")).unwrap();
    assert_eq!((written.uid(), written.gid()), (0, 0));
    m.exec_ok(&["rm", "/root/t-ns-pick"]);
    // Its cgroup is delegated to its root: systemd made its own below.
    let cg = m.exec_ok(&["stat", "-c", "%u", "/sys/fs/cgroup/init.scope"]);
    assert_eq!(cg, "0", "init.scope inside is root's");
    m.stop_ok();
    assert!(fingerprint(&tree) == before, "the tree's owners or modes changed");

    // Restarted, it gets the same range; another name gets another one.
    let mut again = Machine::boot("t-ns-pick", &["--volatile=overlay"]);
    again.wait_ready();
    assert_eq!(uid_map(again.leader()).1, base, "the same machine got another range");
    let mut other = Machine::boot("t-ns-pick2", &["--volatile=overlay"]);
    other.wait_ready();
    assert_ne!(uid_map(other.leader()).1, base);
    // A fixed range that is taken is refused, with the lock named.
    let t = tree.display().to_string();
    let out = run_berth(&[
        "boot",
        "t-ns-fixed",
        "-D",
        &t,
        "--volatile=overlay",
        &format!("--private-users={base}"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!(
            "berth: machine \"t-ns-fixed\": PrivateUsers={base} is in use by another running machine (its lock /run/berth/users/{base}.lock is held)"
        )
    );
    again.stop_ok();
    other.stop_ok();
}

#[test]
fn identity_fixed_and_no_map_what_they_say() {
    let dir = tempfile::tempdir().unwrap();
    let ini = settings(dir.path(), "t-ns-id", "[Exec]\nPrivateUsers=identity\n");
    assert_eq!(
        run_in("t-ns-id", &ini, "cat /proc/self/uid_map")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "0", "65536"]
    );
    let ini = settings(dir.path(), "t-ns-fixed", "[Exec]\nPrivateUsers=3000000:1000\n");
    assert_eq!(
        run_in("t-ns-fixed", &ini, "cat /proc/self/uid_map; cat /proc/self/gid_map")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "3000000", "1000", "0", "3000000", "1000"]
    );
    let ini = settings(dir.path(), "t-ns-no", "[Exec]\nPrivateUsers=no\n");
    assert_eq!(
        run_in("t-ns-no", &ini, "cat /proc/self/uid_map")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "0", "4294967295"]
    );
    // Bad values name the file and line.
    let ini = settings(dir.path(), "t-ns-bad", "[Exec]\nBoot=no\nPrivateUsers=yes\n");
    let t = tree().display().to_string();
    let out = run_berth(&["run", "t-ns-bad", "-D", &t, "--config", &ini, "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("berth: {ini}:3: [Exec] PrivateUsers=yes: expected pick, no, identity, UID or UID:RANGE (\"yes\" would take the range from the tree's owner on disk; berth never reads IDs from the tree: write pick)")
    );
}

#[test]
fn binds_show_host_ids_only_when_idmapped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("f"), "x").unwrap();
    let d = data.display().to_string();
    // Default (noidmap): the host's root is nobody inside, and root inside
    // may not write the host's root's directory.
    let ini = settings(dir.path(), "t-ns-bind", &format!("[Files]\nBind={d}:/data\n"));
    assert_eq!(
        run_in(
            "t-ns-bind",
            &ini,
            "stat -c %u /data/f; touch /data/g 2>&1 | sed 's/.*: //'"
        ),
        "65534\nPermission denied"
    );
    // idmap: the host's IDs show as the machine's own.
    let ini = settings(dir.path(), "t-ns-bind", &format!("[Files]\nBind={d}:/data:idmap\n"));
    assert_eq!(
        run_in("t-ns-bind", &ini, "stat -c %u /data/f; touch /data/g && echo made"),
        "0\nmade"
    );
    assert_eq!(std::fs::metadata(data.join("g")).unwrap().uid(), 0);
    // A file system without idmapping support is a clear error.
    let ini = settings(dir.path(), "t-ns-bind", "[Files]\nBind=/proc/sys/kernel:/k:idmap\n");
    let t = tree().display().to_string();
    let out = run_berth(&["run", "t-ns-bind", "-D", &t, "--config", &ini, "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines().last().unwrap_or_default().starts_with(
            "berth: machine \"t-ns-bind\": giving the machine its user namespace (host IDs "
        ) && err.trim_end().ends_with("/proc/sys/kernel cannot be shown through an idmapped mount (its file system, or one mounted below it, does not support idmapping; Linux 5.12 or later idmaps ext4, xfs, btrfs, and tmpfs from 6.3): move it to such a file system, or set PrivateUsers=no or the bind's noidmap option"),
        "{err}"
    );
}

/// Restores a sysctl when the test ends, however it ends.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Sysctl {
        let old = std::fs::read_to_string(path).unwrap();
        std::fs::write(path, value).unwrap();
        Sysctl { path, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        std::fs::write(self.path, &self.old).unwrap();
    }
}

/// Each machine's user namespace is created by its own host UID, so the
/// kernel's per-user limits are per machine: with root's inotify instances
/// limited to 32 (about three Debian guests' worth), ten machines all come
/// up.
#[test]
fn ten_machines_each_have_their_own_per_user_limits() {
    let _limit = Sysctl::set("/proc/sys/fs/inotify/max_user_instances", "32");
    let mut machines: Vec<Machine> = (0..10)
        .map(|i| Machine::boot(&format!("t-ns-many{i}"), &["--volatile=overlay"]))
        .collect();
    for m in &mut machines {
        m.wait_ready();
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut bases = Vec::new();
    for m in &machines {
        let state = loop {
            let s = String::from_utf8_lossy(&m.exec(&["systemctl", "is-system-running"]).stdout)
                .trim()
                .to_string();
            if s != "starting" || Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(
            state,
            "running",
            "{}: failed units: {}",
            m.leader(),
            m.exec_ok(&["systemctl", "--failed", "--no-legend"])
        );
        bases.push(uid_map(m.leader()).1);
    }
    bases.sort();
    bases.dedup();
    assert_eq!(bases.len(), 10, "ranges shared: {bases:?}");
    for m in &mut machines {
        m.stop_ok();
    }
}

/// On a systemd host every mount is shared. A clone of a shared mount is a
/// peer of the host's: unless berth makes it private, what the machine
/// mounts on its tree appears in the host's mount table (and the machine
/// cannot even pivot_root). Run berth in a mount namespace whose mounts are
/// all shared, as systemd's are, and look at that table afterwards.
#[test]
fn on_a_host_with_shared_mounts_nothing_comes_back_to_the_host() {
    let t = tree().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    for mode in ["pick", "no"] {
        let ini = settings(dir.path(), "t-ns-shared", &format!("[Exec]\nPrivateUsers={mode}\n"));
        let script = format!(
            "{} run t-ns-shared -D {t} --config {ini} -- sh -c 'cat /proc/self/uid_map' >/dev/null 2>&1; echo rc=$?; grep -c ' {t}[ /]' /proc/self/mountinfo",
            berth_bin()
        );
        let out = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "shared", "sh", "-c", &script])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["rc=0", "0"],
            "PrivateUsers={mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
