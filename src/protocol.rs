//! The supervisor and the machine's init (before it executes the real init)
//! talk over a SOCK_SEQPACKET pair: one message per packet, a tag byte and a
//! payload, descriptors by SCM_RIGHTS. The init's end is close-on-exec, so
//! end-of-file tells the supervisor that the init was executed.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};

/// From the supervisor to the child.
#[derive(Debug)]
pub enum ToChild {
    /// The parent steps are done: go on with the setup, with these
    /// descriptors (at most `MAX_FDS`).
    Go(Vec<OwnedFd>),
}

/// From the child to the supervisor.
#[derive(Debug)]
pub enum ToParent {
    /// The listening end of /run/host/notify.
    NotifySocket(OwnedFd),
    /// Setup failed; the child exits after sending this.
    Failed(String),
    /// The stub init started the command (a real init is seen started by
    /// end-of-file, as its end of the channel closes on execve).
    Started,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("talking to the machine's init: {0}")]
    Io(#[from] nix::Error),
    #[error("unexpected message from the machine's init (tag {tag}, expected {expected})")]
    Unexpected { tag: u8, expected: &'static str },
    #[error("too many descriptors for one message to the machine's init ({0}, at most 16)")]
    TooManyFds(usize),
}

const TAG_GO: u8 = 1;
const TAG_NOTIFY_SOCKET: u8 = 2;
const TAG_FAILED: u8 = 3;
const TAG_STARTED: u8 = 4;
const MAX_MESSAGE: usize = 4096;
/// The most descriptors one message carries.
pub const MAX_FDS: usize = 16;

pub struct Channel(OwnedFd);

/// One received packet: tag, payload, and the descriptors passed with it.
type Packet = (u8, Vec<u8>, Vec<OwnedFd>);

pub fn pair() -> nix::Result<(Channel, Channel)> {
    let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
    Ok((Channel(a), Channel(b)))
}

impl Channel {
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.0.as_fd()
    }

    fn send_raw(&self, tag: u8, payload: &[u8], fds: &[RawFd]) -> Result<(), ProtocolError> {
        let tag = [tag];
        let iov = [IoSlice::new(&tag), IoSlice::new(payload)];
        let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
            vec![]
        } else {
            vec![ControlMessage::ScmRights(fds)]
        };
        sendmsg::<()>(self.0.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
        Ok(())
    }

    /// Receive one packet: None at end-of-file.
    fn recv_raw(&self) -> Result<Option<Packet>, ProtocolError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                self.0.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )?;
            let mut fds = Vec::new();
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(received) = c {
                    fds.extend(received.into_iter().map(crate::sys::own_received_fd));
                }
            }
            (msg.bytes, fds)
        };
        if len == 0 {
            return Ok(None);
        }
        buf.truncate(len);
        let tag = buf.remove(0);
        Ok(Some((tag, buf, fds)))
    }

    pub fn send_to_child(&self, m: ToChild) -> Result<(), ProtocolError> {
        match m {
            ToChild::Go(fds) => {
                if fds.len() > MAX_FDS {
                    return Err(ProtocolError::TooManyFds(fds.len()));
                }
                let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
                self.send_raw(TAG_GO, &[], &raw)
            }
        }
    }

    /// Wait for `Go` and its descriptors; None when the supervisor is gone.
    pub fn recv_go(&self) -> Result<Option<Vec<OwnedFd>>, ProtocolError> {
        match self.recv_raw()? {
            None => Ok(None),
            Some((TAG_GO, _, fds)) => Ok(Some(fds)),
            Some((tag, ..)) => Err(ProtocolError::Unexpected { tag, expected: "go" }),
        }
    }

    pub fn send_to_parent(&self, m: ToParent) -> Result<(), ProtocolError> {
        match m {
            ToParent::NotifySocket(fd) => self.send_raw(TAG_NOTIFY_SOCKET, &[], &[fd.as_raw_fd()]),
            ToParent::Started => self.send_raw(TAG_STARTED, &[], &[]),
            ToParent::Failed(text) => {
                let bytes = text.as_bytes();
                self.send_raw(TAG_FAILED, &bytes[..bytes.len().min(MAX_MESSAGE - 1)], &[])
            }
        }
    }

    /// Next message from the child; None once it executed the init.
    pub fn recv_from_child(&self) -> Result<Option<ToParent>, ProtocolError> {
        match self.recv_raw()? {
            None => Ok(None),
            Some((TAG_NOTIFY_SOCKET, _, mut fds)) if fds.len() == 1 => Ok(Some(ToParent::NotifySocket(fds.remove(0)))),
            Some((TAG_STARTED, ..)) => Ok(Some(ToParent::Started)),
            Some((TAG_FAILED, text, _)) => Ok(Some(ToParent::Failed(String::from_utf8_lossy(&text).into_owned()))),
            Some((tag, ..)) => Err(ProtocolError::Unexpected {
                tag,
                expected: "notify socket or failure",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let (parent, child) = pair().unwrap();
        let (r0, _w0) = nix::unistd::pipe().unwrap();
        let (r1, _w1) = nix::unistd::pipe().unwrap();
        parent.send_to_child(ToChild::Go(vec![r0, r1])).unwrap();
        assert_eq!(child.recv_go().unwrap().map(|f| f.len()), Some(2));
        let (r, _w) = nix::unistd::pipe().unwrap();
        child.send_to_parent(ToParent::NotifySocket(r)).unwrap();
        child
            .send_to_parent(ToParent::Failed("mounting /proc: Operation not permitted".into()))
            .unwrap();
        assert!(matches!(
            parent.recv_from_child().unwrap(),
            Some(ToParent::NotifySocket(_))
        ));
        match parent.recv_from_child().unwrap() {
            Some(ToParent::Failed(t)) => assert_eq!(t, "mounting /proc: Operation not permitted"),
            other => panic!("{other:?}"),
        }
        // A wrong message in the wrong direction is an error that says so.
        parent.send_to_parent(ToParent::Failed("x".into())).unwrap();
        let e = child.recv_go().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unexpected message from the machine's init (tag 3, expected go)"
        );
        drop(child);
        assert!(parent.recv_from_child().unwrap().is_none());
    }
}
