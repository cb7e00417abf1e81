//! What every benchmark of berth against its comparison needs.
#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Print why the benchmark cannot go on, and exit 1.
pub fn fail(msg: &str) -> ! {
    eprintln!("bench: {msg}");
    std::process::exit(1)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The middle value (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// berth's arguments for a trivial init, ready as soon as it is executed
/// (start to exec: berth's own work, without the guest's boot).
pub const TRIVIAL_INIT: &[&str] = &[
    "--notify-ready=no",
    "--init",
    "/bin/sleep",
    "--kill-signal=SIGKILL",
    "--",
    "1000",
];

/// Start, wait for READY=1, return (time to ready, the child); the caller
/// waits for the child.
#[allow(clippy::zombie_processes)]
pub fn start(mut c: Command, sock_dir: &Path) -> (f64, Child) {
    let path = sock_dir.join("notify");
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    c.env("NOTIFY_SOCKET", &path);
    let t0 = Instant::now();
    let mut child = c.spawn().unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).unwrap_or_else(|e| {
            let _ = child.kill();
            fail(&format!("no READY=1 within 60 s: {e}"))
        });
        if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
            return (t0.elapsed().as_secs_f64() * 1000.0, child);
        }
    }
}

pub fn stop(mut child: Child) -> f64 {
    let t0 = Instant::now();
    signal(child.id() as i32, libc::SIGTERM);
    let status = child.wait().unwrap();
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    if !status.success() {
        fail(&format!("supervisor exited with {status} after SIGTERM"));
    }
    ms
}

/// Fail, saying what to install, when systemd-nspawn is missing.
pub fn need_nspawn() {
    if Command::new("systemd-nspawn").arg("--version").output().is_err() {
        fail("systemd-nspawn is missing: apt-get install -y systemd-container");
    }
}

pub fn signal(pid: i32, sig: i32) {
    berth::sys::send_signal(pid, sig).unwrap();
}

/// Root, the guest tree (BERTH_TEST_TREE) and the runs per tool
/// (BENCH_RUNS, else `default_runs`), or a failure saying what is missing;
/// `root_for` says what the benchmark needs root for.
pub fn tree_and_runs(default_runs: usize, root_for: &str) -> (PathBuf, usize) {
    if !is_root() {
        fail(&format!("the benchmark {root_for}: run it as root"));
    }
    let tree = PathBuf::from(std::env::var("BERTH_TEST_TREE").unwrap_or_else(|_| {
        fail("set BERTH_TEST_TREE=$(sudo tests/prepare-tree)");
    }));
    let runs = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_runs);
    (tree, runs)
}
