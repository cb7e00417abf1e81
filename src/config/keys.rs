//! Every key a machine file may hold: one row each, with its value type,
//! whether it may repeat, and whether it widens what the machine may do
//! (`privileged`: refused in an untrusted file lying next to the tree), its
//! default and a one-line description (for `--help` and `berth check`).

use super::value::Kind;

pub struct KeyDef {
    pub section: &'static str,
    pub key: &'static str,
    pub kind: Kind,
    pub repeatable: bool,
    pub privileged: bool,
    /// The value in effect when nobody sets the key, as it would be
    /// written; None when there is no fixed one (Hostname= is the
    /// machine's name, Init= is searched for, lists start empty).
    pub default: Option<&'static str>,
    /// What the key does, in one line without a final period (shown by
    /// `berth boot --help` and `berth check --json`).
    pub description: &'static str,
}

const fn key(section: &'static str, key: &'static str, kind: Kind) -> KeyDef {
    KeyDef {
        section,
        key,
        kind,
        repeatable: false,
        privileged: false,
        default: None,
        description: "",
    }
}

impl KeyDef {
    const fn default(mut self, value: &'static str) -> Self {
        self.default = Some(value);
        self
    }
    const fn describe(mut self, text: &'static str) -> Self {
        self.description = text;
        self
    }
    const fn repeatable(mut self) -> Self {
        self.repeatable = true;
        self
    }
    const fn privileged(mut self) -> Self {
        self.privileged = true;
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
        // A lone plural "s" after an acronym (CPUs) belongs to it.
        let plural = chars.get(i + 1) == Some(&'s') && chars.get(i + 2).is_none();
        let next_lower = !plural && chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
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
    key("Exec", "Boot", Bool)
        .default("yes")
        .describe("Run the tree's own init as PID 1 (yes) or only the command in Parameters= (no)"),
    key("Exec", "Init", AbsolutePath).describe(
        "The init to boot, a path inside the tree; unset, the first of /usr/lib/systemd/systemd, /lib/systemd/systemd and /sbin/init found",
    ),
    key("Exec", "Parameters", Words)
        .describe("The init's arguments with Boot=yes; the command and its arguments with Boot=no"),
    key("Exec", "Environment", EnvAssignment)
        .repeatable()
        .describe("A NAME=VALUE variable for the machine's first process; repeatable, the last value of a name wins"),
    key("Exec", "Hostname", Hostname).describe("The machine's hostname; unset, the machine's name"),
    key("Exec", "KillSignal", Signal)
        .default("SIGRTMIN+3")
        .describe("The signal asking the init for an orderly halt (unset with Boot=no, the command gets SIGTERM)"),
    key("Exec", "NotifyReady", Bool)
        .default("yes")
        .describe("Report the machine ready when its init says so (yes) or as soon as the init is started (no)"),
    key("Exec", "Capability", Capabilities)
        .privileged()
        .describe("Capabilities the machine keeps beyond the default set, by name, or all"),
    key("Exec", "DropCapability", Capabilities)
        .describe("Capabilities taken from the machine's bounding set, by name, or all"),
    key("Exec", "SystemCallFilter", SystemCalls)
        .privileged()
        .describe("System calls allowed beyond the default seccomp allow list, by name or systemd's @group name (@clock, @raw-io, ...); a name or group after ~ is refused instead"),
    key("Exec", "ResolvConf", Choice(&["auto", "off", "bind-host", "copy-host"]))
        .default("auto")
        .describe("The host's /etc/resolv.conf in the machine: read-only over a plain file of the tree (auto), always (bind-host), copied into the tree (copy-host) or not at all (off)"),
    key("Exec", "Timezone", Choice(&["auto", "off", "bind", "copy"]))
        .default("off")
        .describe("The host's time zone in the machine: read-only over /etc/localtime (bind), copied into the tree (copy), bound only over a plain file (auto) or the tree's own (off)"),
    key("Exec", "LinkJournal", Choice(&["no", "auto", "host", "try-host", "guest", "try-guest"]))
        .privileged()
        .default("no")
        .describe("Make the machine's journal visible to the host's journalctl -m at /var/log/journal/MACHINE-ID: kept on the host and bound in (host), or kept in the tree and linked from the host (guest); try-host and try-guest ignore failures; auto is host when the host keeps a persistent journal"),
    key("Exec", "WorkingDirectory", AbsolutePath)
        .default("/")
        .describe("The directory the first process starts in, a path inside the machine"),
    key("Exec", "User", UserName)
        .describe("The user, by name or uid in the tree's /etc/passwd, the command runs as with Boot=no (unset, root)"),
    key("Exec", "PrivateUsers", PrivateUsers)
        .privileged()
        .default("pick")
        .describe("The machine's user namespace: a free range of 65536 host IDs claimed at start (pick), none, so root inside is the host's root (no), IDs mapped onto themselves (identity), or the range UID[:RANGE]; the tree on disk is never changed (idmapped mounts)"),
    // [Files]: what the machine sees of the host.
    key("Files", "ReadOnly", Bool)
        .default("no")
        .describe("Mount the tree read-only"),
    key("Files", "Volatile", Choice(&["no", "yes", "state", "overlay"]))
        .default("no")
        .describe("Keep the machine's changes off the tree: a tmpfs root with only the tree's /usr, read-only (yes), the tree read-only with a tmpfs on /var (state), every change on a tmpfs above the tree (overlay)"),
    key("Files", "Bind", BindMount)
        .repeatable()
        .privileged()
        .describe("Bind a host path into the machine: SOURCE[:DESTINATION[:OPTIONS]], OPTIONS of ro, rw, nosuid, nodev, noexec, rbind, norbind, idmap (with a user namespace, the host's IDs 0-65535 show as the machine's own: root inside then writes as the host's root there), noidmap (the default); repeatable"),
    key("Files", "BindReadOnly", BindMount)
        .repeatable()
        .privileged()
        .describe("Like Bind=, read-only; repeatable"),
    key("Files", "TemporaryFileSystem", TmpFs)
        .repeatable()
        .privileged()
        .describe("Mount a fresh tmpfs in the machine: PATH[:OPTIONS], with tmpfs mount options like size=256M; repeatable"),
    key("Files", "Inaccessible", AbsolutePath)
        .repeatable()
        .describe("Make a path of the machine unreadable and unwritable for it; repeatable"),
    // [Network].
    key("Network", "Private", Bool)
        .privileged()
        .default("no")
        .describe("Give the machine a network namespace of its own"),
    key("Network", "VirtualEthernet", Bool)
        .privileged()
        .default("no")
        .describe("Connect the machine to the host with a veth pair, host0 in the machine"),
    key("Network", "Bridge", InterfaceName)
        .privileged()
        .describe("Add the host's end of the veth pair to this bridge of the host"),
    key("Network", "Zone", ZoneName)
        .privileged()
        .describe("Add the host's end of the veth pair to the bridge shared by every machine of this zone"),
    key("Network", "MACAddress", MacAddress)
        .privileged()
        .describe("The MAC address of the machine's host0"),
    key("Network", "Address", AddressPrefix)
        .repeatable()
        .privileged()
        .describe("An ADDRESS/PREFIX of the machine's host0, like 192.168.100.10/24; repeatable"),
    key("Network", "Gateway", IpAddress)
        .privileged()
        .describe("The machine's default gateway: inside the subnet of an Address=, or an IPv6 link-local address"),
    key("Network", "DNS", IpAddress)
        .repeatable()
        .privileged()
        .describe("A DNS server for the machine; repeatable. Given, the machine's /etc/resolv.conf names these (and ResolvConf= does not apply)"),
    key("Network", "Port", PortForward)
        .repeatable()
        .privileged()
        .describe("Forward a host port to the machine: [tcp:|udp:]HOSTPORT[:MACHINEPORT]; repeatable"),
    // [Resources]: applied by the systemd issue.
    key("Resources", "MemoryMax", Size)
        .privileged()
        .describe("The most memory the machine may use, like 2G (K, M, G, T: powers of 1024), or infinity; past it the kernel's OOM killer acts inside the machine"),
    key("Resources", "MemoryHigh", Size)
        .privileged()
        .describe("The memory use above which the machine is slowed down and reclaimed from, like 1G, or infinity"),
    key("Resources", "MemorySwapMax", Size)
        .privileged()
        .describe("The most swap the machine may use, like 1G, or infinity"),
    key("Resources", "CPUQuota", Percent)
        .privileged()
        .describe("The CPU time the machine may use, in percent of one CPU (200% is two)"),
    key("Resources", "CPUWeight", Weight)
        .privileged()
        .describe("The machine's share of CPU time when CPUs are contended, 1 to 10000"),
    key("Resources", "TasksMax", Count)
        .privileged()
        .describe("The most processes and threads the machine may have, or infinity (default: 16384, as systemd-nspawn's template)"),
    key("Resources", "AllowedCPUs", CpuList)
        .privileged()
        .describe("The CPUs the machine may run on, like 0-3,6"),
    key("Resources", "IOWeight", Weight)
        .privileged()
        .describe("The machine's share of block I/O when devices are contended, 1 to 10000"),
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

    /// One rule for every description: one line, a capital first, no
    /// final period (clap and `berth check` append to it).
    #[test]
    fn every_key_is_described_and_its_default_parses() {
        for k in KEYS {
            let d = k.description;
            assert!(!d.trim().is_empty(), "{} has no description", k.id());
            assert!(!d.ends_with('.'), "{}: the description ends with a period", k.id());
            assert!(!d.contains('\n') && d.trim() == d, "{}: not one trimmed line", k.id());
            assert!(
                d.starts_with(|c: char| c.is_ascii_uppercase()),
                "{}: the description starts lower case",
                k.id()
            );
            if let Some(default) = k.default {
                assert!(!k.repeatable, "{}: a list has no default", k.id());
                assert!(
                    crate::config::value::parse(k.kind, default).is_ok(),
                    "{}: the default {default:?} does not parse",
                    k.id()
                );
            }
        }
        let default_of = |s, k| find(s, k).and_then(|d| d.default);
        assert_eq!(default_of("Exec", "Boot"), Some("yes"));
        assert_eq!(default_of("Exec", "KillSignal"), Some("SIGRTMIN+3"));
        assert_eq!(default_of("Exec", "Hostname"), None);
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
            "AllowedCPUs",
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
                "tasks-max",
                "allowed-cpus"
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
