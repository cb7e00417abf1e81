//! Value types of machine-file keys: one parser each. Errors are short
//! phrases; the loader puts `FILE:LINE: [Section] Key=value:` in front.

use std::fmt;
use std::net::IpAddr;
use std::path::{Component, Path};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    AbsolutePath,
    Words,
    EnvAssignment,
    Hostname,
    Signal,
    Capabilities,
    SystemCalls,
    Choice(&'static [&'static str]),
    UserName,
    BindMount,
    TmpFs,
    InterfaceName,
    ZoneName,
    MacAddress,
    AddressPrefix,
    IpAddress,
    PortForward,
    Size,
    Percent,
    Weight,
    Count,
    CpuList,
    PrivateUsers,
}

/// A bind mount: host `source` shown at `target` inside the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: String,
    pub target: String,
    pub read_only: bool,
    pub recursive: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    /// Shown through an idmapped mount when the machine has a user
    /// namespace of its own (`idmap`), or as it is (`noidmap`, the
    /// default). Not the default: through an idmapped bind, root inside
    /// writes as the host's root, and could leave a setuid-root program in
    /// a directory other host users reach (the tree itself lies in
    /// /var/lib/machines, root's alone).
    pub idmap: bool,
}

/// PrivateUsers=: the machine's user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivateUsers {
    /// None: root inside is root on the host.
    No,
    /// A free range of 65536 IDs, claimed at start (`userns::claim`).
    Pick,
    /// A user namespace mapping IDs 0..65535 onto themselves.
    Identity,
    /// This range: the machine's 0 is the host's `base`.
    Fixed { base: u32, size: u32 },
}

impl fmt::Display for PrivateUsers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrivateUsers::No => f.write_str("no"),
            PrivateUsers::Pick => f.write_str("pick"),
            PrivateUsers::Identity => f.write_str("identity"),
            PrivateUsers::Fixed { base, size: 65536 } => write!(f, "{base}"),
            PrivateUsers::Fixed { base, size } => write!(f, "{base}:{size}"),
        }
    }
}

/// The transport protocol of a forwarded port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// [Network] Port=: a host port forwarded to a port of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub proto: Proto,
    pub host_port: u16,
    pub machine_port: u16,
}

/// An address with its prefix length ([Network] Address=).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefixed {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Prefixed {
    /// Whether `other` lies in this address's subnet (same family).
    pub fn contains(&self, other: IpAddr) -> bool {
        match (self.addr, other) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Prefixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Bool(bool),
    Text(String),
    Words(Vec<String>),
    Signal(i32),
    /// A number; None is "infinity".
    Limit(Option<u64>),
    Percent(u64),
    Bind(Bind),
    TmpFs {
        path: String,
        options: String,
    },
    Address(IpAddr),
    Prefixed(Prefixed),
    Mac([u8; 6]),
    Forward(Forward),
    Users(PrivateUsers),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => f.write_str(if *b { "yes" } else { "no" }),
            Value::Text(t) => f.write_str(t),
            Value::Words(w) => f.write_str(&w.join(" ")),
            Value::Signal(s) => write!(f, "{s}"),
            Value::Limit(None) => f.write_str("infinity"),
            Value::Limit(Some(n)) => write!(f, "{n}"),
            Value::Percent(p) => write!(f, "{p}%"),
            Value::Bind(b) => {
                let mut opts = vec![
                    if b.read_only { "ro" } else { "rw" },
                    if b.recursive { "rbind" } else { "norbind" },
                ];
                opts.extend(
                    [(b.nosuid, "nosuid"), (b.nodev, "nodev"), (b.noexec, "noexec")]
                        .iter()
                        .filter(|(on, _)| *on)
                        .map(|(_, n)| *n),
                );
                if b.idmap {
                    opts.push("idmap");
                }
                write!(f, "{}:{}:{}", b.source, b.target, opts.join(","))
            }
            Value::TmpFs { path, options } if options.is_empty() => f.write_str(path),
            Value::TmpFs { path, options } => write!(f, "{path}:{options}"),
            Value::Address(a) => write!(f, "{a}"),
            Value::Prefixed(p) => write!(f, "{p}"),
            Value::Mac(m) => f.write_str(&format_mac(m)),
            Value::Forward(p) => write!(f, "{}:{}:{}", p.proto, p.host_port, p.machine_port),
            Value::Users(u) => write!(f, "{u}"),
        }
    }
}

