//! The machine's network: a namespace of its own (`Private=`), a veth pair
//! (`ve-NAME` or `vb-NAME` on the host, `host0` in the machine), on an
//! existing bridge (`Bridge=`) or on a zone's bridge berth makes
//! (`vz-ZONE`), with the addresses and routes of `[Network]` configured on
//! `host0` before the init starts.
//!
//! Everything goes through rtnetlink (no `ip` subprocess), on a
//! current-thread tokio runtime of its own: berth stays single-threaded
//! (see `sys::clone_process`). Links are made in the parent's setup phase,
//! between the clone of the machine's init and `Go` ([`NetworkStep`]).
//!
//! What berth makes on the host carries its mark, the interface alias
//! `berth:NAME` (links of a machine) or `berth:zone` (a zone's bridge), so
//! what a killed run left is found and removed at the next start of the
//! machine, and a link berth did not make is never touched.

use std::cell::RefCell;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use futures_util::TryStreamExt;
use nix::fcntl::{Flock, FlockArg};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::{Digest, Sha256};

use crate::setup::{Child, ParentStep};
use crate::spec::{HostSide, Network};

/// Linux's limit on interface names (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;
/// The machine's end of its veth pair.
pub const MACHINE_IFNAME: &str = "host0";
/// The alias of a zone's bridge.
const ZONE_ALIAS: &str = "berth:zone";
/// Zone locks, below the lock directory.
const ZONES_DIR: &str = "zones";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{what}: {why}")]
    Netlink { what: String, why: String },
    #[error("{0}")]
    Refused(String),
    #[error("{what}: {}", crate::util::os_error(source))]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, NetError>;

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |e| NetError::Netlink {
        what,
        why: netlink_why(&e),
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Io { what, source }
}

/// The errno text of a netlink error ("File exists"), else its description.
fn netlink_why(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => match m.code {
            Some(code) => nix::errno::Errno::from_raw(-code.get()).desc().to_string(),
            None => "acknowledged".into(),
        },
        other => other.to_string(),
    }
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// An interface name made of `prefix` and `name`: as is when it fits in 15
/// characters, else the start of `name` and four hex digits of a hash of all
/// of it, so two long names with one start still differ, and a name always
/// gets the same interface name.
pub fn ifname(prefix: &str, name: &str) -> String {
    let full = format!("{prefix}{name}");
    if full.len() <= IFNAME_MAX {
        return full;
    }
    let hash = Sha256::digest(name.as_bytes());
    let keep = IFNAME_MAX - prefix.len() - 4;
    format!("{prefix}{}{:02x}{:02x}", &name[..keep], hash[0], hash[1])
}

/// The host's end of machine `name`'s veth pair.
pub fn host_ifname(name: &str, side: &HostSide) -> Option<String> {
    match side {
        HostSide::None => None,
        HostSide::Plain => Some(ifname("ve-", name)),
        HostSide::Bridge(_) | HostSide::Zone(_) => Some(ifname("vb-", name)),
    }
}

/// The bridge of zone `zone` (zone names have at most 12 characters).
pub fn zone_bridge(zone: &str) -> String {
    ifname("vz-", zone)
}

/// A MAC address that stays the same across restarts: derived from the
/// host's machine id, the machine's name and the end of the pair, locally
/// administered and unicast.
pub fn stable_mac(host_id: &str, name: &str, end: &str) -> [u8; 6] {
    let mut h = Sha256::new();
    for part in ["berth-mac", host_id, name, end] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let mut mac = [d[0], d[1], d[2], d[3], d[4], d[5]];
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

fn alias_of(name: &str) -> String {
    format!("berth:{name}")
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(io("starting the netlink runtime"))
}

/// A route netlink connection in the calling thread's network namespace,
/// its task spawned on `rt`.
fn connect(rt: &tokio::runtime::Runtime) -> Result<Handle> {
    let _in = rt.enter();
    let (conn, handle, _) = rtnetlink::new_connection().map_err(io("opening a route netlink socket"))?;
    rt.spawn(conn);
    Ok(handle)
}

/// A route netlink connection in the network namespace of `ns` (a pidfd
/// or a namespace file): the socket is made there, the caller's thread
/// comes back to its own namespace at once.
fn connect_in(rt: &tokio::runtime::Runtime, ns: impl AsFd, what: &str) -> Result<Handle> {
    use nix::sched::{setns, CloneFlags};
    let own: OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")
        .map_err(io("opening berth's own network namespace"))?
        .into();
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Io {
        what: format!("entering the network namespace of {what}"),
        source: e.into(),
    })?;
    let handle = connect(rt);
    if let Err(e) = setns(own, CloneFlags::CLONE_NEWNET) {
        // Going on in the machine's namespace would configure the host's
        // network inside the machine: stop here.
        eprintln!("berth: cannot return to the host's network namespace: {}", e.desc());
        crate::sys::exit_now(crate::exit::EXIT_FAILURE);
    }
    handle
}

