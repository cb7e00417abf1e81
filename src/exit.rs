//! Why a machine ended, and the one place that turns that into berth's exit
//! code or a new boot.

/// Exit code asking systemd to restart the unit (`RestartForceExitStatus=`
/// and `SuccessExitStatus=` in units/machine@.service must name the same).
pub const EXIT_REBOOT: i32 = 133;
/// Exit code when setup failed or input was bad.
pub const EXIT_FAILURE: i32 = 1;

/// How the machine's PID 1 ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Poweroff or halt inside (PID 1 exited 0, or the kernel killed it with
    /// SIGINT after reboot(2) with POWER_OFF/HALT).
    Poweroff,
    /// Reboot inside (the kernel killed PID 1 with SIGHUP after reboot(2)).
    Reboot,
    /// PID 1 exited with this non-zero status (for `berth run`: the command's).
    Exited(i32),
    /// PID 1 was killed by this signal.
    Killed(i32),
    /// The user pressed Ctrl-] three times on the console.
    Aborted,
}

/// What the supervisor does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Exit(i32),
    BootAgain,
}

impl ExitReason {
    /// Classify a wait status of the machine's PID 1.
    pub fn from_wait(status: nix::sys::wait::WaitStatus) -> Option<Self> {
        use nix::sys::wait::WaitStatus;
        match status {
            WaitStatus::Exited(_, 0) => Some(ExitReason::Poweroff),
            WaitStatus::Exited(_, code) => Some(ExitReason::Exited(code)),
            WaitStatus::Signaled(_, sig, _) => Some(match sig {
                nix::sys::signal::Signal::SIGINT => ExitReason::Poweroff,
                nix::sys::signal::Signal::SIGHUP => ExitReason::Reboot,
                other => ExitReason::Killed(other as i32),
            }),
            _ => None,
        }
    }

    /// `keep_unit`: berth runs as a unit's main process and lets systemd do
    /// the reboot. `stopping`: the host asked for a stop, so a reboot inside
    /// is not honoured.
    pub fn next(self, keep_unit: bool, stopping: bool) -> Next {
        match self {
            ExitReason::Poweroff => Next::Exit(0),
            ExitReason::Reboot if stopping => Next::Exit(0),
            ExitReason::Reboot if keep_unit => Next::Exit(EXIT_REBOOT),
            ExitReason::Reboot => Next::BootAgain,
            ExitReason::Exited(code) => Next::Exit(code),
            ExitReason::Killed(sig) => Next::Exit(128 + sig),
            ExitReason::Aborted => Next::Exit(EXIT_FAILURE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;
    use nix::sys::wait::WaitStatus;
    use nix::unistd::Pid;

    #[test]
    fn wait_status_mapping() {
        let p = Pid::from_raw(7);
        let r = |s| ExitReason::from_wait(s).unwrap();
        assert_eq!(r(WaitStatus::Exited(p, 0)), ExitReason::Poweroff);
        assert_eq!(r(WaitStatus::Exited(p, 3)), ExitReason::Exited(3));
        assert_eq!(r(WaitStatus::Signaled(p, Signal::SIGINT, false)), ExitReason::Poweroff);
        assert_eq!(r(WaitStatus::Signaled(p, Signal::SIGHUP, false)), ExitReason::Reboot);
        assert_eq!(
            r(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            ExitReason::Killed(9)
        );
        assert_eq!(ExitReason::from_wait(WaitStatus::StillAlive), None);
    }

    #[test]
    fn exit_codes() {
        use ExitReason::*;
        assert_eq!(Poweroff.next(false, false), Next::Exit(0));
        assert_eq!(Reboot.next(false, false), Next::BootAgain);
        assert_eq!(Reboot.next(true, false), Next::Exit(133));
        assert_eq!(Reboot.next(false, true), Next::Exit(0));
        assert_eq!(Exited(42).next(false, false), Next::Exit(42));
        assert_eq!(Killed(9).next(true, true), Next::Exit(137));
        assert_eq!(Aborted.next(false, false), Next::Exit(1));
    }

    /// units/machine@.service restarts the unit on exactly berth's reboot
    /// code, and counts it as success.
    #[test]
    fn the_unit_knows_the_reboot_code() {
        let unit = include_str!("../units/machine@.service");
        let values = |key: &str| -> Vec<i32> {
            unit.lines()
                .filter_map(|l| l.strip_prefix(key))
                .flat_map(|v| v.split_whitespace().map(|n| n.parse::<i32>().unwrap()))
                .collect()
        };
        assert_eq!(values("RestartForceExitStatus="), [EXIT_REBOOT]);
        assert_eq!(values("SuccessExitStatus="), [EXIT_REBOOT]);
        // No Restart= policy: a bad tree or settings (exit 1) is not retried.
        assert!(!unit.lines().any(|l| l.starts_with("Restart=")));
    }
}