pub type Parsed = Result<Value, String>;

pub fn parse(kind: Kind, text: &str) -> Parsed {
    match kind {
        Kind::Bool => parse_bool(text).map(Value::Bool),
        Kind::AbsolutePath => absolute(text).map(Value::Text),
        Kind::Words => words(text).map(Value::Words),
        Kind::EnvAssignment => env_assignment(text).map(Value::Text),
        Kind::Hostname => crate::name::MachineName::parse(text)
            .map(|n| Value::Text(n.to_string()))
            .map_err(|e| e.why.replace("it ", "the hostname ")),
        Kind::Signal => crate::signals::parse(text)
            .map(Value::Signal)
            .map_err(|_| "not a signal: expected a name like SIGTERM or SIGRTMIN+3, or a number".to_string()),
        Kind::Capabilities => capabilities(text).map(Value::Words),
        Kind::SystemCalls => system_calls(text).map(Value::Words),
        Kind::Choice(choices) => {
            if choices.contains(&text) {
                Ok(Value::Text(text.to_string()))
            } else {
                Err(format!("expected one of {}", choices.join(", ")))
            }
        }
        Kind::UserName => user_name(text).map(Value::Text),
        Kind::BindMount => bind(text).map(Value::Bind),
        Kind::TmpFs => tmpfs(text),
        Kind::InterfaceName => interface_name(text, 15).map(Value::Text),
        Kind::ZoneName => interface_name(text, 12).map(Value::Text),
        Kind::MacAddress => mac(text).map(Value::Mac),
        Kind::AddressPrefix => address_prefix(text).map(Value::Prefixed),
        Kind::IpAddress => text
            .parse::<IpAddr>()
            .map(Value::Address)
            .map_err(|_| "not an IP address".into()),
        Kind::PortForward => port_forward(text).map(Value::Forward),
        Kind::Size => size(text).map(Value::Limit),
        Kind::Percent => percent(text).map(Value::Percent),
        Kind::Weight => match text.parse::<u64>() {
            Ok(n) if (1..=10000).contains(&n) => Ok(Value::Limit(Some(n))),
            _ => Err("expected a weight from 1 to 10000".into()),
        },
        Kind::Count => count(text).map(Value::Limit),
        Kind::CpuList => cpu_list(text).map(|cpus| Value::Text(format_cpu_list(&cpus))),
        Kind::PrivateUsers => private_users(text).map(Value::Users),
    }
}

/// The most IDs a machine's user namespace maps.
pub const MAX_ID_RANGE: u32 = 65536;

fn private_users(text: &str) -> Result<PrivateUsers, String> {
    const EXPECTED: &str = "expected pick, no, identity, UID or UID:RANGE";
    match text {
        "pick" => return Ok(PrivateUsers::Pick),
        "no" | "false" | "off" => return Ok(PrivateUsers::No),
        "identity" => return Ok(PrivateUsers::Identity),
        "yes" | "true" | "on" => {
            return Err(format!(
                "{EXPECTED} (\"yes\" would take the range from the tree's owner on disk; berth never reads IDs from the tree: write pick)"
            ))
        }
        _ => {}
    }
    let (base, size) = match text.split_once(':') {
        Some((b, s)) => (b, Some(s)),
        None => (text, None),
    };
    let number = |t: &str| -> Result<u32, String> {
        if t.is_empty() || !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(EXPECTED.to_string());
        }
        t.parse::<u32>().map_err(|_| format!("{t} is not a 32-bit ID"))
    };
    let base = number(base)?;
    let size = match size {
        Some(s) => number(s)?,
        None => MAX_ID_RANGE,
    };
    if base == 0 {
        return Err(
            "a range starting at 0 maps the machine's root onto the host's: write identity for that, or no".into(),
        );
    }
    if size == 0 || size > MAX_ID_RANGE {
        return Err(format!("the range must hold 1 to {MAX_ID_RANGE} IDs"));
    }
    if base.checked_add(size).is_none_or(|end| end > u32::MAX - 1) {
        return Err(format!("the range {base}:{size} goes past the last ID (4294967294)"));
    }
    Ok(PrivateUsers::Fixed { base, size })
}

pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => Err("expected a boolean: yes, no, true, false, on, off, 1 or 0".into()),
    }
}

fn absolute(text: &str) -> Result<String, String> {
    let p = Path::new(text);
    if !p.is_absolute() {
        return Err("expected an absolute path".into());
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err("the path must not contain \"..\"".into());
    }
    Ok(normalize(text))
}

/// Collapse repeated and trailing slashes: "/srv//data/" -> "/srv/data".
fn normalize(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
    format!("/{}", parts.join("/"))
}

/// Split on white space; "double" and 'single' quotes group words.
pub fn words(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("a quote is not closed".into());
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

fn env_assignment(text: &str) -> Result<String, String> {
    let unquoted = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
    let (name, _) = unquoted.split_once('=').ok_or("expected NAME=VALUE")?;
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(format!("\"{name}\" is not a valid environment variable name"));
    }
    Ok(unquoted.to_string())
}

fn capabilities(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for word in text.split_whitespace() {
        if word == "all" {
            out.push(word.to_string());
            continue;
        }
        let name = if word.starts_with("CAP_") {
            word.to_string()
        } else {
            format!("CAP_{word}")
        };
        match name.parse::<caps::Capability>() {
            Ok(c) => out.push(c.to_string()),
            Err(_) => return Err(format!("unknown capability \"{word}\"")),
        }
    }
    if out.is_empty() {
        return Err("expected capability names, like CAP_NET_ADMIN".into());
    }
    Ok(out)
}

fn system_calls(text: &str) -> Result<Vec<String>, String> {
    let words: Vec<String> = text.split_whitespace().map(String::from).collect();
    for w in &words {
        let name = w.strip_prefix('~').unwrap_or(w);
        if crate::seccomp::is_known(name) {
            continue;
        }
        return Err(if name.starts_with('@') {
            format!("\"{name}\" is not a group of system calls berth knows")
        } else {
            format!("\"{name}\" is not a system call berth can filter")
        });
    }
    if words.is_empty() {
        return Err("expected system call names".into());
    }
    Ok(words)
}

fn user_name(text: &str) -> Result<String, String> {
    let ok = text.parse::<u32>().is_ok()
        || (text.len() <= 32
            && text.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'));
    if ok {
        Ok(text.to_string())
    } else {
        Err("expected a user name or a numeric uid".into())
    }
}

/// Split on ':' except where escaped as '\:'.
fn split_colons(text: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&':') => {
                parts.last_mut().unwrap().push(':');
                chars.next();
            }
            ':' => parts.push(String::new()),
            c => parts.last_mut().unwrap().push(c),
        }
    }
    parts
}

/// Paths a bind mount may not cover inside the machine.
pub const PROTECTED_TARGETS: &[&str] = &["/", "/proc", "/sys", "/dev", "/run/host"];

