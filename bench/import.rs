//! `berth import-tar` against GNU `tar -x --zstd` and against systemd's
//! importer, side by side in one run: the cached guest tree as a .tar.zst
//! (made once by this bench, with GNU tar --xattrs --acls --numeric-owner),
//! extracted by each in turn into a directory on the same file system, runs
//! alternating. Prints medians and ratios (goals: berth/tar <= 1.0,
//! berth/machinectl <= 0.8).
//!
//! systemd's importer is systemd-import, the program systemd-importd runs
//! for `machinectl import-tar` (with the file's descriptor and
//! `--image-root`); run directly here, since this host has no systemd to run
//! importd. systemd 252 (Debian 12) cannot read zstd: it hands the
//! compressed bytes to tar, which refuses them ("Archive is compressed"),
//! and machinectl reports "Failed to decode and write: Broken pipe". Where
//! the file itself is refused, the bench feeds the importer `zstd -dc FILE
//! |` on its standard input (`machinectl import-tar - NAME` in the VM) and
//! says so; that gives it a decompressor on another CPU, which berth does
//! not have.
//!
//! All three do nearly the same work: tar is given --xattrs
//! --xattrs-include='*' --acls --numeric-owner (as root it keeps owners
//! and modes by default); systemd-import runs tar with the same options
//! but without --acls, so it skips the ACLs berth and tar apply. berth
//! syncs the new tree (syncfs) before it renames it into place, so that a
//! crash never leaves a half-written tree under the machine's name;
//! systemd-import does the same by default, and is given --sync=no here so
//! that the bench's own `sync -f` does it, as for tar, and the row without
//! the sync means the same for both. Everything is synced, the trees
//! removed and the caches dropped between runs (not timed), so no run pays
//! for the previous one's writeback or pages.
//!
//!   sudo BERTH_TEST_TREE=$(sudo tests/prepare-tree) cargo bench --bench import
//!   (BENCH_RUNS=N to change the number of runs per tool, default 5)
//!
//! The VM tier (tests/system/run --bench) runs the same comparison through
//! `machinectl import-tar` itself, with systemd-importd.

