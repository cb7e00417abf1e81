//! The typed description of a machine, built from its settings by one
//! conversion (`MachineSpec::from_settings`). Every key of the table has its
//! place here; a key without one is an error of that conversion, never a
//! silent default (a unit test converts a value of every key). The boot and
//! run paths read this, never settings by name.

use std::path::PathBuf;

pub use crate::config::value::PrivateUsers;
use crate::config::value::{Bind, Forward, Prefixed, Value};
use crate::config::{Settings, Sourced};

/// [Exec] LinkJournal=: the machine's journal kept on the host, where
/// `journalctl -M NAME` and `journalctl -m` find it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LinkJournal {
    #[default]
    No,
    /// Host, when the host keeps a persistent journal (/var/log/journal).
    Auto,
    /// /var/log/journal/MACHINE-ID on the host, bound into the machine.
    Host,
    /// Host, but a failure is not fatal.
    TryHost,
    /// Kept in the tree (/var/log/journal/MACHINE-ID), and a link to it
    /// at the same path on the host.
    Guest,
    /// Guest, but a failure is not fatal.
    TryGuest,
}

/// [Exec] Timezone=.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Timezone {
    #[default]
    Off,
    /// Bind when the tree's /etc/localtime is a plain file, else leave it.
    Auto,
    /// The host's zone file, read-only, over the tree's /etc/localtime.
    Bind,
    /// A copy of the host's zone file written to the tree's /etc/localtime.
    Copy,
}

/// [Files] Volatile=: what of the tree the machine may change for good.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Volatile {
    /// The tree as it is.
    #[default]
    No,
    /// A fresh tmpfs root with only the tree's /usr, read-only.
    Yes,
    /// The tree read-only, with a fresh tmpfs on /var.
    State,
    /// The whole tree, with every change kept on a tmpfs above it.
    Overlay,
}

/// [Exec] ResolvConf=: the machine shares the host's network for now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ResolvConf {
    /// The host's, read-only, over the tree's file when that is a plain file.
    #[default]
    Auto,
    Off,
    /// The host's, read-only, always (created in the tree if missing).
    BindHost,
    /// A copy of the host's, written into the tree.
    CopyHost,
}

/// The names each choice has in a settings file, in one place per type.
pub trait Choice: Sized + Copy + 'static {
    const NAMES: &'static [(&'static str, Self)];
    fn from_name(name: &str) -> Result<Self, String> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("\"{name}\" is not one of {}", Self::names().join(", ")))
    }
    fn names() -> Vec<&'static str> {
        Self::NAMES.iter().map(|(n, _)| *n).collect()
    }
}

impl Choice for LinkJournal {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("no", Self::No),
        ("auto", Self::Auto),
        ("host", Self::Host),
        ("try-host", Self::TryHost),
        ("guest", Self::Guest),
        ("try-guest", Self::TryGuest),
    ];
}
impl Choice for Timezone {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("auto", Self::Auto),
        ("off", Self::Off),
        ("bind", Self::Bind),
        ("copy", Self::Copy),
    ];
}
impl Choice for Volatile {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("no", Self::No),
        ("yes", Self::Yes),
        ("state", Self::State),
        ("overlay", Self::Overlay),
    ];
}
impl Choice for ResolvConf {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("auto", Self::Auto),
        ("off", Self::Off),
        ("bind-host", Self::BindHost),
        ("copy-host", Self::CopyHost),
    ];
}

/// What the machine sees of the host's file system, beyond its tree.
#[derive(Debug, Clone, Default)]
pub struct Files {
    pub read_only: bool,
    pub volatile: Volatile,
    pub binds: Vec<Bind>,
    /// (path inside the machine, tmpfs mount options)
    pub tmpfs: Vec<(String, String)>,
    pub inaccessible: Vec<String>,
}