fn bind(text: &str) -> Result<Bind, String> {
    let parts = split_colons(text);
    if parts.len() > 3 {
        return Err("expected SOURCE[:DESTINATION[:OPTIONS]] (write ':' in a path as '\\:')".into());
    }
    let source = absolute(&parts[0]).map_err(|e| format!("source: {e}"))?;
    if source == "/" {
        return Err("binding the host's root directory is refused".into());
    }
    let target = match parts.get(1).filter(|t| !t.is_empty()) {
        Some(t) => absolute(t).map_err(|e| format!("destination: {e}"))?,
        None => source.clone(),
    };
    for p in PROTECTED_TARGETS {
        let under = *p != "/" && target.starts_with(&format!("{p}/"));
        if target == *p || under {
            return Err(format!("binding over the machine's {p} is refused"));
        }
    }
    let mut b = Bind {
        source,
        target,
        read_only: false,
        recursive: true,
        nosuid: false,
        nodev: false,
        noexec: false,
        idmap: false,
    };
    if let Some(opts) = parts.get(2) {
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            match o {
                "ro" => b.read_only = true,
                "rw" => b.read_only = false,
                "rbind" => b.recursive = true,
                "norbind" => b.recursive = false,
                "nosuid" => b.nosuid = true,
                "nodev" => b.nodev = true,
                "noexec" => b.noexec = true,
                "idmap" => b.idmap = true,
                "noidmap" => b.idmap = false,
                other => {
                    return Err(format!(
                        "unknown option \"{other}\" (expected ro, rw, nosuid, nodev, noexec, rbind, norbind, idmap, noidmap)"
                    ))
                }
            }
        }
    }
    Ok(b)
}

fn tmpfs(text: &str) -> Parsed {
    let (path, options) = text.split_once(':').unwrap_or((text, ""));
    let path = absolute(path)?;
    if PROTECTED_TARGETS.contains(&path.as_str()) {
        return Err(format!("a temporary file system over the machine's {path} is refused"));
    }
    if options.contains(['\n', '\0']) {
        return Err("invalid mount options".into());
    }
    Ok(Value::TmpFs {
        path,
        options: options.to_string(),
    })
}

fn interface_name(text: &str, max: usize) -> Result<String, String> {
    if text.is_empty() || text.len() > max {
        return Err(format!("an interface name has 1 to {max} characters"));
    }
    if text == "."
        || text == ".."
        || text.contains(['/', ':'])
        || text.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("not a valid interface name".into());
    }
    Ok(text.to_string())
}

fn mac(text: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = text.split(':').collect();
    let mut mac = [0u8; 6];
    let ok = parts.len() == 6
        && parts
            .iter()
            .zip(mac.iter_mut())
            .all(|(p, b)| p.len() == 2 && u8::from_str_radix(p, 16).map(|v| *b = v).is_ok());
    if !ok {
        return Err("expected a MAC address like 02:00:00:12:34:56".into());
    }
    if mac[0] & 1 == 1 {
        return Err("a multicast MAC address cannot be a link's own (the first byte must be even)".into());
    }
    if mac == [0; 6] {
        return Err("the MAC address 00:00:00:00:00:00 is not a link's address".into());
    }
    Ok(mac)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn address_prefix(text: &str) -> Result<Prefixed, String> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or("expected ADDRESS/PREFIX, like 10.0.0.2/24")?;
    let addr: IpAddr = addr.parse().map_err(|_| format!("\"{addr}\" is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix.parse::<u8>() {
        Ok(p) if p <= max => p,
        _ => return Err(format!("the prefix length must be 0 to {max}")),
    };
    if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
        return Err(format!("{addr} cannot be the address of a machine's link"));
    }
    Ok(Prefixed { addr, prefix })
}

fn port_forward(text: &str) -> Result<Forward, String> {
    let (proto, rest) = match text.split_once(':') {
        Some(("tcp", rest)) => (Proto::Tcp, rest),
        Some(("udp", rest)) => (Proto::Udp, rest),
        _ => (Proto::Tcp, text),
    };
    let (host, machine) = rest.split_once(':').unwrap_or((rest, rest));
    let port = |s: &str| s.parse::<u16>().ok().filter(|p| *p > 0);
    match (port(host), port(machine)) {
        (Some(host_port), Some(machine_port)) => Ok(Forward {
            proto,
            host_port,
            machine_port,
        }),
        _ => Err("expected [tcp:|udp:]HOSTPORT[:MACHINEPORT] with ports 1 to 65535".into()),
    }
}

