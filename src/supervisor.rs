//! The supervisor: set up once, then boot the machine and run one event
//! loop per boot (child exit, signals, notify messages, console traffic)
//! until an `ExitReason` decides what happens next.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{read, Pid};

use crate::cgroup;
use crate::console::{self, ConsoleMode, EscapeDetector, Pty, RawTerminal};
use crate::exit::{ExitReason, Next};
use crate::name::MachineName;
use crate::notify;
use crate::protocol::{Channel, ToParent};
use crate::setup::{
    CgroupLimits, CreateMachine, DevicePolicy, MoveToCgroup, ParentSetup, ParentStep, RegisterMachine, UnitLimits,
};
use crate::spawn::{self, ChildSpec};

/// A machine ready to be started: checked input, nothing created yet.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: MachineName,
    pub child: ChildSpec,
    pub console: ConsoleMode,
    /// Wait for the init's READY=1 before reporting ready upstream.
    pub notify_ready: bool,
    /// Signal asking the init for an orderly shutdown.
    pub halt: crate::halt::Halt,
    /// berth runs as a unit's main process: split the unit's cgroup, and
    /// leave reboots to systemd (exit 133).
    pub keep_unit: bool,
    /// Register with systemd-machined when the host runs systemd.
    pub register: bool,
    /// [Resources].
    pub resources: crate::spec::Resources,
}

/// Where the machine's cgroup comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// berth is a unit's main process: the unit's cgroup, split.
    Unit,
    /// A shell on a systemd host: machined's scope.
    SystemdScope,
    /// No systemd: berth's own scope.
    Own,
}

/// Run the machine until it ends for good; returns berth's exit code.
pub fn run(plan: &Plan) -> anyhow::Result<i32> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let cg_mount = cgroup::find_cgroup2(&mountinfo).ok_or(cgroup::CgroupError::NoCgroup2)?;
    let own_cgroup = cgroup::own_cgroup(&std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default())
        .ok_or(cgroup::CgroupError::NoOwnCgroup)?;

    // Signals become events of the loop; they stay blocked in berth (the
    // child unblocks them before it executes the init).
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
        Signal::SIGWINCH,
    ] {
        signals.add(s);
    }
    signals.thread_block().context("blocking signals")?;
    let sfd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("creating a signalfd")?;

    let pty = match plan.console {
        ConsoleMode::Pipe => None,
        _ => Some(console::open_pty().context("allocating the console pty")?),
    };
    let mut child = plan.child.clone();
    child.console = pty.as_ref().map(|p| p.slave_path.clone());
    let stdin = std::io::stdin();
    let _raw = match (plan.console, &pty) {
        (ConsoleMode::Interactive, Some(p)) => {
            console::copy_window_size(stdin.as_fd(), p.master.as_fd());
            eprintln!(
                "Spawning machine {} on {}.\r\nPress Ctrl-] three times within 1s to kill the machine.\r",
                plan.name,
                child.tree.show("/").display()
            );
            Some(RawTerminal::enter(stdin.as_fd()).context("putting the terminal in raw mode")?)
        }
        _ => None,
    };

    // The system bus, for systemd (limits under a unit) and machined.
    let bus = if plan.register || plan.keep_unit {
        crate::bus::SystemBus::connect()?.map(std::rc::Rc::new)
    } else {
        None
    };
    let machined = match &bus {
        Some(b) if plan.register => {
            let there = b.has_machined();
            if !there {
                tracing::info!(
                    machine = %plan.name,
                    "systemd-machined is not on this host (Debian's systemd-container package); machine \"{}\" is not registered",
                    plan.name
                );
            }
            there
        }
        _ => {
            if plan.register {
                tracing::info!(
                    machine = %plan.name,
                    "no D-Bus system bus on this host; machine \"{}\" is not registered with systemd-machined",
                    plan.name
                );
            }
            false
        }
    };
    let placement = if plan.keep_unit {
        Placement::Unit
    } else if machined && crate::bus::systemd_booted() {
        Placement::SystemdScope
    } else {
        Placement::Own
    };
    if placement == Placement::Unit && bus.is_none() && !crate::resources::cgroup_files(&plan.resources).is_empty() {
        // The unit's own cgroup files are systemd's: it would reset them.
        anyhow::bail!(
            "machine \"{}\": [Resources] under a unit are set through systemd's D-Bus, and this host has no system bus",
            plan.name
        );
    }
    let registration = crate::bus::Registration {
        name: plan.name.to_string(),
        id: crate::bus::id_bytes(&child.machine_id),
        leader: 0,
        root_directory: child.tree.show("/"),
        ifindices: vec![],
    };
    let unit_name = own_cgroup.rsplit('/').next().unwrap_or_default().to_string();
    // The journal link lives as long as the machine runs (a machine that
    // cannot write its tree keeps no journal there to link).
    let journal_link = if child.files.writes_tree() {
        crate::rootfs::link_guest_journal(&child.tree, child.link_journal, &child.machine_id)
            .map_err(|e| anyhow::anyhow!("machine \"{}\": {e}", plan.name))?
    } else {
        None
    };
    let unit = match placement {
        Placement::Unit => unit_name.clone(),
        Placement::SystemdScope | Placement::Own => cgroup::scope_name(&plan.name),
    };
    let record = crate::state::Record {
        name: plan.name.to_string(),
        leader: 0,
        supervisor: std::process::id() as i32,
        since: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
        tree: child.tree.show("/"),
        unit,
        links: crate::net::host_ifname(plan.name.as_str(), &child.network.host_side)
            .into_iter()
            .collect(),
        private_network: child.network.private,
    };
    let result = run_boots(
        plan,
        &child,
        &sfd,
        pty.as_ref(),
        RunContext {
            bus: &bus,
            machined,
            placement,
            registration: &registration,
            unit_name: &unit_name,
            cg_mount: &cg_mount,
            own_cgroup: &own_cgroup,
            record,
        },
    );
    crate::state::remove(Path::new(crate::lock::LOCK_DIR), plan.name.as_str());
    if let Some(link) = journal_link {
        let _ = std::fs::remove_file(link);
    }
    result
}

