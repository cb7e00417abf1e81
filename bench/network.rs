//! A bridged machine, berth against systemd-nspawn, side by side in one
//! run: start to the first answered ping of the machine's address on the
//! same tree and the same bridge, runs alternating; and berth's own start to
//! exec of the init with a veth pair. Prints medians and ratios.
//!
//!   sudo BERTH_TEST_TREE=$(sudo tests/prepare-tree) cargo bench --bench network
//!   (BENCH_RUNS=N to change the number of runs per tool, default 7)
//!
//! Everything runs in a network namespace the benchmark creates (the
//! host's network is not touched), with the bridge br0 (10.90.0.1/24). The
//! machines boot a copy of the tree whose systemd-networkd gives host0 the
//! address 10.90.0.2/24, the same for both tools; a third row is berth
//! with Address= instead, configured before the init starts.

#[path = "common.rs"]
mod common;
use common::{fail, median, tree_and_runs};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn};

const NETNS: &str = "berth-bench";
const MACHINE: &str = "10.90.0.2";

fn main() {
    let (tree, runs) = tree_and_runs(7, "boots machines");
    common::need_nspawn();
    let berth = PathBuf::from(env!("CARGO_BIN_EXE_berth"));
    let work = tempfile::tempdir_in(tree.parent().unwrap()).unwrap();
    let copy = work.path().join("tree");
    eprintln!("copying the tree and enabling networkd in the copy");
    run(Command::new("cp").arg("-a").arg(&tree).arg(&copy));
    let etc = copy.join("etc/systemd");
    std::fs::create_dir_all(etc.join("network")).unwrap();
    std::fs::write(
        etc.join("network/10-host0.network"),
        format!("[Match]\nName=host0\n\n[Network]\nAddress={MACHINE}/24\nLinkLocalAddressing=no\n"),
    )
    .unwrap();
    std::fs::create_dir_all(etc.join("system/sockets.target.wants")).unwrap();
    let _ = std::os::unix::fs::symlink(
        "/lib/systemd/system/systemd-networkd.service",
        etc.join("system/multi-user.target.wants/systemd-networkd.service"),
    );
    let _ = std::os::unix::fs::symlink(
        "/lib/systemd/system/systemd-networkd.socket",
        etc.join("system/sockets.target.wants/systemd-networkd.socket"),
    );

    // The benchmark and every machine run in a namespace of their own.
    let _ = Command::new("ip").args(["netns", "del", NETNS]).output();
    run(Command::new("ip").args(["netns", "add", NETNS]));
    let _cleanup = NetNsGuard;
    let ns = std::fs::File::open(format!("/run/netns/{NETNS}")).unwrap();
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    for args in [
        &["link", "set", "lo", "up"][..],
        &["link", "add", "br0", "type", "bridge"],
        &["addr", "add", "10.90.0.1/24", "dev", "br0"],
        &["link", "set", "br0", "up"],
    ] {
        run(Command::new("ip").args(args));
    }

    let tools = [Tool::Berth, Tool::Nspawn, Tool::BerthAddress];
    let mut ping_ms: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    let mut exec_ms = Vec::new();
    for t in tools {
        boot_to_ping(t, &berth, &copy); // warm-up, not counted
    }
    for i in 0..runs {
        eprint!("\rrun {}/{runs}", i + 1);
        for (k, t) in tools.iter().enumerate() {
            ping_ms[k].push(boot_to_ping(*t, &berth, &copy));
        }
        exec_ms.push(start_to_exec(&berth, &copy, work.path()));
    }
    eprintln!();
    let b = median(ping_ms[0].clone());
    let n = median(ping_ms[1].clone());
    let a = median(ping_ms[2].clone());
    println!(
        "bridged machine, berth vs systemd-nspawn --network-bridge=, {runs} runs each, medians, tree {}",
        tree.display()
    );
    println!("{:<52} {:>8} {:>8} {:>7}  goal", "", "berth", "nspawn", "ratio");
    println!(
        "{:<52} {b:>8.1} {n:>8.1} {:>7.2}  ratio <= 0.9",
        "start to first answered ping, guest networkd (ms)",
        b / n
    );
    println!(
        "{:<52} {a:>8.1} {n:>8.1} {:>7.2}  ratio <= 0.9",
        "start to first answered ping, berth Address= (ms)",
        a / n
    );
    println!(
        "{:<52} {:>8.1} {:>8} {:>7}  berth <= 20 ms",
        "berth's start to exec of init with a veth (ms)",
        median(exec_ms),
        "-",
        "-"
    );
}

