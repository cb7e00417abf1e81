//! The loopback proxy of forwarded ports (`Port=`).
//!
//! Connections from other hosts reach a machine's forwarded ports through
//! nf_tables DNAT (`nft`). Connections to the host's own 127.0.0.1 and ::1
//! cannot be DNATed cleanly: a packet to 127.0.0.1 rewritten to the
//! machine's address would leave the loopback interface with a loopback
//! source, which the kernel drops as a martian unless
//! `net.ipv4.conf.*.route_localnet` is set, and that sysctl weakens the
//! whole host (anything on the bridge could then reach services bound to
//! 127.0.0.1 only). IPv6 has no route_localnet at all. So, like Docker's
//! userland proxy (docker-proxy), berth listens on 127.0.0.1 and ::1 itself
//! and relays every connection (TCP) or client (UDP) to the machine's
//! address. The machine sees the host's address on its link as the peer,
//! not the client's loopback address.
//!
//! The proxy is a forked child process of the supervisor, not a thread:
//! the supervisor must stay single-threaded, since it clones the machine's
//! init again on every reboot and refuses to while it has a second thread
//! (`sys::clone_process`). The child dies with the supervisor
//! (parent-death signal), keeps only its listening sockets, drops every
//! capability and serves on a current-thread tokio runtime of its own.
//!
//! The listening sockets are bound in the supervisor before the fork, so a
//! port already in use fails the start synchronously, with the port named.

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::socket::{self, MsgFlags};
use nix::unistd::{ForkResult, Pid};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{AbortHandle, JoinSet};

use crate::sys;
use crate::util::os_error;

pub use crate::nft::{Forward, Proto};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{proto} port {port} on {addr} is already in use on the host")]
    InUse { proto: Proto, port: u16, addr: IpAddr },
    #[error("{proto} port {port} is already in use on the host")]
    InUseSomewhere { proto: Proto, port: u16 },
    #[error("cannot listen on {proto} port {port} on {addr}: {}", os_error(source))]
    Listen {
        proto: Proto,
        port: u16,
        addr: IpAddr,
        source: io::Error,
    },
    #[error("{proto} port {port} of the host is forwarded twice")]
    Twice { proto: Proto, port: u16 },
    #[error("{proto} port 0 of the host cannot be forwarded")]
    PortZero { proto: Proto },
    #[error("the port forwarding proxy needs an address of the machine, and it has none")]
    NoTarget,
    #[error("starting the port forwarding proxy: {}", os_error(.0))]
    Start(io::Error),
}

/// One bound socket: 127.0.0.1 or ::1, one protocol, one port.
#[derive(Debug)]
struct Listener {
    proto: Proto,
    addr: SocketAddr,
    machine_port: u16,
    fd: OwnedFd,
}

/// The proxy's sockets, bound (and, for TCP, listening) but not served yet.
#[derive(Debug)]
pub struct Listeners {
    all: Vec<Listener>,
}

impl Listeners {
    /// What is listened on (for the log): ::1 is absent on a host without
    /// IPv6.
    pub fn addresses(&self) -> Vec<(Proto, SocketAddr)> {
        self.all.iter().map(|l| (l.proto, l.addr)).collect()
    }
}