async fn link_by_name(handle: &Handle, name: &str) -> std::result::Result<Option<LinkMessage>, rtnetlink::Error> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

fn alias(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) => Some(s.as_str()),
        _ => None,
    })
}

fn kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

fn controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

/// Check that `bridge` exists on the host and is a bridge (`berth check`
/// and the start of a machine with `Bridge=`).
pub fn check_bridge(bridge: &str) -> Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let handle = connect(&rt)?;
        bridge_index(&handle, bridge).await.map(|_| ())
    })
}

async fn bridge_index(handle: &Handle, bridge: &str) -> Result<u32> {
    let what = format!("looking up bridge \"{bridge}\"");
    match link_by_name(handle, bridge).await.map_err(nl(what))? {
        None => Err(NetError::Refused(format!(
            "the host has no interface \"{bridge}\" (create the bridge first, e.g. with systemd-networkd)"
        ))),
        Some(l) if kind(&l) != Some(&InfoKind::Bridge) => Err(NetError::Refused(format!(
            "the host's interface \"{bridge}\" is not a bridge"
        ))),
        Some(l) => Ok(l.header.index),
    }
}

/// A zone's lock, held while a machine joins the zone's bridge or the
/// last one removes it, so machines of one zone may start and stop at the
/// same time.
fn lock_zone(lock_dir: &Path, zone: &str) -> Result<Flock<std::fs::File>> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = lock_dir.join(ZONES_DIR);
    let _ = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir);
    let path = dir.join(format!("{zone}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(io(format!("opening {}", path.display())))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| NetError::Io {
        what: format!("locking {}", path.display()),
        source: e.into(),
    })
}

/// The host's end of the pair, its index, as machined wants it.
pub type LinkIndexes = Rc<RefCell<Vec<i32>>>;

/// The parent step that gives the machine its network: the pair, the
/// bridge, the addresses and routes in the machine. Undone by deleting the
/// host's end (which takes the machine's with it) and, for the last machine
/// of a zone, the zone's bridge.
pub struct NetworkStep {
    pub machine: String,
    pub network: Network,
    /// The host's machine id, for stable MAC addresses.
    pub host_id: String,
    /// Where zone locks live (lock::LOCK_DIR).
    pub lock_dir: PathBuf,
    /// Filled with the host end's index, for the registration.
    pub indexes: LinkIndexes,
    made: Option<u32>,
}

impl NetworkStep {
    pub fn new(machine: &str, network: Network, host_id: &str, lock_dir: &Path, indexes: LinkIndexes) -> Self {
        NetworkStep {
            machine: machine.to_string(),
            network,
            host_id: host_id.to_string(),
            lock_dir: lock_dir.to_path_buf(),
            indexes,
            made: None,
        }
    }

    fn host_ifname(&self) -> Option<String> {
        host_ifname(&self.machine, &self.network.host_side)
    }
}

impl ParentStep for NetworkStep {
    fn name(&self) -> String {
        match self.host_ifname() {
            Some(host) => format!("connecting machine \"{}\" to the host through {host}", self.machine),
            None => format!("setting up the network of machine \"{}\"", self.machine),
        }
    }