struct RunContext<'a> {
    bus: &'a Option<std::rc::Rc<crate::bus::SystemBus>>,
    machined: bool,
    placement: Placement,
    registration: &'a crate::bus::Registration,
    unit_name: &'a str,
    cg_mount: &'a Path,
    own_cgroup: &'a str,
    /// What `berth list` reads, written at each boot.
    record: crate::state::Record,
}

/// Boot the machine again and again until it ends for good.
fn run_boots(
    plan: &Plan,
    child: &ChildSpec,
    sfd: &SignalFd,
    pty: Option<&Pty>,
    cx: RunContext<'_>,
) -> anyhow::Result<i32> {
    let RunContext {
        bus,
        machined,
        placement,
        registration,
        unit_name,
        cg_mount,
        own_cgroup,
        mut record,
    } = cx;

    let host_id = crate::tree::host_machine_id().unwrap_or_default();
    loop {
        // The parent steps, in order, between clone and Go.
        let mut steps: Vec<Box<dyn ParentStep>> = Vec::new();
        let links = crate::net::LinkIndexes::default();
        // The network before the registration, which names its links.
        let mut network: Vec<Box<dyn ParentStep>> = Vec::new();
        if child.network.private {
            network.push(Box::new(crate::net::NetworkStep::new(
                plan.name.as_str(),
                child.network.clone(),
                &host_id,
                Path::new(crate::lock::LOCK_DIR),
                links.clone(),
            )));
        }
        if child.network.has_veth() {
            network.push(Box::new(crate::net::PortsStep::new(plan.name.as_str(), &child.network)));
        }
        let cg = match placement {
            Placement::SystemdScope => None,
            Placement::Unit | Placement::Own => {
                Some(cgroup::prepare(cg_mount, own_cgroup, plan.keep_unit, &plan.name)?)
            }
        };
        match (&cg, &bus) {
            (Some(cg), Some(bus)) if placement == Placement::Unit => {
                steps.push(Box::new(MoveToCgroup {
                    cgroup: cg.payload.clone(),
                }));
                steps.extend(network);
                steps.push(Box::new(UnitLimits {
                    bus: bus.clone(),
                    unit: unit_name.to_string(),
                    properties: crate::resources::all_unit_properties(&plan.resources),
                    limited: !crate::resources::unit_properties(&plan.resources).is_empty(),
                }));
                if machined {
                    steps.push(Box::new(RegisterMachine {
                        bus: bus.clone(),
                        registration: registration.clone(),
                        links: links.clone(),
                        registered: false,
                    }));
                }
            }
            (Some(cg), _) => {
                // Standalone, nothing else restricts the machine's devices
                // (a unit has DevicePolicy=, see `devices`): first, before
                // the init leaves its wait for Go.
                if placement == Placement::Own {
                    steps.push(Box::new(DevicePolicy {
                        cgroup: cg.limits.clone(),
                    }));
                }
                steps.push(Box::new(MoveToCgroup {
                    cgroup: cg.payload.clone(),
                }));
                steps.extend(network);
                steps.push(Box::new(CgroupLimits {
                    cgroup: cg.limits.clone(),
                    files: crate::resources::cgroup_files(&plan.resources),
                }));
            }
            (None, Some(bus)) => {
                steps.extend(network);
                steps.push(Box::new(CreateMachine {
                    bus: bus.clone(),
                    registration: registration.clone(),
                    properties: scope_properties(plan),
                    links: links.clone(),
                    mount: cg_mount.to_path_buf(),
                    scope: None,
                }))
            }
            (None, None) => unreachable!("a systemd scope needs the bus"),
        }
        // Last: the machine's cgroup is where the steps above put it.
        if let Some(range) = child.users {
            steps.push(Box::new(crate::userns::UserNamespace {
                range,
                tree: child.tree.clone(),
                files: child.files.clone(),
                console: child.console.clone(),
                link_journal: child.link_journal,
                machine_id: child.machine_id.clone(),
                cgroup_mount: cg_mount.to_path_buf(),
            }));
        }
        let mut setup = ParentSetup::new(steps);
        let payload = cg.as_ref().map(|c| c.payload.as_path());
        let outcome = boot_once(plan, child, payload, &mut setup, sfd, pty, &mut record);
        // The machine is gone (or never came): what the steps set up is
        // undone, last first, and its cgroup goes too.
        setup.undo_all();
        let removed = cg.as_ref().map_or(Ok(()), |c| c.remove());
        let outcome = outcome?;
        removed?;
        match outcome.reason.next(plan.keep_unit, outcome.stopping) {
            Next::Exit(code) => return Ok(code),
            Next::BootAgain => {
                notify::upstream(false, Some(&format!("Rebooting machine {}", plan.name)));
                continue;
            }
        }
    }
}