/// Bind 127.0.0.1 and ::1 for every forward (in the supervisor, before
/// `spawn`). ::1 is skipped when the host has no IPv6.
pub fn bind(forwards: &[Forward]) -> Result<Listeners, ProxyError> {
    let mut all = Vec::with_capacity(forwards.len() * 2);
    for (i, f) in forwards.iter().enumerate() {
        if f.host_port == 0 {
            return Err(ProxyError::PortZero { proto: f.proto });
        }
        if forwards[..i]
            .iter()
            .any(|g| g.proto == f.proto && g.host_port == f.host_port)
        {
            return Err(ProxyError::Twice {
                proto: f.proto,
                port: f.host_port,
            });
        }
        // A host service on this port on any address would lose it to the
        // DNAT rules without a word: a bind of the wildcard address fails
        // when any address has the port.
        for any in [IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V6(Ipv6Addr::UNSPECIFIED)] {
            match listen_on(f, any) {
                Ok(probe) => drop(probe),
                Err(ProxyError::InUse { proto, port, .. }) => {
                    return Err(ProxyError::InUseSomewhere { proto, port });
                }
                // No IPv6 on this host: nothing listens there.
                Err(_) => {}
            }
        }
        all.push(listen_on(f, IpAddr::V4(Ipv4Addr::LOCALHOST))?);
        match listen_on(f, IpAddr::V6(Ipv6Addr::LOCALHOST)) {
            Ok(l) => all.push(l),
            Err(ProxyError::Listen { source, .. })
                if matches!(source.raw_os_error(), Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT)) =>
            {
                tracing::debug!(
                    "not forwarding {} port {} on ::1: the host has no IPv6 ({})",
                    f.proto,
                    f.host_port,
                    os_error(&source)
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Listeners { all })
}

/// One socket, with std's options: close-on-exec, and for TCP
/// SO_REUSEADDR (a restarted machine's port can be listened on again while
/// connections of its last run linger in TIME_WAIT; it does not let two
/// listeners share a port). IPV6_V6ONLY is left as it is: it only matters
/// for a socket bound to `::`, the one address IPv4-mapped traffic can
/// reach, and std cannot set it before bind anyway.
fn listen_on(f: &Forward, ip: IpAddr) -> Result<Listener, ProxyError> {
    let addr = SocketAddr::new(ip, f.host_port);
    let bound = match f.proto {
        Proto::Tcp => std::net::TcpListener::bind(addr).map(OwnedFd::from),
        Proto::Udp => std::net::UdpSocket::bind(addr).map(OwnedFd::from),
    };
    let fd = bound.map_err(|e| match e.raw_os_error() {
        Some(libc::EADDRINUSE) => ProxyError::InUse {
            proto: f.proto,
            port: f.host_port,
            addr: ip,
        },
        _ => ProxyError::Listen {
            proto: f.proto,
            port: f.host_port,
            addr: ip,
            source: e,
        },
    })?;
    Ok(Listener {
        proto: f.proto,
        addr,
        machine_port: f.machine_port,
        fd,
    })
}

/// The running proxy. Nothing else may reap it: the supervisor waits for
/// its machine's leader only, and `stop` waits for this pid.
#[derive(Debug)]
pub struct ProxyProcess {
    pid: Pid,
    reaped: bool,
}

impl ProxyProcess {
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// SIGKILL the proxy and reap it; idempotent. Until reaped, the pid
    /// cannot be reused, so the signal reaches the proxy or its zombie.
    pub fn stop(&mut self) {
        if self.reaped {
            return;
        }
        let _ = nix::sys::signal::kill(self.pid, Signal::SIGKILL);
        while let Err(Errno::EINTR) = nix::sys::wait::waitpid(self.pid, None) {}
        self.reaped = true;
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.stop()
    }
}

/// Fork the proxy serving `listeners`, forwarding to `target_v4` or, when
/// the machine has no IPv4 address, `target_v6`. Both loopbacks go to the
/// same address. The supervisor keeps no copy of the sockets.
pub fn spawn(
    listeners: Listeners,
    target_v4: Option<Ipv4Addr>,
    target_v6: Option<Ipv6Addr>,
) -> Result<ProxyProcess, ProxyError> {
    let target = match (target_v4, target_v6) {
        (Some(v4), _) => IpAddr::V4(v4),
        (None, Some(v6)) => IpAddr::V6(v6),
        (None, None) => return Err(ProxyError::NoTarget),
    };
    // First for its clear message (fork_single_threaded only says EAGAIN).
    sys::ensure_single_threaded().map_err(ProxyError::Start)?;
    start(listeners, target, sys::fork_single_threaded)
}

/// `spawn` with the fork to use (tests fork beside the test harness).
fn start(
    listeners: Listeners,
    target: IpAddr,
    fork: fn() -> nix::Result<ForkResult>,
) -> Result<ProxyProcess, ProxyError> {
    let parent = nix::unistd::getpid();
    match fork() {
        Ok(ForkResult::Parent { child }) => {
            drop(listeners);
            Ok(ProxyProcess {
                pid: child,
                reaped: false,
            })
        }
        Ok(ForkResult::Child) => {
            // Never returns: nothing of the supervisor's copy of itself
            // (its bus connection, its stdio buffers) is dropped or run here.
            let code = match child_main(listeners, target, parent) {
                Ok(never) => match never {},
                Err(e) => {
                    // Not `tracing`: its journal socket was closed, and the
                    // number may now be a client's connection.
                    let _ = writeln!(io::stderr(), "berth-proxy: {e}");
                    1
                }
            };
            sys::exit_now(code)
        }
        Err(e) => Err(ProxyError::Start(e.into())),
    }
}

/// The uid and gid the proxy runs as (the kernel's overflow id, "nobody").
const NOBODY: u32 = 65534;

/// How much the proxy takes on: at most `tcp_connections` connections per
/// TCP listener (more wait in the kernel's backlog), `udp_clients` clients
/// per UDP listener (datagrams of more are dropped), each forgotten after
/// `udp_idle` without a datagram either way.
#[derive(Debug, Clone, Copy)]
struct Limits {
    tcp_connections: usize,
    udp_clients: usize,
    udp_idle: Duration,
}

const LIMITS: Limits = Limits {
    tcp_connections: 1024,
    udp_clients: 1024,
    udp_idle: Duration::from_secs(60),
};

/// How long a connection to the machine may take before the client is
/// closed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The proxy process, from right after the fork.
fn child_main(listeners: Listeners, target: IpAddr, parent: Pid) -> Result<Infallible, String> {
    // Die with the supervisor; if it died before this was set, go now.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("setting the parent-death signal: {e}"))?;
    if nix::unistd::getppid() != parent {
        sys::exit_now(0);
    }
    // Events of dependencies go nowhere (see the error in `start`).
    let _quiet = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
    // stdin and stdout may be the supervisor's terminal; stderr stays (the
    // journal, for errors).
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("opening /dev/null: {}", os_error(&e)))?;
    nix::unistd::dup2_stdin(&null)
        .and_then(|()| nix::unistd::dup2_stdout(&null))
        .map_err(|e| format!("redirecting stdin and stdout: {}", e.desc()))?;
    drop(null);
    let keep: Vec<RawFd> = listeners.all.iter().map(|l| l.fd.as_raw_fd()).collect();
    sys::close_all_except(&keep).map_err(|e| format!("closing the supervisor's descriptors: {}", os_error(&e)))?;
    // The supervisor blocks the signals it reads from its signalfd. It
    // installs no handler (so SIGTERM's action is the default); SIGPIPE
    // stays ignored, as Rust set it: a write to a closed connection must be
    // an error, not the proxy's end.
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| format!("unblocking signals: {}", e.desc()))?;
    let _ = nix::sys::prctl::set_name(c"berth-proxy");
    raise_fd_limit(&listeners, LIMITS);
    // Sockets are all it needs from here on: not even root's uid (which
    // could still signal root's processes and write root's files).
    let nobody_uid = nix::unistd::Uid::from_raw(NOBODY);
    let nobody_gid = nix::unistd::Gid::from_raw(NOBODY);
    nix::unistd::setgroups(&[])
        .and_then(|()| nix::unistd::setresgid(nobody_gid, nobody_gid, nobody_gid))
        .and_then(|()| nix::unistd::setresuid(nobody_uid, nobody_uid, nobody_uid))
        .map_err(|e| format!("becoming nobody: {}", e.desc()))?;
    // The uid change cleared the parent-death signal: again, and check
    // once more that the supervisor is still there.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("setting the parent-death signal: {e}"))?;
    if nix::unistd::getppid() != parent {
        sys::exit_now(0);
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("setting no_new_privs: {}", e.desc()))?;
    for set in [
        caps::CapSet::Ambient,
        caps::CapSet::Inheritable,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| format!("dropping capabilities: {e}"))?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("starting the runtime: {}", os_error(&e)))?;
    rt.block_on(serve(listeners, target, LIMITS))
        .map_err(|e| format!("serving: {}", os_error(&e)))
}