pub fn size(text: &str) -> Result<Option<u64>, String> {
    if text == "infinity" {
        return Ok(None);
    }
    let bad = || "expected a size like 512M or 2G (K, M, G, T: powers of 1024), or infinity".to_string();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mult: u64 = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).map(Some).ok_or_else(bad)
}

fn percent(text: &str) -> Result<u64, String> {
    match text.strip_suffix('%').map(str::parse::<u64>) {
        Some(Ok(p)) if p > 0 => Ok(p),
        _ => Err("expected a percentage like 50% (200% is two CPUs)".into()),
    }
}

/// The most CPUs a list may name (CPU numbers below this).
pub const MAX_CPUS: u32 = 8192;

/// A CPU list as cpuset.cpus writes it: "0-3,6". Sorted, without repeats.
pub fn cpu_list(text: &str) -> Result<Vec<u32>, String> {
    let bad = || format!("expected CPU numbers and ranges below {MAX_CPUS}, like 0-3,6");
    let mut cpus = Vec::new();
    for part in text.split([',', ' ']).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if a > b || b >= MAX_CPUS {
            return Err(bad());
        }
        cpus.extend(a..=b);
    }
    if cpus.is_empty() {
        return Err(bad());
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// "0-3,6" for [0, 1, 2, 3, 6].
pub fn format_cpu_list(cpus: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        while i + 1 < cpus.len() && cpus[i + 1] == cpus[i] + 1 {
            i += 1;
        }
        out.push(if cpus[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", cpus[i])
        });
        i += 1;
    }
    out.join(",")
}

