//! Host tests of [Network]: every test runs berth inside a network
//! namespace the test creates, with a bridge the test makes there, so the
//! host's own network is never touched. Machines boot the cached tree
//! read-only (so several share it) with systemd as PID 1. Run as root by
//! `tests/run-all`.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

/// A network namespace of the test's own, /run/netns/NAME, with lo up and
/// the bridge br0 (10.79.0.1/24); deleted (with everything in it) on drop.
struct NetNs {
    name: String,
}

fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip").args(args).output().expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl NetNs {
    fn new(tag: &str) -> NetNs {
        let _ = tree(); // root and a guest tree, or a failure that says how
        let name = format!("berth-t-{tag}");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["link", "add", "br0", "type", "bridge"]);
        ns.ip(&["addr", "add", "10.79.0.1/24", "dev", "br0"]);
        ns.ip(&["link", "set", "br0", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&ip(&all).stdout).to_string()
    }

    /// The names of the namespace's links.
    fn links(&self) -> Vec<String> {
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    /// Run a command in the namespace (as nsenter does; /sys stays the host's).
    fn run(&self, argv: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .args(argv)
            .output()
            .unwrap()
    }

    fn berth(&self, args: &[&str]) -> Output {
        let mut argv = vec![berth_bin()];
        argv.extend(args.iter().map(|a| a.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.run(&argv)
    }

    /// `berth boot NAME ARGS` (read-only tree, not registered) that must
    /// fail: exit 1 and its one line on stderr.
    fn boot_refused(&self, name: &str, args: &[&str]) -> String {
        let tree = tree();
        let mut all = vec![
            "boot",
            name,
            "-D",
            tree.to_str().unwrap(),
            "--read-only",
            "--register=no",
            "--console=pipe",
        ];
        all.extend_from_slice(args);
        let out = self.berth(&all);
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    }

    fn boot(&self, name: &str, args: &[&str]) -> Machine {
        let mut all = vec!["--read-only", "--register=no"];
        all.extend_from_slice(args);
        let mut m = Machine::boot_in_netns(&self.name, name, &all);
        m.wait_ready();
        m
    }

    fn wait_links(&self, want: impl Fn(&[String]) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let links = self.links();
            if want(&links) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: links are {links:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

fn mac_of(m: &Machine) -> String {
    let line = m.exec_ok(&["ip", "-o", "link", "show", "host0"]);
    line.split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no MAC in {line}"))
        .to_string()
}

#[test]
fn two_machines_on_a_bridge_reach_each_other_and_the_host() {
    let ns = NetNs::new("bridge");
    let mut a = ns.boot(
        "net-a",
        &[
            "--bridge=br0",
            "--address=10.79.0.2/24",
            "--gateway=10.79.0.1",
            "--dns=10.79.0.53",
        ],
    );
    let mut b = ns.boot("net-b", &["--bridge=br0", "--address=10.79.0.3/24"]);
    // Configured before the init started: systemd found host0 up.
    assert_eq!(
        a.exec_ok(&["ip", "-o", "-4", "addr", "show", "host0"])
            .split_whitespace()
            .nth(3),
        Some("10.79.0.2/24")
    );
    assert_eq!(
        a.exec_ok(&["ip", "route", "show", "default"]),
        "default via 10.79.0.1 dev host0 proto static"
    );
    a.exec_ok(&["ping", "-c1", "-W5", "10.79.0.3"]);
    a.exec_ok(&["ping", "-c1", "-W5", "10.79.0.1"]);
    b.exec_ok(&["ping", "-c1", "-W5", "10.79.0.2"]);
    // The host's ends are ports of br0.
    for host_if in ["vb-net-a", "vb-net-b"] {
        let line = ns.ip(&["-o", "link", "show", host_if]);
        assert!(line.contains("master br0"), "{line}");
    }
    // DNS= is the machine's resolver, over the tree's file (the tree is
    // read-only: nothing was written to it).
    assert_eq!(
        a.exec_ok(&["grep", "^nameserver", "/etc/resolv.conf"]),
        "nameserver 10.79.0.53"
    );
    // Its own network: /proc/sys/net is writable, the rest of /proc/sys not.
    a.exec_ok(&["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
    let out = a.exec(&["sh", "-c", "echo x > /proc/sys/kernel/domainname"]);
    assert!(!out.status.success(), "/proc/sys/kernel is writable");
    // The machine sees none of the namespace berth runs in.
    let links = a.exec_ok(&["ip", "-o", "link", "show"]);
    assert!(!links.contains("br0"), "{links}");
    a.stop_ok();
    b.stop_ok();
    ns.wait_links(|l| !l.iter().any(|n| n.starts_with("vb-")), "host ends left after stop");
    assert!(ns.links().contains(&"br0".to_string()), "the admin's bridge must stay");
}

#[test]
fn a_private_network_has_only_loopback() {
    let ns = NetNs::new("private");
    let mut m = ns.boot("net-private", &["--private=yes"]);
    let links: Vec<String> = m
        .exec_ok(&["ip", "-o", "link", "show"])
        .lines()
        .map(|l| l.split(": ").nth(1).unwrap_or_default().to_string())
        .collect();
    assert_eq!(links, ["lo"]);
    assert!(m.exec_ok(&["ip", "-o", "link", "show", "lo"]).contains("state UNKNOWN"));
    m.exec_ok(&["ping", "-c1", "-W2", "127.0.0.1"]);
    m.stop_ok();
}

#[test]
fn a_zone_bridge_comes_with_the_first_machine_and_goes_after_the_last() {
    let ns = NetNs::new("zone");
    assert!(!ns.links().contains(&"vz-tz".to_string()));
    let mut a = ns.boot("zone-a", &["--zone=tz", "--address=10.81.0.2/24"]);
    assert!(ns.links().contains(&"vz-tz".to_string()));
    let mut b = ns.boot("zone-b", &["--zone=tz", "--address=10.81.0.3/24"]);
    a.exec_ok(&["ping", "-c1", "-W5", "10.81.0.3"]);
    a.stop_ok();
    assert!(
        ns.links().contains(&"vz-tz".to_string()),
        "the zone's bridge went while a machine was on it"
    );
    b.exec_ok(&["ip", "link", "show", "host0"]);
    b.stop_ok();
    ns.wait_links(
        |l| !l.contains(&"vz-tz".to_string()),
        "the zone's bridge after its last machine",
    );
    // Machines of one zone starting and stopping at the same time: the
    // bridge is there for each, and gone after all.
    let mut many: Vec<Machine> = (0..4)
        .map(|i| {
            Machine::boot_in_netns(
                &ns.name,
                &format!("zone-m{i}"),
                &["--read-only", "--register=no", "--zone=tz"],
            )
        })
        .collect();
    for m in &mut many {
        m.wait_ready();
    }
    for m in &many {
        m.signal(libc::SIGTERM);
    }
    for m in &mut many {
        assert_eq!(m.wait_exit(Duration::from_secs(20)).code(), Some(0), "{}", m.stderr());
    }
    ns.wait_links(
        |l| !l.iter().any(|n| n.starts_with("vz-") || n.starts_with("vb-")),
        "zone links after all machines stopped together",
    );
}

#[test]
fn macs_are_stable_and_long_names_get_short_stable_interfaces() {
    let ns = NetNs::new("names");
    let name = "a-machine-of-20-chrs";
    assert_eq!(name.len(), 20);
    let mut m = ns.boot(name, &["--virtual-ethernet=yes"]);
    let first_mac = mac_of(&m);
    let host_ifs: Vec<String> = ns.links().into_iter().filter(|l| l.starts_with("ve-")).collect();
    assert_eq!(host_ifs.len(), 1, "{host_ifs:?}");
    let host_if = host_ifs[0].clone();
    assert_eq!(host_if.len(), 15, "{host_if}");
    assert!(host_if.starts_with("ve-a-machin"), "{host_if}");
    let host_mac = ns.ip(&["-o", "link", "show", &host_if]);
    m.stop_ok();
    ns.wait_links(|l| !l.contains(&host_if), "the host end after stop");

    let mut m = ns.boot(name, &["--virtual-ethernet=yes"]);
    assert_eq!(mac_of(&m), first_mac, "the machine's MAC changed across restarts");
    assert_eq!(
        ns.ip(&["-o", "link", "show", &host_if]).split("link/ether").nth(1),
        host_mac.split("link/ether").nth(1),
        "the host end's MAC changed across restarts"
    );
    let first = u8::from_str_radix(&first_mac[..2], 16).unwrap();
    assert_eq!(first & 0x03, 0x02, "{first_mac}: locally administered unicast");
    m.stop_ok();

    let mut m = ns.boot(
        "net-mac",
        &["--virtual-ethernet=yes", "--mac-address=02:11:22:33:44:55"],
    );
    assert_eq!(mac_of(&m), "02:11:22:33:44:55");
    m.stop_ok();
}

#[test]
fn sigkill_of_berth_leaves_nothing_that_stops_the_next_start() {
    let ns = NetNs::new("kill");
    let mut m = ns.boot("net-kill", &["--zone=kz", "--address=10.82.0.2/24"]);
    m.signal(libc::SIGKILL);
    m.wait_exit(Duration::from_secs(10));
    // At once, before the kernel has torn the old namespace down.
    let mut m = ns.boot("net-kill", &["--zone=kz", "--address=10.82.0.2/24"]);
    m.exec_ok(&["ip", "link", "show", "host0"]);
    m.stop_ok();
    ns.wait_links(
        |l| !l.iter().any(|n| n.starts_with("vz-") || n.starts_with("vb-")),
        "links of the killed run",
    );
}

#[test]
fn a_link_berth_did_not_make_is_never_touched() {
    let ns = NetNs::new("foreign");
    // Someone else's interface with the name berth would use.
    ns.ip(&[
        "link",
        "add",
        "ve-net-foreign",
        "type",
        "veth",
        "peer",
        "name",
        "x-peer",
    ]);
    ns.ip(&["link", "add", "vz-other", "type", "bridge"]);
    assert_eq!(
        ns.boot_refused("net-foreign", &["--virtual-ethernet=yes"]),
        "berth: machine \"net-foreign\": connecting machine \"net-foreign\" to the host through ve-net-foreign: the host already has an interface \"ve-net-foreign\" that berth did not make for machine \"net-foreign\"; remove it or rename the machine"
    );
    assert_eq!(
        ns.boot_refused("net-foreign", &["--zone=other"]),
        "berth: machine \"net-foreign\": connecting machine \"net-foreign\" to the host through vb-net-foreign: the host has an interface \"vz-other\" that is not a zone bridge berth made; remove it or pick another zone"
    );
    let links = ns.links();
    assert!(links.contains(&"ve-net-foreign".to_string()) && links.contains(&"vz-other".to_string()));
    assert!(!links.iter().any(|l| l.starts_with("vb-")), "{links:?}");
}

#[test]
fn bad_network_input_gets_one_line_and_creates_nothing() {
    let ns = NetNs::new("bad");
    ns.ip(&["link", "add", "dummy0", "type", "veth", "peer", "name", "dummy1"]);
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("Address=10.0.0.300/24", "[Network] Address=10.0.0.300/24: \"10.0.0.300\" is not an IP address"),
        ("Address=10.0.0.2/33", "[Network] Address=10.0.0.2/33: the prefix length must be 0 to 32"),
        (
            "VirtualEthernet=yes\nAddress=10.0.0.2/24\nGateway=10.1.0.1",
            "[Network] Gateway=10.1.0.1: not inside the subnet of any Address= (10.0.0.2/24)",
        ),
        (
            "Private=yes\nPort=8080:80",
            "[Network] Port=tcp:8080:80: forwarding a port needs the machine's own network: set VirtualEthernet=yes, Bridge= or Zone=",
        ),
        (
            "Bridge=br0\nZone=web",
            "[Network] Zone=web: Bridge= (br0) and Zone= both name where the machine's link goes; keep one",
        ),
        (
            "VirtualEthernet=yes\nAddress=10.0.0.2/24\nPort=8080:80\nPort=8080:81",
            "[Network] Port=tcp:8080:81: host port tcp:8080 is already forwarded (to port 80 of the machine)",
        ),
        (
            "Bridge=nosuchbr",
            "[Network] Bridge=nosuchbr: the host has no interface \"nosuchbr\" (create the bridge first, e.g. with systemd-networkd)",
        ),
        ("Bridge=dummy0", "[Network] Bridge=dummy0: the host's interface \"dummy0\" is not a bridge"),
    ];
    let before = ns.links();
    for (i, (body, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.ini"));
        std::fs::write(&path, format!("[Network]\n{body}\n")).unwrap();
        let line = 1 + body.lines().count();
        let file = path.to_str().unwrap();
        let expected = format!("berth: machine \"bad{i}\": {file}:{line}: {want}");
        let expected_parse = format!("berth: {file}:{line}: {want}");
        for verb in ["check", "boot"] {
            let out = match verb {
                "check" => ns.berth(&["check", file]),
                _ => ns.berth(&[
                    "boot",
                    &format!("bad{i}"),
                    "-D",
                    tree().to_str().unwrap(),
                    "--config",
                    file,
                    "--register=no",
                    "--console=pipe",
                ]),
            };
            let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            assert_eq!(out.status.code(), Some(1), "{verb} {body:?}: {err}");
            assert!(
                err == expected || err == expected_parse,
                "{verb} {body:?}:\n got: {err}\nwant: {expected}"
            );
        }
    }
    assert_eq!(ns.links(), before, "a refused start made links");
}

/// Run `f` on a thread of its own in network namespace `ns` (setns moves
/// only the calling thread).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// What a TCP server at `addr` says, or the error.
fn ask(addr: &str) -> Result<String, String> {
    use std::io::Read;
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out.trim().to_string())
}

/// Ask until the machine's server answers (it starts after the boot).
fn ask_until(ns: &str, addr: &'static str) -> Result<String, String> {
    let ns = ns.to_string();
    in_netns(&ns, move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match ask(addr) {
                Ok(s) if !s.is_empty() => return Ok(s),
                r if Instant::now() > deadline => return r,
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })
}

/// A TCP server in the machine answering "pong" on `port`, in the
/// background (its loop outlives nsenter, under the machine's init).
fn serve_pong(m: &Machine, port: u16) {
    m.exec_ok(&[
        "sh",
        "-c",
        &format!("(while :; do echo pong | nc -N -l {port}; done) </dev/null >/dev/null 2>&1 &"),
    ]);
}

#[test]
fn a_forwarded_port_answers_from_another_host_and_from_the_hosts_loopback() {
    let ns = NetNs::new("ports");
    // Another host: a namespace behind a veth pair, routed through ours.
    let client = NetNs {
        name: "berth-t-ports-client".into(),
    };
    let _ = Command::new("ip").args(["netns", "del", &client.name]).output();
    ip(&["netns", "add", &client.name]);
    ns.ip(&[
        "link",
        "add",
        "cl0",
        "type",
        "veth",
        "peer",
        "name",
        "cl1",
        "netns",
        &client.name,
    ]);
    ns.ip(&["addr", "add", "10.83.0.1/24", "dev", "cl0"]);
    ns.ip(&["link", "set", "cl0", "up"]);
    client.ip(&["addr", "add", "10.83.0.2/24", "dev", "cl1"]);
    client.ip(&["link", "set", "cl1", "up"]);
    client.ip(&["route", "add", "default", "via", "10.83.0.1"]);
    let out = ns.run(&["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
    assert!(out.status.success());

    let args = [
        "--bridge=br0",
        "--address=10.79.0.2/24",
        "--gateway=10.79.0.1",
        "--port=8080:80",
    ];
    let mut m = ns.boot("net-ports", &args);
    serve_pong(&m, 80);
    assert_eq!(
        ask_until(&client.name, "10.83.0.1:8080"),
        Ok("pong".into()),
        "from another host"
    );
    assert_eq!(
        ask_until(&ns.name, "10.79.0.1:8080"),
        Ok("pong".into()),
        "from the host, its own address"
    );
    assert_eq!(
        ask_until(&ns.name, "127.0.0.1:8080"),
        Ok("pong".into()),
        "from the host's 127.0.0.1"
    );
    assert_eq!(
        ask_until(&ns.name, "[::1]:8080"),
        Ok("pong".into()),
        "from the host's ::1"
    );
    // The rules are the machine's own.
    let rules = in_netns(&ns.name, berth::nft::machines_with_rules).unwrap();
    assert_eq!(rules, ["net-ports"]);

    // SIGKILL of berth, and a new start at once with the same port.
    m.signal(libc::SIGKILL);
    m.wait_exit(Duration::from_secs(10));
    let mut m = ns.boot("net-ports", &args);
    serve_pong(&m, 80);
    assert_eq!(
        ask_until(&client.name, "10.83.0.1:8080"),
        Ok("pong".into()),
        "after a killed run"
    );
    assert_eq!(
        ask_until(&ns.name, "127.0.0.1:8080"),
        Ok("pong".into()),
        "loopback after a killed run"
    );
    m.stop_ok();

    // Gone with the machine: rules, proxy, links.
    let rules = in_netns(&ns.name, berth::nft::machines_with_rules).unwrap();
    assert!(rules.is_empty(), "rules left: {rules:?}");
    let refused = in_netns(&ns.name, || ask("127.0.0.1:8080"));
    assert!(refused.is_err(), "the loopback port still answers: {refused:?}");
    ns.wait_links(|l| !l.iter().any(|n| n.starts_with("vb-")), "links after stop");
}

#[test]
fn a_host_port_in_use_is_refused_and_nothing_is_left() {
    let ns = NetNs::new("inuse");
    let _busy = in_netns(&ns.name, || std::net::TcpListener::bind("127.0.0.1:8081").unwrap());
    // The listener lives on in the namespace as long as `_busy` does.
    assert_eq!(
        ns.boot_refused("net-inuse", &["--bridge=br0", "--address=10.79.0.4/24", "--port=8081:80"]),
        "berth: machine \"net-inuse\": forwarding the ports of machine \"net-inuse\": tcp port 8081 is already in use on the host"
    );
    assert!(!ns.links().iter().any(|l| l.starts_with("vb-")), "{:?}", ns.links());
    let rules = in_netns(&ns.name, berth::nft::machines_with_rules).unwrap();
    assert!(rules.is_empty(), "{rules:?}");
}

/// A command's stdout, and the bounding set its first line (grep CapBnd
/// /proc/self/status) gives.
fn bounding_set(out: &Output) -> (String, u64) {
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let bnd = text
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
        .unwrap_or_else(|| panic!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    (text, bnd)
}

#[test]
fn root_inside_cannot_reach_the_hosts_network_namespace() {
    let ns = NetNs::new("escape");
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("net-escape.ini");
    let pick = dir.path().join("net-escape-pick.ini");
    // The hardest case first: no user namespace, root inside is the host's.
    std::fs::write(
        &ini,
        "[Exec]\nPrivateUsers=no\n[Files]\nReadOnly=yes\n[Network]\nVirtualEthernet=yes\n",
    )
    .unwrap();
    std::fs::write(&pick, "[Files]\nReadOnly=yes\n[Network]\nVirtualEthernet=yes\n").unwrap();
    let run_with = |ini: &std::path::Path, command: &str, stdout: std::process::Stdio| {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg("--")
            .arg(berth_bin())
            .args(["run", "net-escape", "-D", tree().to_str().unwrap(), "--register=no"])
            .args([
                "--console=pipe",
                "--config",
                ini.to_str().unwrap(),
                "--",
                "sh",
                "-c",
                command,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .output()
            .unwrap()
    };
    let run = |command: &str, stdout: std::process::Stdio| run_with(&ini, command, stdout);
    // No CAP_NET_ADMIN: with it, the veth pair's peer (the host's
    // namespace, netnsid 0 inside) would be the machine's to change.
    let out = run(
        "grep CapBnd /proc/self/status; ip link add x type veth peer name y 2>&1; ip link set host0 down 2>&1",
        std::process::Stdio::piped(),
    );
    let (text, bnd) = bounding_set(&out);
    assert_eq!(bnd & (1 << 12), 0, "CAP_NET_ADMIN is in the bounding set");
    assert_eq!(
        text.matches("Operation not permitted").count(),
        2,
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A socket of the host's namespace as stdout (as the journal's stream
    // is for a service): SIOCGSKNS on it would hand root inside a
    // descriptor of the host's network namespace to setns(2) into.
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    drop(mine);
    let out = run(
        "perl -e 'my $r = ioctl(STDOUT, 0x894C, 0); print STDERR (defined $r ? \"got a namespace\" : \"refused: $!\")'",
        std::process::Stdio::from(std::os::fd::OwnedFd::from(theirs)),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "refused: Operation not permitted"
    );

    // PrivateUsers=pick: CAP_NET_ADMIN is kept, as nspawn keeps it, and
    // holds over the machine's own network alone; the host's links (the
    // peer namespace is netnsid 0 inside) stay out of its reach.
    let before = ns.links();
    let out = run_with(
        &pick,
        "grep CapBnd /proc/self/status; ip link add x type veth peer name y && echo own-link-made; \
         ip link set host0 down && echo own-link-down; \
         ip link add z0 link-netnsid 0 type veth peer name z1 2>&1 | head -n1; \
         ip link show 2>&1 | grep -c ': ve-'",
        std::process::Stdio::piped(),
    );
    let (text, bnd) = bounding_set(&out);
    assert_ne!(bnd & (1 << 12), 0, "CAP_NET_ADMIN is not kept with a user namespace");
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(
        lines,
        [
            "own-link-made",
            "own-link-down",
            "RTNETLINK answers: Operation not permitted",
            "0"
        ],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ns.links(), before, "the host's links changed");
}

#[test]
fn a_port_is_forwarded_only_to_an_address_routed_through_the_machines_link() {
    let ns = NetNs::new("route");
    // 10.50.0.0/24 is not br0's subnet: the host would send forwarded
    // connections elsewhere (here: nowhere; on a server: its uplink).
    assert_eq!(
        ns.boot_refused("net-route", &["--bridge=br0", "--address=10.50.0.2/24", "--port=8082:80"]),
        "berth: machine \"net-route\": forwarding the ports of machine \"net-route\": Port= forwards to 10.50.0.2, but the host does not route 10.50.0.2 through br0: give br0 an address in that subnet"
    );
    assert!(!ns.links().iter().any(|l| l.starts_with("vb-")), "{:?}", ns.links());
    // A plain pair: berth routes the machine's addresses through its end.
    let mut m = ns.boot(
        "net-route",
        &["--virtual-ethernet=yes", "--address=10.51.0.2/24", "--port=8082:80"],
    );
    assert!(ns.ip(&["route", "get", "10.51.0.2"]).contains("dev ve-net-route"));
    // The way back is the admin's (networkd's, for ve-*): an address on
    // the host's end in the machine's subnet.
    ns.ip(&["addr", "add", "10.51.0.1/24", "dev", "ve-net-route"]);
    serve_pong(&m, 80);
    assert_eq!(ask_until(&ns.name, "127.0.0.1:8082"), Ok("pong".into()));
    m.stop_ok();
}
