//! The escape suite (host tier): root inside a booted machine tries the
//! known ways out (tests/escape/probe.sh, run by the machine's own systemd
//! so it has exactly what the machine's services have), once per
//! PrivateUsers= mode. The probe's lines must equal tests/escape/expected-
//! MODE.txt; then the host checks what the probe cannot see from inside:
//! core_pattern unchanged, no mount of the probe's left in the host's
//! namespace, nothing in the host's /dev or binfmt_misc, the targeted host
//! process alive, and who owns the setuid files made through the binds.
//!
//! Run: `sudo -E cargo test --test escape -- --test-threads=1` with
//! BERTH_TEST_TREE set (tests/prepare-tree); each test boots a private copy
//! of that tree.

mod common;

use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/escape/probe.sh");

fn expected(mode: &str) -> String {
    let p = format!("{}/tests/escape/expected-{mode}.txt", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// Line by line; None when equal, else the lines that differ, by number,
/// with - (expected) and + (got) marks.
fn diff(expected: &str, got: &str) -> Option<String> {
    let (e, g): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), got.lines().collect());
    if e == g {
        return None;
    }
    let mut out = String::new();
    for i in 0..e.len().max(g.len()) {
        let (a, b) = (e.get(i), g.get(i));
        if a != b {
            out += &format!("line {}:\n", i + 1);
            if let Some(a) = a {
                out += &format!("- {a}\n");
            }
            if let Some(b) = b {
                out += &format!("+ {b}\n");
            }
        }
    }
    Some(out)
}

/// The host's namespaces, as the probe compares them.
fn host_ns() -> String {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/ns")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().ends_with("_for_children"))
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.display().to_string())
        .collect();
    v.sort();
    v.join(" ")
}

/// MAJOR:MINOR of the host's root file system.
fn root_dev() -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 4 && f[4] == "/")
        .map(|f| f[2].to_string())
        .expect("no / in /proc/self/mountinfo")
}

/// Entries of the host's own binfmt_misc instance (mounted in a mount
/// namespace of its own, so the host's table does not change).
fn host_binfmt_entries() -> Vec<String> {
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("d=$(mktemp -d) && mount -t binfmt_misc binfmt_misc \"$d\" && ls \"$d\"; umount \"$d\" 2>/dev/null; rmdir \"$d\"")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| *l != "register" && *l != "status")
        .map(String::from)
        .collect()
}

/// A host directory bound into the machine, writable by anyone (so root
/// of a user namespace can make files in it, and the owner shows how the
/// bind mapped it).
fn bind_dir(base: &Path, name: &str) -> PathBuf {
    let d = base.join(name);
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
    d
}

