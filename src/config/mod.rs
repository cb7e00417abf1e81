//! Per-machine settings: machines.d/NAME.ini files and the `berth boot`
//! flags of the same keys, validated strictly, merged (a flag wins over the
//! file), each value remembering where it came from.

pub mod ini;
pub mod keys;
pub mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use keys::{KeyDef, KEYS, SECTIONS};
use value::Value;

/// Trusted places, searched in this order (admin, runtime, vendor); the
/// first NAME.ini found is the machine's file.
pub const SEARCH_DIRS: &[&str] = &[
    "/etc/berth/machines.d",
    "/run/berth/machines.d",
    "/usr/lib/berth/machines.d",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File { path: PathBuf, line: usize },
    Flag(String),
    CommandLine,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Flag(flag) => write!(f, "--{flag}"),
            Origin::CommandLine => f.write_str("arguments after --"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced {
    pub value: Value,
    pub origin: Origin,
}

/// A machine file and whether it is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsFile {
    pub path: PathBuf,
    pub trusted: bool,
}

/// All errors of a load, one line each; shown together.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\nberth: "))]
pub struct ConfigError(pub Vec<String>);

#[derive(Debug, Default, Clone)]
pub struct Settings {
    /// Index into KEYS -> values (one for a plain key, a list for a
    /// repeatable one), in table order.
    values: BTreeMap<usize, Vec<Sourced>>,
    /// Keys an empty assignment cleared (an explicit "none" in a file).
    cleared: std::collections::BTreeSet<usize>,
    pub file: Option<SettingsFile>,
}

fn index_of(def: &KeyDef) -> usize {
    KEYS.iter()
        .position(|k| std::ptr::eq(k, def))
        .expect("a KeyDef of KEYS")
}

impl Settings {
    pub fn get(&self, section: &str, key: &str) -> Option<&Sourced> {
        self.all(section, key).last()
    }

    pub fn all(&self, section: &str, key: &str) -> &[Sourced] {
        let def = keys::find(section, key).unwrap_or_else(|| panic!("unknown key {section}.{key}"));
        self.values.get(&index_of(def)).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn bool(&self, section: &str, key: &str) -> Option<bool> {
        match self.get(section, key)?.value {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn text(&self, section: &str, key: &str) -> Option<&str> {
        match &self.get(section, key)?.value {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    /// Every value set, in table order, for `berth check`.
    pub fn entries(&self) -> impl Iterator<Item = (&'static KeyDef, &Sourced)> {
        self.values
            .iter()
            .flat_map(|(i, v)| v.iter().map(move |s| (&KEYS[*i], s)))
    }

    fn clear(&mut self, def: &KeyDef) {
        self.values.remove(&index_of(def));
        self.cleared.insert(index_of(def));
    }

    /// Whether an empty assignment cleared the key.
    fn cleared(&self, def: &KeyDef) -> bool {
        self.cleared.contains(&index_of(def))
    }

    /// Set a key to one value, replacing what it had (e.g. trailing
    /// arguments of `berth boot` replace Parameters=).
    pub fn set(&mut self, def: &KeyDef, s: Sourced) {
        self.clear(def);
        self.push(def, s);
    }

    fn push(&mut self, def: &KeyDef, s: Sourced) {
        let list = self.values.entry(index_of(def)).or_default();
        if !def.repeatable {
            list.clear();
        }
        list.push(s);
    }
}

/// Where the settings of machine NAME come from: `--config FILE`, the first
/// NAME.ini of SEARCH_DIRS, or (untrusted) NAME.ini next to the tree.
pub fn locate(name: &str, tree_root: &Path, explicit: Option<&Path>) -> Option<SettingsFile> {
    if let Some(p) = explicit {
        return Some(SettingsFile {
            path: p.to_path_buf(),
            trusted: true,
        });
    }
    let file_name = format!("{name}.ini");
    for dir in SEARCH_DIRS {
        let p = Path::new(dir).join(&file_name);
        if p.exists() {
            return Some(SettingsFile { path: p, trusted: true });
        }
    }
    let beside = tree_root
        .parent()?
        .join(format!("{}.ini", tree_root.file_name()?.to_string_lossy()));
    beside.exists().then_some(SettingsFile {
        path: beside,
        trusted: false,
    })
}

/// The most a settings file may hold.
pub const MAX_SETTINGS_FILE: u64 = 1 << 20;

/// Read a settings file: a regular file of at most 1 MiB, looked at before
/// it is opened (a FIFO or a device there is an error, never a hang). The
/// untrusted file next to a tree may not be a symbolic link (it could
/// point at any file of the host, which errors would then quote).
fn read_settings_file(path: &Path, trusted: bool) -> Result<Vec<u8>, String> {
    use nix::fcntl::OFlag;
    use nix::sys::stat::{fstat, Mode, SFlag};
    use std::io::Read;
    use std::os::fd::AsFd;
    let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    if !trusted {
        flags |= OFlag::O_NOFOLLOW;
    }
    let looked = nix::fcntl::open(path, flags, Mode::empty()).map_err(|e| e.desc().to_string())?;
    let st = fstat(&looked).map_err(|e| e.desc().to_string())?;
    let kind = st.st_mode & SFlag::S_IFMT.bits();
    if kind == SFlag::S_IFLNK.bits() {
        return Err("it is a symbolic link, and a file next to the tree must be a plain file".into());
    }
    if kind != SFlag::S_IFREG.bits() {
        return Err("it is not a regular file".into());
    }
    if st.st_size as u64 > MAX_SETTINGS_FILE {
        return Err(format!("it is larger than {MAX_SETTINGS_FILE} bytes"));
    }
    let fd =
        crate::inroot::reopen(looked.as_fd(), OFlag::O_RDONLY | OFlag::O_NONBLOCK).map_err(|e| e.desc().to_string())?;
    let mut text = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_SETTINGS_FILE + 1)
        .read_to_end(&mut text)
        .map_err(|e| crate::util::os_error(&e))?;
    if text.len() as u64 > MAX_SETTINGS_FILE {
        return Err(format!("it is larger than {MAX_SETTINGS_FILE} bytes"));
    }
    Ok(text)
}

/// Load one file into `settings`, collecting every error.
pub fn load_file(settings: &mut Settings, file: &SettingsFile, errors: &mut Vec<String>) {
    let path = &file.path;
    let text = match read_settings_file(path, file.trusted) {
        Ok(t) => t,
        Err(why) => {
            errors.push(format!("{}: cannot read: {why}", path.display()));
            return;
        }
    };
    load_text(settings, file, &text, errors);
    settings.file = Some(file.clone());
}

pub fn load_text(settings: &mut Settings, file: &SettingsFile, text: &[u8], errors: &mut Vec<String>) {
    let path = file.path.display();
    let assignments = match ini::parse(text) {
        Ok(a) => a,
        Err(line_errors) => {
            errors.extend(
                line_errors
                    .into_iter()
                    .map(|e| format!("{path}:{}: {}", e.line, e.message)),
            );
            return;
        }
    };
    let mut first_line: BTreeMap<usize, usize> = BTreeMap::new();
    let mut bad_sections: Vec<String> = Vec::new();
    for a in assignments {
        let here = format!("{path}:{}: [{}] {}={}", a.line, a.section, a.key, a.value);
        if !SECTIONS.contains(&a.section.as_str()) {
            if !bad_sections.contains(&a.section) {
                let hint = keys::suggest(&a.section, SECTIONS.iter().copied())
                    .map(|s| format!(" (did you mean [{s}]?)"))
                    .unwrap_or_default();
                errors.push(format!("{here}: unknown section [{}]{hint}", a.section));
                bad_sections.push(a.section.clone());
            }
            continue;
        }
        let Some(def) = keys::find(&a.section, &a.key) else {
            errors.push(format!("{here}: unknown key{}", unknown_key_hint(&a.section, &a.key)));
            continue;
        };
        if def.privileged && !file.trusted {
            errors.push(format!(
                "{here}: not allowed in this file: it lies next to the machine's tree and is not trusted, and {} widens what the machine may do (put it in {}/NAME.ini)",
                def.key, SEARCH_DIRS[0]
            ));
            continue;
        }
        let idx = index_of(def);
        if !def.repeatable {
            if let Some(first) = first_line.get(&idx) {
                errors.push(format!(
                    "{here}: {} is already set on line {first} and may be given once",
                    def.key
                ));
                continue;
            }
            first_line.insert(idx, a.line);
        }
        if a.value.is_empty() {
            // An empty assignment resets the key (clears a list).
            settings.clear(def);
            continue;
        }
        match check_value(def, &a.value) {
            Ok(value) => settings.push(
                def,
                Sourced {
                    value,
                    origin: Origin::File {
                        path: file.path.clone(),
                        line: a.line,
                    },
                },
            ),
            Err(why) => errors.push(format!("{here}: {why}")),
        }
    }
}

fn unknown_key_hint(section: &str, key: &str) -> String {
    if let Some(s) = keys::suggest(key, KEYS.iter().filter(|k| k.section == section).map(|k| k.key)) {
        return format!(" (did you mean {s}?)");
    }
    match KEYS.iter().find(|k| k.key.eq_ignore_ascii_case(key)) {
        Some(k) => format!(" (did you mean [{}] {}?)", k.section, k.key),
        None => String::new(),
    }
}

/// Parse a value and check what can be checked on the host.
fn check_value(def: &KeyDef, text: &str) -> Result<Value, String> {
    let mut value = value::parse(def.kind, text)?;
    if let Value::Bind(b) = &mut value {
        if !Path::new(&b.source).exists() {
            return Err(format!("the source {} does not exist", b.source));
        }
        if def.key == "BindReadOnly" {
            b.read_only = true;
        }
    }
    Ok(value)
}

/// Apply command-line flags over the file: a flag wins (for a repeatable
/// key, the flag's values replace the file's list; an empty one clears it).
pub fn apply_flags(settings: &mut Settings, flags: &[(&'static KeyDef, Vec<String>)], errors: &mut Vec<String>) {
    for (def, values) in flags {
        settings.clear(def);
        for v in values {
            if v.is_empty() {
                continue;
            }
            match check_value(def, v) {
                Ok(value) => settings.push(
                    def,
                    Sourced {
                        value,
                        origin: Origin::Flag(def.flag()),
                    },
                ),
                Err(why) => errors.push(format!("--{}={v}: {why}", def.flag())),
            }
        }
    }
}

/// File then flags, all errors at once.
pub fn load(
    name: &str,
    tree_root: &Path,
    explicit: Option<&Path>,
    flags: &[(&'static KeyDef, Vec<String>)],
) -> Result<Settings, ConfigError> {
    load_with(name, tree_root, explicit, flags, false)
}

/// `load`, where `flags_are_defaults` makes the file win over the flags
/// (a unit's ExecStart= gives defaults; the admin's file overrides them).
pub fn load_with(
    name: &str,
    tree_root: &Path,
    explicit: Option<&Path>,
    flags: &[(&'static KeyDef, Vec<String>)],
    flags_are_defaults: bool,
) -> Result<Settings, ConfigError> {
    let mut settings = Settings::default();
    let mut errors = Vec::new();
    if flags_are_defaults {
        apply_flags(&mut settings, flags, &mut errors);
    }
    if let Some(file) = locate(name, tree_root, explicit) {
        let mut from_file = Settings::default();
        load_file(&mut from_file, &file, &mut errors);
        // What the file sets replaces the key as a whole.
        for def in KEYS {
            let values = from_file.all(def.section, def.key);
            if !values.is_empty() || from_file.cleared(def) {
                settings.clear(def);
                values.iter().for_each(|v| settings.push(def, v.clone()));
            }
        }
        settings.file = from_file.file;
    }
    if !flags_are_defaults {
        apply_flags(&mut settings, flags, &mut errors);
    }
    if errors.is_empty() {
        Ok(settings)
    } else {
        Err(ConfigError(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, trusted: bool) -> (Settings, Vec<String>) {
        let file = SettingsFile {
            path: "/etc/berth/machines.d/web.ini".into(),
            trusted,
        };
        let mut s = Settings::default();
        let mut errors = Vec::new();
        load_text(&mut s, &file, text.as_bytes(), &mut errors);
        (s, errors)
    }

    #[test]
    fn every_error_of_a_file_at_once_with_file_and_line() {
        let text = "[Exec]\nBoot=maybe\nHostnme=web\nBoot=yes\n[Exce]\nX=1\n[Files]\nBind=/nonexistent-src\nBind=relative\nHostname=x\n";
        let (_, errors) = load_str(text, true);
        let f = "/etc/berth/machines.d/web.ini";
        assert_eq!(
            errors,
            vec![
                format!("{f}:2: [Exec] Boot=maybe: expected a boolean: yes, no, true, false, on, off, 1 or 0"),
                format!("{f}:3: [Exec] Hostnme=web: unknown key (did you mean Hostname?)"),
                format!("{f}:4: [Exec] Boot=yes: Boot is already set on line 2 and may be given once"),
                format!("{f}:6: [Exce] X=1: unknown section [Exce] (did you mean [Exec]?)"),
                format!("{f}:8: [Files] Bind=/nonexistent-src: the source /nonexistent-src does not exist"),
                format!("{f}:9: [Files] Bind=relative: source: expected an absolute path"),
                format!("{f}:10: [Files] Hostname=x: unknown key (did you mean [Exec] Hostname?)"),
            ]
        );
    }

    #[test]
    fn system_call_groups_are_known_or_an_error_with_file_and_line() {
        let f = "/etc/berth/machines.d/web.ini";
        let (_, errors) = load_str("[Exec]\nSystemCallFilter=@clock ~@mount keyctl\n", true);
        assert!(errors.is_empty(), "{errors:?}");
        for (word, why) in [
            ("~@nonsense", "\"@nonsense\" is not a group of system calls berth knows"),
            ("@clock fly", "\"fly\" is not a system call berth can filter"),
        ] {
            let (_, errors) = load_str(&format!("[Exec]\nBoot=yes\nSystemCallFilter={word}\n"), true);
            assert_eq!(errors, [format!("{f}:3: [Exec] SystemCallFilter={word}: {why}")]);
        }
    }

    #[test]
    fn lists_repeat_and_empty_clears_last_wins_for_flags() {
        let (s, errors) = load_str(
            "[Exec]\nEnvironment=A=1\nEnvironment=B=2\n[Files]\nBind=/tmp\nBind=\nBind=/usr:/opt/usr:ro\n",
            true,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let env: Vec<String> = s
            .all("Exec", "Environment")
            .iter()
            .map(|v| v.value.to_string())
            .collect();
        assert_eq!(env, ["A=1", "B=2"]);
        let binds: Vec<String> = s.all("Files", "Bind").iter().map(|v| v.value.to_string()).collect();
        assert_eq!(binds, ["/usr:/opt/usr:ro,rbind"]);
        assert_eq!(
            s.get("Files", "Bind").unwrap().origin.to_string(),
            "/etc/berth/machines.d/web.ini:7"
        );

        let mut s = s;
        let mut errors = Vec::new();
        let host = keys::find("Exec", "Hostname").unwrap();
        let env_key = keys::find("Exec", "Environment").unwrap();
        apply_flags(
            &mut s,
            &[(host, vec!["db".into()]), (env_key, vec!["C=3".into()])],
            &mut errors,
        );
        assert!(errors.is_empty());
        assert_eq!(s.text("Exec", "Hostname"), Some("db"));
        assert_eq!(s.get("Exec", "Hostname").unwrap().origin.to_string(), "--hostname");
        assert_eq!(s.all("Exec", "Environment").len(), 1);
        apply_flags(&mut s, &[(host, vec!["bad name".into()])], &mut errors);
        assert_eq!(
            errors,
            ["--hostname=bad name: only letters, digits, '-' and '.' are allowed, as in a hostname (systemd-machined's rule)"]
        );
    }

    #[test]
    fn untrusted_files_may_not_widen() {
        let text = "[Exec]\nBoot=yes\nCapability=CAP_NET_ADMIN\nLinkJournal=host\nTimezone=copy\n[Files]\nBind=/tmp\nTemporaryFileSystem=/var/tmp:size=1G\nReadOnly=yes\nInaccessible=/etc/issue\n[Resources]\nMemoryMax=1G\n";
        let (s, errors) = load_str(text, false);
        let f = "/etc/berth/machines.d/web.ini";
        let refused: Vec<&str> = errors
            .iter()
            .map(|e| e.split(": not allowed in this file").next().unwrap())
            .collect();
        assert_eq!(
            refused,
            [
                format!("{f}:3: [Exec] Capability=CAP_NET_ADMIN"),
                format!("{f}:4: [Exec] LinkJournal=host"),
                format!("{f}:7: [Files] Bind=/tmp"),
                format!("{f}:8: [Files] TemporaryFileSystem=/var/tmp:size=1G"),
                format!("{f}:12: [Resources] MemoryMax=1G"),
            ],
            "{errors:?}"
        );
        assert!(errors[2].starts_with(&format!("{f}:7: [Files] Bind=/tmp: not allowed in this file: it lies next to the machine's tree and is not trusted, and Bind widens what the machine may do")), "{}", errors[2]);
        assert!(
            errors[1]
                .ends_with("and LinkJournal widens what the machine may do (put it in /etc/berth/machines.d/NAME.ini)"),
            "{}",
            errors[1]
        );
        assert_eq!(s.bool("Files", "ReadOnly"), Some(true));
        assert_eq!(s.bool("Exec", "Boot"), Some(true));
        assert_eq!(s.text("Exec", "Timezone"), Some("copy"));
        assert_eq!(s.all("Files", "Inaccessible").len(), 1);
        assert_eq!(s.get("Exec", "LinkJournal"), None);
        assert!(s.all("Files", "TemporaryFileSystem").is_empty());

        // The same file, trusted, is fine.
        let (s, errors) = load_str(text, true);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.text("Exec", "LinkJournal"), Some("host"));
        assert_eq!(s.all("Files", "TemporaryFileSystem").len(), 1);
    }

    #[test]
    fn loader_never_panics_on_arbitrary_values() {
        // Every key, fed pseudo-random values built from the characters its
        // parsers care about: each must answer a value or an error line.
        let alphabet: Vec<char> = "/:.,%=~@-_ \"'\\abcCAPSYM019xyzKMGT\u{e9}\0".chars().collect();
        let mut state: u64 = 0x2545f4914f6cdd1d;
        for round in 0..4000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let def = &KEYS[round % KEYS.len()];
            let len = (state % 24) as usize;
            let value: String = (0..len)
                .map(|i| alphabet[((state >> (i % 50)) as usize + i * 11) % alphabet.len()])
                .collect();
            let text = format!("[{}]\n{}={}\n", def.section, def.key, value);
            let (_, errors) = load_str(&text, round % 2 == 0);
            assert!(
                errors.iter().all(|e| e.starts_with("/etc/berth/machines.d/web.ini:")),
                "{errors:?}"
            );
        }
    }

    #[test]
    fn settings_files_are_small_plain_files() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("web.ini");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        for trusted in [true, false] {
            let file = SettingsFile {
                path: fifo.clone(),
                trusted,
            };
            let mut errors = Vec::new();
            load_file(&mut Settings::default(), &file, &mut errors);
            assert_eq!(
                errors,
                [format!("{}: cannot read: it is not a regular file", fifo.display())]
            );
        }
        std::fs::remove_file(&fifo).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &fifo).unwrap();
        let mut errors = Vec::new();
        let file = SettingsFile {
            path: fifo.clone(),
            trusted: false,
        };
        load_file(&mut Settings::default(), &file, &mut errors);
        assert_eq!(
            errors,
            [format!(
                "{}: cannot read: it is a symbolic link, and a file next to the tree must be a plain file",
                fifo.display()
            )]
        );
        let big = t.path().join("big.ini");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_SETTINGS_FILE + 1)
            .unwrap();
        let mut errors = Vec::new();
        let file = SettingsFile {
            path: big.clone(),
            trusted: true,
        };
        load_file(&mut Settings::default(), &file, &mut errors);
        assert_eq!(
            errors,
            [format!(
                "{}: cannot read: it is larger than 1048576 bytes",
                big.display()
            )]
        );
    }

    #[test]
    fn flags_as_defaults_lose_to_the_file() {
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("web");
        std::fs::create_dir(&tree).unwrap();
        let file = t.path().join("web.conf");
        std::fs::write(&file, "[Exec]\nLinkJournal=no\n[Files]\nBind=\n").unwrap();
        let lj = keys::find("Exec", "LinkJournal").unwrap();
        let tz = keys::find("Exec", "Timezone").unwrap();
        let bind = keys::find("Files", "Bind").unwrap();
        let flags = [
            (lj, vec!["try-guest".to_string()]),
            (tz, vec!["bind".to_string()]),
            (bind, vec!["/tmp:/mnt".to_string()]),
        ];
        let s = load_with("web", &tree, Some(&file), &flags, true).unwrap();
        assert_eq!(s.text("Exec", "LinkJournal"), Some("no"));
        assert_eq!(s.text("Exec", "Timezone"), Some("bind"));
        assert!(
            s.all("Files", "Bind").is_empty(),
            "an empty assignment in the file clears the flag's list"
        );
        let s = load_with("web", &tree, Some(&file), &flags, false).unwrap();
        assert_eq!(s.text("Exec", "LinkJournal"), Some("try-guest"));
    }

    #[test]
    fn locations_in_order_and_beside_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("web");
        std::fs::create_dir(&tree).unwrap();
        assert_eq!(locate("web", &tree, None), None);
        std::fs::write(t.path().join("web.ini"), "[Exec]\n").unwrap();
        assert_eq!(
            locate("web", &tree, None),
            Some(SettingsFile {
                path: t.path().join("web.ini"),
                trusted: false
            })
        );
        let explicit = t.path().join("x.ini");
        assert_eq!(
            locate("web", &tree, Some(&explicit)),
            Some(SettingsFile {
                path: explicit.clone(),
                trusted: true
            })
        );
    }
}
