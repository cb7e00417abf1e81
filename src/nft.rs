//! Port forwarding of machines: DNAT rules in nf_tables, spoken over
//! netlink (no `nft` or `iptables` subprocess).
//!
//! # Layout in the kernel
//!
//! berth owns one table, `inet berth`. It is created (without
//! `NLM_F_EXCL`) by every [`install`] and never deleted: other software's
//! tables are never looked at, let alone touched, and an empty table costs
//! nothing. In it, each machine has its own two **base chains**,
//! `NAME/prerouting` (hook prerouting) and `NAME/output` (hook output),
//! both of type nat at priority -100 (dstnat). Machine names cannot contain
//! '/', so the chain names of "a" and "a.b" never mix up.
//!
//! Why per-machine base chains rather than one shared chain with a rule (or
//! a jump) per machine: everything of a machine is then found by *name*,
//! with no rule handles to remember. [`remove`] deletes the two chains, and
//! `NFT_MSG_DELCHAIN` takes the chain's rules with it (checked on Linux
//! 6.18: the chain and all its rules go in one message); [`install`], in one
//! nf_tables batch, creates the table, deletes the machine's chains if they
//! are there, creates them anew and adds the rules. The batch is one
//! transaction: either the new rules are in place or the old ones still
//! are. So rules left behind by a run that was SIGKILLed are replaced by the
//! next start of that machine, and other machines' chains are never in the
//! batch at all.
//!
//! "If they are there": a DELCHAIN of an absent chain fails with ENOENT and
//! takes the whole batch with it. `NFT_MSG_DESTROYCHAIN` (delete if
//! present) only exists since Linux 6.3 (and still fails with ENOENT when
//! the table is missing), so the chains are first listed with a GETCHAIN
//! dump and only those found are deleted. Between the dump
//! and the batch only another berth working on the *same* machine could
//! change them, which berth's machine lock rules out; should it happen
//! anyway, the batch fails as a whole with ENOENT (a chain vanished) or
//! EEXIST (chains are created with `NLM_F_EXCL`, so rules are never
//! appended to a chain someone else just made) and is redone from a fresh
//! dump.
//!
//! # The rules
//!
//! Per forward and per address family of the machine, one rule in each
//! chain. In `inet` tables `meta nfproto` picks the family; then
//!
//! ```text
//! prerouting: meta nfproto ipv4 meta l4proto tcp th dport HOST
//!             fib daddr type local dnat ip to ADDR:PORT
//! output:     meta nfproto ipv4 meta l4proto tcp th dport HOST
//!             ip daddr != 127.0.0.0/8 fib daddr type local dnat ip to ADDR:PORT
//! ```
//!
//! (`ip6 daddr != ::1` for IPv6). `fib daddr type local` limits the rule to
//! packets for one of the host's own addresses: without it, any connection
//! *through* the host (a routed network, another machine's traffic) to that
//! port on some other destination would be hijacked. The output chain is
//! what makes the host's own connections to its addresses work. It leaves
//! loopback destinations alone: a DNAT of 127.0.0.1 to a machine's address
//! needs `route_localnet` on the way out, and IPv6 has nothing like it for
//! ::1, so connections to 127.0.0.1 and ::1 are served by berth's userspace
//! proxy instead. What these rules do not do: a machine connecting to its
//! *own* forwarded port through a host address (hairpin) would need a
//! masquerade rule in postrouting as well.
//!
//! # Crates and licences
//!
//! berth is MIT OR Apache-2.0. `netlink-packet-netfilter` (MIT, the
//! rust-netlink family rtnetlink belongs to) has the nf_tables messages and
//! the expressions bitwise, cmp, immediate, lookup, meta and payload, but no
//! `nat` and no `fib`: those two are encoded here ([`nat_dnat`], [`fib`]),
//! as a few netlink attributes each, through the crate's
//! `Expressions::Other`. The alternatives were ruled out: `rustables` is
//! GPL-3.0-or-later and `nftnl` links the C libnftnl (GPL-2.0-or-later),
//! either of which would make the binary GPL; the `nftables` crate runs the
//! `nft` program. The socket is a plain `NETLINK_NETFILTER` socket from
//! `nix`, talked to synchronously: the kernel handles a batch within the
//! `send`, so its answers are queued before `send` returns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use netlink_packet_core::{
    DefaultNla, ErrorBuffer, NetlinkBuffer, NetlinkMessage, NlasIterator, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK,
    NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions, Hook, InetHookNumber,
    ListAttribute, Meta, MetaKey, NfTablesMessage, Operator, Payload, Register, RuleAttribute, RuleMessage,
    TableAttribute, TableMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::name::{InvalidName, MachineName};

/// The nf_tables table berth owns (family inet).
pub const TABLE: &str = "berth";

/// Connections to the host's `host_port` go to the machine's
/// `machine_port` ([Network] Port=, parsed by the settings loader).
pub use crate::config::value::{Forward, Proto};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(transparent)]
    Name(#[from] InvalidName),
    #[error("port forwarding of machine \"{machine}\": {why}")]
    Invalid { machine: String, why: String },
    /// The kernel (or the socket) said no.
    #[error("{what}: {}{hint}", errno.desc())]
    Kernel {
        what: String,
        errno: Errno,
        hint: &'static str,
    },
    /// The kernel's answer did not come or did not parse.
    #[error("{what}: {why}")]
    Reply { what: String, why: String },
}

