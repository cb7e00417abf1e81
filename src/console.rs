//! The machine's console: a pty whose slave is the machine's /dev/console,
//! and what berth does with the master side.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::fcntl::{open, OFlag};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, PtyMaster};
use nix::sys::stat::Mode;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

use crate::sys;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsoleMode {
    /// A pty forwarded to this terminal in raw mode; Ctrl-] three times
    /// within a second kills the machine.
    Interactive,
    /// The machine's console output is copied to standard output; its input
    /// is not connected.
    ReadOnly,
    /// The machine gets a pty, but nothing is forwarded (its output is
    /// discarded, so it never blocks).
    Passive,
    /// The machine's standard input, output and error are berth's own; no
    /// pty, no /dev/console.
    Pipe,
}

impl ConsoleMode {
    /// The default: interactive on a terminal; otherwise read-only for a
    /// booted machine (its output goes to the journal under a unit) and pipe
    /// for `berth run`, so a command works in a shell pipeline.
    pub fn default_for(boot: bool, on_terminal: bool) -> Self {
        match (on_terminal, boot) {
            (true, _) => ConsoleMode::Interactive,
            (false, true) => ConsoleMode::ReadOnly,
            (false, false) => ConsoleMode::Pipe,
        }
    }
}

/// Whether berth's standard input and output are both a terminal (then
/// the console defaults to interactive).
pub fn on_terminal() -> bool {
    nix::unistd::isatty(std::io::stdin()).unwrap_or(false) && nix::unistd::isatty(std::io::stdout()).unwrap_or(false)
}

pub struct Pty {
    pub master: PtyMaster,
    /// Held open by the supervisor so the master never sees a hang-up
    /// between two boots of the machine.
    pub slave: OwnedFd,
    pub slave_path: PathBuf,
}

pub fn open_pty() -> nix::Result<Pty> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let slave_path = PathBuf::from(ptsname_r(&master)?);
    let slave = open(
        &slave_path,
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(Pty {
        master,
        slave,
        slave_path,
    })
}

/// Copy the terminal's window size to the pty.
pub fn copy_window_size(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    if let Ok(ws) = sys::get_winsize(from) {
        let _ = sys::set_winsize(to, &ws);
    }
}

/// The user's terminal in raw mode, restored when dropped (also on error
/// paths and panics that unwind).
pub struct RawTerminal {
    fd: OwnedFd,
    saved: Termios,
}

impl RawTerminal {
    pub fn enter(fd: BorrowedFd<'_>) -> nix::Result<Self> {
        let saved = tcgetattr(fd)?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(fd, SetArg::TCSANOW, &raw)?;
        Ok(RawTerminal {
            fd: fd
                .try_clone_to_owned()
                .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(0)))?,
            saved,
        })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = tcsetattr(self.fd.as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// Ctrl-] pressed three times within a second.
pub struct EscapeDetector {
    presses: u8,
    first: Instant,
}

pub const ESCAPE_BYTE: u8 = 0x1d;
const ESCAPE_PRESSES: u8 = 3;
const ESCAPE_WINDOW: Duration = Duration::from_secs(1);

impl Default for EscapeDetector {
    fn default() -> Self {
        EscapeDetector {
            presses: 0,
            first: Instant::now(),
        }
    }
}

impl EscapeDetector {
    /// Feed input as it arrives; true once the escape is complete.
    pub fn feed(&mut self, input: &[u8], now: Instant) -> bool {
        for &b in input {
            if b != ESCAPE_BYTE {
                continue;
            }
            if self.presses == 0 || now.duration_since(self.first) > ESCAPE_WINDOW {
                self.presses = 0;
                self.first = now;
            }
            self.presses += 1;
            if self.presses >= ESCAPE_PRESSES {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_needs_three_presses_within_a_second() {
        let t0 = Instant::now();
        let mut d = EscapeDetector::default();
        assert!(!d.feed(b"\x1d\x1d", t0));
        assert!(d.feed(b"x\x1d", t0 + Duration::from_millis(900)));
        let mut d = EscapeDetector::default();
        assert!(!d.feed(b"\x1d\x1d", t0));
        // Too late: the count starts again with this press.
        assert!(!d.feed(b"\x1d", t0 + Duration::from_millis(1500)));
        assert!(!d.feed(b"\x1d", t0 + Duration::from_millis(1600)));
        assert!(d.feed(b"\x1d", t0 + Duration::from_millis(1700)));
    }

    #[test]
    fn default_modes() {
        assert_eq!(ConsoleMode::default_for(true, true), ConsoleMode::Interactive);
        assert_eq!(ConsoleMode::default_for(true, false), ConsoleMode::ReadOnly);
        assert_eq!(ConsoleMode::default_for(false, false), ConsoleMode::Pipe);
    }

    #[test]
    fn pty_window_size_is_copied() {
        let a = open_pty().unwrap();
        let b = open_pty().unwrap();
        let ws = libc::winsize {
            ws_row: 33,
            ws_col: 101,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        sys::set_winsize(a.master.as_fd(), &ws).unwrap();
        copy_window_size(a.slave.as_fd(), b.master.as_fd());
        let got = sys::get_winsize(b.slave.as_fd()).unwrap();
        assert_eq!((got.ws_row, got.ws_col), (33, 101));
        assert!(a.slave_path.starts_with("/dev/pts/"));
    }
}
