//! sd_notify in both directions: the machine's init talks to
//! /run/host/notify; berth talks to its own service manager.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};

/// Bind the machine's notify socket at `path` (in the machine's /run/host),
/// with credentials passing on so each message says who sent it.
pub fn bind(path: &Path) -> std::io::Result<UnixDatagram> {
    let sock = UnixDatagram::bind(path)?;
    setsockopt(&sock, sockopt::PassCred, &true)?;
    Ok(sock)
}

/// One datagram and the pid that sent it (None: no credentials attached).
pub fn receive(sock: &OwnedFd) -> nix::Result<(Option<libc::pid_t>, String)> {
    let mut buf = vec![0u8; 4096];
    let mut cmsg = nix::cmsg_space!(libc::ucred, [std::os::fd::RawFd; 16]);
    let (len, pid) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_TRUNC;
        let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), flags)?;
        let mut pid = None;
        for c in msg.cmsgs()? {
            match c {
                ControlMessageOwned::ScmCredentials(cred) => pid = Some(cred.pid()),
                // Descriptors sent along (FDSTORE=1) are not kept: close them.
                ControlMessageOwned::ScmRights(fds) => {
                    fds.into_iter().for_each(|f| drop(crate::sys::own_received_fd(f)))
                }
                _ => {}
            }
        }
        (msg.bytes.min(buf.len()), pid)
    };
    buf.truncate(len);
    Ok((pid, String::from_utf8_lossy(&buf).into_owned()))
}

/// What berth takes from a message of the machine's init.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub ready: bool,
    pub status: Option<String>,
}

pub fn parse(text: &str) -> Message {
    let mut m = Message::default();
    for line in text.lines() {
        if line == "READY=1" {
            m.ready = true;
        } else if let Some(s) = line.strip_prefix("STATUS=") {
            m.status = Some(s.to_string());
        }
    }
    m
}

/// Tell berth's own service manager, if it has one (NOTIFY_SOCKET set);
/// a no-op otherwise.
pub fn upstream(ready: bool, status: Option<&str>) {
    let mut states = Vec::new();
    if ready {
        states.push(sd_notify::NotifyState::Ready);
    }
    if let Some(s) = status {
        states.push(sd_notify::NotifyState::Status(s));
    }
    if !states.is_empty() {
        let _ = sd_notify::notify(&states);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields() {
        assert_eq!(
            parse("READY=1\nSTATUS=Startup finished in 400ms.\nX=y"),
            Message {
                ready: true,
                status: Some("Startup finished in 400ms.".into())
            }
        );
        assert_eq!(parse("READY=0\nWATCHDOG=1"), Message::default());
    }

    #[test]
    fn credentials_name_the_sender() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = bind(&path).unwrap();
        UnixDatagram::unbound().unwrap().send_to(b"READY=1", &path).unwrap();
        let fd: OwnedFd = sock.into();
        let (pid, text) = receive(&fd).unwrap();
        assert_eq!(pid, Some(std::process::id() as i32));
        assert_eq!(text, "READY=1");
    }
}