/// Clone the init, run the parent steps, let it go, and supervise it until
/// it ends. A failed step kills the pending child (`Pending` on drop).
/// The properties of the scope machined makes for a machine started from a
/// shell: what machine@.service says for a unit.
fn scope_properties(plan: &Plan) -> Vec<(&'static str, zbus::Variant<'static>)> {
    use zbus::Variant;
    let mut p: Vec<(&'static str, Variant<'static>)> = vec![
        ("Description", Variant::from(format!("Machine {} (berth)", plan.name))),
        ("Delegate", Variant::from(true)),
        ("DevicePolicy", Variant::from("closed")),
        (
            "DeviceAllow",
            Variant::from(crate::devices::SYSTEMD_DEVICE_ALLOW.to_vec()),
        ),
        ("TasksMax", Variant::from(cgroup::TASKS_MAX as u64)),
    ];
    // As nspawn's scope: stopping it (machinectl terminate) sends the
    // init's halt signal to the leader alone, the rest is killed at the
    // timeout.
    if let crate::halt::Halt::Signal(sig) = plan.halt {
        p.push(("KillMode", Variant::from("mixed")));
        p.push(("KillSignal", Variant::from(sig)));
    }
    let limits = crate::resources::unit_properties(&plan.resources);
    p.retain(|(n, _)| !limits.iter().any(|(l, _)| l == n));
    p.extend(limits);
    p
}

fn boot_once(
    plan: &Plan,
    child: &ChildSpec,
    cgroup: Option<&Path>,
    setup: &mut ParentSetup,
    sfd: &SignalFd,
    pty: Option<&Pty>,
    record: &mut crate::state::Record,
) -> anyhow::Result<Outcome> {
    let pending = spawn::start(child, cgroup)?;
    let fds = setup
        .run(pending.handle())
        .map_err(|e| anyhow::Error::from(e).context(format!("machine \"{}\"", plan.name)))?;
    let (leader, chan) = pending.go(fds)?;
    record.leader = leader.as_raw();
    if let Err(e) = crate::state::write(Path::new(crate::lock::LOCK_DIR), record) {
        tracing::warn!(machine = %plan.name, "cannot write machine \"{}\"'s record for berth list: {e}", plan.name);
    }
    Boot::new(plan, leader, chan, sfd, pty).run()
}