#[path = "common.rs"]
mod common;
use common::{fail, median, tree_and_runs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

struct Sample {
    wall: f64,
    cpu: f64,
    /// tar and systemd-import: the time before the bench's sync (berth:
    /// the whole run, its syncfs included).
    unsynced: f64,
}

fn main() {
    let (tree, runs) = tree_and_runs(5, "imports trees with their owners");
    let tar_zstd = Command::new("tar").args(["--zstd", "--help"]).output();
    if !tar_zstd.is_ok_and(|o| o.status.success()) || Command::new("zstd").arg("--version").output().is_err() {
        fail("GNU tar with --zstd and zstd are needed: apt-get install zstd");
    }
    let Some(importer) = ["/usr/lib/systemd/systemd-import", "/lib/systemd/systemd-import"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        fail("systemd-import (machinectl import-tar's importer) is missing: apt-get install -y systemd-container");
    };
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

    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    // Can systemd's importer read the file itself? Its answer also serves as
    // its warm-up.
    let mut systemd = Importer {
        program: importer,
        images,
        piped: false,
    };
    if let Err(e) = systemd.once(&file) {
        if !e.contains("Archive is compressed") {
            fail(&format!("{} failed: {e}", systemd.program.display()));
        }
        systemd.piped = true;
    }

    let (mut b, mut t, mut m) = (Vec::new(), Vec::new(), Vec::new());
    // One warm-up each, not counted: each program's first run on a fresh
    // directory (the caches are dropped before every run all the same).
    berth_once(&berth, &file, &machines);
    tar_once(&file, dir.path());
    systemd.once(&file).unwrap_or_else(|e| fail(&e));
    for i in 0..runs {
        eprint!("\rrun {}/{runs}", i + 1);
        b.push(berth_once(&berth, &file, &machines));
        t.push(tar_once(&file, dir.path()));
        m.push(systemd.once(&file).unwrap_or_else(|e| fail(&e)));
    }
    eprintln!();

    println!(
        "berth import-tar vs GNU tar -x --zstd and systemd-import (machinectl import-tar), {runs} runs each, medians, tree {} ({:.1} MiB .tar.zst, {entries} entries)",
        tree.display(),
        size as f64 / (1 << 20) as f64
    );
    if systemd.piped {
        println!(
            "{} cannot read zstd: it was fed `zstd -dc FILE |` (as `machinectl import-tar - NAME`)",
            systemd.version()
        );
    }
    println!(
        "{:<32} {:>8} {:>8} {:>11} {:>7} {:>11}",
        "", "berth", "tar", "machinectl", "b/tar", "b/machinectl"
    );
    type Metric = fn(&Sample) -> f64;
    let rows: [(&str, Metric, Metric); 3] = [
        ("import, synced (s)", |s| s.wall, |s| s.wall),
        ("CPU, user+sys (s)", |s| s.cpu, |s| s.cpu),
        ("  unsynced: tar, machinectl (s)", |s| s.wall, |s| s.unsynced),
    ];
    for (label, fb, fo) in rows {
        let bm = median(b.iter().map(fb).collect());
        let tm = median(t.iter().map(fo).collect());
        let mm = median(m.iter().map(fo).collect());
        println!(
            "{label:<32} {bm:>8.2} {tm:>8.2} {mm:>11.2} {:>7.2} {:>11.2}",
            bm / tm,
            bm / mm
        );
    }
    println!("goals: berth/tar <= 1.0 and berth/machinectl <= 0.8 (import, synced)");
}

/// systemd's importer, as systemd-importd runs it for `machinectl
/// import-tar`.
struct Importer {
    program: PathBuf,
    images: PathBuf,
    /// Fed through `zstd -dc` (an importer without zstd).
    piped: bool,
}

impl Importer {
    fn version(&self) -> String {
        let out = Command::new(&self.program).arg("--version").output();
        let first = out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        });
        match first {
            Ok(v) if !v.is_empty() => format!("{} ({v})", self.program.display()),
            _ => self.program.display().to_string(),
        }
    }

    fn once(&self, file: &Path) -> Result<Sample, String> {
        let target = self.images.join("bench-import");
        clean(&target);
        let cpu0 = children_cpu();
        let t0 = Instant::now();
        let out = if self.piped {
            Command::new("bash")
                .arg("-ec")
                .arg(r#"set -o pipefail; zstd -dc "$1" | "$2" --sync=no --image-root="$3" tar - bench-import"#)
                .arg("bash")
                .arg(file)
                .arg(&self.program)
                .arg(&self.images)
                .stdin(Stdio::null())
                .env("LC_ALL", "C")
                .output()
        } else {
            Command::new(&self.program)
                .arg("--sync=no")
                .arg(format!("--image-root={}", self.images.display()))
                .arg("tar")
                .arg(file)
                .arg("bench-import")
                .stdin(Stdio::null())
                .env("LC_ALL", "C")
                .output()
        }
        .unwrap();
        let unsynced = t0.elapsed().as_secs_f64();
        if !out.status.success() || !target.join("etc/os-release").exists() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "systemd-import: {}",
                err.lines().filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" / ")
            ));
        }
        let s = sync_and_sample(&self.images, t0, cpu0, unsynced);
        clean(&target);
        Ok(s)
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

/// Remove a tree (untimed), let the disk settle and drop the caches, as the
/// VM bench does: on this test host, a run that starts with the previous
/// runs' pages and dentries cached spends about three times the system time
/// (measured: berth 2.1 s of system time against 0.8 s after a drop), and
/// that cost falls on whichever tool runs next.
fn clean(path: &Path) {
    if path.exists() {
        std::fs::remove_dir_all(path).unwrap();
    }
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap_or_else(|e| fail(&format!("/proc/sys/vm/drop_caches: {e}")));
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
    let s = sync_and_sample(&x, t0, cpu0, unsynced);
    clean(&x);
    s
}

/// `sync -f` the file system of `dir` (as berth syncs before its rename),
/// then the sample of a run that started at `t0` with `cpu0` of children's
/// CPU time, `unsynced` seconds before this sync.
fn sync_and_sample(dir: &Path, t0: Instant, cpu0: f64, unsynced: f64) -> Sample {
    let st = Command::new("sync").arg("-f").arg(dir).status().unwrap();
    let wall = t0.elapsed().as_secs_f64();
    if !st.success() {
        fail("sync -f failed");
    }
    Sample {
        wall,
        cpu: children_cpu() - cpu0,
        unsynced,
    }
}