    fn run(&mut self, child: Child<'_>) -> anyhow::Result<Vec<OwnedFd>> {
        let rt = runtime()?;
        let inside = connect_in(&rt, child.pidfd, &format!("machine \"{}\"", self.machine))?;
        let Some(host_if) = self.host_ifname() else {
            rt.block_on(set_up(&inside, "lo"))?;
            return Ok(vec![]);
        };
        let host = connect(&rt)?;
        let n = &self.network;
        // Zone: the bridge exists (made if needed) and stays until this
        // machine's link is on it; the lock keeps the zone's last machine
        // from removing it meanwhile.
        let zone_lock = match &n.host_side {
            HostSide::Zone(zone) => Some(lock_zone(&self.lock_dir, zone)?),
            _ => None,
        };
        let bridge = rt.block_on(async {
            match &n.host_side {
                HostSide::Bridge(b) => bridge_index(&host, b).await.map(Some),
                HostSide::Zone(z) => {
                    let marker = self.lock_dir.join(ZONES_DIR).join(format!("{z}.made"));
                    zone_bridge_index(&host, &zone_bridge(z), &marker).await.map(Some)
                }
                _ => Ok(None),
            }
        })?;
        rt.block_on(remove_stale(&host, &host_if, &self.machine))?;
        let host_mac = stable_mac(&self.host_id, &self.machine, "host");
        let machine_mac = n
            .mac_address
            .unwrap_or_else(|| stable_mac(&self.host_id, &self.machine, MACHINE_IFNAME));
        let index = rt.block_on(async {
            // Both ends are made at once, the machine's directly in its
            // namespace: no "host0" ever appears on the host.
            let peer = LinkUnspec::new_with_name(MACHINE_IFNAME)
                .address(machine_mac.to_vec())
                .setns_by_pid(child.pid.as_raw() as u32)
                .build();
            let pair = LinkVeth::new(&host_if, MACHINE_IFNAME)
                .address(host_mac.to_vec())
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build();
            host.link()
                .add(pair)
                .execute()
                .await
                .map_err(nl(format!("creating the veth pair {host_if} / {MACHINE_IFNAME}")))?;
            let link = link_by_name(&host, &host_if)
                .await
                .map_err(nl(format!("looking up {host_if}")))?
                .ok_or_else(|| NetError::Refused(format!("{host_if} vanished as it was made")))?;
            // The kernel ignores an alias given at creation.
            host.link()
                .set(
                    LinkUnspec::new_with_index(link.header.index)
                        .alias(alias_of(&self.machine))
                        .build(),
                )
                .execute()
                .await
                .map_err(nl(format!("marking {host_if} as berth's")))?;
            Ok::<u32, NetError>(link.header.index)
        })?;
        self.made = Some(index);
        self.indexes.borrow_mut().push(index as i32);
        rt.block_on(async {
            let mut up = LinkUnspec::new_with_index(index).up();
            if let Some(b) = bridge {
                up = up.controller(b);
            }
            host.link()
                .set(up.build())
                .execute()
                .await
                .map_err(nl(format!("bringing {host_if} up")))?;
            // A plain pair: the host reaches the machine's addresses
            // through its end (the routes go with the link).
            if bridge.is_none() {
                for a in &n.addresses {
                    host_route(&host, index, a.addr)
                        .await
                        .map_err(nl(format!("adding the route to {} through {host_if}", a.addr)))?;
                }
            }
            configure_inside(&inside, n).await
        })?;
        drop(zone_lock);
        Ok(vec![])
    }

    fn undo(&mut self) {
        let made = self.made.take();
        let zone = match &self.network.host_side {
            HostSide::Zone(zone) => Some(zone.clone()),
            _ => None,
        };
        if made.is_none() && zone.is_none() {
            return;
        }
        let Ok(rt) = runtime() else { return };
        let Ok(host) = connect(&rt) else { return };
        let zone_lock = zone.as_ref().and_then(|z| lock_zone(&self.lock_dir, z).ok());
        let mark = alias_of(&self.machine);
        rt.block_on(async {
            // Deleting one end of a pair deletes both. The pair may be gone
            // already with the machine's namespace, and its index given to
            // a new link since: delete only a link that still carries the
            // machine's mark.
            if let Some(index) = made {
                let mine = host
                    .link()
                    .get()
                    .match_index(index)
                    .execute()
                    .try_next()
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|l| alias(&l) == Some(mark.as_str()));
                if mine {
                    let _ = host.link().del(index).execute().await;
                }
            }
            // The zone's bridge goes with its last machine (or stays, when
            // this step made it and failed before using it, only until
            // then: it is unused and removed here).
            if let (Some(zone), Some(_)) = (&zone, &zone_lock) {
                let _ = remove_zone_if_unused(&host, &zone_bridge(zone)).await;
            }
        });
        self.indexes.borrow_mut().clear();
    }
}