/// Make room for every connection the limits allow (the soft limit of
/// descriptors is often 1024; the hard one is the ceiling).
fn raise_fd_limit(listeners: &Listeners, limits: Limits) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let need: u64 = 64
        + listeners
            .all
            .iter()
            .map(|l| match l.proto {
                Proto::Tcp => 2 * limits.tcp_connections as u64,
                Proto::Udp => limits.udp_clients as u64,
            })
            .sum::<u64>();
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < need {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, need.min(hard), hard);
        }
    }
}

/// Serve every listener until the process is killed. Returns only on
/// failure.
async fn serve(listeners: Listeners, target: IpAddr, limits: Limits) -> io::Result<Infallible> {
    let mut tasks = JoinSet::new();
    for l in listeners.all {
        let to = SocketAddr::new(target, l.machine_port);
        match l.proto {
            Proto::Tcp => {
                let listener = std::net::TcpListener::from(l.fd);
                listener.set_nonblocking(true)?;
                let listener = TcpListener::from_std(listener)?;
                tasks.spawn(serve_tcp(listener, to, limits));
            }
            Proto::Udp => {
                let listener = std::net::UdpSocket::from(l.fd);
                listener.set_nonblocking(true)?;
                let listener = UdpSocket::from_std(listener)?;
                tasks.spawn(serve_udp(listener, to, limits));
            }
        }
    }
    match tasks.join_next().await {
        Some(Err(e)) => Err(io::Error::other(format!("a listener stopped: {e}"))),
        _ => Err(io::Error::other("a listener stopped")),
    }
}

