//! berth against systemd-nspawn, side by side in one run, on the same cached
//! guest tree: start to READY=1, SIGTERM to exit, the supervisor's RSS while
//! the machine runs, and start to exec of the init. Runs alternate so both
//! see the same machine state. Prints medians and berth/nspawn ratios.
//!
//!   sudo BERTH_TEST_TREE=$(sudo tests/prepare-tree) cargo bench --bench compare
//!   (BENCH_RUNS=N to change the number of runs per tool, default 7)

#[path = "common.rs"]
mod common;
use common::{median, start, stop, tree_and_runs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Berth,
    Nspawn,
}

struct Sample {
    ready_ms: f64,
    stop_ms: f64,
    rss_kib: f64,
    exec_ms: f64,
}

fn main() {
    let (tree, runs) = tree_and_runs(7, "boots machines");
    common::need_nspawn();
    let berth = PathBuf::from(env!("CARGO_BIN_EXE_berth"));
    let dir = tempfile::tempdir().unwrap();

    let (mut b, mut n) = (Vec::new(), Vec::new());
    // One warm-up each, not counted: page cache and first-boot work.
    boot_once(Tool::Berth, &berth, &tree, dir.path());
    boot_once(Tool::Nspawn, &berth, &tree, dir.path());
    for i in 0..runs {
        eprint!("\rrun {}/{runs}", i + 1);
        b.push(boot_once(Tool::Berth, &berth, &tree, dir.path()));
        n.push(boot_once(Tool::Nspawn, &berth, &tree, dir.path()));
    }
    eprintln!();

    println!(
        "berth vs systemd-nspawn, {runs} runs each, medians, tree {}",
        tree.display()
    );
    println!("{:<34} {:>10} {:>10} {:>7}  goal", "", "berth", "nspawn", "ratio");
    type Metric = fn(&Sample) -> f64;
    let rows: [(&str, Metric, &str); 4] = [
        ("start to READY=1 (ms)", |s| s.ready_ms, "ratio <= 0.9"),
        ("SIGTERM to exit (ms)", |s| s.stop_ms, "ratio <= 1.0"),
        ("supervisor RSS (MiB)", |s| s.rss_kib / 1024.0, "berth <= 4 MiB"),
        ("start to exec of init (ms)", |s| s.exec_ms, "berth <= 15 ms"),
    ];
    for (label, f, goal) in rows {
        let bm = median(b.iter().map(f).collect());
        let nm = median(n.iter().map(f).collect());
        println!("{label:<34} {bm:>10.1} {nm:>10.1} {:>7.2}  {goal}", bm / nm);
    }
}

fn command(tool: Tool, berth: &Path, tree: &Path, boot: bool) -> Command {
    let mut c = match tool {
        Tool::Berth => {
            let mut c = Command::new(berth);
            c.arg("boot").arg("-D").arg(tree).arg("--console=read-only");
            c
        }
        Tool::Nspawn => {
            let mut c = Command::new("systemd-nspawn");
            c.args(["-q", "--keep-unit", "--register=no", "--console=read-only", "-D"])
                .arg(tree);
            c
        }
    };
    if boot {
        match tool {
            Tool::Berth => c.arg("--notify-ready=yes"),
            Tool::Nspawn => c.args(["--boot", "--notify-ready=yes"]),
        };
    } else {
        // Start to exec: a trivial init, ready as soon as it is executed.
        match tool {
            Tool::Berth => c.args(common::TRIVIAL_INIT),
            Tool::Nspawn => c.args(["--notify-ready=no", "--kill-signal=SIGKILL", "/bin/sleep", "1000"]),
        };
    }
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    c
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn boot_once(tool: Tool, berth: &Path, tree: &Path, dir: &Path) -> Sample {
    let (ready_ms, child) = start(command(tool, berth, tree, true), dir);
    // Let the machine settle before the memory reading.
    std::thread::sleep(Duration::from_millis(300));
    let rss = rss_kib(child.id());
    let stop_ms = stop(child);

    let (exec_ms, mut child) = start(command(tool, berth, tree, false), dir);
    let _ = child.kill();
    let _ = child.wait();
    // nspawn needs a moment to notice its payload died; wait for both the same way.
    std::thread::sleep(Duration::from_millis(100));
    Sample {
        ready_ms,
        stop_ms,
        rss_kib: rss,
        exec_ms,
    }
}
