//! Every key a machine file may hold: one row each, with its value type,
//! whether it may repeat, and whether it widens what the machine may do
//! (`privileged`: refused in an untrusted file lying next to the tree).

use super::value::Kind;

pub struct KeyDef {
    pub section: &'static str,
    pub key: &'static str,
    pub kind: Kind,
    pub repeatable: bool,
    pub privileged: bool,
    /// Applied by a later issue (parsed and validated now).
    pub later: bool,
}

const fn key(section: &'static str, key: &'static str, kind: Kind) -> KeyDef {
    KeyDef {
        section,
        key,
        kind,
        repeatable: false,
        privileged: false,
        later: false,
    }
}

impl KeyDef {
    const fn repeatable(mut self) -> Self {
        self.repeatable = true;
        self
    }
    const fn privileged(mut self) -> Self {
        self.privileged = true;
        self
    }
    const fn later(mut self) -> Self {
        self.later = true;
        self
    }

    /// The `berth boot` flag of this key: `BindReadOnly` -> `bind-read-only`,
    /// `CPUQuota` -> `cpu-quota`, `MACAddress` -> `mac-address`.
    pub fn flag(&self) -> String {
        kebab(self.key)
    }

    pub fn id(&self) -> String {
        format!("{}.{}", self.section, self.key)
    }
}

pub fn kebab(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
        let prev_lower = i > 0 && (chars[i - 1].is_ascii_lowercase() || chars[i - 1].is_ascii_digit());
        if c.is_ascii_uppercase() && i > 0 && (prev_lower || next_lower) {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

pub const SECTIONS: &[&str] = &["Exec", "Files", "Network", "Resources"];

use Kind::*;

pub static KEYS: &[KeyDef] = &[
    // [Exec]: what the machine runs.
    key("Exec", "Boot", Bool),
    key("Exec", "Init", AbsolutePath),
    key("Exec", "Parameters", Words),
    key("Exec", "Environment", EnvAssignment).repeatable(),
    key("Exec", "Hostname", Hostname),
    key("Exec", "KillSignal", Signal),
    key("Exec", "NotifyReady", Bool),
    key("Exec", "Capability", Capabilities).privileged(),
    key("Exec", "DropCapability", Capabilities),
    key("Exec", "SystemCallFilter", SystemCalls).privileged(),
    key("Exec", "ResolvConf", Choice(&["auto", "off", "bind-host", "copy-host"])),
    key("Exec", "Timezone", Choice(&["auto", "off", "bind", "copy"])),
    key("Exec", "LinkJournal", Choice(&["no", "auto", "host", "try-host"])),
    key("Exec", "WorkingDirectory", AbsolutePath),
    key("Exec", "User", UserName),
    key("Exec", "PrivateUsers", Bool).privileged().later(),
    // [Files]: what the machine sees of the host.
    key("Files", "ReadOnly", Bool),
    key("Files", "Volatile", Choice(&["no", "yes", "state", "overlay"])),
    key("Files", "Bind", BindMount).repeatable().privileged(),
    key("Files", "BindReadOnly", BindMount).repeatable().privileged(),
    key("Files", "TemporaryFileSystem", TmpFs).repeatable(),
    key("Files", "Inaccessible", AbsolutePath).repeatable(),
    // [Network]: applied by the networking issue.
    key("Network", "Private", Bool).privileged().later(),
    key("Network", "VirtualEthernet", Bool).privileged().later(),
    key("Network", "Bridge", InterfaceName).privileged().later(),
    key("Network", "Zone", ZoneName).privileged().later(),
    key("Network", "MACAddress", MacAddress).privileged().later(),
    key("Network", "Address", AddressPrefix)
        .repeatable()
        .privileged()
        .later(),
    key("Network", "Gateway", IpAddress).privileged().later(),
    key("Network", "DNS", IpAddress).repeatable().privileged().later(),
    key("Network", "Port", PortForward).repeatable().privileged().later(),
    // [Resources]: applied by the systemd issue.
    key("Resources", "MemoryMax", Size).privileged().later(),
    key("Resources", "MemoryHigh", Size).privileged().later(),
    key("Resources", "CPUQuota", Percent).privileged().later(),
    key("Resources", "CPUWeight", Weight).privileged().later(),
    key("Resources", "TasksMax", Count).privileged().later(),
    key("Resources", "IOWeight", Weight).privileged().later(),
];

pub fn find(section: &str, key: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|k| k.section == section && k.key == key)
}

/// Edit distance (a swap of two neighbours counts as one edit), ignoring
/// case, for "did you mean" hints.
pub fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.to_lowercase().chars().collect(), b.to_lowercase().chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// The closest of `candidates` to `word`, when close enough to be a typo.
pub fn suggest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.len() / 3).clamp(1, 3);
    candidates
        .map(|c| (distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        let mut ids: Vec<String> = KEYS.iter().map(|k| k.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), KEYS.len(), "a key is listed twice");
        assert!(KEYS.iter().all(|k| SECTIONS.contains(&k.section)));
        let mut flags: Vec<String> = KEYS.iter().map(|k| k.flag()).collect();
        flags.sort();
        flags.dedup();
        assert_eq!(flags.len(), KEYS.len(), "two keys share a flag");
    }

    #[test]
    fn flags_are_kebab_case() {
        let got: Vec<String> = [
            "BindReadOnly",
            "CPUQuota",
            "MACAddress",
            "IOWeight",
            "DNS",
            "Boot",
            "TasksMax",
        ]
        .iter()
        .map(|k| kebab(k))
        .collect();
        assert_eq!(
            got,
            [
                "bind-read-only",
                "cpu-quota",
                "mac-address",
                "io-weight",
                "dns",
                "boot",
                "tasks-max"
            ]
        );
    }

    #[test]
    fn suggestions() {
        let exec = || KEYS.iter().filter(|k| k.section == "Exec").map(|k| k.key);
        assert_eq!(suggest("Hostnme", exec()), Some("Hostname"));
        assert_eq!(suggest("boot", exec()), Some("Boot"));
        assert_eq!(suggest("Enviroment", exec()), Some("Environment"));
        assert_eq!(suggest("Xyzzy", exec()), None);
        assert_eq!(suggest("Exce", SECTIONS.iter().copied()), Some("Exec"));
    }
}