async fn serve_tcp(listener: TcpListener, target: SocketAddr, limits: Limits) {
    let mut connections = JoinSet::new();
    loop {
        if connections.len() >= limits.tcp_connections {
            connections.join_next().await;
            continue;
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    connections.spawn(relay_tcp(client, target));
                }
                // Out of descriptors or memory: retry later rather than spin.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // A client that gave up while queued (ECONNABORTED), ...
                Err(_) => {}
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One connection: to the machine, then both ways until both are done
/// (an end-of-file one way is passed on as a shutdown of writing). If the
/// machine cannot be reached, the client is closed.
async fn relay_tcp(mut client: TcpStream, target: SocketAddr) {
    let Ok(Ok(mut machine)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await else {
        return;
    };
    // The proxy adds no delay of its own; the client chose its own.
    let _ = client.set_nodelay(true);
    let _ = machine.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut machine).await;
}

thread_local! {
    /// The one datagram buffer of the process (it has one thread, and no
    /// borrow lasts across an `.await`).
    static DATAGRAM: RefCell<Vec<u8>> = RefCell::new(vec![0; 65536]);
}

/// A UDP client: its socket connected to the machine, the task passing
/// the machine's replies back, and when it last sent or got a datagram.
struct UdpClient {
    socket: Arc<UdpSocket>,
    replies: AbortHandle,
    last: Arc<AtomicU64>,
}

impl Drop for UdpClient {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

/// Milliseconds since `epoch` (for `UdpClient::last`).
fn millis_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

async fn serve_udp(listener: UdpSocket, target: SocketAddr, limits: Limits) {
    let listener = Arc::new(listener);
    let epoch = Instant::now();
    let mut clients: HashMap<SocketAddr, UdpClient> = HashMap::new();
    let mut sweep = tokio::time::interval((limits.udp_idle / 4).max(Duration::from_millis(10)));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ready = listener.readable() => {
                if ready.is_err() {
                    return;
                }
                relay_datagrams(&listener, target, limits, epoch, &mut clients);
            }
            _ = sweep.tick() => expire(&mut clients, limits, epoch),
        }
    }
}

fn expire(clients: &mut HashMap<SocketAddr, UdpClient>, limits: Limits, epoch: Instant) {
    let now = millis_since(epoch);
    let idle = limits.udp_idle.as_millis() as u64;
    clients.retain(|_, c| now.saturating_sub(c.last.load(Ordering::Relaxed)) < idle);
}

/// Pass on what the listener has queued, each datagram from its client's
/// socket. A datagram that does not fit in a full socket buffer is dropped,
/// as a network would.
fn relay_datagrams(
    listener: &Arc<UdpSocket>,
    target: SocketAddr,
    limits: Limits,
    epoch: Instant,
    clients: &mut HashMap<SocketAddr, UdpClient>,
) {
    DATAGRAM.with_borrow_mut(|buf| loop {
        let (n, from) = match listener.try_recv_from(buf) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => continue,
        };
        if !clients.contains_key(&from) {
            if clients.len() >= limits.udp_clients {
                expire(clients, limits, epoch);
            }
            if clients.len() >= limits.udp_clients {
                continue;
            }
            let Ok(socket) = connected_udp(target) else {
                continue;
            };
            let socket = Arc::new(socket);
            let last = Arc::new(AtomicU64::new(0));
            let replies = tokio::spawn(relay_replies(
                Arc::clone(listener),
                Arc::clone(&socket),
                from,
                Arc::clone(&last),
                epoch,
            ))
            .abort_handle();
            clients.insert(from, UdpClient { socket, replies, last });
        }
        let client = &clients[&from];
        client.last.store(millis_since(epoch), Ordering::Relaxed);
        // send(2) itself, not `try_send`: tokio's readiness of a socket
        // made a moment ago says "not writable" until the reactor has run,
        // which would drop every client's first datagram.
        let _ = socket::send(client.socket.as_raw_fd(), &buf[..n], MsgFlags::MSG_DONTWAIT);
    })
}

