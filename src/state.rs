//! berth's own record of its running machines, and the commands that read
//! it: `berth list`, `berth status NAME` and `berth images`. They work
//! without systemd-machined: each running berth keeps
//! /run/berth/machines/NAME.json up to date (written at each boot, removed
//! at exit), and a record whose name lock nobody holds is a killed run's,
//! skipped (and removed).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::cli::{ListArgs, StatusArgs};
use crate::lock::LOCK_DIR;
use crate::name::MachineName;

/// Below the lock directory: one record per running machine.
const MACHINES: &str = "machines";
/// The most of a record berth reads back.
const MAX_RECORD: u64 = 64 << 10;

/// What a running berth says about its machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub name: String,
    /// The host pid of the machine's PID 1 (this boot's).
    pub leader: i32,
    /// berth's own pid.
    pub supervisor: i32,
    /// When the machine was started (Unix seconds; a reboot inside keeps it).
    pub since: u64,
    pub tree: PathBuf,
    /// The systemd unit the machine runs as, or berth's own scope.
    pub unit: String,
    /// The host's ends of its links.
    pub links: Vec<String>,
    pub private_network: bool,
}

impl Record {
    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "leader": self.leader,
            "supervisor": self.supervisor,
            "since": self.since,
            "tree": self.tree,
            "unit": self.unit,
            "links": self.links,
            "private_network": self.private_network,
        })
    }

    fn from_json(v: &Value) -> Option<Record> {
        Some(Record {
            name: v["name"].as_str()?.to_string(),
            leader: v["leader"].as_i64()? as i32,
            supervisor: v["supervisor"].as_i64()? as i32,
            since: v["since"].as_u64()?,
            tree: PathBuf::from(v["tree"].as_str()?),
            unit: v["unit"].as_str()?.to_string(),
            links: v["links"]
                .as_array()?
                .iter()
                .filter_map(|l| l.as_str().map(String::from))
                .collect(),
            private_network: v["private_network"].as_bool()?,
        })
    }
}

fn dir(lock_dir: &Path) -> PathBuf {
    lock_dir.join(MACHINES)
}

/// Write (or replace) the record of a running machine: a new file renamed
/// over the old, so a reader never sees half of one.
pub fn write(lock_dir: &Path, record: &Record) -> std::io::Result<()> {
    let dir = dir(lock_dir);
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
    let path = dir.join(format!("{}.json", record.name));
    let tmp = dir.join(format!(".{}.json.tmp", record.name));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(record.to_json().to_string().as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, &path)
}

/// Remove the record of a machine (at berth's exit).
pub fn remove(lock_dir: &Path, name: &str) {
    let _ = std::fs::remove_file(dir(lock_dir).join(format!("{name}.json")));
}

/// The records of the machines that run (whose berth holds the name lock),
/// by name. Records of killed runs are removed.
pub fn running(lock_dir: &Path) -> anyhow::Result<Vec<Record>> {
    let dir = dir(lock_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            bail!("reading {}: only root may read berth's state", dir.display())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".json")) else {
            continue;
        };
        if name.starts_with('.') || MachineName::parse(name).is_err() {
            continue;
        }
        if !crate::lock::is_running(lock_dir, name) {
            remove(lock_dir, name);
            continue;
        }
        if let Some(r) = read_record(&entry.path()) {
            out.push(r);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn read_record(path: &Path) -> Option<Record> {
    use std::io::Read;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    f.take(MAX_RECORD).read_to_string(&mut text).ok()?;
    Record::from_json(&serde_json::from_str(&text).ok()?)
}

/// UTC "YYYY-MM-DD HH:MM:SS" of Unix seconds (days to a civil date as in
/// Howard Hinnant's algorithm).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The machine's global addresses, read in its network namespace (a
/// machine on the host's network has the host's: none are shown).
fn addresses(r: &Record) -> Vec<String> {
    if !r.private_network {
        return vec![];
    }
    crate::net::machine_addresses(r.leader)
        .unwrap_or_default()
        .iter()
        .map(|a| a.to_string())
        .collect()
}

fn record_json(r: &Record) -> Value {
    let mut v = r.to_json();
    v["since_utc"] = json!(utc(r.since));
    v["addresses"] = json!(addresses(r));
    v
}

pub fn list(args: ListArgs) -> anyhow::Result<i32> {
    let records = running(Path::new(LOCK_DIR))?;
    if args.json {
        let all: Vec<Value> = records.iter().map(record_json).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(0);
    }
    println!("{:<20} {:>8} {:<24} {:<26} UNIT", "NAME", "LEADER", "SINCE", "ADDRESS");
    for r in &records {
        let addr = addresses(r).into_iter().next().unwrap_or_else(|| "-".into());
        println!(
            "{:<20} {:>8} {:<24} {:<26} {}",
            r.name,
            r.leader,
            utc(r.since),
            addr,
            r.unit
        );
    }
    println!(
        "\n{} machine{} running.",
        records.len(),
        if records.len() == 1 { "" } else { "s" }
    );
    Ok(0)
}

pub fn status(args: StatusArgs) -> anyhow::Result<i32> {
    let name = MachineName::parse(&args.name)?;
    let Some(r) = running(Path::new(LOCK_DIR))?
        .into_iter()
        .find(|r| r.name == name.as_str())
    else {
        bail!("machine \"{name}\" is not running");
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&record_json(&r))?);
        return Ok(0);
    }
    let os = os_of(&r.tree).unwrap_or_else(|| "-".into());
    println!("{}", r.name);
    println!("      Since: {}", utc(r.since));
    println!("     Leader: {} ({})", r.leader, comm(r.leader));
    println!(" Supervisor: {} (berth)", r.supervisor);
    println!("       Unit: {}", r.unit);
    println!("       Tree: {}", r.tree.display());
    println!("         OS: {os}");
    if !r.links.is_empty() {
        println!("      Iface: {}", r.links.join(" "));
    }
    let addrs = addresses(&r);
    if !addrs.is_empty() {
        println!("    Address: {}", addrs.join("\n             "));
    }
    Ok(0)
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// PRETTY_NAME of a tree's os-release, read inside it (bounded, regular
/// files only).
fn os_of(tree: &Path) -> Option<String> {
    let root = crate::inroot::InRoot::open(tree).ok()?;
    let text = root
        .read_small("/etc/os-release", 64 << 10)
        .or_else(|_| root.read_small("/usr/lib/os-release", 64 << 10))
        .ok()?;
    let text = String::from_utf8_lossy(&text);
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches(['"', '\'']).to_string())
}

