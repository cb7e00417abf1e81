//! What a user namespace costs a start: berth with PrivateUsers=pick (the
//! default) against PrivateUsers=no, on the same cached tree, alternating,
//! and against `systemd-nspawn -U` (idmapped, as berth) where nspawn can run
//! it. Start to READY=1 of the booted systemd, and start to exec of a
//! trivial init (berth's own work). Prints medians and pick - no.
//!
//!   sudo BERTH_TEST_TREE=$(sudo tests/prepare-tree) cargo bench --bench userns
//!   (BENCH_RUNS=N to change the number of runs per mode, default 7)

#[path = "common.rs"]
mod common;
use common::{median, start, stop, tree_and_runs};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn berth(bin: &Path, tree: &Path, users: &str, boot: bool) -> Command {
    let mut c = Command::new(bin);
    c.arg("boot")
        .arg("-D")
        .arg(tree)
        .arg("--console=read-only")
        .arg(format!("--private-users={users}"));
    if boot {
        c.arg("--notify-ready=yes");
    } else {
        c.args(common::TRIVIAL_INIT);
    }
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    c
}

fn nspawn_userns(tree: &Path) -> Command {
    let mut c = Command::new("systemd-nspawn");
    // map: idmapped, never a chown of the cached tree.
    c.args([
        "-q",
        "-U",
        "--private-users-ownership=map",
        "--keep-unit",
        "--register=no",
        "--console=read-only",
        "--boot",
        "--notify-ready=yes",
        "-D",
    ])
    .arg(tree);
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

/// One boot of nspawn -U, or why it did not come up within 30 s.
fn try_nspawn(tree: &Path, dir: &Path) -> Result<f64, String> {
    let path = dir.join("notify-nspawn");
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut c = nspawn_userns(tree);
    c.env("NOTIFY_SOCKET", &path);
    let t0 = Instant::now();
    let mut child = c.spawn().map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    while t0.elapsed() < Duration::from_secs(30) {
        if let Ok(n) = sock.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                stop(child);
                return Ok(ms);
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").to_string();
            return Err(format!("exited with {status} before READY=1: {last}"));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Err("no READY=1 within 30 s".into())
}

fn main() {
    let (tree, runs) = tree_and_runs(7, "boots machines");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_berth"));
    let dir = tempfile::tempdir().unwrap();
    let nspawn_here = Command::new("systemd-nspawn").arg("--version").output().is_ok();

    let once = |users: &str| -> (f64, f64) {
        let (ready, child) = start(berth(&bin, &tree, users, true), dir.path());
        stop(child);
        let (exec, mut child) = start(berth(&bin, &tree, users, false), dir.path());
        let _ = child.kill();
        let _ = child.wait();
        (ready, exec)
    };
    // Warm-up, not counted.
    once("pick");
    once("no");
    let mut nspawn = match nspawn_here {
        true => try_nspawn(&tree, dir.path()).map(|_| Vec::new()),
        false => Err("systemd-nspawn is not installed (apt-get install -y systemd-container)".into()),
    };
    let (mut pick, mut no) = (Vec::new(), Vec::new());
    for i in 0..runs {
        eprint!("\rrun {}/{runs}", i + 1);
        pick.push(once("pick"));
        no.push(once("no"));
        if let Ok(v) = &mut nspawn {
            match try_nspawn(&tree, dir.path()) {
                Ok(ms) => v.push(ms),
                Err(e) => nspawn = Err(e),
            }
        }
    }
    eprintln!();
    println!(
        "berth PrivateUsers=pick vs no, {runs} runs each, medians, tree {}",
        tree.display()
    );
    println!("{:<30} {:>9} {:>9} {:>10}  goal", "", "pick", "no", "pick - no");
    let ready = (
        median(pick.iter().map(|s| s.0).collect()),
        median(no.iter().map(|s| s.0).collect()),
    );
    let exec = (
        median(pick.iter().map(|s| s.1).collect()),
        median(no.iter().map(|s| s.1).collect()),
    );
    println!(
        "{:<30} {:>9.1} {:>9.1} {:>10.1}  <= 10 ms",
        "start to READY=1 (ms)",
        ready.0,
        ready.1,
        ready.0 - ready.1
    );
    println!(
        "{:<30} {:>9.1} {:>9.1} {:>10.1}  <= 10 ms",
        "start to exec of init (ms)",
        exec.0,
        exec.1,
        exec.0 - exec.1
    );
    match nspawn {
        Ok(v) if !v.is_empty() => {
            let n = median(v);
            println!(
                "systemd-nspawn -U start to READY=1: {n:.1} ms; berth pick / nspawn -U = {:.2}",
                ready.0 / n
            );
        }
        Ok(_) => {}
        Err(e) => println!("systemd-nspawn -U: not compared on this host ({e})"),
    }
}