impl Files {
    /// Whether the machine can change its tree on disk. Machines that
    /// cannot may share one tree.
    pub fn writes_tree(&self) -> bool {
        !self.read_only && self.volatile == Volatile::No
    }
}

/// A capability list of [Exec] Capability= or DropCapability=.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapabilityList {
    pub all: bool,
    pub caps: Vec<caps::Capability>,
}

/// [Exec].
#[derive(Debug, Clone)]
pub struct Exec {
    pub boot: bool,
    pub init: Option<PathBuf>,
    pub parameters: Vec<String>,
    /// NAME=VALUE, in order.
    pub environment: Vec<String>,
    pub hostname: Option<String>,
    pub kill_signal: Option<libc::c_int>,
    pub notify_ready: bool,
    pub capability: CapabilityList,
    pub drop_capability: CapabilityList,
    /// SystemCallFilter= words: `name` allows again, `~name` denies more.
    pub system_call_filter: Vec<String>,
    pub resolv_conf: ResolvConf,
    pub timezone: Timezone,
    pub link_journal: LinkJournal,
    pub working_directory: Option<PathBuf>,
    /// User= and where it was set (it applies only with Boot=no).
    pub user: Option<(String, String)>,
    pub private_users: PrivateUsers,
}

impl Default for Exec {
    fn default() -> Self {
        Exec {
            boot: true,
            init: None,
            parameters: vec![],
            environment: vec![],
            hostname: None,
            kill_signal: None,
            notify_ready: true,
            capability: CapabilityList::default(),
            drop_capability: CapabilityList::default(),
            system_call_filter: vec![],
            resolv_conf: ResolvConf::default(),
            timezone: Timezone::default(),
            link_journal: LinkJournal::default(),
            working_directory: None,
            user: None,
            private_users: PrivateUsers::Pick,
        }
    }
}

/// Where the host's end of the machine's veth pair goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HostSide {
    /// No veth pair.
    #[default]
    None,
    /// `ve-NAME`, on its own (the host's networkd gives it an address).
    Plain,
    /// `vb-NAME`, a port of the host's existing bridge.
    Bridge(String),
    /// `vb-NAME`, a port of the bridge `vz-ZONE` berth makes on first use.
    Zone(String),
}

/// [Network].
#[derive(Debug, Clone, Default)]
pub struct Network {
    /// Private=, or implied by a veth pair.
    pub private: bool,
    pub host_side: HostSide,
    pub mac_address: Option<[u8; 6]>,
    pub addresses: Vec<Prefixed>,
    pub gateway: Option<std::net::IpAddr>,
    pub dns: Vec<std::net::IpAddr>,
    pub ports: Vec<Forward>,
}

impl Network {
    pub fn has_veth(&self) -> bool {
        self.host_side != HostSide::None
    }
}

/// A limit: None is "infinity".
pub type Limit = Option<u64>;

/// [Resources], validated; applied by the systemd issue.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub memory_max: Option<Limit>,
    pub memory_high: Option<Limit>,
    pub memory_swap_max: Option<Limit>,
    pub cpu_quota_percent: Option<u64>,
    pub cpu_weight: Option<u64>,
    pub tasks_max: Option<Limit>,
    pub io_weight: Option<u64>,
    pub allowed_cpus: Option<Vec<u32>>,
}

/// A machine, as its settings describe it.
#[derive(Debug, Clone, Default)]
pub struct MachineSpec {
    pub exec: Exec,
    pub files: Files,
    pub network: Network,
    pub resources: Resources,
}

fn text(v: &Value) -> Result<&str, String> {
    match v {
        Value::Text(t) => Ok(t),
        other => Err(format!("expected text, got {other:?}")),
    }
}

fn words(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Words(w) => Ok(w.clone()),
        other => Err(format!("expected words, got {other:?}")),
    }
}

fn flag(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        other => Err(format!("expected a boolean, got {other:?}")),
    }
}

