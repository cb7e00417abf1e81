//! Host tests: real namespaces and a real systemd booted as the machine's
//! PID 1 from the cached Debian tree. Run as root by `tests/run-all`.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `berth run` on the test tree under `name`.
fn run_in(name: &str, command: &[&str]) -> std::process::Output {
    let tree = tree();
    let mut args = vec!["run", name, "-D", tree.to_str().unwrap(), "--"];
    args.extend(command);
    run_berth(&args)
}

#[test]
fn boot_reaches_ready_with_systemd_as_pid1_and_halts_in_order() {
    let mut m = Machine::boot("t-boot", &[]);
    m.wait_ready();
    let leader = m.leader();
    assert_eq!(m.exec_ok(&["cat", "/proc/1/comm"]), "systemd");
    assert_eq!(m.exec_ok(&["hostname"]), "t-boot");
    assert_eq!(m.exec_ok(&["systemctl", "is-system-running"]), "running");
    // The machine's systemd sees its own cgroup as the root, and that root
    // is the machine's cgroup on the host.
    let inside = m.exec_ok(&["cat", "/proc/1/cgroup"]);
    assert_eq!(
        inside.lines().find(|l| l.starts_with("0::")),
        Some("0::/init.scope"),
        "{inside}"
    );
    let host_view = std::fs::read_to_string(format!("/proc/{leader}/cgroup")).unwrap();
    assert!(
        host_view.contains(&format!(
            "0::/machine.slice/{}/payload/init.scope",
            scope_of("t-boot").file_name().unwrap().to_string_lossy()
        )),
        "{host_view}"
    );
    // The bounding set of PID 1 lacks CAP_SYS_MODULE (16) and CAP_SYS_TIME (25).
    let status = std::fs::read_to_string(format!("/proc/{leader}/status")).unwrap();
    let bnd = status.lines().find_map(|l| l.strip_prefix("CapBnd:\t")).unwrap();
    let bnd = u64::from_str_radix(bnd, 16).unwrap();
    assert_eq!(bnd & (1 << 16), 0, "CAP_SYS_MODULE kept: {bnd:x}");
    assert_eq!(bnd & (1 << 25), 0, "CAP_SYS_TIME kept: {bnd:x}");
    assert_ne!(bnd & (1 << 21), 0, "CAP_SYS_ADMIN dropped: {bnd:x}");
    // The container's environment says who manages it.
    let env = std::fs::read(format!("/proc/{leader}/environ")).unwrap();
    let env = String::from_utf8_lossy(&env);
    assert!(env.split('\0').any(|e| e == "container=berth"), "{env}");
    assert!(env.split('\0').any(|e| e == "NOTIFY_SOCKET=/run/host/notify"), "{env}");
    assert_eq!(m.exec_ok(&["cat", "/run/host/container-manager"]), "berth");

    // SIGTERM: an orderly halt, exit 0, nothing left behind. (The
    // deadline is a hang detector, not a speed goal: under software
    // emulation on a loaded host the halt takes several seconds.)
    m.signal(libc::SIGTERM);
    let status = m.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", m.stderr());
    assert!(
        m.console().contains("Reached target") && m.console().contains("Halting system."),
        "no orderly halt on the console"
    );
    assert!(!scope_of("t-boot").exists(), "cgroup left behind");
    assert!(
        host_mounts_under(&tree()).is_empty(),
        "mounts left behind: {:?}",
        host_mounts_under(&tree())
    );
}

#[test]
fn poweroff_inside_exits_zero() {
    let mut m = Machine::boot("t-poweroff", &[]);
    m.wait_ready();
    let _ = m.exec(&["systemctl", "poweroff"]);
    assert_eq!(m.wait_exit(Duration::from_secs(20)).code(), Some(0), "{}", m.stderr());
    assert!(!scope_of("t-poweroff").exists());
}

#[test]
fn reboot_inside_boots_again_with_fresh_namespaces() {
    let mut m = Machine::boot("t-reboot", &[]);
    m.wait_ready();
    let first = m.leader();
    // A marker in this boot's /run (a tmpfs of its mount namespace). (Namespace
    // inode numbers are no proof: the kernel reuses them once one is freed.)
    m.exec_ok(&["touch", "/run/berth-test-marker"]);
    let _ = m.exec(&["systemctl", "reboot"]);
    wait_gone(first, Duration::from_secs(20));
    m.wait_ready();
    let second = m.leader();
    assert_ne!(first, second);
    assert!(
        !m.exec(&["test", "-e", "/run/berth-test-marker"]).status.success(),
        "/run survived the reboot"
    );
    assert_eq!(m.exec_ok(&["cat", "/proc/1/comm"]), "systemd");
    m.stop_ok();
}