/// A link named like this machine's host end: berth's from a killed run
/// (removed), or someone else's (refused).
async fn remove_stale(host: &Handle, host_if: &str, machine: &str) -> Result<()> {
    let Some(old) = link_by_name(host, host_if)
        .await
        .map_err(nl(format!("looking up {host_if}")))?
    else {
        return Ok(());
    };
    if alias(&old) != Some(alias_of(machine).as_str()) {
        return Err(NetError::Refused(format!(
            "the host already has an interface \"{host_if}\" that berth did not make for machine \"{machine}\"; remove it or rename the machine"
        )));
    }
    match host.link().del(old.header.index).execute().await {
        Err(e) if errno_of(&e) != Some(libc::ENODEV) => {
            Err(nl(format!("removing {host_if} left by an earlier run"))(e))
        }
        _ => Ok(()),
    }
}

/// The zone's bridge, made (and brought up) if it does not exist. The
/// caller holds the zone's lock. The kernel takes the bridge's mark (its
/// alias) only in a second message: `marker` says berth is making the
/// bridge, so a bridge of a run killed in between (unmarked, without ports)
/// is taken over rather than refused for ever.
async fn zone_bridge_index(host: &Handle, bridge: &str, marker: &Path) -> Result<u32> {
    let lookup = || async {
        link_by_name(host, bridge)
            .await
            .map_err(nl(format!("looking up {bridge}")))
    };
    let mark = |index: u32| async move {
        host.link()
            .set(LinkUnspec::new_with_index(index).alias(ZONE_ALIAS).build())
            .execute()
            .await
            .map_err(nl(format!("marking {bridge} as berth's")))
    };
    if let Some(l) = lookup().await? {
        let ours = kind(&l) == Some(&InfoKind::Bridge)
            && match alias(&l) {
                Some(a) => a == ZONE_ALIAS,
                None => marker.exists() && !has_ports(host, l.header.index).await.unwrap_or(true),
            };
        if !ours {
            return Err(NetError::Refused(format!(
                "the host has an interface \"{bridge}\" that is not a zone bridge berth made; remove it or pick another zone"
            )));
        }
        if alias(&l).is_none() {
            mark(l.header.index).await?;
        }
        let _ = std::fs::remove_file(marker);
        return Ok(l.header.index);
    }
    std::fs::write(marker, b"").map_err(io(format!("writing {}", marker.display())))?;
    let msg = LinkBridge::new(bridge).up().build();
    host.link()
        .add(msg)
        .execute()
        .await
        .map_err(nl(format!("creating the zone bridge {bridge}")))?;
    let l = lookup()
        .await?
        .ok_or_else(|| NetError::Refused(format!("the zone bridge {bridge} vanished as it was made")))?;
    mark(l.header.index).await?;
    let _ = std::fs::remove_file(marker);
    Ok(l.header.index)
}

async fn has_ports(host: &Handle, bridge: u32) -> std::result::Result<bool, rtnetlink::Error> {
    let links: Vec<LinkMessage> = host.link().get().execute().try_collect().await?;
    Ok(links.iter().any(|l| controller(l) == Some(bridge)))
}

/// Remove a zone's bridge when no link is on it any more (the caller holds
/// the zone's lock).
async fn remove_zone_if_unused(host: &Handle, bridge: &str) -> std::result::Result<bool, rtnetlink::Error> {
    let Some(br) = link_by_name(host, bridge).await? else {
        return Ok(false);
    };
    if alias(&br) != Some(ZONE_ALIAS) {
        return Ok(false);
    }
    let index = br.header.index;
    if has_ports(host, index).await? {
        return Ok(false);
    }
    host.link().del(index).execute().await?;
    Ok(true)
}