/// A socket of its own for a new client, connected to the machine (so only
/// the machine's replies arrive on it).
fn connected_udp(target: SocketAddr) -> io::Result<UdpSocket> {
    let any: IpAddr = match target {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = std::net::UdpSocket::bind(SocketAddr::new(any, 0))?;
    socket.connect(target)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// The machine's replies to one client, sent to it from the listener.
async fn relay_replies(
    listener: Arc<UdpSocket>,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    last: Arc<AtomicU64>,
    epoch: Instant,
) {
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        DATAGRAM.with_borrow_mut(|buf| loop {
            match socket.try_recv(buf) {
                Ok(n) => {
                    last.store(millis_since(epoch), Ordering::Relaxed);
                    let _ = listener.try_send_to(&buf[..n], client);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // The machine's port is closed (ICMP port unreachable): it
                // may open later.
                Err(_) => {}
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::net::{TcpStream as StdTcp, UdpSocket as StdUdp};
    use std::process::Command;

    const WAIT: Duration = Duration::from_secs(5);

    /// A TCP and a UDP echo server on 127.0.0.1 (the "machine"), on threads
    /// that last as long as the test process.
    fn echo_servers() -> (u16, u16) {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = StdUdp::bind("127.0.0.1:0").unwrap();
        let ports = (tcp.local_addr().unwrap().port(), udp.local_addr().unwrap().port());
        std::thread::spawn(move || {
            for mut conn in tcp.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut back = conn.try_clone().unwrap();
                    let _ = io::copy(&mut conn, &mut back);
                    let _ = back.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        std::thread::spawn(move || {
            let mut buf = [0; 65536];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], from);
            }
        });
        ports
    }

    /// A port free on 127.0.0.1 and ::1 for `proto` (a moment ago).
    fn free_port(proto: Proto) -> u16 {
        loop {
            let port = match proto {
                Proto::Tcp => std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port(),
                Proto::Udp => StdUdp::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(),
            };
            let v6_free = match proto {
                Proto::Tcp => std::net::TcpListener::bind(("::1", port)).is_ok(),
                Proto::Udp => StdUdp::bind(("::1", port)).is_ok(),
            };
            if v6_free || !has_ipv6_loopback() {
                return port;
            }
        }
    }

    /// Whether lo has ::1 (/proc/net/if_inet6: address, index, prefix
    /// length, scope, flags, interface).
    fn has_ipv6_loopback() -> bool {
        std::fs::read_to_string("/proc/net/if_inet6")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("00000000000000000000000000000001") && l.ends_with(" lo"))
    }

    /// The loopback addresses the proxy must listen on here.
    fn loopbacks() -> Vec<IpAddr> {
        let mut all = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        if has_ipv6_loopback() {
            all.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
        }
        all
    }

    fn tcp_echoes(to: SocketAddr, text: &[u8]) {
        let mut conn = StdTcp::connect_timeout(&to, WAIT).unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
        conn.set_read_timeout(Some(WAIT)).unwrap();
        conn.write_all(text).unwrap();
        // A half-close reaches the machine, whose half-close comes back.
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        conn.read_to_end(&mut back)
            .unwrap_or_else(|e| panic!("reading from {to}: {e}"));
        assert_eq!(back, text, "through {to}");
    }

    fn udp_client(to: SocketAddr) -> StdUdp {
        let any: IpAddr = if to.is_ipv4() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv6Addr::LOCALHOST.into()
        };
        let s = StdUdp::bind((any, 0)).unwrap();
        s.connect(to).unwrap();
        s
    }

    /// The reply to one datagram, or the error (a timeout) waiting for it.
    fn udp_round_trip(client: &StdUdp, text: &[u8], wait: Duration) -> io::Result<Vec<u8>> {
        client.set_read_timeout(Some(wait)).unwrap();
        client.send(text)?;
        let mut buf = [0; 2048];
        let n = client.recv(&mut buf)?;
        Ok(buf[..n].to_vec())
    }

    /// `serve` on a runtime of its own thread, without a fork (the fork is
    /// tested in `spawned_proxy_serves_until_stopped`); ends when dropped.
    struct Served {
        stop: Option<std::os::unix::net::UnixStream>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            drop(self.stop.take());
            if let Some(t) = self.thread.take() {
                t.join().unwrap();
            }
        }
    }

    fn served(forwards: &[Forward], limits: Limits) -> (Served, Vec<(Proto, SocketAddr)>) {
        let listeners = bind(forwards).unwrap();
        let addresses = listeners.addresses();
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .unwrap();
            rt.block_on(async move {
                theirs.set_nonblocking(true).unwrap();
                let stop = tokio::net::UnixStream::from_std(theirs).unwrap();
                tokio::select! {
                    r = serve(listeners, IpAddr::V4(Ipv4Addr::LOCALHOST), limits) => panic!("serve ended: {r:?}"),
                    _ = stop.readable() => {}
                }
            });
        });
        let s = Served {
            stop: Some(ours),
            thread: Some(thread),
        };
        (s, addresses)
    }

    #[test]
    fn tcp_and_udp_through_both_loopbacks() {
        let (tcp_machine, udp_machine) = echo_servers();
        let (tcp, udp) = (free_port(Proto::Tcp), free_port(Proto::Udp));
        let forwards = [
            Forward {
                proto: Proto::Tcp,
                host_port: tcp,
                machine_port: tcp_machine,
            },
            Forward {
                proto: Proto::Udp,
                host_port: udp,
                machine_port: udp_machine,
            },
        ];
        let (proxy, addresses) = served(&forwards, LIMITS);
        let mut want = Vec::new();
        for ip in loopbacks() {
            want.push((Proto::Tcp, SocketAddr::new(ip, tcp)));
            want.push((Proto::Udp, SocketAddr::new(ip, udp)));
        }
        want.sort_by_key(|(p, a)| (*p as u8, *a));
        let mut got = addresses.clone();
        got.sort_by_key(|(p, a)| (*p as u8, *a));
        assert_eq!(
            got,
            want,
            "::1 must be listened on exactly when lo has it (/proc/net/if_inet6: {})",
            has_ipv6_loopback()
        );
        for ip in loopbacks() {
            tcp_echoes(SocketAddr::new(ip, tcp), b"hello over tcp");
            // Large enough to need several reads and writes each way.
            let big: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
            tcp_echoes(SocketAddr::new(ip, tcp), &big);
            let a = udp_client(SocketAddr::new(ip, udp));
            let b = udp_client(SocketAddr::new(ip, udp));
            for i in 0..3 {
                let text = format!("datagram {i} from a");
                assert_eq!(udp_round_trip(&a, text.as_bytes(), WAIT).unwrap(), text.as_bytes());
                let text = format!("datagram {i} from b");
                assert_eq!(udp_round_trip(&b, text.as_bytes(), WAIT).unwrap(), text.as_bytes());
            }
        }
        drop(proxy);
        // Stopping closes the listeners.
        let refused = StdTcp::connect(("127.0.0.1", tcp)).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn a_closed_machine_port_closes_the_client() {
        // A port nothing listens on (it was free a moment ago).
        let closed = free_port(Proto::Tcp);
        let host = free_port(Proto::Tcp);
        let (_proxy, _) = served(
            &[Forward {
                proto: Proto::Tcp,
                host_port: host,
                machine_port: closed,
            }],
            LIMITS,
        );
        let mut conn = StdTcp::connect(("127.0.0.1", host)).unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0; 16];
        assert_eq!(conn.read(&mut buf).unwrap(), 0, "the client gets end-of-file");
    }

    #[test]
    fn connections_beyond_the_limit_wait_their_turn() {
        let (tcp_machine, _) = echo_servers();
        let host = free_port(Proto::Tcp);
        let limits = Limits {
            tcp_connections: 1,
            ..LIMITS
        };
        let (_proxy, _) = served(
            &[Forward {
                proto: Proto::Tcp,
                host_port: host,
                machine_port: tcp_machine,
            }],
            limits,
        );
        let mut first = StdTcp::connect(("127.0.0.1", host)).unwrap();
        first.set_read_timeout(Some(WAIT)).unwrap();
        first.write_all(b"1").unwrap();
        let mut buf = [0; 1];
        first.read_exact(&mut buf).unwrap();
        // The second is queued in the kernel, not served.
        let mut second = StdTcp::connect(("127.0.0.1", host)).unwrap();
        second.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        second.write_all(b"2").unwrap();
        let e = second.read_exact(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
        // Until the first ends.
        drop(first);
        second.set_read_timeout(Some(WAIT)).unwrap();
        second.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"2");
    }

    #[test]
    fn udp_clients_beyond_the_limit_wait_for_one_to_expire() {
        let (_, udp_machine) = echo_servers();
        let host = free_port(Proto::Udp);
        let limits = Limits {
            udp_clients: 1,
            udp_idle: Duration::from_millis(400),
            ..LIMITS
        };
        let (_proxy, _) = served(
            &[Forward {
                proto: Proto::Udp,
                host_port: host,
                machine_port: udp_machine,
            }],
            limits,
        );
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, host));
        let (a, b) = (udp_client(to), udp_client(to));
        assert_eq!(udp_round_trip(&a, b"a", WAIT).unwrap(), b"a");
        let e = udp_round_trip(&b, b"b", Duration::from_millis(150)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(udp_round_trip(&b, b"b", WAIT).unwrap(), b"b");
    }

    #[test]
    fn ports_in_use_fail_with_the_port_named() {
        let (tcp, udp) = (free_port(Proto::Tcp), free_port(Proto::Udp));
        let forwards = [
            Forward {
                proto: Proto::Tcp,
                host_port: tcp,
                machine_port: 80,
            },
            Forward {
                proto: Proto::Udp,
                host_port: udp,
                machine_port: 53,
            },
        ];
        let first = bind(&forwards).unwrap();
        let e = bind(&forwards).unwrap_err().to_string();
        assert_eq!(e, format!("tcp port {tcp} is already in use on the host"));
        let e = bind(&forwards[1..]).unwrap_err().to_string();
        assert_eq!(e, format!("udp port {udp} is already in use on the host"));
        drop(first);
        // A host service on another address of the host has the port too:
        // the DNAT rules would take it from that service without a word.
        let elsewhere = std::net::TcpListener::bind(("127.0.0.2", tcp)).unwrap();
        let e = bind(&forwards).unwrap_err().to_string();
        assert_eq!(e, format!("tcp port {tcp} is already in use on the host"));
        drop(elsewhere);
        let first = bind(&forwards).unwrap();
        drop(first);

        if has_ipv6_loopback() {
            let taken = std::net::TcpListener::bind(("::1", tcp)).unwrap();
            let e = bind(&forwards).unwrap_err().to_string();
            assert_eq!(e, format!("tcp port {tcp} is already in use on the host"));
            drop(taken);
        }
        // All or nothing: the failed binds left nothing bound.
        drop(bind(&forwards).unwrap());

        let twice = [forwards[0], forwards[0]];
        assert_eq!(
            bind(&twice).unwrap_err().to_string(),
            format!("tcp port {tcp} of the host is forwarded twice")
        );
    }

    #[test]
    fn spawn_needs_an_address_and_a_single_thread() {
        let forwards = [Forward {
            proto: Proto::Tcp,
            host_port: free_port(Proto::Tcp),
            machine_port: 80,
        }];
        let e = spawn(bind(&forwards).unwrap(), None, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the port forwarding proxy needs an address of the machine, and it has none"
        );
        // The test harness has several threads: berth's own check refuses.
        let e = spawn(bind(&forwards).unwrap(), Some(Ipv4Addr::LOCALHOST), None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("starting the port forwarding proxy: berth has "),
            "{e}"
        );
    }

    /// Set in the re-executed test binary: "TCP_PORT,UDP_PORT" of the
    /// outer process's echo servers.
    const REEXEC: &str = "BERTH_TEST_PROXY_SPAWN";

    /// `spawn` forks, which is sound only while the process has one thread
    /// (see `sys::clone_process`); a test process never has (the harness
    /// runs each test on a thread of its own, and the main thread waits
    /// for it, even with --test-threads=1). So the fork happens in this
    /// test binary executed again to run this one test alone, where the
    /// only other thread is the harness's main thread, parked in a channel
    /// receive while it waits for the test and so holding no lock; glibc's
    /// fork resets the allocator's and stdio's locks in the child, and the
    /// child touches no other lock of the test process before its own
    /// runtime runs. `sys::fork_in_test_harness` refuses a third thread, so
    /// the echo servers (threads) run in the outer process.
    #[test]
    fn spawned_proxy_serves_until_stopped() {
        let name = concat!(module_path!(), "::spawned_proxy_serves_until_stopped");
        let name = name.split_once("::").unwrap().1;
        if let Ok(ports) = std::env::var(REEXEC) {
            let (tcp, udp) = ports.split_once(',').unwrap();
            return in_reexecuted_harness(tcp.parse().unwrap(), udp.parse().unwrap());
        }
        let (tcp, udp) = echo_servers();
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads=1", "--nocapture"])
            .env(REEXEC, format!("{tcp},{udp}"))
            // Not piped: a proxy that outlived its parent would keep the
            // pipe open, and this wait would never end (its stdout is
            // /dev/null).
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the re-executed test failed (its stderr is above):\n{stdout}"
        );
        // The second proxy it left running died with its parent.
        let orphan: i32 = stdout
            .lines()
            .find_map(|l| l.split_once("orphan proxy: ").map(|(_, pid)| pid))
            .expect("the orphan's pid")
            .parse()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        while alive(orphan) {
            assert!(Instant::now() < deadline, "proxy {orphan} outlived its parent");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether `pid` exists and is not a zombie.
    fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !matches!(stat.rsplit_once(')').map(|(_, r)| r.trim_start()), Some(r) if r.starts_with('Z')),
            Err(_) => false,
        }
    }

    fn status_field(pid: i32, field: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
            .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
            .trim()
            .to_string()
    }

    fn socket_inodes(pid: &str) -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| p.starts_with("socket:"))
            .collect()
    }

    fn in_reexecuted_harness(tcp_machine: u16, udp_machine: u16) {
        // As in the supervisor: these are read from a signalfd there.
        let mut blocked = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGCHLD, Signal::SIGHUP] {
            blocked.add(s);
        }
        blocked.thread_block().unwrap();
        // Something of the parent's the child must not keep.
        let marker = tempfile::NamedTempFile::new().unwrap();
        let marker_socket = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let (tcp, udp) = (free_port(Proto::Tcp), free_port(Proto::Udp));
        let forwards = [
            Forward {
                proto: Proto::Tcp,
                host_port: tcp,
                machine_port: tcp_machine,
            },
            Forward {
                proto: Proto::Udp,
                host_port: udp,
                machine_port: udp_machine,
            },
        ];
        let before = socket_inodes("self");
        let listeners = bind(&forwards).unwrap();
        let count = listeners.all.len();
        let mut proxy = start(listeners, IpAddr::V4(Ipv4Addr::LOCALHOST), sys::fork_in_test_harness).unwrap();
        let pid = proxy.pid();
        assert_eq!(socket_inodes("self"), before, "the parent kept a listening socket");

        for ip in loopbacks() {
            tcp_echoes(SocketAddr::new(ip, tcp), b"through the process");
            let c = udp_client(SocketAddr::new(ip, udp));
            assert_eq!(udp_round_trip(&c, b"datagram", WAIT).unwrap(), b"datagram");
        }
        assert_eq!(count, 2 * loopbacks().len());
        // It served, so its set-up is done.
        assert_eq!(status_field(pid, "Name"), "berth-proxy");
        assert_eq!(status_field(pid, "SigBlk"), "0000000000000000");
        let term = 1u64 << (libc::SIGTERM - 1);
        for field in ["SigIgn", "SigCgt"] {
            let mask = u64::from_str_radix(&status_field(pid, field), 16).unwrap();
            assert_eq!(mask & term, 0, "SIGTERM in {field}");
        }
        assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
        assert_eq!(status_field(pid, "CapPrm"), "0000000000000000");
        assert_eq!(status_field(pid, "NoNewPrivs"), "1");
        let fds: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| std::fs::read_link(e.unwrap().path()).unwrap())
            .collect();
        assert!(!fds.iter().any(|f| f == marker.path()), "the proxy kept {fds:?}");
        let stdin = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
        assert_eq!(stdin, std::path::Path::new("/dev/null"));
        let marker_socket = format!("socket:[{}]", nix::sys::stat::fstat(&marker_socket).unwrap().st_ino);
        assert!(
            !socket_inodes(&pid.to_string()).contains(&marker_socket),
            "the proxy kept {marker_socket}: {fds:?}"
        );

        proxy.stop();
        proxy.stop();
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "proxy {pid} was not reaped"
        );
        let e = StdTcp::connect(("127.0.0.1", tcp)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        // A closed UDP port answers with ICMP port unreachable.
        let c = udp_client(SocketAddr::from((Ipv4Addr::LOCALHOST, udp)));
        let e = udp_round_trip(&c, b"anyone?", WAIT).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        drop(proxy);

        // A second one, left running: it must die with this process.
        let port = free_port(Proto::Tcp);
        let listeners = bind(&[Forward {
            proto: Proto::Tcp,
            host_port: port,
            machine_port: tcp_machine,
        }])
        .unwrap();
        let orphan = start(listeners, IpAddr::V4(Ipv4Addr::LOCALHOST), sys::fork_in_test_harness).unwrap();
        tcp_echoes(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), b"still there");
        println!("orphan proxy: {}", orphan.pid());
        std::mem::forget(orphan);
    }
}