fn users(v: &Value) -> Result<PrivateUsers, String> {
    match v {
        Value::Users(u) => Ok(*u),
        other => Err(format!("expected PrivateUsers=, got {other:?}")),
    }
}

fn address(v: &Value) -> Result<std::net::IpAddr, String> {
    match v {
        Value::Address(a) => Ok(*a),
        other => Err(format!("expected an IP address, got {other:?}")),
    }
}

fn limit(v: &Value) -> Result<Limit, String> {
    match v {
        Value::Limit(l) => Ok(*l),
        other => Err(format!("expected a number, got {other:?}")),
    }
}

fn number(v: &Value) -> Result<u64, String> {
    limit(v)?.ok_or_else(|| "expected a number, not infinity".to_string())
}

fn capability_list(v: &Value, into: &mut CapabilityList) -> Result<(), String> {
    for w in words(v)? {
        if w == "all" {
            into.all = true;
        } else {
            let c: caps::Capability = w.parse().map_err(|_| format!("unknown capability {w}"))?;
            if !into.caps.contains(&c) {
                into.caps.push(c);
            }
        }
    }
    Ok(())
}

impl MachineSpec {
    /// The one conversion from settings to a typed machine.
    pub fn from_settings(settings: &Settings) -> Result<MachineSpec, String> {
        let mut m = MachineSpec::default();
        // [Network] keys that depend on each other: (where, value).
        let mut veth = false;
        let mut bridge: Option<(String, String)> = None;
        let mut zone: Option<(String, String)> = None;
        let mut gateway: Option<String> = None;
        let mut needs_veth: Option<(String, &str, String)> = None;
        let mut first_port: Option<String> = None;
        for (def, Sourced { value: v, origin }) in settings.entries() {
            let fail = |why: String| format!("{origin}: [{}] {}={v}: {why}", def.section, def.key);
            let e = &mut m.exec;
            let f = &mut m.files;
            let n = &mut m.network;
            let r = &mut m.resources;
            let result: Result<(), String> = (|| {
                match (def.section, def.key) {
                    ("Exec", "Boot") => e.boot = flag(v)?,
                    ("Exec", "Init") => e.init = Some(PathBuf::from(text(v)?)),
                    ("Exec", "Parameters") => e.parameters = words(v)?,
                    ("Exec", "Environment") => e.environment.push(text(v)?.to_string()),
                    ("Exec", "Hostname") => e.hostname = Some(text(v)?.to_string()),
                    ("Exec", "KillSignal") => match v {
                        Value::Signal(s) => e.kill_signal = Some(*s),
                        other => return Err(format!("expected a signal, got {other:?}")),
                    },
                    ("Exec", "NotifyReady") => e.notify_ready = flag(v)?,
                    ("Exec", "Capability") => capability_list(v, &mut e.capability)?,
                    ("Exec", "DropCapability") => capability_list(v, &mut e.drop_capability)?,
                    ("Exec", "SystemCallFilter") => e.system_call_filter.extend(words(v)?),
                    ("Exec", "ResolvConf") => e.resolv_conf = Choice::from_name(text(v)?)?,
                    ("Exec", "Timezone") => e.timezone = Choice::from_name(text(v)?)?,
                    ("Exec", "LinkJournal") => e.link_journal = Choice::from_name(text(v)?)?,
                    ("Exec", "WorkingDirectory") => e.working_directory = Some(PathBuf::from(text(v)?)),
                    ("Exec", "User") => e.user = Some((text(v)?.to_string(), origin.to_string())),
                    ("Exec", "PrivateUsers") => e.private_users = users(v)?,
                    ("Files", "ReadOnly") => f.read_only = flag(v)?,
                    ("Files", "Volatile") => f.volatile = Choice::from_name(text(v)?)?,
                    ("Files", "Bind") | ("Files", "BindReadOnly") => match v {
                        Value::Bind(b) => f.binds.push(b.clone()),
                        other => return Err(format!("expected a bind mount, got {other:?}")),
                    },
                    ("Files", "TemporaryFileSystem") => match v {
                        Value::TmpFs { path, options } => f.tmpfs.push((path.clone(), options.clone())),
                        other => return Err(format!("expected a file system, got {other:?}")),
                    },
                    ("Files", "Inaccessible") => f.inaccessible.push(text(v)?.to_string()),
                    ("Network", "Private") => n.private = flag(v)?,
                    ("Network", "VirtualEthernet") => veth = flag(v)?,
                    ("Network", "Bridge") => {
                        if let Some((_, zone)) = &zone {
                            return Err(format!(
                                "Bridge= and Zone= ({zone}) both name where the machine's link goes; keep one"
                            ));
                        }
                        bridge = Some((origin.to_string(), text(v)?.to_string()))
                    }
                    ("Network", "Zone") => {
                        if let Some((_, bridge)) = &bridge {
                            return Err(format!(
                                "Bridge= ({bridge}) and Zone= both name where the machine's link goes; keep one"
                            ));
                        }
                        zone = Some((origin.to_string(), text(v)?.to_string()))
                    }
                    ("Network", "MACAddress") => match v {
                        Value::Mac(m) => {
                            n.mac_address = Some(*m);
                            needs_veth.get_or_insert((origin.to_string(), def.key, v.to_string()));
                        }
                        other => return Err(format!("expected a MAC address, got {other:?}")),
                    },
                    ("Network", "Address") => match v {
                        Value::Prefixed(p) => {
                            if n.addresses.iter().any(|a| a.addr == p.addr) {
                                return Err(format!("the address {} is given twice", p.addr));
                            }
                            n.addresses.push(*p);
                            needs_veth.get_or_insert((origin.to_string(), def.key, v.to_string()));
                        }
                        other => return Err(format!("expected ADDRESS/PREFIX, got {other:?}")),
                    },
                    ("Network", "Gateway") => {
                        n.gateway = Some(address(v)?);
                        gateway = Some(origin.to_string());
                    }
                    ("Network", "DNS") => n.dns.push(address(v)?),
                    ("Network", "Port") => match v {
                        Value::Forward(p) => {
                            if let Some(same) = n
                                .ports
                                .iter()
                                .find(|q| q.proto == p.proto && q.host_port == p.host_port)
                            {
                                return Err(format!(
                                    "host port {}:{} is already forwarded (to port {} of the machine)",
                                    p.proto, p.host_port, same.machine_port
                                ));
                            }
                            n.ports.push(*p);
                            first_port.get_or_insert(origin.to_string());
                            needs_veth.get_or_insert((origin.to_string(), def.key, v.to_string()));
                        }
                        other => return Err(format!("expected a port forward, got {other:?}")),
                    },
                    ("Resources", "MemoryMax") => r.memory_max = Some(limit(v)?),
                    ("Resources", "MemoryHigh") => r.memory_high = Some(limit(v)?),
                    ("Resources", "MemorySwapMax") => r.memory_swap_max = Some(limit(v)?),
                    ("Resources", "CPUQuota") => match v {
                        Value::Percent(p) => r.cpu_quota_percent = Some(*p),
                        other => return Err(format!("expected a percentage, got {other:?}")),
                    },
                    ("Resources", "CPUWeight") => r.cpu_weight = Some(number(v)?),
                    ("Resources", "TasksMax") => r.tasks_max = Some(limit(v)?),
                    ("Resources", "IOWeight") => r.io_weight = Some(number(v)?),
                    ("Resources", "AllowedCPUs") => r.allowed_cpus = Some(crate::config::value::cpu_list(text(v)?)?),
                    (section, key) => {
                        return Err(format!(
                            "[{section}] {key} has no place in berth's description of a machine (a bug)"
                        ))
                    }
                }
                Ok(())
            })();
            result.map_err(fail)?;
        }
        let n = &mut m.network;
        n.host_side = match (bridge, zone) {
            (Some((_, b)), _) => HostSide::Bridge(b),
            (_, Some((_, z))) => HostSide::Zone(z),
            _ if veth => HostSide::Plain,
            _ => HostSide::None,
        };
        n.private |= n.has_veth();
        if let Some((origin, key, value)) = needs_veth.filter(|_| !n.has_veth()) {
            let what = if key == "Port" {
                "forwarding a port needs the machine's own network"
            } else {
                "this needs the machine's own link"
            };
            return Err(format!(
                "{origin}: [Network] {key}={value}: {what}: set VirtualEthernet=yes, Bridge= or Zone="
            ));
        }
        // An IPv6 gateway may be link-local (fe80::/10), as routers are.
        let link_local =
            |gw: std::net::IpAddr| matches!(gw, std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
        if let (Some(gw), Some(origin)) = (n.gateway, gateway) {
            if !link_local(gw) && !n.addresses.iter().any(|a| a.contains(gw)) {
                let subnets: Vec<String> = n.addresses.iter().map(|a| a.to_string()).collect();
                let why = if subnets.is_empty() {
                    "the gateway must lie in the subnet of an Address=, and there is none".to_string()
                } else {
                    format!("not inside the subnet of any Address= ({})", subnets.join(", "))
                };
                return Err(format!("{origin}: [Network] Gateway={gw}: {why}"));
            }
        }
        if let (Some(origin), true) = (&first_port, n.addresses.is_empty()) {
            return Err(format!(
                "{origin}: [Network] Port={}: forwarding a port needs an Address= of the machine to forward to",
                crate::config::value::Value::Forward(n.ports[0])
            ));
        }
        Ok(m)
    }

    /// The capability bounding set the machine keeps: nspawn's set, plus
    /// Capability=, minus DropCapability=.
    pub fn kept_capabilities(&self) -> Vec<caps::Capability> {
        let mut kept: Vec<caps::Capability> = if self.exec.capability.all {
            caps::all().into_iter().collect()
        } else {
            crate::caps::KEPT.to_vec()
        };
        // CAP_NET_ADMIN with a network of its own, as nspawn, but only in a
        // user namespace of its own: there it is held over the machine's
        // network namespace alone. Without one, the machine's root would
        // hold it over the host's network namespace too, which the veth
        // pair makes reachable by netlink (IFLA_TARGET_NETNSID); then it is
        // Capability=CAP_NET_ADMIN, the admin's explicit choice (berth warns).
        if self.network.private
            && self.exec.private_users != PrivateUsers::No
            && !kept.contains(&caps::Capability::CAP_NET_ADMIN)
        {
            kept.push(caps::Capability::CAP_NET_ADMIN);
        }
        for c in &self.exec.capability.caps {
            if !kept.contains(c) {
                kept.push(*c);
            }
        }
        if self.exec.drop_capability.all {
            kept.clear();
        }
        kept.retain(|k| !self.exec.drop_capability.caps.contains(k));
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::keys::KEYS;
    use crate::config::{load_text, SettingsFile};

    /// A valid value of every key.
    fn sample(section: &str, key: &str) -> &'static str {
        match (section, key) {
            ("Exec", "Init") | ("Exec", "WorkingDirectory") | ("Files", "Inaccessible") => "/srv",
            ("Exec", "Parameters") => "--debug",
            ("Exec", "Environment") => "A=1",
            ("Exec", "Hostname") => "web",
            ("Exec", "KillSignal") => "SIGTERM",
            ("Exec", "Capability") | ("Exec", "DropCapability") => "CAP_NET_ADMIN",
            ("Exec", "SystemCallFilter") => "~ptrace",
            ("Exec", "ResolvConf") => "bind-host",
            ("Exec", "Timezone") => "bind",
            ("Exec", "LinkJournal") => "try-host",
            ("Exec", "User") => "root",
            ("Exec", "PrivateUsers") => "pick",
            ("Files", "Volatile") => "overlay",
            ("Files", "Bind") | ("Files", "BindReadOnly") => "/tmp:/mnt",
            ("Files", "TemporaryFileSystem") => "/scratch:size=10M",
            ("Network", "Bridge") => "br0",
            ("Network", "Zone") => "web",
            ("Network", "MACAddress") => "02:00:00:00:00:01",
            ("Network", "Address") => "10.0.0.2/24",
            ("Network", "Gateway") | ("Network", "DNS") => "10.0.0.1",
            ("Network", "Port") => "8080:80",
            ("Resources", "MemoryMax") | ("Resources", "MemoryHigh") | ("Resources", "MemorySwapMax") => "1G",
            ("Resources", "CPUQuota") => "50%",
            ("Resources", "CPUWeight") | ("Resources", "IOWeight") => "100",
            ("Resources", "TasksMax") => "512",
            ("Resources", "AllowedCPUs") => "0-1",
            _ => "yes",
        }
    }

    #[test]
    fn every_key_has_a_place() {
        let file = SettingsFile {
            path: "/etc/berth/machines.d/web.ini".into(),
            trusted: true,
        };
        for def in KEYS {
            let mut s = Settings::default();
            let mut errors = Vec::new();
            // Keys that need a link and an address get them.
            let context = match (def.section, def.key) {
                ("Network", "MACAddress" | "Address" | "Gateway" | "Port") => {
                    "VirtualEthernet=yes\nAddress=10.0.0.9/24\n"
                }
                _ => "",
            };
            let text = format!(
                "[{}]\n{}={}\n{context}",
                def.section,
                def.key,
                sample(def.section, def.key)
            );
            load_text(&mut s, &file, text.as_bytes(), &mut errors);
            assert!(errors.is_empty(), "{}: {errors:?}", def.id());
            MachineSpec::from_settings(&s).unwrap_or_else(|e| panic!("{}: {e}", def.id()));
        }
    }

    fn network(text: &str) -> Result<Network, String> {
        let file = SettingsFile {
            path: "/etc/berth/machines.d/web.ini".into(),
            trusted: true,
        };
        let mut s = Settings::default();
        let mut errors = Vec::new();
        load_text(&mut s, &file, format!("[Network]\n{text}").as_bytes(), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        MachineSpec::from_settings(&s).map(|m| m.network)
    }

    #[test]
    fn network_keys_checked_together() {
        let n = network(
            "Zone=web\nAddress=10.0.0.2/24\nAddress=fd00::2/64\nGateway=10.0.0.1\nPort=8080:80\nPort=udp:8080\n",
        )
        .unwrap();
        assert!(n.private);
        assert_eq!(n.host_side, HostSide::Zone("web".into()));
        assert_eq!(n.addresses.len(), 2);
        assert_eq!(n.ports.len(), 2);
        assert_eq!(network("VirtualEthernet=yes\n").unwrap().host_side, HostSide::Plain);
        assert_eq!(
            network("Bridge=br0\n").unwrap().host_side,
            HostSide::Bridge("br0".into())
        );
        let n = network("Private=yes\n").unwrap();
        assert!(n.private && !n.has_veth());
        let f = "/etc/berth/machines.d/web.ini";
        assert_eq!(
            network("Bridge=br0\nZone=web\n").unwrap_err(),
            format!(
                "{f}:3: [Network] Zone=web: Bridge= (br0) and Zone= both name where the machine's link goes; keep one"
            )
        );
        assert_eq!(
            network("Zone=web\nBridge=br0\n").unwrap_err(),
            format!(
                "{f}:2: [Network] Zone=web: Bridge= (br0) and Zone= both name where the machine's link goes; keep one"
            )
        );
        assert_eq!(
            network("Private=yes\nPort=8080:80\n").unwrap_err(),
            format!("{f}:3: [Network] Port=tcp:8080:80: forwarding a port needs the machine's own network: set VirtualEthernet=yes, Bridge= or Zone=")
        );
        assert_eq!(
            network("Address=10.0.0.2/24\n").unwrap_err(),
            format!("{f}:2: [Network] Address=10.0.0.2/24: this needs the machine's own link: set VirtualEthernet=yes, Bridge= or Zone=")
        );
        assert_eq!(
            network("VirtualEthernet=yes\nAddress=10.0.0.2/24\nGateway=10.0.1.1\n").unwrap_err(),
            format!("{f}:4: [Network] Gateway=10.0.1.1: not inside the subnet of any Address= (10.0.0.2/24)")
        );
        assert_eq!(
            network("VirtualEthernet=yes\nAddress=fd00::2/64\nGateway=10.0.0.1\n").unwrap_err(),
            format!("{f}:4: [Network] Gateway=10.0.0.1: not inside the subnet of any Address= (fd00::2/64)")
        );
        assert_eq!(
            network("VirtualEthernet=yes\nAddress=10.0.0.2/24\nPort=8080:80\nPort=tcp:8080:81\n").unwrap_err(),
            format!("{f}:5: [Network] Port=tcp:8080:81: host port tcp:8080 is already forwarded (to port 80 of the machine)")
        );
        assert_eq!(
            network("VirtualEthernet=yes\nAddress=10.0.0.2/24\nAddress=10.0.0.2/16\n").unwrap_err(),
            format!("{f}:4: [Network] Address=10.0.0.2/16: the address 10.0.0.2 is given twice")
        );
        assert!(network("VirtualEthernet=yes\nAddress=fd00::2/64\nGateway=fe80::1\n").is_ok());
        assert_eq!(
            network("VirtualEthernet=yes\nPort=8080\n").unwrap_err(),
            format!(
                "{f}:3: [Network] Port=tcp:8080:8080: forwarding a port needs an Address= of the machine to forward to"
            )
        );
    }

    #[test]
    fn values_land_typed() {
        let file = SettingsFile {
            path: "/etc/berth/machines.d/web.ini".into(),
            trusted: true,
        };
        let mut s = Settings::default();
        let mut errors = Vec::new();
        let text = "[Exec]\nTimezone=copy\nDropCapability=CAP_NET_RAW\nKillSignal=SIGINT\n[Files]\nVolatile=state\nReadOnly=yes\n[Resources]\nMemoryMax=1G\n";
        load_text(&mut s, &file, text.as_bytes(), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let m = MachineSpec::from_settings(&s).unwrap();
        assert_eq!(m.exec.timezone, Timezone::Copy);
        assert_eq!(m.exec.kill_signal, Some(libc::SIGINT));
        assert_eq!(m.files.volatile, Volatile::State);
        assert!(!m.files.writes_tree());
        assert_eq!(m.resources.memory_max, Some(Some(1 << 30)));
        assert!(!m.kept_capabilities().contains(&caps::Capability::CAP_NET_RAW));
        assert!(m.kept_capabilities().contains(&caps::Capability::CAP_SYS_ADMIN));
        assert!(MachineSpec::default().files.writes_tree());
    }

    #[test]
    fn choices_match_the_key_table() {
        use crate::config::keys::find;
        use crate::config::value::Kind;
        let table = |s, k| match find(s, k).unwrap().kind {
            Kind::Choice(c) => c.to_vec(),
            other => panic!("{other:?}"),
        };
        let sorted = |mut v: Vec<&'static str>| {
            v.sort();
            v
        };
        assert_eq!(sorted(table("Exec", "LinkJournal")), sorted(LinkJournal::names()));
        assert_eq!(sorted(table("Exec", "Timezone")), sorted(Timezone::names()));
        assert_eq!(sorted(table("Exec", "ResolvConf")), sorted(ResolvConf::names()));
        assert_eq!(sorted(table("Files", "Volatile")), sorted(Volatile::names()));
    }
}