/// Install the DNAT rules of machine `machine` (replacing any rules of that
/// machine an earlier, killed run left): forwards go to `v4` and/or `v6`
/// (at least one is Some). Atomic: one nf_tables batch. With no forwards,
/// the machine's chains are removed and none are made.
pub fn install(
    machine: &str,
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
    forwards: &[Forward],
) -> Result<(), NftError> {
    let name = MachineName::parse(machine)?;
    let invalid = |why: &str| NftError::Invalid {
        machine: machine.to_string(),
        why: why.to_string(),
    };
    if forwards.is_empty() {
        return remove(machine);
    }
    if v4.is_none() && v6.is_none() {
        return Err(invalid(
            "the machine has neither an IPv4 nor an IPv6 address to forward to",
        ));
    }
    if let Some(f) = forwards.iter().find(|f| f.host_port == 0 || f.machine_port == 0) {
        return Err(invalid(&format!(
            "port 0 cannot be forwarded ({}:{} to {})",
            proto_name(f.proto),
            f.host_port,
            f.machine_port
        )));
    }
    let what = format!("adding the port rules of machine \"{name}\" to nf_tables table inet {TABLE}");
    let targets: Vec<IpAddr> = v4.map(IpAddr::V4).into_iter().chain(v6.map(IpAddr::V6)).collect();
    let mut nl = Netlink::open().map_err(|f| f.into_error(&what, ""))?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let old = machine_chains(&mut nl, name.as_str()).map_err(|f| f.into_error(&what, ""))?;
        let mut batch = vec![(new_table(), NLM_F_CREATE)];
        batch.extend(old.iter().map(|chain| (delete_chain(chain), 0)));
        for hook in [ChainHook::Prerouting, ChainHook::Output] {
            let chain = hook.chain_name(name.as_str());
            batch.push((new_chain(&chain, hook), NLM_F_CREATE | NLM_F_EXCL));
            for fwd in forwards {
                for &to in &targets {
                    batch.push((new_rule(&chain, rule(hook, to, *fwd)), NLM_F_CREATE | NLM_F_APPEND));
                }
            }
        }
        match nl.batch(batch) {
            Ok(()) => return Ok(()),
            Err(Failure::Os(Errno::ENOENT | Errno::EEXIST)) if attempt < 3 => continue,
            Err(f @ Failure::Os(Errno::ENOENT)) => {
                return Err(f.into_error(
                    &what,
                    " (does this kernel have nf_tables NAT and fib, CONFIG_NFT_NAT and CONFIG_NFT_FIB_INET?)",
                ))
            }
            Err(f) => return Err(f.into_error(&what, "")),
        }
    }
}

/// Remove every rule/chain of `machine` (nothing there is fine). Never
/// touches anything that is not berth's.
pub fn remove(machine: &str) -> Result<(), NftError> {
    let name = MachineName::parse(machine)?;
    let what = format!("removing the port rules of machine \"{name}\" from nf_tables table inet {TABLE}");
    let mut nl = Netlink::open().map_err(|f| f.into_error(&what, ""))?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let chains = machine_chains(&mut nl, name.as_str()).map_err(|f| f.into_error(&what, ""))?;
        if chains.is_empty() {
            return Ok(());
        }
        match nl.batch(chains.iter().map(|chain| (delete_chain(chain), 0)).collect()) {
            Ok(()) => return Ok(()),
            Err(Failure::Os(Errno::ENOENT)) if attempt < 3 => continue,
            Err(f) => return Err(f.into_error(&what, "")),
        }
    }
}

