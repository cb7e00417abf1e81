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
#[derive(Debug, PartialEq, Eq)]
pub enum ToChild {
    /// The child sits in its cgroup: go on with the setup.
    Go,
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
}

const TAG_GO: u8 = 1;
const TAG_NOTIFY_SOCKET: u8 = 2;
const TAG_FAILED: u8 = 3;
const TAG_STARTED: u8 = 4;
const MAX_MESSAGE: usize = 4096;

pub struct Channel(OwnedFd);

/// One received packet: tag, payload, and the descriptor passed with it.
type Packet = (u8, Vec<u8>, Option<OwnedFd>);

pub fn pair() -> nix::Result<(Channel, Channel)> {
    let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
    Ok((Channel(a), Channel(b)))
}

impl Channel {
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.0.as_fd()
    }

    fn send_raw(&self, tag: u8, payload: &[u8], fd: Option<RawFd>) -> Result<(), ProtocolError> {
        let tag = [tag];
        let iov = [IoSlice::new(&tag), IoSlice::new(payload)];
        let fds = fd.map(|f| [f]);
        let cmsgs: Vec<ControlMessage> = fds.as_ref().map(|f| ControlMessage::ScmRights(f)).into_iter().collect();
        sendmsg::<()>(self.0.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
        Ok(())
    }

    /// Receive one packet: None at end-of-file.
    fn recv_raw(&self) -> Result<Option<Packet>, ProtocolError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let (len, fd) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                self.0.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )?;
            let mut fd = None;
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    for f in fds {
                        fd = Some(crate::sys::own_received_fd(f));
                    }
                }
            }
            (msg.bytes, fd)
        };
        if len == 0 {
            return Ok(None);
        }
        buf.truncate(len);
        let tag = buf.remove(0);
        Ok(Some((tag, buf, fd)))
    }

    pub fn send_to_child(&self, m: ToChild) -> Result<(), ProtocolError> {
        match m {
            ToChild::Go => self.send_raw(TAG_GO, &[], None),
        }
    }

    /// Wait for `Go`; Ok(false) when the supervisor is gone.
    pub fn recv_go(&self) -> Result<bool, ProtocolError> {
        match self.recv_raw()? {
            None => Ok(false),
            Some((TAG_GO, ..)) => Ok(true),
            Some((tag, ..)) => Err(ProtocolError::Unexpected { tag, expected: "go" }),
        }
    }

    pub fn send_to_parent(&self, m: ToParent) -> Result<(), ProtocolError> {
        match m {
            ToParent::NotifySocket(fd) => self.send_raw(TAG_NOTIFY_SOCKET, &[], Some(fd.as_raw_fd())),
            ToParent::Started => self.send_raw(TAG_STARTED, &[], None),
            ToParent::Failed(text) => {
                let bytes = text.as_bytes();
                self.send_raw(TAG_FAILED, &bytes[..bytes.len().min(MAX_MESSAGE - 1)], None)
            }
        }
    }

    /// Next message from the child; None once it executed the init.
    pub fn recv_from_child(&self) -> Result<Option<ToParent>, ProtocolError> {
        match self.recv_raw()? {
            None => Ok(None),
            Some((TAG_NOTIFY_SOCKET, _, Some(fd))) => Ok(Some(ToParent::NotifySocket(fd))),
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
        parent.send_to_child(ToChild::Go).unwrap();
        assert!(child.recv_go().unwrap());
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