/// With --keep-unit berth runs as a unit would: inside a cgroup of its own
/// (made here by the test), split into supervisor/ and payload/, and a
/// reboot inside is handed to systemd as exit code 133.
#[test]
fn reboot_with_keep_unit_exits_133_and_uses_the_units_cgroup() {
    let unit = cgroup2().join(format!("berth-test-unit-{}.service", std::process::id()));
    std::fs::create_dir(&unit).unwrap();
    let procs = unit.join("cgroup.procs");
    let bin = berth_bin();
    // A stand-in for a unit (a cgroup the test made): systemd does not know
    // it, so there is nothing to register with machined.
    let mut m = Machine::boot_with("t-keepunit", &["--keep-unit", "--register=no"], |c| {
        // Enter the "unit" cgroup, then become berth (as systemd would start it).
        let script = format!("echo $$ > {} && exec {bin} \"$@\"", procs.display());
        let args: Vec<String> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        *c = {
            let mut sh = std::process::Command::new("sh");
            sh.arg("-c").arg(script).arg("berth").args(args);
            sh.env(
                "NOTIFY_SOCKET",
                c.get_envs().find(|(k, _)| *k == "NOTIFY_SOCKET").unwrap().1.unwrap(),
            );
            sh.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            sh
        };
        c
    });
    // The wrapper replaced stdout/stderr: read the console from berth's exit instead.
    m.wait_ready();
    let leader = m.leader();
    let cg = std::fs::read_to_string(format!("/proc/{leader}/cgroup")).unwrap();
    assert!(
        cg.contains(&format!(
            "{}/payload/init.scope",
            unit.file_name().unwrap().to_string_lossy()
        )),
        "{cg}"
    );
    let supervisor = std::fs::read_to_string(unit.join("supervisor/cgroup.procs")).unwrap();
    assert!(
        supervisor.lines().any(|p| p == m.child.id().to_string()),
        "berth not in supervisor/: {supervisor}"
    );
    let _ = m.exec(&["systemctl", "reboot"]);
    assert_eq!(
        m.wait_exit(Duration::from_secs(20)).code(),
        Some(berth::exit::EXIT_REBOOT)
    );
    assert!(!unit.join("payload").exists(), "payload cgroup left behind");
    std::fs::remove_dir(unit.join("supervisor")).unwrap();
    std::fs::remove_dir(&unit).unwrap();
}

#[test]
fn sigkill_of_berth_leaves_nothing_that_stops_the_next_boot() {
    let mut m = Machine::boot("t-sigkill", &[]);
    m.wait_ready();
    let leader = m.leader();
    m.signal(libc::SIGKILL);
    m.wait_exit(Duration::from_secs(5));
    // The machine dies with its supervisor (parent-death signal).
    wait_gone(leader, Duration::from_secs(5));
    assert!(
        host_mounts_under(&tree()).is_empty(),
        "mounts left behind: {:?}",
        host_mounts_under(&tree())
    );
    // The next boot of the same machine works and cleans the stale cgroup.
    let mut again = Machine::boot("t-sigkill", &[]);
    again.wait_ready();
    again.stop_ok();
    assert!(!scope_of("t-sigkill").exists(), "cgroup left behind");
}

#[test]
fn crash_of_pid1_ends_berth_and_the_next_boot_works() {
    let mut m = Machine::boot("t-crash", &[]);
    m.wait_ready();
    berth::sys::send_signal(m.leader(), libc::SIGKILL).unwrap();
    assert_eq!(m.wait_exit(Duration::from_secs(10)).code(), Some(128 + libc::SIGKILL));
    assert!(!scope_of("t-crash").exists(), "cgroup left behind");
    let mut again = Machine::boot("t-crash", &[]);
    again.wait_ready();
    again.stop_ok();
}

#[test]
fn second_sigterm_kills_at_once() {
    // An init that ignores the polite signal: a shell waiting forever.
    let mut m = Machine::boot(
        "t-kill2",
        &[
            "--init",
            "/bin/sh",
            "--notify-ready=no",
            "--",
            "-c",
            "trap '' TERM; while :; do sleep 1; done",
        ],
    );
    m.wait_ready();
    m.signal(libc::SIGTERM); // SIGRTMIN+3 to a shell: ignored by PID 1
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        m.child.try_wait().unwrap().is_none(),
        "berth exited on the first SIGTERM"
    );
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit(Duration::from_secs(5)).code(), Some(128 + libc::SIGKILL));
}

#[test]
fn proc_masks_and_read_only_parts_hold() {
    let out = run_in(
        "t-proc",
        &[
            "sh",
            "-c",
            "
        for f in /proc/kallsyms /proc/keys /proc/timer_list /proc/kcore /proc/sysrq-trigger; do
          [ -e $f ] || continue; echo \"$f $(wc -c < $f)\"; done
        echo x > /proc/sys/kernel/domainname && echo sys-writable
        touch /sys/berth-test 2>/dev/null && echo sysfs-writable
        ls /dev | tr '\\n' ' '",
        ],
    );
    let text = stdout_of(&out);
    assert!(text.contains("/proc/kallsyms 0"), "{text}");
    assert!(text.contains("/proc/keys 0"), "{text}");
    assert!(!text.contains("writable"), "{text}");
    assert_eq!(
        text.lines().last().unwrap().trim(),
        "fd full mqueue net null ptmx pts random shm stderr stdin stdout tty urandom zero"
    );
    assert!(stderr_of(&out).contains("Read-only file system"), "{}", stderr_of(&out));
}

