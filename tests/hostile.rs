//! Host tests with hostile input: trees whose links point at the host,
//! files of the wrong type or size where berth reads, and root inside a
//! machine trying the ways out. Each asserts the exact outcome and scans
//! the host paths involved. Run as root by `tests/run-all`.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.contains("no D-Bus system bus"))
        .map(String::from)
        .collect()
}

/// A scratch copy of the guest tree made of hard links (fast, no data
/// copied), on the tree's file system. Tests replace entries of the copy
/// (which never changes the cached tree) and never write files in place.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let tree = tree();
        let base = tree.parent().unwrap().parent().unwrap().join("scratch");
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::tempdir_in(&base).unwrap();
        let status = std::process::Command::new("cp")
            .arg("-al")
            .arg(&tree)
            .arg(dir.path().join("tree"))
            .status()
            .unwrap();
        assert!(status.success(), "cp -al of the guest tree failed");
        // A host directory the tree's links point at, with a canary.
        std::fs::create_dir(dir.path().join("host")).unwrap();
        std::fs::write(dir.path().join("host/canary"), "host\n").unwrap();
        Scratch { dir }
    }
    fn tree(&self) -> PathBuf {
        self.dir.path().join("tree")
    }
    fn t(&self) -> String {
        self.tree().display().to_string()
    }
    fn host(&self) -> PathBuf {
        self.dir.path().join("host")
    }
    /// Replace `rel` in the copy (file, link or directory) with a symlink.
    fn link(&self, rel: &str, target: &str) {
        let p = self.tree().join(rel);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {
                std::fs::rename(&p, self.dir.path().join(format!("moved-{}", rel.replace('/', "-")))).unwrap()
            }
            Ok(_) => std::fs::remove_file(&p).unwrap(),
            Err(_) => {}
        }
        symlink(target, &p).unwrap();
    }
    fn config(&self, text: &str) -> String {
        let p = self.dir.path().join("machine.ini");
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
    /// `berth run NAME -D COPY [--config FILE] -- CMD`, within 20 s.
    fn run(&self, name: &str, config: Option<&str>, cmd: &[&str]) -> Output {
        let t = self.t();
        let mut args = vec!["run", name, "-D", &t];
        if let Some(c) = config {
            args.extend(["--config", c]);
        }
        args.push("--");
        args.extend(cmd);
        run_within(&args, Duration::from_secs(20))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        assert_no_mounts(self.dir.path());
    }
}

/// `berth ARGS`, killed (and the test failed) past `within`: a hang is a bug.
fn run_within(args: &[&str], within: Duration) -> Output {
    let mut child = berth()
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("berth {args:?} hung for {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Every file under `dir` with its contents (links as "-> target").
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let v = if m.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                "dir".into()
            } else {
                std::fs::read_to_string(&p).unwrap_or_else(|_| "binary".into())
            };
            out.insert(p, v);
        }
    }
    out
}

fn assert_no_mounts(path: &Path) {
    let mounts = host_mounts_under(path);
    assert!(mounts.is_empty(), "mounts left on the host: {mounts:?}");
}

/// The one error line of a refused start, and the exit code 1.
fn assert_refused(out: &Output, line: &str) {
    assert_eq!(out.status.code(), Some(1), "{:?}", stderr_lines(out));
    assert_eq!(stderr_lines(out), [line.to_string()]);
}

#[test]
fn etc_linked_to_a_host_directory_is_not_written() {
    let s = Scratch::new();
    let before = snapshot(&s.host());
    // etc -> the host directory (absolute): inside the tree it points at
    // nothing, so Timezone=copy and ResolvConf=copy-host fail clearly.
    s.link("etc", &s.host().display().to_string());
    // os-release stays readable through usr/lib.
    let cfg = s.config("[Exec]\nTimezone=copy\nResolvConf=copy-host\n");
    let out = s.run("t-h-etc", Some(&cfg), &["true"]);
    assert_refused(
        &out,
        &format!(
            "berth: machine \"t-h-etc\": setting up: creating directory {}/etc: is a symbolic link to nothing inside the tree",
            s.t()
        ),
    );
    assert_eq!(snapshot(&s.host()), before, "the host directory changed");
    // A relative, ..-laden link to the same place stays inside too.
    let rel = format!("../../../../../../../..{}", s.host().display());
    s.link("etc", &rel);
    let out = s.run("t-h-etc", Some(&cfg), &["true"]);
    assert_eq!(out.status.code(), Some(1), "{:?}", stderr_lines(&out));
    assert_eq!(snapshot(&s.host()), before, "the host directory changed");
}

