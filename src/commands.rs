//! `berth boot`, `berth run` and `berth check`: check all input first
//! (nothing on the host is touched until every check passed), then hand a
//! plan to the supervisor.

use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::cli::{BootArgs, CheckArgs, MachineArgs, RunArgs};
use crate::config::keys::KeyDef;
use crate::config::value::Value;
use crate::config::{self, Origin, Settings, Sourced};
use crate::console::ConsoleMode;
use crate::lock;
use crate::name::MachineName;
use crate::signals;
use crate::spawn::{ChildSpec, Files, LinkJournal, Payload, ResolvConf, Timezone, Volatile};
use crate::supervisor::{self, Plan};
use crate::tree::{self, Tree};

const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

type Flags = [(&'static KeyDef, Vec<String>)];

pub fn boot(args: BootArgs, flags: &Flags) -> anyhow::Result<i32> {
    let (name, root) = tree::resolve_name(args.machine.name.as_deref(), args.machine.directory.as_deref())?;
    let mut settings = config::load(name.as_str(), &root, args.machine.config.as_deref(), flags)?;
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
    refuse_unapplied(&name, &settings)?;
    let (tree, console) = open_machine(
        name,
        root,
        &args.machine,
        "boot",
        settings.bool("Exec", "Boot").unwrap_or(true),
    )?;

    let parameters = match settings.get("Exec", "Parameters").map(|s| &s.value) {
        Some(Value::Words(w)) => w.clone(),
        _ => vec![],
    };
    let uuid = tree.container_uuid(tree::host_machine_id().as_deref());
    let mut env = base_env(&uuid, console);
    let payload = if settings.bool("Exec", "Boot").unwrap_or(true) {
        let init = tree.find_init(settings.text("Exec", "Init").map(Path::new))?;
        env.push(format!("NOTIFY_SOCKET={}", crate::rootfs::NOTIFY_SOCKET));
        Payload::Init {
            path: init,
            args: parameters,
        }
    } else {
        if parameters.is_empty() {
            bail!(
                "machine \"{}\": Boot=no needs Parameters= (the command to run)",
                tree.name
            );
        }
        env.extend(["HOME=/root", "USER=root", "LOGNAME=root"].map(String::from));
        Payload::Command { argv: parameters }
    };
    for e in settings.all("Exec", "Environment") {
        set_env(&mut env, &e.value.to_string());
    }
    let kill_signal = match settings.get("Exec", "KillSignal").map(|s| &s.value) {
        Some(Value::Signal(s)) => *s,
        _ if matches!(payload, Payload::Init { .. }) => signals::rtmin_plus(3),
        _ => libc::SIGTERM,
    };
    let notify_ready = matches!(payload, Payload::Init { .. }) && settings.bool("Exec", "NotifyReady").unwrap_or(true);
    let mut spec = child_spec(&tree, &uuid, payload, env);
    spec.hostname = settings
        .text("Exec", "Hostname")
        .unwrap_or(tree.name.as_str())
        .to_string();
    spec.kept_caps = kept_capabilities(&settings);
    spec.working_directory = settings.text("Exec", "WorkingDirectory").map(PathBuf::from);
    if let Some(Value::Words(words)) = settings.get("Exec", "SystemCallFilter").map(|s| &s.value) {
        (spec.seccomp_allow, spec.seccomp_deny) = crate::seccomp::adjustments(words);
    }
    spec.link_journal = match settings.text("Exec", "LinkJournal") {
        Some("auto") => LinkJournal::Auto,
        Some("host") => LinkJournal::Host,
        Some("try-host") => LinkJournal::TryHost,
        _ => LinkJournal::No,
    };
    spec.timezone = match settings.text("Exec", "Timezone") {
        Some("auto") => Timezone::Auto,
        Some("bind") => Timezone::Bind,
        Some("copy") => Timezone::Copy,
        _ => Timezone::Off,
    };
    if let Some(user) = settings.get("Exec", "User") {
        if matches!(spec.payload, Payload::Init { .. }) {
            bail!(
                "machine \"{}\": {}: User= applies with Boot=no (a booted init runs as root)",
                tree.name,
                user.origin
            );
        }
        let creds = tree.lookup_user(&user.value.to_string())?;
        for (var, value) in [("HOME", &creds.home), ("USER", &creds.name), ("LOGNAME", &creds.name)] {
            set_env(&mut spec.env, &format!("{var}={value}"));
        }
        spec.user = Some(creds);
    }
    spec.resolv_conf = match settings.text("Exec", "ResolvConf") {
        Some("off") => ResolvConf::Off,
        Some("bind-host") => ResolvConf::BindHost,
        Some("copy-host") => ResolvConf::CopyHost,
        _ => ResolvConf::Auto,
    };
    spec.files = Files {
        read_only: settings.bool("Files", "ReadOnly").unwrap_or(false),
        volatile: match settings.text("Files", "Volatile") {
            Some("yes") => Volatile::Yes,
            Some("state") => Volatile::State,
            Some("overlay") => Volatile::Overlay,
            _ => Volatile::No,
        },
        binds: ["Bind", "BindReadOnly"]
            .iter()
            .flat_map(|k| settings.all("Files", k))
            .filter_map(|s| match &s.value {
                Value::Bind(b) => Some(b.clone()),
                _ => None,
            })
            .collect(),
        tmpfs: settings
            .all("Files", "TemporaryFileSystem")
            .iter()
            .filter_map(|s| match &s.value {
                Value::TmpFs { path, options } => Some((path.clone(), options.clone())),
                _ => None,
            })
            .collect(),
        inaccessible: settings
            .all("Files", "Inaccessible")
            .iter()
            .map(|s| s.value.to_string())
            .collect(),
    };
    start(tree, console, spec, notify_ready, kill_signal, args.machine.keep_unit)
}

pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    let (name, root) = tree::resolve_name(args.machine.name.as_deref(), args.machine.directory.as_deref())?;
    let (tree, console) = open_machine(name, root, &args.machine, "run", false)?;
    let uuid = tree.container_uuid(tree::host_machine_id().as_deref());
    let mut env = base_env(&uuid, console);
    env.extend(["HOME=/root", "USER=root", "LOGNAME=root"].map(String::from));
    let spec = child_spec(&tree, &uuid, Payload::Command { argv: args.command }, env);
    start(tree, console, spec, false, libc::SIGTERM, args.machine.keep_unit)
}

/// Keys this version parses and validates but cannot apply yet: refusing
/// them beats a machine that silently differs from its file.
fn refuse_unapplied(name: &MachineName, settings: &Settings) -> anyhow::Result<()> {
    let unsupported: &[(&str, &str, &[&str])] = &[("Exec", "PrivateUsers", &["no"])];
    let mut errors = Vec::new();
    for (section, key, fine) in unsupported {
        for s in settings.all(section, key) {
            let v = s.value.to_string();
            if !fine.contains(&v.as_str()) {
                errors.push(format!(
                    "machine \"{name}\": {}: [{section}] {key}={v} is not supported by this version of berth yet",
                    s.origin
                ));
            }
        }
    }
    for (def, s) in settings.entries() {
        if def.later {
            eprintln!(
                "berth: note: {}: [{}] {}={} is checked but not applied yet (machine \"{name}\")",
                s.origin, def.section, def.key, s.value
            );
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(config::ConfigError(errors).into())
    }
}

fn kept_capabilities(settings: &Settings) -> Vec<caps::Capability> {
    let mut kept: Vec<caps::Capability> = crate::caps::KEPT.to_vec();
    let names = |key| -> Vec<String> {
        settings
            .all("Exec", key)
            .iter()
            .flat_map(|s| match &s.value {
                Value::Words(w) => w.clone(),
                _ => vec![],
            })
            .collect()
    };
    for n in names("Capability") {
        if n == "all" {
            kept = caps::all().into_iter().collect();
        } else if let Ok(c) = n.parse() {
            if !kept.contains(&c) {
                kept.push(c);
            }
        }
    }
    for n in names("DropCapability") {
        if n == "all" {
            kept.clear();
        } else if let Ok(c) = n.parse::<caps::Capability>() {
            kept.retain(|k| *k != c);
        }
    }
    kept
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
    root: PathBuf,
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

fn child_spec(tree: &Tree, container_uuid: &str, payload: Payload, env: Vec<String>) -> ChildSpec {
    ChildSpec {
        root: tree.root.clone(),
        hostname: tree.name.to_string(),
        machine_id: container_uuid.replace('-', ""),
        console: None,
        payload,
        env,
        kept_caps: crate::caps::KEPT.to_vec(),
        working_directory: None,
        resolv_conf: ResolvConf::Auto,
        files: Files::default(),
        seccomp_allow: vec![],
        seccomp_deny: vec![],
        user: None,
        link_journal: LinkJournal::No,
        timezone: Timezone::Off,
    }
}

fn start(
    tree: Tree,
    console: ConsoleMode,
    child: ChildSpec,
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
        child,
        console,
        notify_ready,
        kill_signal,
        keep_unit,
    };
    supervisor::run(&plan)
}

/// Defaults shown by `berth check` for keys nobody set.
const DEFAULTS: &[(&str, &str, &str)] = &[
    ("Exec", "Boot", "yes"),
    ("Exec", "NotifyReady", "yes"),
    ("Exec", "KillSignal", "SIGRTMIN+3"),
    ("Exec", "ResolvConf", "auto"),
    ("Exec", "Timezone", "off"),
    ("Exec", "LinkJournal", "no"),
    ("Files", "ReadOnly", "no"),
    ("Files", "Volatile", "no"),
];

pub fn check(args: CheckArgs, flags: &Flags) -> anyhow::Result<i32> {
    let is_file = args.target.contains('/') || args.target.ends_with(".ini");
    let (name, explicit) = if is_file {
        let path = PathBuf::from(&args.target);
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        (
            MachineName::parse(&stem)?,
            Some(std::path::absolute(&path).unwrap_or(path)),
        )
    } else {
        (MachineName::parse(&args.target)?, None)
    };
    if let Some(p) = &explicit {
        if !p.exists() {
            bail!("{}: no such file", p.display());
        }
    }
    let root = args
        .directory
        .clone()
        .unwrap_or_else(|| Path::new(tree::MACHINES_DIR).join(name.as_str()));
    let settings = config::load(name.as_str(), &root, explicit.as_deref(), flags)?;

    let mut rows: Vec<(String, String, String, String)> = Vec::new(); // section, key, value, origin
    for def in config::keys::KEYS {
        let set = settings.all(def.section, def.key);
        for s in set {
            rows.push((
                def.section.into(),
                def.key.into(),
                s.value.to_string(),
                s.origin.to_string(),
            ));
        }
        if set.is_empty() {
            let default = match (def.section, def.key) {
                ("Exec", "Hostname") => Some(name.as_str()),
                (s, k) => DEFAULTS.iter().find(|d| d.0 == s && d.1 == k).map(|d| d.2),
            };
            if let Some(d) = default {
                rows.push((def.section.into(), def.key.into(), d.into(), "default".into()));
            }
        }
    }
    if args.json {
        let json = serde_json::json!({
            "machine": name.as_str(),
            "file": settings.file.as_ref().map(|f| serde_json::json!({"path": f.path, "trusted": f.trusted})),
            "settings": rows.iter().map(|(s, k, v, o)| serde_json::json!({"section": s, "key": k, "value": v, "origin": o})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(0);
    }
    match &settings.file {
        Some(f) => println!(
            "# machine {name}: settings from {} ({})",
            f.path.display(),
            if f.trusted {
                "trusted"
            } else {
                "untrusted: next to the tree"
            }
        ),
        None => println!("# machine {name}: no settings file; defaults and flags only"),
    }
    let mut section = "";
    for (s, k, v, o) in &rows {
        if s != section {
            println!("{}[{s}]", if section.is_empty() { "" } else { "\n" });
            section = s;
        }
        let line = format!("{k}={v}");
        println!("{line:<40} # {o}");
    }
    Ok(0)
}
