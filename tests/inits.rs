//! Host tests of machines whose init is not systemd: berth must halt them
//! in order on SIGTERM (systemd-nspawn leaves a sysvinit guest running
//! until the stop timeout kills it). Run as root by `tests/run-all`.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn sysv_tree() -> PathBuf {
    let _ = tree(); // the root check, with its message
    let t = std::env::var_os("BERTH_TEST_SYSV_TREE").map(PathBuf::from).unwrap_or_else(|| {
        panic!("BERTH_TEST_SYSV_TREE is not set: run `sudo tests/run-all`, or export BERTH_TEST_SYSV_TREE=$(sudo tests/prepare-tree --sysvinit)")
    });
    assert!(
        t.join("sbin/init").exists() && !t.join("usr/lib/systemd/systemd").exists(),
        "{} is not a sysvinit tree: rebuild it with tests/prepare-tree --sysvinit",
        t.display()
    );
    t
}

#[test]
fn sysvinit_halts_in_order_on_sigterm() {
    let tree = sysv_tree();
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console");
    let mut child = berth()
        .args(["boot", "t-sysv", "-D"])
        .arg(&tree)
        .args(["--console=read-only", "--notify-ready=no"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&console).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    // Up: sysvinit reached its default runlevel.
    let deadline = Instant::now() + BOOT_DEADLINE;
    while !read(&console).contains("Entering runlevel: 2") {
        assert!(
            child.try_wait().unwrap().is_none(),
            "berth ended: {}",
            read(&dir.path().join("stderr"))
        );
        assert!(
            Instant::now() < deadline,
            "sysvinit did not reach runlevel 2:\n{}",
            read(&console)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let asked = Instant::now();
    berth::sys::send_signal(child.id() as i32, libc::SIGTERM).unwrap();
    let status = wait_child(
        &mut child,
        Duration::from_secs(30),
        "berth did not stop the sysvinit machine",
    );
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0), "{}", read(&dir.path().join("stderr")));
    let text = read(&console);
    assert!(
        text.contains("concurrent boot in runlevel 0") && text.contains("Will now halt."),
        "no orderly halt:\n{text}"
    );
    // Well within systemd's default stop timeout (90 s): not a kill at the end of one.
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(!scope_of("t-sysv").exists(), "cgroup left behind");
    assert!(host_mounts_under(&tree).is_empty(), "mounts left behind");
}