#[test]
fn usr_linked_out_with_volatile_is_the_trees_own() {
    let s = Scratch::new();
    // A real os-release in etc, so the tree stays an OS tree.
    let osr = s.tree().join("etc/os-release");
    std::fs::remove_file(&osr).unwrap();
    std::fs::copy(s.tree().join("usr/lib/os-release"), &osr).unwrap();
    let cfg = s.config("[Files]\nVolatile=yes\n");
    // usr -> /: inside the tree that is the tree's own root, never the
    // host's, so the host's /usr/bin/true is not there to run.
    s.link("usr", "/");
    let out = s.run("t-h-usr", Some(&cfg), &["/usr/bin/true"]);
    assert_eq!(out.status.code(), Some(127), "{:?}", stderr_lines(&out));
    assert_eq!(stderr_lines(&out), ["berth: /usr/bin/true: No such file or directory"]);
    // usr -> a host directory: nothing there inside the tree.
    s.link("usr", &s.host().display().to_string());
    let out = s.run("t-h-usr", Some(&cfg), &["true"]);
    assert_refused(
        &out,
        &format!(
            "berth: machine \"t-h-usr\": setting up: opening {}/usr: No such file or directory",
            s.t()
        ),
    );
}

#[test]
fn bind_targets_that_are_links_never_reach_the_host() {
    let s = Scratch::new();
    let src = s.dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), "x").unwrap();
    let gone = s.dir.path().join("never-created");
    let before = snapshot(&s.host());
    let cases: Vec<(&str, String, String)> = vec![
        // dangling, absolute
        (
            "srv/dangling",
            gone.display().to_string(),
            format!(
                "creating {}/srv/dangling: is a symbolic link to nothing inside the tree",
                s.t()
            ),
        ),
        // to a host directory, then one level below it
        (
            "srv/hostdir",
            s.host().display().to_string(),
            format!(
                "creating directory {}/srv/hostdir: is a symbolic link to nothing inside the tree",
                s.t()
            ),
        ),
        // a loop
        (
            "srv/loop1",
            "loop2".into(),
            format!(
                "opening {}/srv/loop1: too many levels of symbolic links (a link loop in the tree?)",
                s.t()
            ),
        ),
    ];
    symlink("loop1", s.tree().join("srv/loop2")).unwrap();
    for (rel, target, why) in cases {
        s.link(rel, &target);
        let bind = if rel == "srv/hostdir" {
            format!("[Files]\nBind={}:/{rel}/sub\n", src.display())
        } else if rel == "srv/dangling" {
            format!("[Files]\nBind={}:/{rel}\n", src.join("f").display())
        } else {
            format!("[Files]\nBind={}:/{rel}\n", src.display())
        };
        let cfg = s.config(&bind);
        let out = s.run("t-h-bind", Some(&cfg), &["true"]);
        assert_refused(&out, &format!("berth: machine \"t-h-bind\": setting up: {why}"));
    }
    assert!(!gone.exists(), "a file was created on the host");
    assert_eq!(snapshot(&s.host()), before, "the host directory changed");
}