/// The disk use of a tree, hard links counted once, not crossing into other
/// file systems, links never followed.
fn disk_use(tree: &Path) -> u64 {
    let Ok(top) = std::fs::symlink_metadata(tree) else {
        return 0;
    };
    let dev = top.dev();
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            if m.nlink() > 1 && !m.is_dir() && !seen.insert(m.ino()) {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total + top.blocks() * 512
}

fn human(bytes: u64) -> String {
    let units = ["B", "K", "M", "G", "T"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", units[u])
    }
}

pub fn images(args: ListArgs) -> anyhow::Result<i32> {
    let machines = Path::new(crate::tree::MACHINES_DIR);
    let running = running(Path::new(LOCK_DIR)).unwrap_or_default();
    let mut rows = Vec::new();
    let entries = match std::fs::read_dir(machines) {
        Ok(e) => e.flatten().collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(e).with_context(|| format!("reading {}", machines.display())),
    };
    for e in entries {
        let file = e.file_name();
        let Some(name) = file.to_str() else { continue };
        if name.starts_with('.') || MachineName::parse(name).is_err() {
            continue;
        }
        let path = e.path();
        // A link to another tree (atboot -> debian) is an image too.
        let Ok(real) = std::fs::canonicalize(&path) else {
            continue;
        };
        if !real.is_dir() {
            continue;
        }
        let users: Vec<String> = running
            .iter()
            .filter(|r| std::fs::canonicalize(&r.tree).ok().as_deref() == Some(real.as_path()))
            .map(|r| r.name.clone())
            .collect();
        rows.push((
            name.to_string(),
            os_of(&real).unwrap_or_else(|| "-".into()),
            disk_use(&real),
            users,
            std::fs::symlink_metadata(&path)
                .map(|m| m.is_symlink())
                .unwrap_or(false),
        ));
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    if args.json {
        let all: Vec<Value> = rows
            .iter()
            .map(|(name, os, size, users, link)| {
                json!({"name": name, "os": os, "size": size, "running": !users.is_empty(),
                       "machines": users, "link": link, "path": machines.join(name)})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(0);
    }
    println!("{:<20} {:<36} {:>8} RUNNING", "NAME", "OS", "SIZE");
    for (name, os, size, users, _) in &rows {
        let run = if users.is_empty() {
            "no".to_string()
        } else {
            format!("yes ({})", users.join(", "))
        };
        println!("{name:<20} {os:<36} {:>8} {run}", human(*size));
    }
    println!("\n{} image{}.", rows.len(), if rows.len() == 1 { "" } else { "s" });
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_795_564_800 + 3661), "2026-11-25 01:01:01 UTC");
    }

    #[test]
    fn records_round_trip_and_stale_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let r = Record {
            name: "web".into(),
            leader: 42,
            supervisor: 41,
            since: 1_795_625_600,
            tree: "/var/lib/machines/web".into(),
            unit: "machine@web.service".into(),
            links: vec!["vb-web".into()],
            private_network: true,
        };
        write(dir.path(), &r).unwrap();
        let path = dir.path().join("machines/web.json");
        assert_eq!(read_record(&path), Some(r.clone()));
        // Nobody holds web's lock: a killed run's record, skipped and removed.
        assert!(running(dir.path()).unwrap().is_empty());
        assert!(!path.exists());
        // Its lock held: listed.
        write(dir.path(), &r).unwrap();
        let lock = std::fs::File::create(dir.path().join("web.lock")).unwrap();
        let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
        assert_eq!(running(dir.path()).unwrap(), vec![r]);
    }
}