async fn set_up(inside: &Handle, name: &str) -> Result<u32> {
    let link = link_by_name(inside, name)
        .await
        .map_err(nl(format!("looking up {name} in the machine")))?
        .ok_or_else(|| NetError::Refused(format!("the machine has no {name}")))?;
    let index = link.header.index;
    if !link.header.flags.contains(LinkFlags::Up) {
        inside
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl(format!("bringing {name} up in the machine")))?;
    }
    Ok(index)
}

async fn host_route(host: &Handle, index: u32, addr: IpAddr) -> std::result::Result<(), rtnetlink::Error> {
    let route = match addr {
        IpAddr::V4(a) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(a, 32)
            .output_interface(index)
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(a, 128)
            .output_interface(index)
            .build(),
    };
    host.route().add(route).execute().await
}

/// The index of the link the host sends `addr` out of.
async fn route_out(host: &Handle, addr: IpAddr) -> Option<u32> {
    use rtnetlink::packet_route::route::RouteAttribute;
    let query = match addr {
        IpAddr::V4(a) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(a, 32)
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(a, 128)
            .build(),
    };
    let reply = host.route().get(query).execute().try_next().await.ok()??;
    reply.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

/// lo and host0 up, Address= on host0 (IPv6 without duplicate address
/// detection, so they are usable at once), and the default route through
/// Gateway=.
async fn configure_inside(inside: &Handle, n: &Network) -> Result<()> {
    set_up(inside, "lo").await?;
    let index = set_up(inside, MACHINE_IFNAME).await?;
    for a in &n.addresses {
        let mut req = inside.address().add(index, a.addr, a.prefix);
        if a.addr.is_ipv6() {
            use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags};
            req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
            req.message_mut().attributes.push(AddressAttribute::Flags(
                rtnetlink::packet_route::address::AddressFlags::Nodad,
            ));
        }
        req.execute()
            .await
            .map_err(nl(format!("adding address {a} to {MACHINE_IFNAME} in the machine")))?;
    }
    if let Some(gw) = n.gateway {
        let route = match gw {
            IpAddr::V4(g) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .output_interface(index)
                .gateway(g)
                .build(),
            IpAddr::V6(g) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .output_interface(index)
                .gateway(g)
                .build(),
        };
        inside
            .route()
            .add(route)
            .execute()
            .await
            .map_err(nl(format!("adding the default route through {gw} in the machine")))?;
    }
    Ok(())
}

/// The parent step of `Port=`: the machine's DNAT rules in berth's
/// nf_tables table (for connections from other hosts and to the host's own
/// addresses), and the loopback proxy (for 127.0.0.1 and ::1). Undone by
/// removing the machine's chains and stopping the proxy. A machine with a
/// link and no Port= still runs it: rules a killed run of the machine
/// left behind go.
pub struct PortsStep {
    pub machine: String,
    pub forwards: Vec<crate::nft::Forward>,
    pub v4: Option<std::net::Ipv4Addr>,
    pub v6: Option<std::net::Ipv6Addr>,
    /// The host link the machine's addresses must be routed through: its
    /// end of the pair, or its bridge.
    pub via: String,
    proxy: Option<crate::proxy::ProxyProcess>,
    installed: bool,
}

impl PortsStep {
    pub fn new(machine: &str, network: &Network) -> Self {
        PortsStep {
            machine: machine.to_string(),
            forwards: network.ports.clone(),
            v4: network.addresses.iter().find_map(|a| match a.addr {
                IpAddr::V4(v4) => Some(v4),
                _ => None,
            }),
            v6: network.addresses.iter().find_map(|a| match a.addr {
                IpAddr::V6(v6) => Some(v6),
                _ => None,
            }),
            via: match &network.host_side {
                HostSide::Bridge(b) => b.clone(),
                HostSide::Zone(z) => zone_bridge(z),
                side => host_ifname(machine, side).unwrap_or_default(),
            },
            proxy: None,
            installed: false,
        }
    }
}

impl ParentStep for PortsStep {
    fn name(&self) -> String {
        format!("forwarding the ports of machine \"{}\"", self.machine)
    }