/// For tests and diagnostics: the names of machines that have chains in
/// berth's table, sorted.
pub fn machines_with_rules() -> Result<Vec<String>, NftError> {
    let what = format!("listing the chains of nf_tables table inet {TABLE}");
    let mut nl = Netlink::open().map_err(|f| f.into_error(&what, ""))?;
    let chains = table_chains(&mut nl).map_err(|f| f.into_error(&what, ""))?;
    let mut machines: Vec<String> = chains
        .iter()
        .filter_map(|c| c.split_once('/'))
        .map(|(machine, _)| machine.to_string())
        .collect();
    machines.sort();
    machines.dedup();
    Ok(machines)
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

// ---------------------------------------------------------------------------
// Messages and rules

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChainHook {
    Prerouting,
    Output,
}

impl ChainHook {
    fn chain_name(self, machine: &str) -> String {
        match self {
            ChainHook::Prerouting => format!("{machine}/prerouting"),
            ChainHook::Output => format!("{machine}/output"),
        }
    }
}

/// The nat hooks' dstnat priority (NF_IP_PRI_NAT_DST).
const PRIORITY_DSTNAT: i32 = -100;
const NF_ACCEPT: u32 = 1;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// enum nft_payload_bases
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
/// RTN_LOCAL from linux/rtnetlink.h: what `fib ... type` yields for a local address.
const RTN_LOCAL: u32 = 2;

fn new_table() -> NfTablesMessage {
    NfTablesMessage::NewTable(TableMessage {
        attributes: vec![TableAttribute::Name(TABLE.to_string())],
    })
}

fn new_chain(name: &str, hook: ChainHook) -> NfTablesMessage {
    let number = match hook {
        ChainHook::Prerouting => InetHookNumber::PreRouting,
        ChainHook::Output => InetHookNumber::LocalOut,
    };
    NfTablesMessage::NewChain(ChainMessage {
        attributes: vec![
            ChainAttribute::Table(TABLE.to_string()),
            ChainAttribute::Name(name.to_string()),
            ChainAttribute::Hook(vec![
                Hook::Number(number.into()),
                // The kernel reads the priority as a signed 32-bit number.
                Hook::Priority(PRIORITY_DSTNAT as u32),
            ]),
            ChainAttribute::Policy(NF_ACCEPT),
            ChainAttribute::Type("nat".to_string()),
        ],
    })
}

fn delete_chain(name: &str) -> NfTablesMessage {
    NfTablesMessage::DeleteChain(ChainMessage {
        attributes: vec![
            ChainAttribute::Table(TABLE.to_string()),
            ChainAttribute::Name(name.to_string()),
        ],
    })
}

fn new_rule(chain: &str, expressions: Vec<ListAttribute<ExpressionAttribute>>) -> NfTablesMessage {
    NfTablesMessage::NewRule(RuleMessage {
        attributes: vec![
            RuleAttribute::Table(TABLE.to_string()),
            RuleAttribute::Chain(chain.to_string()),
            RuleAttribute::Expressions(expressions),
        ],
    })
}

/// The expressions of the rule forwarding `fwd` to `to` in the chain of `hook`.
fn rule(hook: ChainHook, to: IpAddr, fwd: Forward) -> Vec<ListAttribute<ExpressionAttribute>> {
    let (nfproto, addr) = match to {
        IpAddr::V4(a) => (NFPROTO_IPV4, a.octets().to_vec()),
        IpAddr::V6(a) => (NFPROTO_IPV6, a.octets().to_vec()),
    };
    let l4proto = match fwd.proto {
        Proto::Tcp => libc::IPPROTO_TCP as u8,
        Proto::Udp => libc::IPPROTO_UDP as u8,
    };
    let mut e = vec![
        // meta nfproto ipv4|ipv6
        meta(MetaKey::Nfproto),
        cmp(Operator::Equal, vec![nfproto]),
        // meta l4proto tcp|udp
        meta(MetaKey::L4Proto),
        cmp(Operator::Equal, vec![l4proto]),
        // th dport HOST
        payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
        cmp(Operator::Equal, fwd.host_port.to_be_bytes().to_vec()),
    ];
    if hook == ChainHook::Output {
        match to {
            // ip daddr != 127.0.0.0/8: the first byte of the destination
            IpAddr::V4(_) => {
                e.push(payload(NFT_PAYLOAD_NETWORK_HEADER, 16, 1));
                e.push(cmp(Operator::NotEqual, vec![127]));
            }
            // ip6 daddr != ::1
            IpAddr::V6(_) => {
                e.push(payload(NFT_PAYLOAD_NETWORK_HEADER, 24, 16));
                e.push(cmp(Operator::NotEqual, Ipv6Addr::LOCALHOST.octets().to_vec()));
            }
        }
    }
    // fib daddr type local (last: it is a route lookup)
    e.push(fib(Register::Reg1, NFT_FIB_RESULT_ADDRTYPE, NFTA_FIB_F_DADDR));
    e.push(cmp(Operator::Equal, RTN_LOCAL.to_ne_bytes().to_vec()));
    // dnat ip|ip6 to ADDR:PORT
    e.push(immediate(Register::Reg1, addr));
    e.push(immediate(Register::Reg2, fwd.machine_port.to_be_bytes().to_vec()));
    e.push(nat_dnat(nfproto, Register::Reg1, Register::Reg2));
    e
}

fn meta(key: MetaKey) -> ListAttribute<ExpressionAttribute> {
    Expressions::Meta(vec![Meta::DestinationRegister(Register::Reg1), Meta::Key(key)]).into()
}

fn cmp(op: Operator, data: Vec<u8>) -> ListAttribute<ExpressionAttribute> {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(op),
        Cmp::Data(DataAttribute::Value(data)),
    ])
    .into()
}

fn payload(base: u32, offset: u32, len: u32) -> ListAttribute<ExpressionAttribute> {
    Expressions::Payload(vec![
        Payload::DestinationRegister(Register::Reg1),
        Payload::Base(base),
        Payload::Offset(offset),
        Payload::Len(len),
    ])
    .into()
}

fn immediate(reg: Register, data: Vec<u8>) -> ListAttribute<ExpressionAttribute> {
    use netlink_packet_netfilter::nftables::Immediate;
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(reg),
        Immediate::Data(DataAttribute::Value(data)),
    ])
    .into()
}

/// A netlink attribute holding a big-endian u32, as nf_tables wants them.
fn be32(kind: u16, value: u32) -> DefaultNla {
    DefaultNla::new(kind, value.to_be_bytes().to_vec())
}

// enum nft_fib_attributes, nft_fib_result, nft_fib_flags (linux/netfilter/nf_tables.h)
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;

/// The `fib` expression (not in netlink-packet-netfilter 0.4): look the
/// packet up in the routing table and put `result` (for ADDRTYPE an RTN_*
/// value, host byte order) into `dreg`.
fn fib(dreg: Register, result: u32, flags: u32) -> ListAttribute<ExpressionAttribute> {
    Expressions::Other {
        expression_type: "fib".to_string(),
        attributes: vec![
            be32(NFTA_FIB_DREG, dreg.into()),
            be32(NFTA_FIB_RESULT, result),
            be32(NFTA_FIB_FLAGS, flags),
        ],
    }
    .into()
}

