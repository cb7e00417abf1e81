//! `berth import-tar` against GNU `tar -x --zstd`, side by side in one run:
//! the cached guest tree as a .tar.zst (made once by this bench, with GNU
//! tar --xattrs --acls --numeric-owner), extracted by each in turn into a
//! directory on the same file system, runs alternating. Prints medians and
//! berth/tar ratios (goal: ratio <= 1.0).
//!
//! Both do the same work: tar is given --xattrs --xattrs-include='*'
//! --acls --numeric-owner (as root it keeps owners and modes by default),
//! and since berth syncs the new tree (syncfs) before it renames it into
//! place, so that a crash never leaves a half-written tree under the
//! machine's name, the tar run is timed up to a `sync -f` of its directory
//! too. tar alone, without the sync, is shown for reference. Everything is
//! synced and the trees removed between runs (not timed), so no run pays
//! for the previous one's writeback.
//!
//!   sudo BERTH_TEST_TREE=$(sudo tests/prepare-tree) cargo bench --bench import
//!   (BENCH_RUNS=N to change the number of runs per tool, default 5)
//!
//! Not here: the comparison with `machinectl import-tar`, which needs
//! systemd-importd and so runs only in the VM tier (tests/system/run
//! --bench); it imports into /var/lib/machines and is removed with
//! `machinectl remove`. That part is wired there, not in this host bench.

#[path = "common.rs"]
mod common;
use common::{fail, is_root, median};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

struct Sample {
    wall: f64,
    cpu: f64,
    /// tar only: the time before its sync.
    unsynced: f64,
}

fn main() {
    if !is_root() {
        fail("the benchmark imports trees with their owners: run it as root");
    }
    let tree = PathBuf::from(std::env::var("BERTH_TEST_TREE").unwrap_or_else(|_| {
        fail("set BERTH_TEST_TREE=$(sudo tests/prepare-tree)");
    }));
    let tar_zstd = Command::new("tar").args(["--zstd", "--help"]).output();
    if !tar_zstd.is_ok_and(|o| o.status.success()) || Command::new("zstd").arg("--version").output().is_err() {
        fail("GNU tar with --zstd and zstd are needed: apt-get install zstd");
    }
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let berth = PathBuf::from(env!("CARGO_BIN_EXE_berth"));
    // Same file system as the tree (the cache), as /var/lib/machines is.
    let base = tree.parent().unwrap().parent().unwrap().join("scratch");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let machines = dir.path().join("machines");
    std::fs::create_dir(&machines).unwrap();

    eprintln!("bench: making the .tar.zst of {} (once)", tree.display());
    let file = dir.path().join("tree.tar.zst");
    sh(&format!(
        "set -o pipefail; tar --xattrs --xattrs-include='*' --acls --numeric-owner -C '{}' -c . | zstd -q -T0 > '{}'",
        tree.display(),
        file.display()
    ));
    let size = std::fs::metadata(&file).unwrap().len();
    let entries = String::from_utf8(
        Command::new("tar")
            .arg("-tf")
            .arg(&file)
            .arg("--zstd")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .lines()
    .count();

    let (mut b, mut t) = (Vec::new(), Vec::new());
    // One warm-up each, not counted: the page cache.
    berth_once(&berth, &file, &machines);
    tar_once(&file, dir.path());
    for i in 0..runs {
        eprint!("\rrun {}/{runs}", i + 1);
        b.push(berth_once(&berth, &file, &machines));
        t.push(tar_once(&file, dir.path()));
    }
    eprintln!();

    println!(
        "berth import-tar vs GNU tar -x --zstd, {runs} runs each, medians, tree {} ({:.1} MiB .tar.zst, {entries} entries)",
        tree.display(),
        size as f64 / (1 << 20) as f64
    );
    println!("{:<40} {:>10} {:>10} {:>7}  goal", "", "berth", "tar", "ratio");
    type Metric = fn(&Sample) -> f64;
    let rows: [(&str, Metric, Metric, &str); 3] = [
        ("import, synced (s)", |s| s.wall, |s| s.wall, "ratio <= 1.0"),
        ("CPU, user+sys (s)", |s| s.cpu, |s| s.cpu, ""),
        ("  tar without its sync (s)", |s| s.wall, |s| s.unsynced, "(reference)"),
    ];
    for (label, fb, ft, goal) in rows {
        let bm = median(b.iter().map(fb).collect());
        let tm = median(t.iter().map(ft).collect());
        println!("{label:<40} {bm:>10.2} {tm:>10.2} {:>7.2}  {goal}", bm / tm);
    }
}

fn sh(script: &str) {
    let st = Command::new("bash").arg("-ec").arg(script).status().unwrap();
    if !st.success() {
        fail(&format!("{script}: {st}"));
    }
}

/// CPU time (user + system) of the waited-for children so far.
fn children_cpu() -> f64 {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

/// Remove a tree (untimed) and let the disk settle.
fn clean(path: &Path) {
    if path.exists() {
        std::fs::remove_dir_all(path).unwrap();
    }
    nix::unistd::sync();
}

fn berth_once(berth: &Path, file: &Path, machines: &Path) -> Sample {
    clean(&machines.join("bench-import"));
    let cpu0 = children_cpu();
    let t0 = Instant::now();
    let out = Command::new(berth)
        .arg("import-tar")
        .arg(file)
        .arg("bench-import")
        .arg("--machines-dir")
        .arg(machines)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let wall = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        fail(&format!(
            "berth import-tar failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let s = Sample {
        wall,
        cpu: children_cpu() - cpu0,
        unsynced: wall,
    };
    clean(&machines.join("bench-import"));
    s
}

fn tar_once(file: &Path, dir: &Path) -> Sample {
    let x = dir.join("tar-x");
    clean(&x);
    std::fs::create_dir(&x).unwrap();
    let cpu0 = children_cpu();
    let t0 = Instant::now();
    let st = Command::new("tar")
        .args([
            "-x",
            "--zstd",
            "--xattrs",
            "--xattrs-include=*",
            "--acls",
            "--numeric-owner",
            "-f",
        ])
        .arg(file)
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    let unsynced = t0.elapsed().as_secs_f64();
    if !st.success() {
        fail(&format!("tar -x failed: {st}"));
    }
    let st = Command::new("sync").arg("-f").arg(&x).status().unwrap();
    let wall = t0.elapsed().as_secs_f64();
    if !st.success() {
        fail("sync -f failed");
    }
    let s = Sample {
        wall,
        cpu: children_cpu() - cpu0,
        unsynced,
    };
    clean(&x);
    s
}
