//! `berth boot` and `berth run`: check all input first (nothing on the
//! host is touched until every check passed), then hand a plan to the
//! supervisor. Both go through one path: settings -> `MachineSpec` ->
//! `ChildSpec`.

use std::path::Path;

use anyhow::{anyhow, bail};

use crate::cli::{BootArgs, MachineArgs, RunArgs};
use crate::config::keys::KeyDef;
use crate::config::value::Value;
use crate::config::{self, Origin, Settings, Sourced};
use crate::console::ConsoleMode;
use crate::halt::Halt;
use crate::lock;
use crate::name::MachineName;
use crate::signals;
use crate::spawn::{ChildSpec, Payload};
use crate::spec::{LinkJournal, MachineSpec, PrivateUsers};
use crate::supervisor::{self, Plan};
use crate::tree::{self, Tree};

const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

type Flags = [(&'static KeyDef, Vec<String>)];

pub fn boot(args: BootArgs, flags: &Flags) -> anyhow::Result<i32> {
    let (name, root) = tree::resolve_name(args.machine.name.as_deref(), args.machine.directory.as_deref())?;
    crate::log::set_machine(name.as_str());
    let mut settings = config::load_with(
        name.as_str(),
        &root,
        args.machine.config.as_deref(),
        flags,
        args.machine.flags_are_defaults,
    )?;
    if !args.args.is_empty() {
        let def = config::keys::find("Exec", "Parameters").expect("in the table");
        settings.set(
            def,
            Sourced {
                value: Value::Words(args.args.clone()),
                origin: Origin::CommandLine,
            },
        );
    }
    let spec = machine_spec(&name, &settings)?;
    let (tree, console) = open_machine(name, root, &args.machine, "boot", spec.exec.boot)?;
    let planned = plan_child(&tree, console, &spec, None)?;
    start(tree, console, planned, &args.machine, spec.resources)
}

/// `berth run`: the machine's settings file applies as for `boot` (its
/// binds, ReadOnly=, DropCapability=, Inaccessible=...), but the command
/// comes from the command line and runs under berth's stub init.
pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    let (name, root) = tree::resolve_name(args.machine.name.as_deref(), args.machine.directory.as_deref())?;
    crate::log::set_machine(name.as_str());
    let settings = config::load(name.as_str(), &root, args.machine.config.as_deref(), &[])?;
    let spec = machine_spec(&name, &settings)?;
    let (tree, console) = open_machine(name, root, &args.machine, "run", false)?;
    let mut planned = plan_child(&tree, console, &spec, Some(args.command))?;
    planned.notify_ready = false;
    start(tree, console, planned, &args.machine, spec.resources)
}

fn machine_spec(name: &MachineName, settings: &Settings) -> anyhow::Result<MachineSpec> {
    let spec = MachineSpec::from_settings(settings).map_err(|e| anyhow!("machine \"{name}\": {e}"))?;
    check_host_network(name, settings, &spec)?;
    Ok(spec)
}

/// What the host must have for the machine's network, checked before
/// anything is made: the bridge of Bridge=.
pub fn check_host_network(name: &MachineName, settings: &Settings, spec: &MachineSpec) -> anyhow::Result<()> {
    if let crate::spec::HostSide::Bridge(bridge) = &spec.network.host_side {
        if let Err(e) = crate::net::check_bridge(bridge) {
            let origin = settings
                .all("Network", "Bridge")
                .last()
                .map(|s| s.origin.to_string())
                .unwrap_or_default();
            bail!("machine \"{name}\": {origin}: [Network] Bridge={bridge}: {e}");
        }
    }
    Ok(())
}

struct Planned {
    child: ChildSpec,
    notify_ready: bool,
    halt: Halt,
    private_users: PrivateUsers,
}

/// What the machine's PID 1 gets, from the typed spec and the tree.
/// `command`: `berth run`'s command (else the spec says what runs).
fn plan_child(
    tree: &Tree,
    console: ConsoleMode,
    spec: &MachineSpec,
    command: Option<Vec<String>>,
) -> anyhow::Result<Planned> {
    let host_id = tree::host_machine_id();
    let uuid = tree.container_uuid(host_id.as_deref())?;
    let machine_id = uuid.replace('-', "");
    // Every mode links /var/log/journal/ID on the host with the machine's:
    // the host's own id would mean the host's own journal.
    if spec.exec.link_journal != LinkJournal::No && host_id.as_deref() == Some(machine_id.as_str()) {
        bail!(
            "machine \"{}\": LinkJournal= would bind the host's own journal into the machine: the tree's /etc/machine-id {machine_id} is the host's (give the tree an id of its own, or set LinkJournal=no)",
            tree.name
        );
    }
    let exec = &spec.exec;
    let mut env = base_env(&uuid, console);
    let root_env = ["HOME=/root", "USER=root", "LOGNAME=root"].map(String::from);
    let payload = match command {
        Some(argv) => {
            env.extend(root_env);
            Payload::Command { argv }
        }
        None if exec.boot => {
            let init = tree.find_init(exec.init.as_deref())?;
            env.push(format!("NOTIFY_SOCKET={}", crate::rootfs::NOTIFY_SOCKET));
            Payload::Init {
                path: init,
                args: exec.parameters.clone(),
            }
        }
        None => {
            if exec.parameters.is_empty() {
                bail!(
                    "machine \"{}\": Boot=no needs Parameters= (the command to run)",
                    tree.name
                );
            }
            env.extend(root_env);
            Payload::Command {
                argv: exec.parameters.clone(),
            }
        }
    };
    for e in &exec.environment {
        set_env(&mut env, e);
    }
    let is_init = matches!(payload, Payload::Init { .. });
    // How the init is asked to halt: KillSignal= if set; systemd's
    // SIGRTMIN+3; sysvinit's runlevel 0 (see halt.rs); a command's SIGTERM.
    let halt = match (exec.kill_signal, &payload) {
        (Some(sig), _) => Halt::Signal(sig),
        (None, Payload::Init { path, .. }) if crate::halt::is_systemd(&tree.dir(), path) => {
            Halt::Signal(signals::rtmin_plus(3))
        }
        (None, Payload::Init { .. }) => Halt::Initctl,
        (None, Payload::Command { .. }) => Halt::Signal(libc::SIGTERM),
    };
    let mut user = None;
    if let Some((name, origin)) = &exec.user {
        if is_init {
            bail!(
                "machine \"{}\": {origin}: User= applies with Boot=no (a booted init runs as root)",
                tree.name
            );
        }
        let creds = tree.lookup_user(name)?;
        for (var, value) in [("HOME", &creds.home), ("USER", &creds.name), ("LOGNAME", &creds.name)] {
            set_env(&mut env, &format!("{var}={value}"));
        }
        user = Some(creds);
    }
    let kept_caps = spec.kept_capabilities();
    if kept_caps.contains(&caps::Capability::CAP_NET_ADMIN) && exec.private_users == PrivateUsers::No {
        tracing::warn!(
            machine = %tree.name,
            "machine \"{}\" keeps CAP_NET_ADMIN without a user namespace of its own: its root can change the host's network{}",
            tree.name,
            if spec.network.private { " too (the veth pair's peer namespace is the host's)" } else { "" }
        );
    }
    // Without a user namespace, mount namespaces only inside a new one (see
    // `rootfs::lock_mounts`).
    let confine_mounts = exec.private_users == PrivateUsers::No;
    let seccomp = crate::seccomp::Filter::new(&crate::seccomp::Policy::new(
        &kept_caps,
        &exec.system_call_filter,
        confine_mounts,
    ));
    let child = ChildSpec {
        tree: tree.dir(),
        hostname: exec.hostname.clone().unwrap_or_else(|| tree.name.to_string()),
        machine_id,
        console: None,
        payload,
        env,
        kept_caps,
        working_directory: exec.working_directory.clone(),
        resolv_conf: exec.resolv_conf,
        files: spec.files.clone(),
        seccomp,
        user,
        link_journal: exec.link_journal,
        timezone: exec.timezone,
        network: spec.network.clone(),
        // Claimed at start (`start`), held while the machine runs.
        users: None,
    };
    Ok(Planned {
        child,
        notify_ready: is_init && exec.notify_ready,
        halt,
        private_users: exec.private_users,
    })
}

/// Set NAME=VALUE in an environment list, replacing an earlier NAME.
fn set_env(env: &mut Vec<String>, assignment: &str) {
    let name = assignment.split('=').next().unwrap_or_default();
    env.retain(|e| e.split('=').next() != Some(name));
    env.push(assignment.to_string());
}

/// Input checks shared by boot and run, in the order a user fixes them.
fn open_machine(
    name: MachineName,
    root: std::path::PathBuf,
    m: &MachineArgs,
    verb: &str,
    boot: bool,
) -> anyhow::Result<(Tree, ConsoleMode)> {
    if !nix::unistd::geteuid().is_root() {
        bail!("berth {verb} must be run as root (it creates namespaces, mounts and cgroups)");
    }
    let tree = Tree::open(name, root)?;
    let console = m
        .console
        .unwrap_or_else(|| ConsoleMode::default_for(boot, crate::console::on_terminal()));
    Ok((tree, console))
}

fn base_env(container_uuid: &str, console: ConsoleMode) -> Vec<String> {
    let term = match console {
        ConsoleMode::Interactive => std::env::var("TERM").unwrap_or_else(|_| "vt220".into()),
        ConsoleMode::Pipe => "dumb".into(),
        _ => "vt220".into(),
    };
    vec![
        PATH.to_string(),
        "container=berth".to_string(),
        format!("container_uuid={container_uuid}"),
        format!("TERM={term}"),
    ]
}

fn start(
    tree: Tree,
    console: ConsoleMode,
    planned: Planned,
    machine: &MachineArgs,
    resources: crate::spec::Resources,
) -> anyhow::Result<i32> {
    let mut child = planned.child;
    // Held until berth exits; the kernel drops them even on SIGKILL. A
    // machine that cannot write its tree shares it with other such machines.
    let access = if child.files.writes_tree() {
        lock::TreeAccess::Exclusive
    } else {
        lock::TreeAccess::Shared
    };
    let identity = tree.dir().identity()?;
    let _locks = lock::acquire_machine(Path::new(lock::LOCK_DIR), &tree.name, &tree.root, identity, access)?;
    if !tree::shut_to_others(&tree.root) {
        tracing::warn!(
            machine = %tree.name,
            "machine \"{}\": its tree {} lies where host users other than root can reach it; the tree keeps the host's IDs on disk, so a setuid-root program the machine's root makes there is one for them too: keep trees under a directory only root may enter (/var/lib/machines is 0700)",
            tree.name,
            tree.root.display()
        );
    }
    let claim = crate::userns::claim(tree.name.as_str(), planned.private_users, Path::new(lock::LOCK_DIR))?;
    child.users = claim.as_ref().map(|c| c.range);
    let plan = Plan {
        name: tree.name.clone(),
        child,
        console,
        notify_ready: planned.notify_ready,
        halt: planned.halt,
        keep_unit: machine.keep_unit,
        register: machine.register,
        resources,
    };
    supervisor::run(&plan)
}