#[test]
fn refused_syscall_fails_inside() {
    // add_key(2) is refused by the filter with EPERM; getpid works.
    let nr_add_key = libc::SYS_add_key;
    let script = format!(
        "my ($t, $d, $p) = (\"user\", \"k\", \"v\"); $r = syscall({nr_add_key}, $t, $d, $p, 1, -3); print \"$r $!\\n\"; print syscall({}) > 0 ? \"getpid ok\\n\" : \"getpid bad\\n\";",
        libc::SYS_getpid
    );
    let out = run_in("t-seccomp", &["perl", "-e", &script]);
    assert_eq!(
        stdout_of(&out),
        "-1 Operation not permitted\ngetpid ok",
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn chroot_escape_stays_inside() {
    let tree = tree();
    let meta = std::fs::metadata(&tree).unwrap();
    // The classic escape: chroot into a subdirectory, climb out with "..",
    // chroot to where you ended up; then print what "/" is.
    let script = r#"mkdir "/tmp/jail"; chroot "/tmp/jail" or die "chroot: $!"; chdir ".." for 1..64; chroot "." or die "chroot2: $!"; @s = stat("/"); print "$s[0] $s[1]\n"; @p = stat("/proc/1/root/."); print "$p[0] $p[1]\n";"#;
    let out = run_in("t-escape", &["perl", "-e", script]);
    let want = format!("{} {}", meta.dev(), meta.ino());
    let text = stdout_of(&out);
    assert!(out.status.success(), "{}", stderr_of(&out));
    for line in text.lines() {
        assert_eq!(
            line,
            want,
            "escaped to another root (tree is {want}, host / is {:?})",
            std::fs::metadata("/").map(|m| (m.dev(), m.ino()))
        );
    }
    assert_eq!(text.lines().count(), 2);
}

#[test]
fn run_exit_codes_are_the_commands() {
    assert_eq!(run_in("t-run", &["sh", "-c", "exit 42"]).status.code(), Some(42));
    assert_eq!(run_in("t-run", &["true"]).status.code(), Some(0));
    assert_eq!(
        run_in("t-run", &["sh", "-c", "kill -TERM $$"]).status.code(),
        Some(128 + libc::SIGTERM)
    );
    let out = run_in("t-run", &["/no/such/command"]);
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(
        stderr_of(&out).lines().last(),
        Some("berth: /no/such/command: No such file or directory")
    );
    // Output and hostname come through the pipe console.
    let out = run_in("t-run", &["hostname"]);
    assert_eq!(stdout_of(&out), "t-run");
}

#[test]
fn run_forwards_signals_and_reaps_orphans() {
    let tree = tree();
    let script = "trap 'echo got-term; exit 5' TERM
        sh -c 'sleep 0.1 &'   # an orphan for PID 1 to reap
        sleep 0.5
        zombies=$(cat /proc/[0-9]*/stat | awk '$3 == \"Z\"' | wc -l)
        echo zombies=$zombies
        echo started
        while :; do sleep 0.1; done";
    let mut child = berth()
        .args([
            "run",
            "t-signals",
            "-D",
            tree.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            script,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "zombies=0");
    assert_eq!(lines.next().unwrap().unwrap(), "started");
    berth::sys::send_signal(child.id() as i32, libc::SIGTERM).unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "got-term");
    let status = wait_child(
        &mut child,
        Duration::from_secs(5),
        "berth run did not exit after SIGTERM",
    );
    assert_eq!(status.code(), Some(5));
}

#[test]
fn bad_input_gets_one_clear_line_and_changes_nothing() {
    let tree = tree();
    let t = tree.to_str().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let no_init = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(no_init.path().join("etc")).unwrap();
    std::fs::write(no_init.path().join("etc/os-release"), "ID=test\n").unwrap();
    let e = empty.path().display().to_string();
    let n = no_init.path().display().to_string();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["boot", "t-nosuch-xyz"], "berth: machine \"t-nosuch-xyz\": /var/lib/machines/t-nosuch-xyz does not exist".into()),
        (vec!["boot", "t-empty", "-D", &e], format!("berth: machine \"t-empty\": {e} is not an OS tree: neither etc/os-release nor usr/lib/os-release exists in it")),
        (vec!["boot", "t-noinit", "-D", &n], format!("berth: machine \"t-noinit\": no init found in {n}: tried /usr/lib/systemd/systemd, /lib/systemd/systemd, /sbin/init (use --init PATH)")),
        (vec!["boot", "t-badinit", "-D", t, "--init", "/etc/os-release"], format!("berth: machine \"t-badinit\": init /etc/os-release is not an executable file in {t}")),
        (vec!["boot", "a/b"], "berth: invalid machine name \"a/b\": it must not contain '/'".into()),
        (vec!["boot", ".."], "berth: invalid machine name \"..\": it must not be '.' or contain '..'".into()),
        (vec!["boot", "bad name!"], "berth: invalid machine name \"bad name!\": only letters, digits, '-' and '.' are allowed, as in a hostname (systemd-machined's rule)".into()),
        (vec!["boot", "t-sig", "-D", t, "--kill-signal", "SIGNOPE"], "berth: --kill-signal=SIGNOPE: not a signal: expected a name like SIGTERM or SIGRTMIN+3, or a number".into()),
    ];
    for (args, want) in cases {
        let out = run_berth(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr_of(&out), want, "{args:?}");
    }
    for name in ["t-nosuch-xyz", "t-empty", "t-noinit", "t-badinit", "t-sig"] {
        assert!(
            !Path::new(&format!("/run/berth/{name}.lock")).exists(),
            "{name}: lock file created"
        );
        assert!(!scope_of(name).exists(), "{name}: cgroup created");
    }

    // Not root.
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &berth_bin(),
            "boot",
            "t-user",
            "-D",
            t,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr_of(&out),
        "berth: berth boot must be run as root (it creates namespaces, mounts and cgroups)"
    );

    // Already running.
    let mut m = Machine::boot("t-twice", &[]);
    m.wait_ready();
    let out = run_berth(&["boot", "t-twice", "-D", t]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr_of(&out),
        "berth: machine \"t-twice\" is already running (lock /run/berth/t-twice.lock is held)"
    );
    assert_eq!(
        m.exec_ok(&["cat", "/proc/1/comm"]),
        "systemd",
        "the running machine was disturbed"
    );
    m.stop_ok();
}