#[test]
fn journal_run_and_dev_linked_out() {
    let s = Scratch::new();
    let before = snapshot(&s.host());
    // var/log/journal -> host: LinkJournal=host fails, try-host boots on.
    std::fs::create_dir_all(s.tree().join("var/log")).unwrap();
    s.link("var/log/journal", &s.host().display().to_string());
    let cfg = s.config("[Exec]\nLinkJournal=try-host\n");
    let out = s.run("t-h-journal", Some(&cfg), &["true"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", stderr_lines(&out));
    let cfg = s.config("[Exec]\nLinkJournal=host\n");
    let out = s.run("t-h-journal", Some(&cfg), &["true"]);
    assert_eq!(out.status.code(), Some(1), "{:?}", stderr_lines(&out));
    let line = stderr_lines(&out).join("\n");
    assert!(
        line.starts_with(&format!(
            "berth: machine \"t-h-journal\": setting up: creating directory {}/var/log/journal: is a symbolic link to nothing inside the tree",
            s.t()
        )),
        "{line}"
    );
    // run and dev -> host: the API file systems are not mounted there.
    for dir in ["run", "dev"] {
        s.link(dir, &s.host().display().to_string());
        let out = s.run("t-h-api", None, &["true"]);
        assert_refused(
            &out,
            &format!(
                "berth: machine \"t-h-api\": setting up: checking {}/{dir}: is a symbolic link, not a directory (berth mounts the machine's own file system there)",
                s.t()
            ),
        );
        std::fs::remove_file(s.tree().join(dir)).unwrap();
        std::fs::create_dir(s.tree().join(dir)).unwrap();
    }
    assert_eq!(snapshot(&s.host()), before, "the host directory changed");
    // The machine's own journal directory on the host is berth's to make;
    // nothing else appeared next to it.
    assert_no_mounts(Path::new("/var/log/journal"));
}

/// A link at a place berth mounts on could resolve to one place when berth
/// mounts and to another when it masks (through berth's own mounts: here
/// proc -> /dev/shm/../../F, where /dev/shm is a link until berth mounts
/// /dev). Such a tree is refused before anything is mounted.
#[test]
fn links_where_berth_mounts_are_refused() {
    let s = Scratch::new();
    let t = s.t();
    std::fs::create_dir_all(s.tree().join("F")).unwrap();
    for (dir, target) in [("proc", "/dev/shm/../../F"), ("tmp", "/"), ("sys", "F")] {
        s.link(dir, target);
        let out = s.run("t-h-api-link", None, &["true"]);
        assert_refused(
            &out,
            &format!(
                "berth: machine \"t-h-api-link\": setting up: checking {t}/{dir}: is a symbolic link, not a directory (berth mounts the machine's own file system there)"
            ),
        );
        std::fs::remove_file(s.tree().join(dir)).unwrap();
        std::fs::create_dir(s.tree().join(dir)).unwrap();
    }
}

#[test]
fn files_berth_reads_must_be_small_regular_files() {
    let s = Scratch::new();
    let mid = s.tree().join("etc/machine-id");
    let t = s.t();
    // A FIFO: an error at once, not a hang (run_within fails a hang).
    std::fs::remove_file(&mid).unwrap();
    nix::unistd::mkfifo(&mid, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let out = s.run("t-h-read", None, &["true"]);
    assert_refused(
        &out,
        &format!("berth: machine \"t-h-read\": reading {t}/etc/machine-id: is a FIFO, not a regular file"),
    );
    // A character device that reads without end (/dev/zero's numbers).
    std::fs::remove_file(&mid).unwrap();
    nix::sys::stat::mknod(
        &mid,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
        nix::sys::stat::makedev(1, 5),
    )
    .unwrap();
    let out = s.run("t-h-read", None, &["true"]);
    assert_refused(
        &out,
        &format!("berth: machine \"t-h-read\": reading {t}/etc/machine-id: is a character device, not a regular file"),
    );
    std::fs::remove_file(&mid).unwrap();
    std::fs::write(&mid, "").unwrap();
    // A 1 GB os-release (sparse).
    let osr = s.tree().join("etc/os-release");
    std::fs::remove_file(&osr).unwrap();
    std::fs::File::create(&osr).unwrap().set_len(1 << 30).unwrap();
    let out = s.run("t-h-read", None, &["true"]);
    assert_refused(
        &out,
        &format!(
            "berth: machine \"t-h-read\": reading {t}/etc/os-release: larger than 1048576 bytes (1073741824 bytes)"
        ),
    );
    std::fs::remove_file(&osr).unwrap();
    symlink("../usr/lib/os-release", &osr).unwrap();
    // A socket where User= reads the tree's passwd.
    let passwd = s.tree().join("etc/passwd");
    std::fs::remove_file(&passwd).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(&passwd).unwrap();
    let cfg = s.config("[Exec]\nUser=daemon\n");
    let out = s.run("t-h-read", Some(&cfg), &["true"]);
    assert_refused(
        &out,
        &format!("berth: machine \"t-h-read\": reading {t}/etc/passwd: is a socket, not a regular file"),
    );
}

/// Root inside a machine (berth's stub init, no user namespace) tries every
/// way out through the file systems; each fails with the kernel's answer.
#[test]
fn root_inside_cannot_mount_its_way_out() {
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let tree = tree();
    let script = r#"
        try() { "$@" >/dev/null 2>/tmp/err; echo "$* => $? $(head -n1 /tmp/err)"; }
        mkdir -p /tmp/p /tmp/s
        try mount -t proc proc /tmp/p
        try mount -t sysfs sysfs /tmp/s
        try mount -o remount,bind,rw /proc/sys
        try mount -o remount,rw /sys
        try umount /proc/keys
        try umount -l /proc/sys
        try unshare -m true
        try unshare -Urm mount -t proc proc /tmp/p
        try sh -c 'echo "|/tmp/x" > /proc/sys/kernel/core_pattern'
        try sh -c 'echo /tmp/x > /sys/kernel/uevent_helper'
        ls /proc/1/fd | tr '\n' ' '; echo
    "#;
    let t = tree.display().to_string();
    let cfg = tempfile::tempdir().unwrap();
    let ini = cfg.path().join("t-escape.ini");
    std::fs::write(&ini, "[Exec]\nPrivateUsers=no\n").unwrap();
    let ini = ini.display().to_string();
    let out = run_within(
        &["run", "t-escape", "-D", &t, "--config", &ini, "--", "sh", "-c", script],
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let expected = [
        "mount -t proc proc /tmp/p => 32 mount: /tmp/p: permission denied.",
        "mount -t sysfs sysfs /tmp/s => 32 mount: /tmp/s: permission denied.",
        "mount -o remount,bind,rw /proc/sys => 32 mount: /proc/sys: permission denied.",
        "mount -o remount,rw /sys => 32 mount: /sys: permission denied.",
        "umount /proc/keys => 32 umount: /proc/keys: not mounted.",
        "umount -l /proc/sys => 32 umount: /proc/sys: not mounted.",
        "unshare -m true => 1 unshare: unshare failed: Operation not permitted",
        "unshare -Urm mount -t proc proc /tmp/p => 32 mount: /tmp/p: permission denied.",
        "sh -c echo \"|/tmp/x\" > /proc/sys/kernel/core_pattern => 2 sh: 1: cannot create /proc/sys/kernel/core_pattern: Read-only file system",
        "sh -c echo /tmp/x > /sys/kernel/uevent_helper => 2 sh: 1: cannot create /sys/kernel/uevent_helper: Read-only file system",
        // The stub init (PID 1) holds nothing of the host: only stdio.
        "0 1 2 ",
    ];
    assert_eq!(text.lines().collect::<Vec<_>>(), expected, "{:?}", stderr_lines(&out));
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        core_pattern
    );
}

/// The same from a service of a booted machine's systemd (what an admin's
/// service would run as), and the machine still reaches `running`. (No
/// user namespace: the hardest case; tests/escape.rs has both.)
#[test]
fn booted_machines_services_cannot_mount_a_fresh_proc() {
    let mut m = Machine::boot("t-escape-boot", &["--private-users=no"]);
    m.wait_ready();
    assert_eq!(m.exec_ok(&["systemctl", "is-system-running"]), "running");
    let out = m.exec(&[
        "systemd-run",
        "--wait",
        "--pipe",
        "-q",
        "sh",
        "-c",
        "mkdir -p /tmp/p; mount -t proc proc /tmp/p 2>&1 | head -n1; unshare -m true 2>&1",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().collect::<Vec<_>>(),
        [
            "mount: /tmp/p: permission denied.",
            "unshare: unshare failed: Operation not permitted"
        ]
    );
    m.stop_ok();
}

/// Root inside a booted machine is real root with CAP_MKNOD (no user
/// namespace), yet it can neither make a node of the host's root disk nor
/// write to the kernel log through a node the host made (bound in; writing
/// needs no capability, reading needs CAP_SYSLOG, which the machine lacks
/// anyway): berth's
/// device policy on the machine's scope refuses both (the host's root can
/// do both here). What berth creates still works, and the machine's systemd
/// comes up with no failed unit.
#[test]
fn root_inside_cannot_make_or_open_host_devices() {
    let dev = nix::sys::stat::stat("/").unwrap().st_dev;
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let host = tempfile::tempdir().unwrap();
    nix::sys::stat::mknod(
        &host.path().join("kmsg"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(1, 11),
    )
    .unwrap();
    let bind = format!("--bind={}:/srv/host", host.path().display());
    // No user namespace: root inside is the host's root, and only the
    // device policy stands in the way (with one, the kernel refuses mknod).
    let mut m = Machine::boot("t-devices", &[&bind, "--private-users=no"]);
    m.wait_ready();
    assert_eq!(m.exec_ok(&["systemctl", "is-system-running"]), "running");
    assert_eq!(
        m.exec_ok(&["systemctl", "list-units", "--failed", "--plain", "--no-legend"]),
        ""
    );
    // In a service of the machine's systemd: `nsenter` alone would run in
    // the test's own cgroup, outside the machine's. (The machine's /tmp is
    // nodev: a node made there is never opened, but making it is what the
    // policy decides.)
    let script = format!(
        "mknod /tmp/disk b {major} {minor} 2>&1; head -c1 /tmp/disk 2>&1; \
         mknod /tmp/kmsg c 1 11 2>&1; {{ echo berth-test > /srv/host/kmsg; }} 2>&1; \
         head -c1 /dev/null && echo null: ok; echo x > /dev/null && echo written: ok; \
         head -c4 /dev/urandom | wc -c; test -c /dev/net/tun && echo tun: ok; \
         mknod /tmp/null c 1 3 && echo mknod null: ok; rm -f /tmp/null"
    );
    let out = m.exec(&["systemd-run", "--wait", "--pipe", "-q", "sh", "-c", &script]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().collect::<Vec<_>>(),
        [
            "mknod: /tmp/disk: Operation not permitted",
            "head: cannot open '/tmp/disk' for reading: No such file or directory",
            "mknod: /tmp/kmsg: Operation not permitted",
            "/usr/bin/sh: 1: cannot create /srv/host/kmsg: Operation not permitted",
            "null: ok",
            "written: ok",
            "4",
            "tun: ok",
            "mknod null: ok",
        ],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One program, on the scope, out of the machine's reach.
    let scope = std::fs::File::open(scope_of("t-devices")).unwrap();
    assert_eq!(
        berth::sys::bpf_prog_count(std::os::fd::AsFd::as_fd(&scope), berth::sys::BPF_CGROUP_DEVICE).unwrap(),
        1
    );
    drop(scope);
    m.stop_ok();
    assert!(!scope_of("t-devices").exists());
}

#[test]
fn one_tree_one_writer_and_many_readers() {
    let tree = tree();
    let t = tree.display().to_string();
    let mut a = Machine::boot("t-lock-a", &[]);
    a.wait_ready();
    // Another name on the same tree, even through a link to it, is refused.
    let dir = tempfile::tempdir().unwrap();
    let via = dir.path().join("via-link");
    symlink(&tree, &via).unwrap();
    for path in [t.clone(), via.display().to_string()] {
        let out = run_within(&["run", "t-lock-b", "-D", &path, "--", "true"], Duration::from_secs(20));
        let lines = stderr_lines(&out);
        assert_eq!(out.status.code(), Some(1), "{lines:?}");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with(&format!(
                "berth: machine \"t-lock-b\": its tree {path} is in use by machine \"t-lock-a\" (lock /run/berth/trees/"
            )),
            "{}",
            lines[0]
        );
    }
    a.stop_ok();
    // Machines that cannot write the tree share it.
    let cfg = dir.path().join("ro.ini");
    std::fs::write(&cfg, "[Files]\nReadOnly=yes\n").unwrap();
    let c = cfg.display().to_string();
    let mut r1 = Machine::boot("t-lock-r1", &["--read-only"]);
    r1.wait_ready();
    let out = run_within(
        &[
            "run",
            "t-lock-r2",
            "-D",
            &t,
            "--config",
            &c,
            "--",
            "cat",
            "/etc/debian_version",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(0), "{:?}", stderr_lines(&out));
    r1.stop_ok();
    // Lock files are the admin's only.
    for entry in std::fs::read_dir("/run/berth/trees").unwrap().flatten() {
        use std::os::unix::fs::PermissionsExt;
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", entry.path().display());
    }
}

#[test]
fn a_failed_setup_leaves_no_process_or_cgroup() {
    // A setup step of the child fails: berth exits 1 with the step's line,
    // and the machine's cgroup (and any process in it) is gone.
    let s = Scratch::new();
    let src = s.dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let cfg = s.config(&format!("[Files]\nBind={}:/notdir/x\n", src.display()));
    // The target's parent is a file, so the target cannot be made.
    std::fs::write(s.tree().join("notdir"), "").unwrap();
    let out = s.run("t-h-step", Some(&cfg), &["true"]);
    assert_refused(
        &out,
        &format!(
            "berth: machine \"t-h-step\": setting up: creating directory {}/notdir: is not a directory",
            s.t()
        ),
    );
    assert!(!scope_of("t-h-step").exists(), "cgroup left behind");
}
