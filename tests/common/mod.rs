//! Harness of the host tests: real machines booted from the cached guest
//! tree, as root. Every wait has a deadline and fails with what was seen.
#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const BOOT_DEADLINE: Duration = Duration::from_secs(60);

/// The guest tree, or a failure that says how to get one.
pub fn tree() -> PathBuf {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the host tests need root: run `sudo tests/run-all` (or `cargo test --lib` for the unit tests alone)"
    );
    let tree = std::env::var_os("BERTH_TEST_TREE").map(PathBuf::from).unwrap_or_else(|| {
        panic!("BERTH_TEST_TREE is not set: run `sudo tests/run-all`, or export BERTH_TEST_TREE=$(sudo tests/prepare-tree) (needs debootstrap)")
    });
    assert!(
        tree.join("usr/lib/os-release").exists(),
        "{} is not a guest tree: rebuild it with tests/prepare-tree",
        tree.display()
    );
    tree
}

/// The berth binary under test: the one cargo built, or BERTH_BIN (the
/// system tier runs this test binary inside its VM, where berth lies
/// elsewhere).
pub fn berth_bin() -> String {
    std::env::var("BERTH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_berth").to_string())
}

pub fn berth() -> Command {
    Command::new(berth_bin())
}

/// The cgroup2 mount of this host.
pub fn cgroup2() -> PathBuf {
    berth::cgroup::find_cgroup2(&std::fs::read_to_string("/proc/self/mountinfo").unwrap()).unwrap()
}

/// The machine's scope: berth's own, or machined's on a systemd host
/// (named alike).
pub fn scope_of(name: &str) -> PathBuf {
    cgroup2().join("machine.slice").join(berth::cgroup::scope_name(
        &berth::name::MachineName::parse(name).unwrap(),
    ))
}

/// Lines of the host's mount table that mention `path`.
pub fn host_mounts_under(path: &Path) -> Vec<String> {
    let p = path.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&p))
        .map(String::from)
        .collect()
}

pub struct Machine {
    pub name: String,
    pub child: Child,
    notify: UnixDatagram,
    dir: tempfile::TempDir,
    status: Option<ExitStatus>,
}

impl Machine {
    /// Start `berth boot NAME -D TREE ARGS` with the console copied to a
    /// file, and a notify socket of the test's own as NOTIFY_SOCKET.
    pub fn boot(name: &str, args: &[&str]) -> Machine {
        Self::boot_with(name, args, |c| c)
    }

    pub fn boot_with(name: &str, args: &[&str], wrap: impl FnOnce(&mut Command) -> &mut Command) -> Machine {
        Self::boot_cmd(berth(), name, &tree(), args, wrap)
    }

    /// `boot` of another tree than the cached one (a private copy: the
    /// cached tree is locked while any session's machine runs from it).
    pub fn boot_dir(name: &str, tree: &Path, args: &[&str]) -> Machine {
        Self::boot_cmd(berth(), name, tree, args, |c| c)
    }

    /// `boot`, with berth started in the network namespace /run/netns/NS
    /// (by nsenter, which keeps the host's /sys and its cgroup mount).
    pub fn boot_in_netns(ns: &str, name: &str, args: &[&str]) -> Machine {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(berth_bin());
        Self::boot_cmd(cmd, name, &tree(), args, |c| c)
    }

    fn boot_cmd(
        mut cmd: Command,
        name: &str,
        tree: &Path,
        args: &[&str],
        wrap: impl FnOnce(&mut Command) -> &mut Command,
    ) -> Machine {
        let dir = tempfile::tempdir().unwrap();
        let sock_path = dir.path().join("notify");
        let notify = UnixDatagram::bind(&sock_path).unwrap();
        let out = std::fs::File::create(dir.path().join("console")).unwrap();
        let err = std::fs::File::create(dir.path().join("stderr")).unwrap();
        cmd.args(["boot", name, "-D"])
            .arg(tree)
            .arg("--console=read-only")
            .args(args);
        cmd.env("NOTIFY_SOCKET", &sock_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = wrap(&mut cmd).spawn().unwrap();
        Machine {
            name: name.into(),
            child,
            notify,
            dir,
            status: None,
        }
    }

    /// Wait for READY=1 from berth; returns the other fields seen with it.
    pub fn wait_ready(&mut self) -> String {
        let deadline = Instant::now() + BOOT_DEADLINE;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.try_status().is_some() {
                panic!(
                    "machine {} did not report READY=1 (exit: {:?})\n{}",
                    self.name,
                    self.status,
                    self.tail()
                );
            }
            self.notify
                .set_read_timeout(Some(left.min(Duration::from_millis(200))))
                .unwrap();
            if let Ok(n) = self.notify.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                if text.lines().any(|l| l == "READY=1") {
                    return text;
                }
            }
        }
    }

    /// The host pid of the machine's PID 1.
    pub fn leader(&self) -> i32 {
        let pid = self.child.id();
        let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        text.split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("berth {pid} has no child"))
    }

    /// Run a command inside the running machine (all its namespaces and root).
    pub fn exec(&self, argv: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.leader().to_string(), "-a"])
            .args(argv)
            .output()
            .unwrap()
    }

    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "{argv:?} failed in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn signal(&self, sig: i32) {
        berth::sys::send_signal(self.child.id() as i32, sig).unwrap();
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status
    }

    /// Wait for berth to exit; panics with the console's tail past `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.try_status() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "berth for {} did not exit within {within:?}\n{}",
            self.name,
            self.tail()
        );
    }

    /// SIGTERM, then an orderly exit 0 within 10 s.
    pub fn stop_ok(&mut self) {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(10));
        assert_eq!(
            status.code(),
            Some(0),
            "{} did not stop cleanly: {}",
            self.name,
            self.stderr()
        );
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    fn tail(&self) -> String {
        let c = self.console();
        let lines: Vec<&str> = c.lines().collect();
        format!(
            "--- stderr:\n{}--- console (last 30 lines):\n{}",
            self.stderr(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `berth ARGS` to completion, with stdout and stderr.
pub fn run_berth(args: &[&str]) -> Output {
    berth().args(args).stdin(Stdio::null()).output().unwrap()
}

/// Wait until a process is gone (reaped or not ours to reap).
pub fn wait_gone(pid: i32, within: Duration) {
    let deadline = Instant::now() + within;
    while Path::new(&format!("/proc/{pid}")).exists() {
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true);
        if zombie {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} still alive after {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait for a child process to exit; panics with `what` past `within`.
pub fn wait_child(child: &mut Child, within: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "{what} (waited {within:?})");
        std::thread::sleep(Duration::from_millis(20));
    }
}