fn count(text: &str) -> Result<Option<u64>, String> {
    if text == "infinity" {
        return Ok(None);
    }
    match text.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err("expected a positive number or infinity".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds() {
        let b = match parse(Kind::BindMount, "/srv/data:/data:ro,noexec,nosuid,nodev").unwrap() {
            Value::Bind(b) => b,
            v => panic!("{v:?}"),
        };
        assert_eq!(
            (b.source.as_str(), b.target.as_str(), b.read_only, b.noexec),
            ("/srv/data", "/data", true, true)
        );
        assert_eq!(
            parse(Kind::BindMount, "/srv").unwrap().to_string(),
            "/srv:/srv:rw,rbind"
        );
        assert_eq!(
            parse(Kind::BindMount, "/a\\:b:/c").unwrap().to_string(),
            "/a:b:/c:rw,rbind"
        );
        let err = |t| parse(Kind::BindMount, t).unwrap_err();
        assert_eq!(err("srv"), "source: expected an absolute path");
        assert_eq!(err("/"), "binding the host's root directory is refused");
        assert_eq!(err("/srv:/proc/sys"), "binding over the machine's /proc is refused");
        assert_eq!(err("/srv:/run/host"), "binding over the machine's /run/host is refused");
        assert_eq!(err("/srv:/"), "binding over the machine's / is refused");
        assert_eq!(
            err("/srv:/x:ro,loud"),
            "unknown option \"loud\" (expected ro, rw, nosuid, nodev, noexec, rbind, norbind, idmap, noidmap)"
        );
        assert!(parse(Kind::BindMount, "/srv:/run/hostname").is_ok());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(cpu_list("0-3,6"), Ok(vec![0, 1, 2, 3, 6]));
        assert_eq!(cpu_list("6,0-1,1"), Ok(vec![0, 1, 6]));
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        for bad in ["", "3-1", "x", "0-9000", "-1"] {
            assert!(cpu_list(bad).is_err(), "{bad}");
        }
        assert_eq!(parse(Kind::CpuList, "2,0-1"), Ok(Value::Text("0-2".into())));
    }

    #[test]
    fn scalars() {
        assert_eq!(parse(Kind::Bool, "Yes"), Ok(Value::Bool(true)));
        assert!(parse(Kind::Bool, "maybe").is_err());
        assert_eq!(parse(Kind::Size, "512M"), Ok(Value::Limit(Some(512 << 20))));
        assert_eq!(parse(Kind::Size, "infinity"), Ok(Value::Limit(None)));
        assert!(parse(Kind::Size, "12Q").is_err());
        assert_eq!(parse(Kind::Percent, "150%").unwrap().to_string(), "150%");
        assert!(parse(Kind::Weight, "0").is_err());
        assert_eq!(
            parse(Kind::AddressPrefix, "10.0.0.2/24").unwrap().to_string(),
            "10.0.0.2/24"
        );
        assert_eq!(
            parse(Kind::AddressPrefix, "fd00::2/64").unwrap().to_string(),
            "fd00::2/64"
        );
        assert_eq!(
            parse(Kind::AddressPrefix, "10.0.0.300/24").unwrap_err(),
            "\"10.0.0.300\" is not an IP address"
        );
        assert_eq!(
            parse(Kind::AddressPrefix, "fd00::2/129").unwrap_err(),
            "the prefix length must be 0 to 128"
        );
        assert_eq!(
            parse(Kind::MacAddress, "02:AA:00:00:00:01").unwrap().to_string(),
            "02:aa:00:00:00:01"
        );
        assert!(parse(Kind::MacAddress, "03:00:00:00:00:01")
            .unwrap_err()
            .contains("multicast"));
        assert_eq!(
            parse(Kind::AddressPrefix, "10.0.0.2/33").unwrap_err(),
            "the prefix length must be 0 to 32"
        );
        assert_eq!(
            parse(Kind::PortForward, "8080:80"),
            Ok(Value::Forward(Forward {
                proto: Proto::Tcp,
                host_port: 8080,
                machine_port: 80
            }))
        );
        assert_eq!(parse(Kind::PortForward, "udp:53").unwrap().to_string(), "udp:53:53");
        assert!(parse(Kind::PortForward, "sctp:53").is_err());
        let net = |t: &str| match parse(Kind::AddressPrefix, t).unwrap() {
            Value::Prefixed(p) => p,
            _ => unreachable!(),
        };
        assert!(net("10.0.0.2/24").contains("10.0.0.1".parse().unwrap()));
        assert!(!net("10.0.0.2/24").contains("10.0.1.1".parse().unwrap()));
        assert!(net("10.0.0.2/0").contains("192.168.1.1".parse().unwrap()));
        assert!(net("fd00::2/64").contains("fd00::1".parse().unwrap()));
        assert!(!net("fd00::2/64").contains("10.0.0.1".parse().unwrap()));
        assert_eq!(
            parse(Kind::Capabilities, "NET_ADMIN CAP_SYS_TIME"),
            Ok(Value::Words(vec!["CAP_NET_ADMIN".into(), "CAP_SYS_TIME".into()]))
        );
        assert_eq!(
            parse(Kind::Capabilities, "CAP_FLY").unwrap_err(),
            "unknown capability \"CAP_FLY\""
        );
        assert_eq!(parse(Kind::EnvAssignment, "\"A=1 2\""), Ok(Value::Text("A=1 2".into())));
        assert!(parse(Kind::EnvAssignment, "1A=x").is_err());
        assert_eq!(
            parse(Kind::Words, "--a 'b c' \"d\""),
            Ok(Value::Words(vec!["--a".into(), "b c".into(), "d".into()]))
        );
        assert_eq!(parse(Kind::AbsolutePath, "/srv//x/"), Ok(Value::Text("/srv/x".into())));
        assert_eq!(
            parse(Kind::AbsolutePath, "/srv/../etc").unwrap_err(),
            "the path must not contain \"..\""
        );
        assert_eq!(
            parse(Kind::Choice(&["no", "yes"]), "maybe").unwrap_err(),
            "expected one of no, yes"
        );
        assert_eq!(
            parse(Kind::TmpFs, "/var/tmp:mode=1777,size=64M").unwrap().to_string(),
            "/var/tmp:mode=1777,size=64M"
        );
    }
}
