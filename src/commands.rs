//! `berth boot` and `berth run`: check all input first (nothing on the host
//! is touched until every check passed), then hand a plan to the supervisor.

use std::path::Path;

use anyhow::bail;

use crate::cli::{BootArgs, MachineArgs, RunArgs, YesNo};
use crate::console::ConsoleMode;
use crate::lock;
use crate::signals;
use crate::spawn::{ChildSpec, Payload};
use crate::supervisor::{self, Plan};
use crate::tree::{self, Tree};

const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn boot(args: BootArgs) -> anyhow::Result<i32> {
    let kill_signal = match &args.kill_signal {
        Some(s) => signals::parse(s)?,
        None => signals::rtmin_plus(3),
    };
    let (tree, console) = open_machine(&args.machine, "boot", true)?;
    let init = tree.find_init(args.init.as_deref())?;
    let mut env = base_env(&tree, console);
    env.push(format!("NOTIFY_SOCKET={}", crate::rootfs::NOTIFY_SOCKET));
    let payload = Payload::Init {
        path: init,
        args: args.args,
    };
    start(
        tree,
        console,
        payload,
        env,
        args.notify_ready == YesNo::Yes,
        kill_signal,
        args.machine.keep_unit,
    )
}

pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    let (tree, console) = open_machine(&args.machine, "run", false)?;
    let mut env = base_env(&tree, console);
    env.extend(["HOME=/root", "USER=root", "LOGNAME=root"].map(String::from));
    let payload = Payload::Command { argv: args.command };
    start(
        tree,
        console,
        payload,
        env,
        false,
        libc::SIGTERM,
        args.machine.keep_unit,
    )
}

/// Input checks shared by boot and run, in the order a user fixes them.
fn open_machine(m: &MachineArgs, verb: &str, boot: bool) -> anyhow::Result<(Tree, ConsoleMode)> {
    let (name, root) = tree::resolve_name(m.name.as_deref(), m.directory.as_deref())?;
    if !nix::unistd::geteuid().is_root() {
        bail!("berth {verb} must be run as root (it creates namespaces, mounts and cgroups)");
    }
    let tree = Tree::open(name, root)?;
    let console = m
        .console
        .unwrap_or_else(|| ConsoleMode::default_for(boot, supervisor::stdin_is_terminal()));
    Ok((tree, console))
}

fn base_env(tree: &Tree, console: ConsoleMode) -> Vec<String> {
    let term = match console {
        ConsoleMode::Interactive => std::env::var("TERM").unwrap_or_else(|_| "vt220".into()),
        ConsoleMode::Pipe => "dumb".into(),
        _ => "vt220".into(),
    };
    vec![
        PATH.to_string(),
        "container=berth".to_string(),
        format!(
            "container_uuid={}",
            tree.container_uuid(supervisor::host_machine_id().as_deref())
        ),
        format!("TERM={term}"),
    ]
}

fn start(
    tree: Tree,
    console: ConsoleMode,
    payload: Payload,
    env: Vec<String>,
    notify_ready: bool,
    kill_signal: libc::c_int,
    keep_unit: bool,
) -> anyhow::Result<i32> {
    // Held until berth exits; the kernel drops it even on SIGKILL.
    let _lock = lock::acquire(Path::new(lock::LOCK_DIR), &tree.name)?;
    if let Some(notice) = supervisor::registration_notice(&tree.name) {
        eprintln!("{notice}");
    }
    let plan = Plan {
        name: tree.name.clone(),
        child: ChildSpec {
            root: tree.root.clone(),
            hostname: tree.name.to_string(),
            console: None,
            payload,
            env,
        },
        console,
        notify_ready,
        kill_signal,
        keep_unit,
    };
    supervisor::run(&plan)
}