/// Mode `mode` of PrivateUsers=: boot a private copy of the tree with a
/// private network and binds, run the probe, compare, check the host.
fn escape(mode: &str) {
    let cached = tree();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("tree");
    let st = Command::new("cp").arg("-a").arg(&cached).arg(&copy).status().unwrap();
    assert!(st.success(), "cp -a {} failed", cached.display());
    let canary = dir.path().join("canary");
    std::fs::write(&canary, "host\n").unwrap();
    let bind = bind_dir(dir.path(), "bind");
    let bind_idmap = bind_dir(dir.path(), "bind-idmap");
    let name = format!("t-esc-{mode}-{}", std::process::id());
    let abstract_name = format!("t-esc-abstract-{}-{mode}", std::process::id());
    let listener = UnixListener::bind_addr(&SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap()).unwrap();
    let mut target = Command::new("sleep").arg("600").spawn().unwrap();
    let core_before = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let binfmt_before = host_binfmt_entries();

    let b = format!("--bind={}:/mnt/bind", bind.display());
    let bi = format!("--bind={}:/mnt/bind-idmap:idmap", bind_idmap.display());
    let mut args = vec!["--private=yes", "--private-users", mode, b.as_str()];
    if mode == "pick" {
        args.push(bi.as_str());
    }
    let mut m = Machine::boot_dir(&name, &copy, &args);
    m.wait_ready();
    let leader = m.leader();

    let out_path = dir.path().join("probe.out");
    let mut cmd = Command::new("nsenter");
    cmd.args(["-t", &leader.to_string(), "-a", "systemd-run", "--wait", "--pipe", "-q"]);
    for (k, v) in [
        ("HOST_DISK", root_dev()),
        ("HOST_PID", target.id().to_string()),
        ("HOST_CANARY", canary.display().to_string()),
        ("HOST_NS", host_ns()),
        ("HOST_ABSTRACT", abstract_name.clone()),
        ("BIND_DIR", "/mnt/bind".into()),
    ] {
        cmd.arg("-E").arg(format!("{k}={v}"));
    }
    if mode == "pick" {
        cmd.args(["-E", "BIND_IDMAP_DIR=/mnt/bind-idmap"]);
    }
    let mut child = cmd
        .args(["sh", "-s"])
        .stdin(std::fs::File::open(PROBE).unwrap())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_child(&mut child, Duration::from_secs(120), "the probe did not end");
    let got = std::fs::read_to_string(&out_path).unwrap();

    // Everything below is collected, so the machine is stopped (and the
    // copy removed) before the test fails.
    let mut failures = Vec::new();
    if let Some(d) = diff(&expected(mode), &got) {
        failures.push(format!(
            "the probe's results differ from tests/escape/expected-{mode}.txt (- expected, + got):\n{d}"
        ));
    }
    let (_, base, _) = uid_map(leader);
    m.stop_ok();

    if std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap() != core_before {
        failures.push(format!("core_pattern changed (was {core_before:?})"));
    }
    // The probe's mount points are /tmp/esc-*: none may show on the host.
    let leaked: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains("/esc-") || l.contains(&dir.path().display().to_string()))
        .map(String::from)
        .collect();
    if !leaked.is_empty() {
        failures.push(format!("mounts left in the host's namespace:\n{}", leaked.join("\n")));
    }
    let in_dev: Vec<String> = std::fs::read_dir("/dev")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("esc-"))
        .collect();
    for n in &in_dev {
        let _ = std::fs::remove_file(Path::new("/dev").join(n));
    }
    if !in_dev.is_empty() {
        failures.push(format!("files of the machine in the host's /dev: {in_dev:?}"));
    }
    let binfmt_after = host_binfmt_entries();
    if binfmt_after.contains(&"t-esc-probe".to_string()) && !binfmt_before.contains(&"t-esc-probe".to_string()) {
        let _ = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("d=$(mktemp -d) && mount -t binfmt_misc binfmt_misc \"$d\" && echo -1 > \"$d/t-esc-probe\"; umount \"$d\"; rmdir \"$d\"")
            .status();
        failures.push("the probe's binfmt_misc entry t-esc-probe is in the host's instance".into());
    }
    match target.try_wait().unwrap() {
        None => {}
        Some(s) => failures.push(format!("the targeted host process {} ended: {s}", target.id())),
    }
    let _ = target.kill();
    let _ = target.wait();
    drop(listener);

    // The setuid files made through the binds, as the host sees them.
    let owner = |p: &Path| std::fs::metadata(p).map(|md| (md.uid(), md.mode() & 0o7777)).ok();
    let plain = owner(&bind.join("esc-setuid"));
    match mode {
        // The default bind (noidmap): root inside is the range's base here.
        "pick" => {
            if plain != Some((base, 0o4755)) {
                failures.push(format!(
                    "setuid file through the default bind: {plain:?}, expected (base {base}, 0o4755)"
                ));
            }
            // idmap, as documented: root inside writes as the host's root.
            let idm = owner(&bind_idmap.join("esc-setuid"));
            if idm != Some((0, 0o4755)) {
                failures.push(format!(
                    "setuid file through the idmap bind: {idm:?}, expected (0, 0o4755), as the manual says"
                ));
            }
        }
        // PrivateUsers=no, as documented: root inside is the host's root.
        _ => {
            if plain != Some((0, 0o4755)) {
                failures.push(format!(
                    "setuid file through the bind: {plain:?}, expected (0, 0o4755), as the manual says"
                ));
            }
        }
    }
    // In the tree, as documented: the tree on disk keeps the host's IDs,
    // so root inside makes root's files there in either mode (hence trees
    // belong where only root can reach them, as /var/lib/machines, 0700).
    let in_tree = owner(&copy.join("var/tmp/esc-setuid"));
    if in_tree != Some((0, 0o4755)) {
        failures.push(format!(
            "setuid file in the tree: {in_tree:?}, expected (0, 0o4755), as the manual says"
        ));
    }
    if mode == "pick" && base == 0 {
        failures.push("the machine's base is 0".into());
    }
    assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n\n"));
}

/// (inside, outside, count) of the first line of PID's uid_map.
fn uid_map(pid: i32) -> (u32, u32, u32) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    let f: Vec<u32> = text.split_whitespace().take(3).map(|x| x.parse().unwrap()).collect();
    (f[0], f[1], f[2])
}

#[test]
fn root_inside_a_picked_user_namespace_stays_inside() {
    escape("pick");
}

#[test]
fn root_inside_without_a_user_namespace_stays_inside() {
    escape("no");
}
