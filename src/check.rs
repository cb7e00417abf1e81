//! `berth check`: a machine's effective settings, each with where it came
//! from (a file and line, a flag, or the key table's default), without
//! booting anything.

use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::cli::CheckArgs;
use crate::config::keys::{KeyDef, KEYS};
use crate::config::{self, Settings};
use crate::name::MachineName;
use crate::tree;

type Flags = [(&'static KeyDef, Vec<String>)];

/// One line of the answer.
struct Row {
    def: &'static KeyDef,
    value: String,
    origin: String,
}

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
    // The checks a start makes before it changes anything.
    let spec =
        crate::spec::MachineSpec::from_settings(&settings).map_err(|e| anyhow::anyhow!("machine \"{name}\": {e}"))?;
    crate::commands::check_host_network(&name, &settings, &spec)?;
    let rows = rows(&settings, &name);
    let notes = notes(&spec);

    if args.json {
        let json = serde_json::json!({
            "machine": name.as_str(),
            "file": settings.file.as_ref().map(|f| serde_json::json!({"path": f.path, "trusted": f.trusted})),
            "settings": rows.iter().map(|r| serde_json::json!({
                "section": r.def.section,
                "key": r.def.key,
                "value": r.value,
                "origin": r.origin,
                "description": r.def.description,
            })).collect::<Vec<_>>(),
            "notes": notes,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(0);
    }
    print!("{}", text(&settings, &name, &rows));
    for n in &notes {
        println!("# note: {n}");
    }
    Ok(0)
}

/// What an admin should know about the settings as a whole.
fn notes(spec: &crate::spec::MachineSpec) -> Vec<String> {
    let mut notes = Vec::new();
    if spec.exec.private_users == crate::spec::PrivateUsers::No {
        notes.push(
            "PrivateUsers=no: the machine's root is the host's root (no user namespace); \
             berth's masks and filters are all that stand between it and the host, and they \
             do not stop it mounting the host's devtmpfs, debugfs or tracefs: use it only \
             for a trusted tree"
                .to_string(),
        );
    }
    if spec.exec.private_users != crate::spec::PrivateUsers::No && !spec.network.private {
        notes.push(
            "the machine shares the host's network from a user namespace of its own: its services \
             cannot bind ports below 1024 there (the network namespace is the host's); give it \
             VirtualEthernet= with Port=, or lower net.ipv4.ip_unprivileged_port_start on the host"
                .to_string(),
        );
    }
    notes
}

/// Every value set, in table order, and the default of each key nobody set.
fn rows(settings: &Settings, name: &MachineName) -> Vec<Row> {
    let mut rows = Vec::new();
    for def in KEYS {
        let set = settings.all(def.section, def.key);
        for s in set {
            rows.push(Row {
                def,
                value: s.value.to_string(),
                origin: s.origin.to_string(),
            });
        }
        if set.is_empty() {
            let default = match (def.section, def.key) {
                ("Exec", "Hostname") => Some(name.as_str()),
                _ => def.default,
            };
            if let Some(d) = default {
                rows.push(Row {
                    def,
                    value: d.into(),
                    origin: "default".into(),
                });
            }
        }
    }
    rows
}

fn text(settings: &Settings, name: &MachineName, rows: &[Row]) -> String {
    let mut out = match &settings.file {
        Some(f) => format!(
            "# machine {name}: settings from {} ({})\n",
            f.path.display(),
            if f.trusted {
                "trusted"
            } else {
                "untrusted: next to the tree"
            }
        ),
        None => format!("# machine {name}: no settings file; defaults and flags only\n"),
    };
    let mut section = "";
    for r in rows {
        if r.def.section != section {
            if !section.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!("[{}]\n", r.def.section));
            section = r.def.section;
        }
        let line = format!("{}={}", r.def.key, r.value);
        out.push_str(&format!("{line:<40} # {}\n", r.origin));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_key_table() {
        let settings = Settings::default();
        let name = MachineName::parse("web").unwrap();
        let got = text(&settings, &name, &rows(&settings, &name));
        let expected = "# machine web: no settings file; defaults and flags only
[Exec]
Boot=yes                                 # default
Hostname=web                             # default
KillSignal=SIGRTMIN+3                    # default
NotifyReady=yes                          # default
ResolvConf=auto                          # default
Timezone=off                             # default
LinkJournal=no                           # default
WorkingDirectory=/                       # default
PrivateUsers=pick                        # default

[Files]
ReadOnly=no                              # default
Volatile=no                              # default

[Network]
Private=no                               # default
VirtualEthernet=no                       # default
";
        assert_eq!(got, expected);
    }

    #[test]
    fn a_set_value_replaces_the_default() {
        let mut settings = Settings::default();
        let mut errors = Vec::new();
        let boot = config::keys::find("Exec", "Boot").unwrap();
        let host = config::keys::find("Exec", "Hostname").unwrap();
        config::apply_flags(
            &mut settings,
            &[(boot, vec!["no".into()]), (host, vec!["db".into()])],
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let name = MachineName::parse("web").unwrap();
        let rows = rows(&settings, &name);
        let of = |key: &str| -> Vec<(String, String)> {
            rows.iter()
                .filter(|r| r.def.key == key)
                .map(|r| (r.value.clone(), r.origin.clone()))
                .collect()
        };
        assert_eq!(of("Boot"), [("no".to_string(), "--boot".to_string())]);
        assert_eq!(of("Hostname"), [("db".to_string(), "--hostname".to_string())]);
        assert_eq!(of("NotifyReady"), [("yes".to_string(), "default".to_string())]);
    }
}