    fn run(&mut self, _child: Child<'_>) -> anyhow::Result<Vec<OwnedFd>> {
        if self.forwards.is_empty() {
            // Only rules a killed run may have left: a host without
            // nf_tables has none.
            if let Err(e) = crate::nft::remove(&self.machine) {
                tracing::debug!(machine = %self.machine, "no port rules to remove: {e}");
            }
            return Ok(vec![]);
        }
        // The targets must be the machine's: the host must send them
        // through the machine's link, else forwarded connections (and
        // local clients of 127.0.0.1) would go to whoever owns the
        // address elsewhere.
        let rt = runtime()?;
        let host = connect(&rt)?;
        let via = self.via.clone();
        rt.block_on(async {
            let link = link_by_name(&host, &via)
                .await
                .map_err(nl(format!("looking up {via}")))?
                .ok_or_else(|| NetError::Refused(format!("the host has no {via}")))?;
            for addr in self.v4.map(IpAddr::V4).into_iter().chain(self.v6.map(IpAddr::V6)) {
                let out = route_out(&host, addr).await;
                if out != Some(link.header.index) {
                    return Err(NetError::Refused(format!(
                        "Port= forwards to {addr}, but the host does not route {addr} through {via}: give {via} an address in that subnet"
                    )));
                }
            }
            Ok(())
        })?;
        drop(rt);
        // Rules of machines that no longer run (a killed run, a renamed
        // machine) go, so they cannot catch this machine's ports.
        for other in crate::nft::machines_with_rules().unwrap_or_default() {
            if other != self.machine && !crate::lock::is_running(Path::new(crate::lock::LOCK_DIR), &other) {
                let _ = crate::nft::remove(&other);
            }
        }
        // The loopback ports first: one in use is refused before any rule.
        // The proxy of a killed run of this machine dies with it, but a
        // moment later (parent-death signal): give its ports that moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let listeners = loop {
            match crate::proxy::bind(&self.forwards) {
                Err(crate::proxy::ProxyError::InUse { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                r => break r?,
            }
        };
        self.installed = true;
        crate::nft::install(&self.machine, self.v4, self.v6, &self.forwards)?;
        self.proxy = Some(crate::proxy::spawn(listeners, self.v4, self.v6)?);
        Ok(vec![])
    }

    fn undo(&mut self) {
        if let Some(mut p) = self.proxy.take() {
            p.stop();
        }
        if std::mem::take(&mut self.installed) {
            if let Err(e) = crate::nft::remove(&self.machine) {
                tracing::warn!(machine = %self.machine, "removing the port rules of machine \"{}\": {e}", self.machine);
            }
        }
    }
}

/// The global addresses of a running machine's links (lo left out), read
/// in its network namespace, as machined's GetMachineAddresses does.
pub fn machine_addresses(leader: i32) -> Result<Vec<IpAddr>> {
    use rtnetlink::packet_route::address::{AddressAttribute, AddressScope};
    let ns = std::fs::File::open(format!("/proc/{leader}/ns/net"))
        .map_err(io(format!("opening the network namespace of process {leader}")))?;
    let rt = runtime()?;
    let inside = connect_in(&rt, &ns, &format!("process {leader}"))?;
    rt.block_on(async {
        let all: Vec<_> = inside
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing the machine's addresses"))?;
        Ok(all
            .iter()
            .filter(|a| a.header.scope == AddressScope::Universe)
            .filter_map(|a| {
                a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            })
            .collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_and_stay_stable() {
        assert_eq!(ifname("ve-", "web"), "ve-web");
        assert_eq!(ifname("ve-", "twelve-chars"), "ve-twelve-chars");
        let long = ifname("vb-", "a-name-of-twenty-chr");
        assert_eq!(long.len(), 15);
        assert!(long.starts_with("vb-a-name-o"), "{long}");
        assert_eq!(long, ifname("vb-", "a-name-of-twenty-chr"));
        assert_ne!(long, ifname("vb-", "a-name-of-twenty-chX"));
        assert_eq!(zone_bridge("twelve-chars"), "vz-twelve-chars");
    }

    #[test]
    fn macs_are_stable_local_unicast() {
        let a = stable_mac("0123", "web", "host0");
        assert_eq!(a, stable_mac("0123", "web", "host0"));
        assert_ne!(a, stable_mac("0123", "web", "host"));
        assert_ne!(a, stable_mac("4567", "web", "host0"));
        assert_eq!(a[0] & 0x03, 0x02, "locally administered, unicast");
    }
}