#[test]
fn failure_half_way_leaves_nothing_behind() {
    // A tree that passes the checks but breaks setup: /dev is a file.
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("t-halfway");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("sbin")).unwrap();
    std::fs::write(root.join("etc/os-release"), "ID=test\n").unwrap();
    std::fs::write(root.join("sbin/init"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        root.join("sbin/init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(root.join("dev"), "not a directory").unwrap();
    let r = root.display().to_string();
    let out = run_berth(&["boot", "-D", &r]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr_of(&out).lines().last().unwrap(),
        format!("berth: machine \"t-halfway\": setting up: checking {r}/dev: is a regular file, not a directory (berth mounts the machine's own file system there)")
    );
    assert!(
        host_mounts_under(&root).is_empty(),
        "mounts left behind: {:?}",
        host_mounts_under(&root)
    );
    assert!(!scope_of("t-halfway").exists(), "cgroup left behind");
}

/// Read the pty master until `want` shows up; panics with what was read.
fn read_until(master: &std::os::fd::OwnedFd, seen: &mut String, want: &str, within: Duration) {
    use std::os::fd::AsFd;
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while !seen.contains(want) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {want:?} on the console within {within:?}; saw:\n{seen}"
        );
        let mut fds = [nix::poll::PollFd::new(master.as_fd(), nix::poll::PollFlags::POLLIN)];
        let ms = left.as_millis().min(200) as u16;
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).unwrap() > 0 {
            match nix::unistd::read(master.as_fd(), &mut buf) {
                Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

#[test]
fn interactive_console_logs_in_and_ctrl_bracket_kills() {
    use std::os::fd::AsFd;
    let tree = tree();
    let ws = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).unwrap();
    let before = nix::sys::termios::tcgetattr(pty.slave.as_fd()).unwrap();
    let slave = || Stdio::from(pty.slave.try_clone().unwrap());
    let mut child = berth()
        .args(["boot", "t-console", "-D", tree.to_str().unwrap()])
        .env_remove("NOTIFY_SOCKET")
        .stdin(slave())
        .stdout(slave())
        .stderr(slave())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    read_until(
        &pty.master,
        &mut seen,
        "Press Ctrl-] three times",
        Duration::from_secs(10),
    );
    read_until(&pty.master, &mut seen, "t-console login:", BOOT_DEADLINE);
    let type_in = |s: &str| nix::unistd::write(&pty.master, s.as_bytes()).unwrap();
    type_in("root\r");
    read_until(&pty.master, &mut seen, "root@t-console", Duration::from_secs(20));
    // The window size of berth's terminal reached the machine's console.
    type_in("echo size=$(stty size) marker-$((6*7))\r");
    read_until(&pty.master, &mut seen, "size=40 100 marker-42", Duration::from_secs(10));
    // Ctrl-] three times within a second: the machine is killed.
    type_in("\x1d\x1d\x1d");
    read_until(
        &pty.master,
        &mut seen,
        "killed from the console",
        Duration::from_secs(5),
    );
    let status = wait_child(&mut child, Duration::from_secs(5), "berth did not exit after Ctrl-] x3");
    assert_eq!(status.code(), Some(1));
    // berth put the terminal back as it found it.
    let after = nix::sys::termios::tcgetattr(pty.slave.as_fd()).unwrap();
    assert_eq!(after.local_flags, before.local_flags);
    assert_eq!(after.input_flags, before.input_flags);
    assert!(!scope_of("t-console").exists(), "cgroup left behind");
}

#[test]
fn only_pid1_speaks_for_readiness_and_status_is_passed_on() {
    // An init (perl as PID 1) whose child claims readiness first; berth must
    // ignore the child and report ready when PID 1 says so.
    let script = r#"
        use Socket;
        sub say_ready { my $m = shift;
            socket(my $s, AF_UNIX, SOCK_DGRAM, 0) or die "socket: $!";
            send($s, $m, 0, pack_sockaddr_un("/run/host/notify")) or die "send: $!"; }
        if (fork() == 0) { say_ready("READY=1\nSTATUS=from-child"); exit 0; }
        wait; select(undef, undef, undef, 0.5);
        say_ready("READY=1\nSTATUS=from-pid1");
        sleep 1000;"#;
    let mut m = Machine::boot(
        "t-notify",
        &["--init", "/usr/bin/perl", "--kill-signal=SIGKILL", "--", "-e", script],
    );
    let msg = m.wait_ready();
    assert!(msg.lines().any(|l| l == "STATUS=from-pid1"), "READY came with: {msg:?}");
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit(Duration::from_secs(5)).code(), Some(128 + libc::SIGKILL));
}

// ---- machine settings ([Exec], [Files]) --------------------------------

fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(format!("{name}.ini"));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn files_settings_bind_tmpfs_inaccessible_read_only() {
    let tree = tree();
    let t = tempfile::tempdir().unwrap();
    let (rw, ro) = (t.path().join("rw"), t.path().join("ro"));
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(rw.join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(rw.join("run.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(ro.join("shared"), "from the host\n").unwrap();
    let script = "echo data > /srv/rw/new && echo rw-ok; \
        (echo x > /srv/ro/new) 2>/dev/null || echo ro-refused; \
        cat /srv/ro/shared; \
        /srv/rw/run.sh 2>/dev/null || echo noexec-refused; \
        (touch /berth-rootfile) 2>/dev/null || echo root-read-only; \
        echo t > /mnt/scratch/t && grep -q ' /mnt/scratch tmpfs ' /proc/mounts && echo tmpfs-ok; \
        echo issue=$(wc -c < /etc/issue); \
        pwd";
    let config = write_config(
        t.path(),
        "t-files",
        &format!(
            "[Exec]\nBoot=no\nParameters=sh -c \"{script}\"\nWorkingDirectory=/srv\n\n[Files]\nReadOnly=yes\nBind={}:/srv/rw:noexec,idmap\nBindReadOnly={}:/srv/ro\nTemporaryFileSystem=/mnt/scratch:size=1M\nInaccessible=/etc/issue\n",
            rw.display(),
            ro.display()
        ),
    );
    let out = run_berth(&[
        "boot",
        "t-files",
        "-D",
        tree.to_str().unwrap(),
        "--console=pipe",
        "--config",
        &config,
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        stdout_of(&out),
        "rw-ok\nro-refused\nfrom the host\nnoexec-refused\nroot-read-only\ntmpfs-ok\nissue=0\n/srv"
    );
    assert_eq!(std::fs::read_to_string(rw.join("new")).unwrap(), "data\n");
    assert!(!ro.join("new").exists());
    assert!(host_mounts_under(t.path()).is_empty());
}

#[test]
fn environment_and_hostname_reach_pid1_flag_over_file() {
    let t = tempfile::tempdir().unwrap();
    let config = write_config(
        t.path(),
        "t-env",
        "[Exec]\nHostname=from-file\nEnvironment=FROM_FILE=1\nEnvironment=\"BOTH=file value\"\n",
    );
    let mut m = Machine::boot(
        "t-env",
        &[
            "--config",
            &config,
            "--environment=BOTH=flag",
            "--environment=FROM_FLAG=2",
        ],
    );
    m.wait_ready();
    let env = std::fs::read(format!("/proc/{}/environ", m.leader())).unwrap();
    let env: Vec<String> = String::from_utf8_lossy(&env).split('\0').map(String::from).collect();
    // The flag's list replaces the file's.
    assert!(
        env.contains(&"BOTH=flag".to_string()) && env.contains(&"FROM_FLAG=2".to_string()),
        "{env:?}"
    );
    assert!(!env.iter().any(|e| e.starts_with("FROM_FILE=")), "{env:?}");
    assert_eq!(m.exec_ok(&["hostname"]), "from-file");
    m.stop_ok();
}

#[test]
fn untrusted_file_next_to_the_tree_may_not_widen() {
    let tree = tree();
    let t = tempfile::tempdir().unwrap();
    let link = t.path().join("t-untrusted");
    std::os::unix::fs::symlink(&tree, &link).unwrap();
    let ini = write_config(t.path(), "t-untrusted", "[Exec]\nHostname=x\n[Files]\nBind=/tmp\n");
    let out = run_berth(&["boot", "-D", link.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr_of(&out),
        format!("berth: {ini}:4: [Files] Bind=/tmp: not allowed in this file: it lies next to the machine's tree and is not trusted, and Bind widens what the machine may do (put it in /etc/berth/machines.d/NAME.ini)")
    );
    assert!(!scope_of("t-untrusted").exists());
}

#[test]
fn every_settings_error_at_once_and_nothing_booted() {
    let tree = tree();
    let t = tempfile::tempdir().unwrap();
    let ini = write_config(
        t.path(),
        "t-bad",
        "[Exec]\nBoot=perhaps\nHostnme=web\n[Files]\nBind=relative\nVolatile=sometimes\n",
    );
    let out = run_berth(&[
        "boot",
        "t-bad",
        "-D",
        tree.to_str().unwrap(),
        "--config",
        &ini,
        "--read-only=maybe",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr_of(&out),
        [
            format!("berth: {ini}:2: [Exec] Boot=perhaps: expected a boolean: yes, no, true, false, on, off, 1 or 0"),
            format!("berth: {ini}:3: [Exec] Hostnme=web: unknown key (did you mean Hostname?)"),
            format!("berth: {ini}:5: [Files] Bind=relative: source: expected an absolute path"),
            format!("berth: {ini}:6: [Files] Volatile=sometimes: expected one of no, yes, state, overlay"),
            "berth: --read-only=maybe: expected a boolean: yes, no, true, false, on, off, 1 or 0".to_string(),
        ]
        .join("\n")
    );
    assert!(!scope_of("t-bad").exists());
    assert!(!Path::new("/run/berth/t-bad.lock").exists());
}

/// The example files of machines.d/: `berth check` explains each, and each
/// boots (the storage example needs its host directories).
#[test]
fn examples_check_and_boot() {
    // BERTH_EXAMPLES: where the system tier's VM has them.
    let examples = std::env::var_os("BERTH_EXAMPLES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("machines.d"));
    let example_dirs = [
        "/var/lib/berth-example/storage/data",
        "/var/lib/berth-example/storage/shared",
    ];
    for d in example_dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    // As the example says: only root may enter where an idmap bind lies.
    std::fs::set_permissions(
        "/var/lib/berth-example",
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    // The bridged example's bridge, in a network namespace of the test's
    // own (the host's network is never touched).
    let netns = "berth-t-examples";
    let _ = Command::new("ip").args(["netns", "del", netns]).output();
    for args in [
        &["netns", "add", netns][..],
        &["-n", netns, "link", "add", "br0", "type", "bridge"],
        &["-n", netns, "addr", "add", "192.168.100.1/24", "dev", "br0"],
        &["-n", netns, "link", "set", "br0", "up"],
        &["-n", netns, "link", "set", "lo", "up"],
    ] {
        assert!(Command::new("ip").args(args).status().unwrap().success(), "ip {args:?}");
    }
    let check = |name: &str, args: &[&str]| -> std::process::Output {
        if name == "bridged" {
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{netns}"))
                .arg("--")
                .arg(berth_bin())
                .arg("check")
                .args(args)
                .output()
                .unwrap()
        } else {
            let mut all = vec!["check"];
            all.extend_from_slice(args);
            run_berth(&all)
        }
    };
    for name in ["debian", "bridged", "storage"] {
        let ini = examples.join(format!("{name}.ini"));
        let out = check(name, &[ini.to_str().unwrap()]);
        assert!(out.status.success(), "{name}: {}", stderr_of(&out));
        let text = stdout_of(&out);
        assert!(
            text.starts_with(&format!("# machine {name}: settings from {} (trusted)", ini.display())),
            "{text}"
        );
        let json = check(name, &[ini.to_str().unwrap(), "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert_eq!(v["machine"], name);
        assert_eq!(v["file"]["trusted"], true);
        let origin_of = |section: &str, key: &str| -> String {
            v["settings"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["section"] == section && s["key"] == key)
                .map(|s| s["origin"].as_str().unwrap().to_string())
                .unwrap_or_default()
        };
        assert!(
            origin_of("Exec", "Hostname").starts_with(&ini.display().to_string()),
            "{name}"
        );
        assert_eq!(origin_of("Exec", "NotifyReady"), "default");
    }
    let storage = stdout_of(&run_berth(&[
        "check",
        examples.join("storage.ini").to_str().unwrap(),
        "--memory-max=1G",
    ]));
    let line = |key: &str| {
        storage
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("Bind=")
            .starts_with("Bind=/var/lib/berth-example/storage/data:/srv/data:rw,rbind,nosuid,nodev,noexec,idmap"),
        "{storage}"
    );
    assert!(line("Bind=").ends_with("storage.ini:14"), "{storage}");
    assert!(line("CPUQuota=").starts_with("CPUQuota=200% "), "{storage}");
    assert!(
        line("MemoryMax=").starts_with("MemoryMax=1073741824") && line("MemoryMax=").ends_with("# --memory-max"),
        "{storage}"
    );

    // [Resources] need the memory, pids and cpu controllers on cgroup2:
    // where they are missing (hybrid hosts), the machine is refused with a
    // line that says so rather than booted without its limits.
    let controllers = std::fs::read_to_string(cgroup2().join("cgroup.controllers")).unwrap_or_default();
    let has_memory = controllers.split_whitespace().any(|c| c == "memory");
    for name in ["debian", "bridged", "storage"] {
        let ini = examples.join(format!("{name}.ini"));
        let machine = format!("t-ex-{name}");
        let mut m = match name {
            "bridged" => Machine::boot_in_netns(netns, &machine, &["--config", ini.to_str().unwrap()]),
            _ => Machine::boot(&machine, &["--config", ini.to_str().unwrap()]),
        };
        if name == "storage" && !has_memory {
            let status = m.wait_exit(Duration::from_secs(10));
            assert_eq!(status.code(), Some(1));
            assert_eq!(
                m.stderr().lines().last().unwrap_or_default(),
                format!(
                    "berth: machine \"t-ex-storage\": setting the limits of {}: cgroup {}: cannot set memory.max: this host's cgroup2 does not offer that controller there",
                    scope_of("t-ex-storage").display(),
                    scope_of("t-ex-storage").display()
                )
            );
            assert!(!scope_of("t-ex-storage").exists(), "cgroup left behind");
            continue;
        }
        m.wait_ready();
        if name == "storage" {
            // The limits sit on the scope, above the machine's own cgroup.
            let max = std::fs::read_to_string(scope_of("t-ex-storage").join("memory.max")).unwrap();
            assert_eq!(max.trim(), "2147483648");
        }
        assert_eq!(m.exec_ok(&["cat", "/proc/1/comm"]), "systemd", "{name}");
        if name == "storage" {
            assert!(!m.exec(&["touch", "/berth-rootfile"]).status.success(), "root writable");
            m.exec_ok(&["touch", "/srv/data/berth-test"]);
        }
        if name == "bridged" {
            // On br0 with its address, its gateway the bridge.
            m.exec_ok(&["ping", "-c1", "-W5", "192.168.100.1"]);
            assert_eq!(
                m.exec_ok(&["grep", "^nameserver", "/etc/resolv.conf"]),
                "nameserver 192.168.100.1"
            );
        }
        m.stop_ok();
    }
    let _ = Command::new("ip").args(["netns", "del", netns]).output();
    let _ = std::fs::remove_dir_all("/var/lib/berth-example");
}

#[test]
fn volatile_changes_vanish_after_poweroff() {
    let tree = tree();
    // (mode, where the machine may write, whether /usr is read-only)
    for (mode, path, usr_read_only) in [
        ("overlay", "/etc/berth-volatile", false),
        ("yes", "/etc/berth-volatile", true),
        ("state", "/var/berth-volatile", true),
    ] {
        let mut m = Machine::boot(&format!("t-vol-{mode}"), &[&format!("--volatile={mode}")]);
        m.wait_ready();
        assert_eq!(
            m.exec_ok(&["systemctl", "is-system-running"]),
            "running",
            "Volatile={mode}"
        );
        m.exec_ok(&["sh", "-c", &format!("echo x > {path}")]);
        let usr_write = m.exec(&["touch", "/usr/berth-volatile"]).status.success();
        assert_eq!(
            usr_write, !usr_read_only,
            "Volatile={mode}: /usr writable = {usr_write}"
        );
        let _ = m.exec(&["systemctl", "poweroff"]);
        assert_eq!(m.wait_exit(Duration::from_secs(20)).code(), Some(0), "Volatile={mode}");
        for p in [path, "/usr/berth-volatile"] {
            assert!(
                !tree.join(p.trim_start_matches('/')).exists(),
                "Volatile={mode}: {p} reached the tree"
            );
        }
    }
}

#[test]
fn exec_user_and_system_call_filter() {
    let tree = tree();
    let t = tree.to_str().unwrap();
    let out = run_berth(&[
        "boot",
        "t-user",
        "-D",
        t,
        "--console=pipe",
        "--boot=no",
        "--user=nobody",
        "--parameters=sh -c 'id -u; id -g; echo $HOME $USER; cat /proc/self/status | grep ^CapEff'",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        stdout_of(&out),
        "65534\n65534\n/nonexistent nobody\nCapEff:\t0000000000000000"
    );
    let out = run_berth(&[
        "boot",
        "t-user",
        "-D",
        t,
        "--boot=no",
        "--user=nosuchuser",
        "--parameters=true",
    ]);
    assert_eq!(
        stderr_of(&out),
        "berth: machine \"t-user\": no user \"nosuchuser\" in the tree's /etc/passwd"
    );

    // add_key is refused by default; allowed again by name. personality is
    // allowed by default; refused with ~.
    let script = format!(
        "my ($t, $d, $p) = (\"user\", \"k\", \"v\"); print syscall({}, $t, $d, $p, 1, -3) > 0 ? \"add_key ok\\n\" : \"add_key $!\\n\"; print syscall({}, 0xffffffff) == -1 ? \"personality $!\\n\" : \"personality ok\\n\";",
        libc::SYS_add_key,
        libc::SYS_personality
    );
    let out = run_berth(&[
        "boot",
        "t-scf",
        "-D",
        t,
        "--console=pipe",
        "--boot=no",
        "--system-call-filter=add_key ~personality",
        "--parameters",
        &format!("perl -e '{script}'"),
    ]);
    assert_eq!(
        stdout_of(&out),
        "add_key ok\npersonality Operation not permitted",
        "{}",
        stderr_of(&out)
    );
    let out = run_berth(&["check", "t-scf", "--system-call-filter=~@mount @nonsense"]);
    assert_eq!(
        stderr_of(&out),
        "berth: --system-call-filter=~@mount @nonsense: \"@nonsense\" is not a group of system calls berth knows"
    );
}

/// The allow list as a booted machine's services see it: perl's syscall()
/// in a service of the machine's systemd (a process nsenter starts would
/// not be under the filter; PID 1's children are).
#[test]
fn system_call_filter_in_a_booted_machine() {
    // add_key: known, not allowed -> EPERM. 1000: no call -> ENOSYS.
    // adjtimex with modes 0 only reads the clock's state (no capability
    // needed), but is in @clock, which a machine without CAP_SYS_TIME
    // does not get unless SystemCallFilter= names it.
    let script = format!(
        "sub show {{ my ($n, $r) = @_; print $r >= 0 ? \"$n ok\\n\" : \"$n $!\\n\" }} \
         my ($u, $k, $v) = (\"user\", \"k\", \"v\"); show(\"add_key\", syscall({}, $u, $k, $v, 1, -3)); \
         show(\"1000\", syscall(1000)); \
         my $t = \"\\0\" x 208; show(\"adjtimex\", syscall({}, $t));",
        libc::SYS_add_key,
        libc::SYS_adjtimex
    );
    let calls = |m: &Machine| m.exec_ok(&["systemd-run", "--quiet", "--wait", "--pipe", "perl", "-e", &script]);
    let mut m = Machine::boot("t-scf-boot", &[]);
    m.wait_ready();
    assert_eq!(m.exec_ok(&["systemctl", "is-system-running"]), "running");
    assert_eq!(
        calls(&m),
        "add_key Operation not permitted\n1000 Function not implemented\nadjtimex Operation not permitted"
    );
    m.stop_ok();
    let mut m = Machine::boot("t-scf-boot", &["--system-call-filter=@clock @keyring"]);
    m.wait_ready();
    assert_eq!(m.exec_ok(&["systemctl", "is-system-running"]), "running");
    assert_eq!(calls(&m), "add_key ok\n1000 Function not implemented\nadjtimex ok");
    m.stop_ok();
}

#[test]
fn timezone_and_journal_on_the_host() {
    let host_zone = std::fs::read("/etc/localtime").ok();
    // What the machine sees at /etc/localtime: its digest, then the link's
    // target or "plain". Volatile=overlay keeps every mode from changing
    // the cached tree.
    let zone_in_machine = |mode: &str| {
        let out = run_berth(&[
            "boot",
            "t-tz",
            "-D",
            tree().to_str().unwrap(),
            "--console=pipe",
            "--boot=no",
            "--volatile=overlay",
            &format!("--timezone={mode}"),
            "--parameters=sh -c 'md5sum /etc/localtime && { readlink /etc/localtime || echo plain; }'",
        ]);
        assert!(out.status.success(), "Timezone={mode}: {}", stderr_of(&out));
        stdout_of(&out)
    };
    // Timezone=off: the tree's own zone, whatever the host has.
    let own = zone_in_machine("off");
    assert!(
        own.split_whitespace()
            .next()
            .is_some_and(|d| d.len() == 32 && d.chars().all(|c| c.is_ascii_hexdigit())),
        "no digest of the tree's /etc/localtime: {own}"
    );
    for mode in ["bind", "copy"] {
        let got = zone_in_machine(mode);
        match &host_zone {
            Some(zone) => {
                let digest = std::process::Command::new("md5sum")
                    .arg("/etc/localtime")
                    .output()
                    .unwrap();
                let host_sum = stdout_of(&digest).split_whitespace().next().unwrap().to_string();
                assert!(!zone.is_empty());
                assert!(got.starts_with(&host_sum), "Timezone={mode}: {got} vs {host_sum}");
                // The host's zone, as a plain file (bound over, or copied).
                assert_eq!(got.lines().nth(1), Some("plain"), "Timezone={mode}: {got}");
            }
            // No zone on the host: berth leaves the tree's /etc/localtime
            // as it is (same content, and a link stays that link).
            None => assert_eq!(got, own, "Timezone={mode} without a host zone changed the tree's"),
        }
    }

    // A journal directory another run left (perhaps under another range).
    let id = std::fs::read_to_string(tree().join("etc/machine-id"))
        .unwrap()
        .trim()
        .to_string();
    let host_dir = Path::new("/var/log/journal").join(&id);
    let _ = std::fs::remove_dir_all(&host_dir);
    let mut m = Machine::boot("t-journal", &["--link-journal=host", "--volatile=overlay"]);
    m.wait_ready();
    assert_eq!(m.exec_ok(&["cat", "/etc/machine-id"]), id);
    m.exec_ok(&["systemd-cat", "-t", "berth-test", "echo", "hello from the machine"]);
    m.exec_ok(&["journalctl", "--flush"]);
    let files: Vec<_> = std::fs::read_dir(&host_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        files.iter().any(|f| f.to_string_lossy().ends_with(".journal")),
        "no journal in {}: {files:?}",
        host_dir.display()
    );
    m.stop_ok();
    // Given to another range (another machine with this machine id): not
    // this machine's to take over; a link there is never followed.
    std::os::unix::fs::chown(&host_dir, Some(1_000_000_000), Some(1_000_000_000)).unwrap();
    let mut again = Machine::boot("t-journal", &["--link-journal=host", "--volatile=overlay"]);
    assert_eq!(again.wait_exit(Duration::from_secs(20)).code(), Some(1));
    assert!(
        again.stderr().contains(&format!(
            "making the machine's journal {}: it belongs to host UID 1000000000, another machine's range (two trees with one machine id?)",
            host_dir.display()
        )),
        "{}",
        again.stderr()
    );
    std::fs::remove_dir_all(&host_dir).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), &host_dir).unwrap();
    let mut linked = Machine::boot("t-journal", &["--link-journal=host", "--volatile=overlay"]);
    assert_eq!(linked.wait_exit(Duration::from_secs(20)).code(), Some(1));
    assert!(linked.stderr().contains("Not a directory"), "{}", linked.stderr());
    assert_eq!(
        std::fs::metadata(elsewhere.path()).unwrap().uid(),
        0,
        "the link's target was given away"
    );
    std::fs::remove_file(&host_dir).unwrap();
}