// enum nft_nat_attributes, nft_nat_types (linux/netfilter/nf_tables.h),
// NF_NAT_RANGE_* (linux/netfilter/nf_nat.h)
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_FLAGS: u16 = 7;
const NFT_NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_MAP_IPS: u32 = 1 << 0;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 1 << 1;

/// The `nat` expression (not in netlink-packet-netfilter 0.4), as a DNAT
/// to the address in `addr` (4 or 16 bytes after `family`) and the port in
/// `port` (2 bytes, network order). In an inet table `family` says which
/// of IPv4 and IPv6 the rule translates.
fn nat_dnat(family: u8, addr: Register, port: Register) -> ListAttribute<ExpressionAttribute> {
    Expressions::Other {
        expression_type: "nat".to_string(),
        attributes: vec![
            be32(NFTA_NAT_TYPE, NFT_NAT_DNAT),
            be32(NFTA_NAT_FAMILY, family.into()),
            be32(NFTA_NAT_REG_ADDR_MIN, addr.into()),
            be32(NFTA_NAT_REG_PROTO_MIN, port.into()),
            be32(NFTA_NAT_FLAGS, NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED),
        ],
    }
    .into()
}

// ---------------------------------------------------------------------------
// Looking at the table

/// The names of the chains in berth's table (none if there is no table).
fn table_chains(nl: &mut Netlink) -> Result<Vec<String>, Failure> {
    const NFTA_CHAIN_TABLE: u16 = 1;
    const NFTA_CHAIN_NAME: u16 = 3;
    let replies = nl.dump(NfTablesMessage::GetChain(ChainMessage { attributes: vec![] }))?;
    let mut names = Vec::new();
    for (family, attrs) in replies {
        if family != NFPROTO_INET {
            continue;
        }
        let (mut table, mut name) = (None, None);
        for nla in NlasIterator::new(&attrs[..]) {
            let nla = nla.map_err(|e| Failure::Reply(format!("a chain in the dump does not parse: {e}")))?;
            match nla.kind() {
                NFTA_CHAIN_TABLE => table = Some(c_string(nla.value())),
                NFTA_CHAIN_NAME => name = Some(c_string(nla.value())),
                _ => {}
            }
        }
        if let (Some(table), Some(name)) = (table, name) {
            if table == TABLE {
                names.push(name);
            }
        }
    }
    Ok(names)
}

/// The chains of `machine` in berth's table.
fn machine_chains(nl: &mut Netlink, machine: &str) -> Result<Vec<String>, Failure> {
    let prefix = format!("{machine}/");
    Ok(table_chains(nl)?
        .into_iter()
        .filter(|c| c.starts_with(&prefix))
        .collect())
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

// ---------------------------------------------------------------------------
// The netlink socket

/// What went wrong, before it is told what was being done.
#[derive(Debug)]
enum Failure {
    Os(Errno),
    Reply(String),
}

impl Failure {
    fn into_error(self, what: &str, hint: &'static str) -> NftError {
        match self {
            Failure::Os(errno) => NftError::Kernel {
                what: what.to_string(),
                errno,
                hint,
            },
            Failure::Reply(why) => NftError::Reply {
                what: what.to_string(),
                why,
            },
        }
    }
}

impl From<Errno> for Failure {
    fn from(e: Errno) -> Self {
        Failure::Os(e)
    }
}

/// How long to wait for the kernel's answer; it is normally there at once.
const ANSWER_TIMEOUT_S: i64 = 10;

/// One message of a reply: its type, flags, sequence number and payload.
struct Reply<'a> {
    kind: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

impl Reply<'_> {
    /// For NLMSG_ERROR and NLMSG_DONE: the error they carry, if any.
    fn error(&self) -> Result<Option<Errno>, Failure> {
        let code = match self.kind {
            NLMSG_ERROR => ErrorBuffer::new_checked(self.payload)
                .map_err(|e| Failure::Reply(format!("a netlink error message does not parse: {e}")))?
                .code()
                .map_or(0, |c| c.get()),
            NLMSG_DONE => match self.payload.get(..4) {
                Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
                None => 0,
            },
            _ => 0,
        };
        Ok((code < 0).then(|| Errno::from_raw(-code)))
    }
}

/// Splits one datagram from the kernel into its messages.
fn replies(buf: &[u8]) -> Result<Vec<Reply<'_>>, Failure> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let nb = NetlinkBuffer::new_checked(rest)
            .map_err(|e| Failure::Reply(format!("a netlink message does not parse: {e}")))?;
        let len = nb.length() as usize;
        out.push(Reply {
            kind: nb.message_type(),
            flags: nb.flags(),
            seq: nb.sequence_number(),
            payload: nb.payload(),
        });
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    Ok(out)
}

struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    fn open() -> Result<Self, Failure> {
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        socket::setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::seconds(ANSWER_TIMEOUT_S))?;
        Ok(Netlink {
            fd,
            seq: 0,
            // The kernel fills dump datagrams up to 32 KiB.
            buf: vec![0; 64 * 1024],
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, bytes: &[u8]) -> Result<(), Failure> {
        let sent = loop {
            match socket::send(self.fd.as_raw_fd(), bytes, MsgFlags::empty()) {
                Err(Errno::EINTR) => continue,
                other => break other?,
            }
        };
        if sent != bytes.len() {
            return Err(Failure::Reply(format!(
                "only {sent} of {} bytes were sent",
                bytes.len()
            )));
        }
        Ok(())
    }

    /// Receives one datagram into `self.buf`, returning its length.
    fn recv(&mut self) -> Result<usize, Failure> {
        loop {
            match socket::recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_TRUNC) {
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    return Err(Failure::Reply(format!(
                        "no answer from the kernel within {ANSWER_TIMEOUT_S} s"
                    )))
                }
                Err(e) => return Err(e.into()),
                Ok(n) if n > self.buf.len() => {
                    return Err(Failure::Reply(format!(
                        "an answer of {n} bytes did not fit the {} byte buffer",
                        self.buf.len()
                    )))
                }
                Ok(n) => return Ok(n),
            }
        }
    }

    /// Dumps the inet family's objects of the kind `request` asks for:
    /// each one's nfgenmsg family and attributes.
    fn dump(&mut self, request: NfTablesMessage) -> Result<Vec<(u8, Vec<u8>)>, Failure> {
        for _ in 0..5 {
            let seq = self.next_seq();
            let mut bytes = Vec::new();
            encode(
                &mut bytes,
                request.clone(),
                NetfilterProtoFamily::Inet,
                0,
                seq,
                NLM_F_REQUEST | NLM_F_DUMP,
            );
            self.send(&bytes)?;
            let mut out = Vec::new();
            let mut interrupted = false;
            let mut done = false;
            while !done {
                let n = self.recv()?;
                for reply in replies(&self.buf[..n])? {
                    if reply.seq != seq {
                        continue;
                    }
                    interrupted |= reply.flags & NLM_F_DUMP_INTR != 0;
                    match reply.kind {
                        NLMSG_ERROR | NLMSG_DONE => {
                            if let Some(errno) = reply.error()? {
                                return Err(Failure::Os(errno));
                            }
                            done = true;
                        }
                        k if k >> 8 == NFNL_SUBSYS_NFTABLES => {
                            if reply.payload.len() < 4 {
                                return Err(Failure::Reply("a dumped object is too short".to_string()));
                            }
                            out.push((reply.payload[0], reply.payload[4..].to_vec()));
                        }
                        _ => {}
                    }
                }
            }
            // The ruleset changed during the dump: it may be incomplete.
            if !interrupted {
                return Ok(out);
            }
        }
        Err(Failure::Reply("the ruleset kept changing during the dump".to_string()))
    }

    /// Sends `messages` (each with its extra NLM_F_* flags) as one
    /// nf_tables transaction and waits for its outcome.
    ///
    /// Only the last message asks for an ACK: the kernel reports every
    /// failing message anyway, and all answers are queued before the last
    /// one's (with an ACK per message a big batch could overrun the receive
    /// buffer). An error about the batch as a whole (its commit, a
    /// malformed batch) comes with the sequence number of the batch begin.
    fn batch(&mut self, messages: Vec<(NfTablesMessage, u16)>) -> Result<(), Failure> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::new();
        let begin = self.next_seq();
        encode(
            &mut bytes,
            ControlMessage::BatchBegin,
            NetfilterProtoFamily::Unspec,
            NFNL_SUBSYS_NFTABLES,
            begin,
            NLM_F_REQUEST,
        );
        let count = messages.len();
        let mut last = begin;
        for (i, (message, flags)) in messages.into_iter().enumerate() {
            last = self.next_seq();
            let ack = if i + 1 == count { NLM_F_ACK } else { 0 };
            encode(
                &mut bytes,
                message,
                NetfilterProtoFamily::Inet,
                0,
                last,
                NLM_F_REQUEST | flags | ack,
            );
        }
        let end = self.next_seq();
        encode(
            &mut bytes,
            ControlMessage::BatchEnd,
            NetfilterProtoFamily::Unspec,
            NFNL_SUBSYS_NFTABLES,
            end,
            NLM_F_REQUEST,
        );
        if bytes.len() > 128 * 1024 {
            // The default send buffer (wmem_default) is about 208 KiB.
            socket::setsockopt(&self.fd, sockopt::SndBufForce, &(2 * bytes.len()))?;
        }
        self.send(&bytes)?;

        let mut first_error = None;
        loop {
            let n = self.recv()?;
            let mut finished = false;
            for reply in replies(&self.buf[..n])? {
                if reply.kind != NLMSG_ERROR || !(begin..=end).contains(&reply.seq) {
                    continue;
                }
                let error = reply.error()?;
                if first_error.is_none() {
                    first_error = error;
                }
                if reply.seq == last || (error.is_some() && (reply.seq == begin || reply.seq == end)) {
                    finished = true;
                }
            }
            if finished {
                break;
            }
        }
        match first_error {
            Some(errno) => Err(Failure::Os(errno)),
            None => Ok(()),
        }
    }
}