struct Outcome {
    reason: ExitReason,
    stopping: bool,
}

/// The state of one boot.
struct Boot<'a> {
    plan: &'a Plan,
    leader: Pid,
    chan: Option<Channel>,
    notify: Option<OwnedFd>,
    sfd: &'a SignalFd,
    pty: Option<&'a Pty>,
    stop_requests: u32,
    aborted: bool,
    ready_sent: bool,
    setup_error: Option<String>,
    escape: EscapeDetector,
    stdin_open: bool,
    forward_output: bool,
}

impl<'a> Boot<'a> {
    fn new(plan: &'a Plan, leader: Pid, chan: Channel, sfd: &'a SignalFd, pty: Option<&'a Pty>) -> Self {
        Boot {
            plan,
            leader,
            chan: Some(chan),
            notify: None,
            sfd,
            pty,
            stop_requests: 0,
            aborted: false,
            ready_sent: false,
            setup_error: None,
            escape: EscapeDetector::default(),
            stdin_open: plan.console == ConsoleMode::Interactive,
            forward_output: matches!(plan.console, ConsoleMode::Interactive | ConsoleMode::ReadOnly),
        }
    }

    fn run(mut self) -> anyhow::Result<Outcome> {
        notify::upstream(false, Some(&format!("Booting machine {}", self.plan.name)));
        // Under a unit with WatchdogSec=, berth tells systemd it is alive
        // from this loop, at half the interval.
        let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
        let mut next_ping = Instant::now();
        loop {
            let timeout = match watchdog {
                Some(every) => {
                    let now = Instant::now();
                    if now >= next_ping {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                        next_ping = now + every;
                    }
                    let left = next_ping.saturating_duration_since(now);
                    PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
                }
                None => PollTimeout::NONE,
            };
            let stdin = std::io::stdin();
            let mut sources: Vec<(Source, BorrowedFd)> = vec![(Source::Signal, self.sfd.as_fd())];
            if let Some(c) = &self.chan {
                sources.push((Source::Channel, c.fd()));
            }
            if let Some(n) = &self.notify {
                sources.push((Source::Notify, n.as_fd()));
            }
            if let Some(p) = self.pty {
                sources.push((Source::Console, p.master.as_fd()));
                if self.stdin_open {
                    sources.push((Source::Stdin, stdin.as_fd()));
                }
            }
            let mut fds: Vec<PollFd> = sources
                .iter()
                .map(|(_, fd)| PollFd::new(*fd, PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, timeout) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => r.context("waiting for events")?,
            };
            let ready: Vec<Source> = sources
                .iter()
                .zip(&fds)
                .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|((s, _), _)| *s)
                .collect();
            drop(fds);
            for source in ready {
                if let Some(outcome) = self.handle(source)? {
                    return Ok(outcome);
                }
            }
        }
    }

    fn handle(&mut self, source: Source) -> anyhow::Result<Option<Outcome>> {
        match source {
            Source::Signal => {
                while let Ok(Some(info)) = self.sfd.read_signal() {
                    if let Some(outcome) = self.on_signal(info.ssi_signo as i32)? {
                        return Ok(Some(outcome));
                    }
                }
            }
            Source::Channel => self.on_channel()?,
            Source::Notify => self.on_notify(),
            Source::Console => self.copy_console_output(),
            Source::Stdin => self.copy_input(),
        }
        Ok(None)
    }

    fn on_signal(&mut self, signo: i32) -> anyhow::Result<Option<Outcome>> {
        match Signal::try_from(signo) {
            Ok(Signal::SIGCHLD) => {
                let status = match waitpid(self.leader, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => return Ok(None),
                    Ok(s) => s,
                };
                let Some(mut reason) = ExitReason::from_wait(status) else {
                    return Ok(None);
                };
                // The child is gone, so its channel holds everything it sent
                // (a setup failure above all): read it before deciding.
                while self.chan.is_some() {
                    self.on_channel()?;
                }
                self.copy_console_output();
                if let Some(msg) = self.setup_error.take() {
                    bail!("machine \"{}\": setting up: {msg}", self.plan.name);
                }
                if self.aborted {
                    reason = ExitReason::Aborted;
                }
                return Ok(Some(Outcome {
                    reason,
                    stopping: self.stop_requests > 0,
                }));
            }
            Ok(Signal::SIGTERM | Signal::SIGINT) => {
                self.stop_requests += 1;
                // Before the init runs, a polite signal would be lost: kill.
                let polite = self.stop_requests == 1 && self.chan.is_none();
                if !polite {
                    let _ = crate::sys::send_signal(self.leader.as_raw(), libc::SIGKILL);
                    return Ok(None);
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                match self.plan.halt {
                    crate::halt::Halt::Signal(sig) => {
                        let _ = crate::sys::send_signal(self.leader.as_raw(), sig);
                    }
                    crate::halt::Halt::Initctl => {
                        if let Err(e) = crate::halt::request_halt(self.leader) {
                            // Not sysvinit after all (runit, a wrapper that
                            // execs systemd...): the signal systemd and
                            // many others understand.
                            tracing::warn!(
                                machine = %self.plan.name,
                                "cannot ask machine \"{}\"'s init to halt through /run/initctl ({e}); sending SIGRTMIN+3",
                                self.plan.name
                            );
                            let _ = crate::sys::send_signal(self.leader.as_raw(), crate::signals::rtmin_plus(3));
                        }
                    }
                }
            }
            Ok(Signal::SIGWINCH) => {
                if let Some(p) = self.pty {
                    console::copy_window_size(std::io::stdin().as_fd(), p.master.as_fd());
                }
            }
            _ => {} // SIGHUP: berth's terminal went away; the machine goes on.
        }
        Ok(None)
    }

    fn on_channel(&mut self) -> anyhow::Result<()> {
        let Some(chan) = &self.chan else { return Ok(()) };
        match chan.recv_from_child() {
            Ok(Some(ToParent::NotifySocket(fd))) => self.notify = Some(fd),
            Ok(Some(ToParent::Failed(msg))) => {
                self.setup_error = Some(msg);
                self.chan = None;
            }
            Ok(Some(ToParent::Started)) | Ok(None) => {
                self.chan = None;
                if !self.plan.notify_ready || self.notify.is_none() {
                    self.send_ready(None);
                }
            }
            Err(e) => {
                self.chan = None;
                self.setup_error = Some(e.to_string());
            }
        }
        Ok(())
    }

    fn on_notify(&mut self) {
        let Some(sock) = self.notify.take() else { return };
        while let Ok((pid, text)) = notify::receive(&sock) {
            // Only the machine's PID 1 speaks for the machine.
            if pid != Some(self.leader.as_raw()) {
                continue;
            }
            let msg = notify::parse(&text);
            if msg.ready && self.plan.notify_ready {
                self.send_ready(msg.status.as_deref());
            } else if let Some(status) = msg.status.as_deref() {
                notify::upstream(false, Some(status));
            }
        }
        self.notify = Some(sock);
    }

    fn send_ready(&mut self, status: Option<&str>) {
        if !self.ready_sent {
            self.ready_sent = true;
            let default = format!("Machine {} running", self.plan.name);
            notify::upstream(true, Some(status.unwrap_or(&default)));
        }
    }

    fn copy_console_output(&mut self) {
        let Some(p) = self.pty else { return };
        let mut buf = [0u8; 65536];
        // At most 1 MiB a turn: a machine flooding its console must not
        // starve signals, readiness or the watchdog of the loop.
        for _ in 0..16 {
            let mut fds = [PollFd::new(p.master.as_fd(), PollFlags::POLLIN)];
            if !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0) {
                return;
            }
            let n = match read(p.master.as_fd(), &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if self.forward_output {
                let mut out = std::io::stdout().lock();
                if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                    self.forward_output = false; // stdout is gone: keep draining
                }
            }
        }
    }

    fn copy_input(&mut self) {
        let Some(p) = self.pty else { return };
        let mut buf = [0u8; 4096];
        let n = match read(std::io::stdin().as_fd(), &mut buf) {
            Ok(0) | Err(_) => {
                self.stdin_open = false;
                return;
            }
            Ok(n) => n,
        };
        if self.escape.feed(&buf[..n], Instant::now()) {
            eprint!("\r\nberth: machine {} killed from the console\r\n", self.plan.name);
            self.aborted = true;
            let _ = crate::sys::send_signal(self.leader.as_raw(), libc::SIGKILL);
            return;
        }
        let _ = nix::unistd::write(&p.master, &buf[..n]);
    }
}

#[derive(Clone, Copy, Debug)]
enum Source {
    Signal,
    Channel,
    Notify,
    Console,
    Stdin,
}