#[derive(Clone, Copy)]
enum Tool {
    /// berth --bridge=br0; the guest's networkd sets the address.
    Berth,
    /// systemd-nspawn --network-bridge=br0; the same guest.
    Nspawn,
    /// berth --bridge=br0 --address=: set before the init starts.
    BerthAddress,
}

struct NetNsGuard;

impl Drop for NetNsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", NETNS]).output();
    }
}

fn run(c: &mut Command) {
    let out = c.output().unwrap_or_else(|e| fail(&format!("{c:?}: {e}")));
    if !out.status.success() {
        fail(&format!("{c:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
}

fn command(tool: Tool, berth: &Path, tree: &Path) -> Command {
    let mut c = match tool {
        Tool::Berth | Tool::BerthAddress => {
            let mut c = Command::new(berth);
            c.args([
                "boot",
                "bbench",
                "--register=no",
                "--console=read-only",
                "--bridge=br0",
                "-D",
            ])
            .arg(tree);
            match tool {
                Tool::BerthAddress => c.arg(format!("--address={MACHINE}/24")),
                // The guest's networkd needs CAP_NET_ADMIN, which berth
                // keeps only when asked (nspawn keeps it).
                _ => c.arg("--capability=CAP_NET_ADMIN"),
            };
            c
        }
        Tool::Nspawn => {
            let mut c = Command::new("systemd-nspawn");
            c.args([
                "-q",
                "--keep-unit",
                "--register=no",
                "--console=read-only",
                "--boot",
                "-M",
                "nbench",
                "--network-bridge=br0",
                "-D",
            ])
            .arg(tree);
            c
        }
    };
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    c
}

/// Start the machine, ping its address until it answers, stop it; returns
/// the time from start to the first answer.
fn boot_to_ping(tool: Tool, berth: &Path, tree: &Path) -> f64 {
    let pinger = Pinger::new();
    let t0 = Instant::now();
    let mut child = command(tool, berth, tree).spawn().unwrap();
    let mut seq = 0u16;
    loop {
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            fail("no answer to ping within 60 s");
        }
        if let Ok(Some(s)) = child.try_wait() {
            fail(&format!("the machine exited before answering ping: {s}"));
        }
        seq = seq.wrapping_add(1);
        if pinger.ping(seq, Duration::from_millis(20)) {
            break;
        }
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    stop(child);
    ms
}

fn stop(mut child: Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    if !status.success() {
        fail(&format!("supervisor exited with {status} after SIGTERM"));
    }
    // nspawn's host end goes with its namespace: let it.
    std::thread::sleep(Duration::from_millis(200));
}

/// berth's start to exec of a trivial init (READY=1 as it executes), with
/// the veth pair on the bridge and an address.
fn start_to_exec(berth: &Path, tree: &Path, dir: &Path) -> f64 {
    let mut c = command(Tool::BerthAddress, berth, tree);
    c.args(common::TRIVIAL_INIT);
    let (ms, mut child) = common::start(c, dir);
    let _ = child.kill();
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(200));
    ms
}

/// ICMP echo over a raw socket (root has CAP_NET_RAW; the host need not
/// have iputils-ping).
struct Pinger {
    fd: std::os::fd::OwnedFd,
}

impl Pinger {
    fn new() -> Pinger {
        let fd = socket::socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::Icmp,
        )
        .unwrap();
        Pinger { fd }
    }

    /// One echo request; whether the machine answered within `wait`.
    fn ping(&self, seq: u16, wait: Duration) -> bool {
        let mut pkt = [8u8, 0, 0, 0, 0xbe, 0x27, (seq >> 8) as u8, seq as u8];
        let sum = checksum(&pkt);
        pkt[2..4].copy_from_slice(&sum.to_be_bytes());
        let to = SockaddrIn::new(10, 90, 0, 2, 0);
        if socket::sendto(std::os::fd::AsRawFd::as_raw_fd(&self.fd), &pkt, &to, MsgFlags::empty()).is_err() {
            std::thread::sleep(wait);
            return false;
        }
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 1500];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let mut fds = [nix::poll::PollFd::new(self.fd.as_fd(), nix::poll::PollFlags::POLLIN)];
            let ms = left.as_millis().max(1) as u16;
            if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).unwrap_or(0) == 0 {
                return false;
            }
            let Ok(n) = socket::recv(std::os::fd::AsRawFd::as_raw_fd(&self.fd), &mut buf, MsgFlags::empty()) else {
                return false;
            };
            // IPv4 header, then ICMP: an echo reply (0) with our id and seq.
            let ihl = ((buf[0] & 0x0f) as usize) * 4;
            let icmp = &buf[ihl.min(n)..n];
            if icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == [0xbe, 0x27] && icmp[6..8] == pkt[6..8] {
                return true;
            }
        }
        false
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