/// Appends one nfnetlink message to `out`.
fn encode(
    out: &mut Vec<u8>,
    inner: impl Into<NetfilterMessageInner>,
    family: NetfilterProtoFamily,
    res_id: u16,
    seq: u32,
    flags: u16,
) {
    let mut msg = NetlinkMessage::from(NetfilterMessage::new(NetfilterHeader::new(family, 0, res_id), inner));
    msg.header.flags = flags;
    msg.header.sequence_number = seq;
    msg.finalize();
    let start = out.len();
    out.resize(start + msg.buffer_len(), 0);
    msg.serialize(&mut out[start..]);
    out.resize(out.len().next_multiple_of(4), 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::{ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
    use std::process::Command;
    use std::sync::mpsc;
    use std::time::Duration;

    use netlink_packet_core::Parseable;
    use nix::sched::{unshare, CloneFlags};

    /// Runs `f` on a thread of its own in a network namespace of its own,
    /// so neither the host's network nor the test harness's thread is
    /// touched. Not being root is a failure, not a skip.
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(|| {
            enter_new_netns();
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    fn enter_new_netns() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the nf_tables tests need root (a network namespace of their own and CAP_NET_ADMIN in it); \
             run cargo test as root"
        );
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET) for the test's own network namespace");
    }

    /// Test fixtures only: the product code never runs `ip`.
    fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("running ip (iproute2)");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    fn tcp(host_port: u16, machine_port: u16) -> Forward {
        Forward {
            proto: Proto::Tcp,
            host_port,
            machine_port,
        }
    }

    fn udp(host_port: u16, machine_port: u16) -> Forward {
        Forward {
            proto: Proto::Udp,
            host_port,
            machine_port,
        }
    }

    /// Berth's rules as the kernel lists them: chain name to the rules in
    /// it, each as the names of its expressions.
    fn rules_by_chain() -> BTreeMap<String, Vec<Vec<String>>> {
        let mut nl = Netlink::open().expect("netlink socket");
        let mut chains: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
        for chain in table_chains(&mut nl).expect("chain dump") {
            chains.entry(chain).or_default();
        }
        let dump = nl
            .dump(NfTablesMessage::GetRule(RuleMessage { attributes: vec![] }))
            .expect("rule dump");
        for (_, attrs) in dump {
            let rule = RuleMessage::parse(&attrs[..]).expect("a dumped rule parses");
            let (mut table, mut chain, mut names) = (String::new(), String::new(), Vec::new());
            for attr in rule.attributes {
                match attr {
                    RuleAttribute::Table(t) => table = t,
                    RuleAttribute::Chain(c) => chain = c,
                    RuleAttribute::Expressions(list) => {
                        for element in list {
                            if let ListAttribute::Element(parts) = element {
                                for part in parts {
                                    if let ExpressionAttribute::Name(n) = part {
                                        names.push(n);
                                    }
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            if table == TABLE {
                chains.entry(chain).or_default().push(names);
            }
        }
        chains
    }

    fn rule_counts() -> BTreeMap<String, usize> {
        rules_by_chain().into_iter().map(|(c, r)| (c, r.len())).collect()
    }

    fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(c, n)| (c.to_string(), *n)).collect()
    }

    fn berth_table_exists() -> bool {
        let mut nl = Netlink::open().expect("netlink socket");
        nl.dump(NfTablesMessage::GetTable(TableMessage { attributes: vec![] }))
            .expect("table dump")
            .iter()
            .any(|(family, attrs)| {
                *family == NFPROTO_INET
                    && NlasIterator::new(&attrs[..])
                        .flatten()
                        .any(|nla| nla.kind() == 1 && c_string(nla.value()) == TABLE)
            })
    }

    #[test]
    fn chains_per_machine_replaced_and_removed() {
        in_new_netns(|| {
            // Nothing yet: no table, and removing is fine.
            assert_eq!(machines_with_rules().unwrap(), Vec::<String>::new());
            remove("ghost").unwrap();
            assert!(!berth_table_exists(), "remove must not create the table");

            let a4 = Some(Ipv4Addr::new(10, 0, 0, 2));
            let a6 = Some("fd00::2".parse().unwrap());
            install("a", a4, a6, &[tcp(80, 8080), udp(53, 5353)]).unwrap();
            install("b", Some(Ipv4Addr::new(10, 0, 0, 3)), None, &[tcp(81, 80)]).unwrap();
            assert_eq!(machines_with_rules().unwrap(), ["a", "b"]);
            // 2 forwards x 2 families for a, 1 x 1 for b, in both chains.
            assert_eq!(
                rule_counts(),
                counts(&[
                    ("a/output", 4),
                    ("a/prerouting", 4),
                    ("b/output", 1),
                    ("b/prerouting", 1)
                ])
            );

            // What the kernel kept is what was meant, fib and nat included.
            let rules = rules_by_chain();
            let names = |chain: &str| rules[chain][0].join(" ");
            assert_eq!(
                names("b/prerouting"),
                "meta cmp meta cmp payload cmp fib cmp immediate immediate nat"
            );
            assert_eq!(
                names("b/output"),
                "meta cmp meta cmp payload cmp payload cmp fib cmp immediate immediate nat"
            );

            // A new run of b replaces its rules (the kill of the old run left
            // them there); a's stay as they are.
            install(
                "b",
                Some(Ipv4Addr::new(10, 0, 0, 3)),
                None,
                &[tcp(81, 80), tcp(82, 80), udp(83, 53)],
            )
            .unwrap();
            assert_eq!(
                rule_counts(),
                counts(&[
                    ("a/output", 4),
                    ("a/prerouting", 4),
                    ("b/output", 3),
                    ("b/prerouting", 3)
                ])
            );
            install(
                "b",
                Some(Ipv4Addr::new(10, 0, 0, 3)),
                None,
                &[tcp(81, 80), tcp(82, 80), udp(83, 53)],
            )
            .unwrap();
            assert_eq!(
                rule_counts()["b/prerouting"],
                3,
                "no duplicates when the same rules are installed again"
            );

            // Deleting a's chains takes their rules with them; b's stay.
            remove("a").unwrap();
            assert_eq!(rule_counts(), counts(&[("b/output", 3), ("b/prerouting", 3)]));
            assert_eq!(machines_with_rules().unwrap(), ["b"]);
            remove("a").unwrap();

            // A machine whose name is a prefix of another's is its own.
            install("b.c", Some(Ipv4Addr::new(10, 0, 0, 4)), None, &[tcp(90, 90)]).unwrap();
            remove("b").unwrap();
            assert_eq!(machines_with_rules().unwrap(), ["b.c"]);

            // No forwards: nothing of the machine stays; the table does.
            install("b.c", Some(Ipv4Addr::new(10, 0, 0, 4)), None, &[]).unwrap();
            assert_eq!(machines_with_rules().unwrap(), Vec::<String>::new());
            assert!(berth_table_exists(), "the table is never deleted");
        });
    }

    #[test]
    fn refuses_what_cannot_be_installed() {
        // Checked before any netlink, so this needs no root.
        let e = install("a/b", Some(Ipv4Addr::LOCALHOST), None, &[tcp(1, 1)]).unwrap_err();
        assert!(matches!(e, NftError::Name(_)), "{e}");
        let e = install("a", None, None, &[tcp(1, 1)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "port forwarding of machine \"a\": the machine has neither an IPv4 nor an IPv6 address to forward to"
        );
        let e = install("a", Some(Ipv4Addr::LOCALHOST), None, &[tcp(0, 1)]).unwrap_err();
        assert!(e.to_string().contains("port 0"), "{e}");
    }

    #[test]
    fn errors_are_one_line_with_the_errno_text() {
        in_new_netns(|| {
            // Capabilities are per thread: this one stops being allowed.
            caps::drop(None, caps::CapSet::Effective, caps::Capability::CAP_NET_ADMIN).unwrap();
            let e = install("web", Some(Ipv4Addr::new(10, 0, 0, 2)), None, &[tcp(80, 80)]).unwrap_err();
            assert!(
                matches!(
                    e,
                    NftError::Kernel {
                        errno: Errno::EPERM,
                        ..
                    }
                ),
                "{e:?}"
            );
            assert_eq!(
                e.to_string(),
                "adding the port rules of machine \"web\" to nf_tables table inet berth: Operation not permitted"
            );
            let e = remove("web").unwrap_err();
            assert_eq!(
                e.to_string(),
                "removing the port rules of machine \"web\" from nf_tables table inet berth: Operation not permitted"
            );
        });
    }

    /// Connects to `to` over TCP and sends one byte.
    /// A connection that should work: patient, as a loaded host (a fresh
    /// veth's first ARP and SYN under a parallel build) can take seconds.
    fn connect(to: SocketAddr) -> std::io::Result<()> {
        connect_within(to, Duration::from_secs(5))
    }

    /// A connection that should fail: brief, so it does not wait long.
    fn connect_briefly(to: SocketAddr) -> std::io::Result<()> {
        connect_within(to, Duration::from_millis(500))
    }

    fn connect_within(to: SocketAddr, patience: Duration) -> std::io::Result<()> {
        let mut s = TcpStream::connect_timeout(&to, patience)?;
        s.write_all(b"x")?;
        Ok(())
    }

    /// Accepts one connection that must be waiting; returns its peer.
    fn accept_now(l: &TcpListener) -> Option<SocketAddr> {
        l.set_nonblocking(true).unwrap();
        match l.accept() {
            Ok((mut s, peer)) => {
                s.set_nonblocking(false).unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).unwrap();
                Some(peer)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => None,
            Err(e) => panic!("accept: {e}"),
        }
    }

    #[test]
    fn connections_from_the_host_itself_reach_the_machine() {
        in_new_netns(|| {
            // The "machine" addresses are local here, on lo; 10.99.0.0/24 and
            // fd00:99::/64 are routed out of a veth whose other end nobody
            // answers on. (Not a blackhole route: connect() would fail at its
            // route lookup, before any packet reached the output hook.)
            ip(&["link", "set", "lo", "up"]);
            ip(&["addr", "add", "10.9.0.1/32", "dev", "lo"]);
            ip(&["-6", "addr", "add", "fd00:9::1/128", "dev", "lo", "nodad"]);
            ip(&["link", "add", "t0", "type", "veth", "peer", "name", "t1"]);
            ip(&["link", "set", "t0", "up"]);
            ip(&["link", "set", "t1", "up"]);
            ip(&["route", "add", "10.99.0.0/24", "dev", "t0"]);
            ip(&["-6", "route", "add", "fd00:99::/64", "dev", "t0"]);
            let m4: Ipv4Addr = "10.9.0.1".parse().unwrap();
            let m6: Ipv6Addr = "fd00:9::1".parse().unwrap();
            let l4 = TcpListener::bind((m4, 9090)).unwrap();
            let l6 = TcpListener::bind((m6, 9090)).unwrap();
            let u4 = UdpSocket::bind((m4, 9053)).unwrap();
            u4.set_read_timeout(Some(Duration::from_secs(2))).unwrap();

            install("web", Some(m4), Some(m6), &[tcp(8080, 9090), udp(8053, 9053)]).unwrap();

            connect((m4, 8080).into()).expect("10.9.0.1:8080 goes to the machine's :9090");
            assert!(accept_now(&l4).is_some());
            connect((m6, 8080).into()).expect("[fd00:9::1]:8080 goes to the machine's :9090");
            assert!(accept_now(&l6).is_some());
            let client = UdpSocket::bind((m4, 0)).unwrap();
            client.send_to(b"ping", (m4, 8053)).unwrap();
            let mut b = [0u8; 8];
            let (n, _) = u4.recv_from(&mut b).expect("udp 8053 arrives at the machine's 9053");
            assert_eq!(&b[..n], b"ping");

            // Loopback is left to the userspace proxy.
            for to in ["127.0.0.1:8080", "[::1]:8080"] {
                match connect(to.parse().unwrap()) {
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                    other => panic!("{to} must not be rewritten (nothing listens there): {other:?}"),
                }
            }
            // Not a local destination: not this rule's business.
            for to in ["10.99.0.5:8080", "[fd00:99::5]:8080"] {
                assert!(
                    connect_briefly(to.parse().unwrap()).is_err(),
                    "{to} must not be rewritten"
                );
            }
            assert_eq!(accept_now(&l4), None);
            assert_eq!(accept_now(&l6), None);

            remove("web").unwrap();
            let e = connect((m4, 8080).into()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "after remove: {e}");
        });
    }

    #[test]
    fn connections_from_outside_reach_the_machine() {
        in_new_netns(|| {
            // This namespace is the host; a second one, on a thread of its
            // own behind a veth pair, is a client elsewhere on the network.
            ip(&["link", "set", "lo", "up"]);
            ip(&["addr", "add", "10.9.0.1/32", "dev", "lo"]);
            ip(&["-6", "addr", "add", "fd00:9::1/128", "dev", "lo", "nodad"]);
            let m4: Ipv4Addr = "10.9.0.1".parse().unwrap();
            let m6: Ipv6Addr = "fd00:9::1".parse().unwrap();
            let l4 = TcpListener::bind((m4, 9090)).unwrap();
            let l6 = TcpListener::bind((m6, 9090)).unwrap();
            install("web", Some(m4), Some(m6), &[tcp(8080, 9090)]).unwrap();

            let (tid_tx, tid_rx) = mpsc::channel();
            let (go_tx, go_rx) = mpsc::channel::<()>();
            let client = std::thread::spawn(move || {
                enter_new_netns();
                tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
                go_rx.recv().unwrap();
                ip(&["link", "set", "lo", "up"]);
                ip(&["addr", "add", "10.77.0.2/24", "dev", "t1"]);
                ip(&["-6", "addr", "add", "fd00:77::2/64", "dev", "t1", "nodad"]);
                ip(&["link", "set", "t1", "up"]);
                ip(&["route", "add", "10.99.0.0/24", "via", "10.77.0.1"]);
                ip(&["-6", "route", "add", "fd00:99::/64", "via", "fd00:77::1"]);
                let to = |s: &str| s.parse::<SocketAddr>().unwrap();
                [
                    connect(to("10.77.0.1:8080")).map_err(|e| e.to_string()),
                    connect(to("[fd00:77::1]:8080")).map_err(|e| e.to_string()),
                    // Through the host to elsewhere: must not be hijacked.
                    connect_briefly(to("10.99.0.5:8080")).map_err(|e| e.to_string()),
                    connect_briefly(to("[fd00:99::5]:8080")).map_err(|e| e.to_string()),
                ]
            });
            let tid = tid_rx.recv().unwrap().to_string();
            ip(&["link", "add", "t0", "type", "veth", "peer", "name", "t1"]);
            ip(&["link", "set", "t1", "netns", &tid]);
            ip(&["addr", "add", "10.77.0.1/24", "dev", "t0"]);
            ip(&["-6", "addr", "add", "fd00:77::1/64", "dev", "t0", "nodad"]);
            ip(&["link", "set", "t0", "up"]);
            go_tx.send(()).unwrap();
            let [c4, c6, away4, away6] = client.join().unwrap_or_else(|p| std::panic::resume_unwind(p));

            c4.expect("10.77.0.1:8080 from outside goes to the machine's :9090");
            c6.expect("[fd00:77::1]:8080 from outside goes to the machine's :9090");
            let peer4 = accept_now(&l4).expect("the machine's listener got the IPv4 connection");
            assert_eq!(peer4.ip(), "10.77.0.2".parse::<IpAddr>().unwrap());
            let peer6 = accept_now(&l6).expect("the machine's listener got the IPv6 connection");
            assert_eq!(peer6.ip(), "fd00:77::2".parse::<IpAddr>().unwrap());
            assert!(away4.is_err(), "10.99.0.5:8080 through the host must not be rewritten");
            assert!(
                away6.is_err(),
                "[fd00:99::5]:8080 through the host must not be rewritten"
            );
            assert_eq!(accept_now(&l4), None);
            assert_eq!(accept_now(&l6), None);
        });
    }
}
