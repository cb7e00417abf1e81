//! Signal names as admins write them: `SIGRTMIN+3`, `RTMIN+3`, `TERM`, `15`.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid signal \"{0}\": expected a name like SIGTERM or SIGRTMIN+3, or a number")]
pub struct InvalidSignal(pub String);

const NAMED: &[(&str, libc::c_int)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
    ("CONT", libc::SIGCONT),
    ("PWR", libc::SIGPWR),
];

/// The number of SIGRTMIN+3, the signal systemd as PID 1 takes as "halt".
pub fn rtmin_plus(n: libc::c_int) -> libc::c_int {
    libc::SIGRTMIN() + n
}

pub fn parse(text: &str) -> Result<libc::c_int, InvalidSignal> {
    let bad = || InvalidSignal(text.to_string());
    let t = text.trim();
    if let Ok(n) = t.parse::<libc::c_int>() {
        return if (1..=libc::SIGRTMAX()).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    let t = t.strip_prefix("SIG").unwrap_or(t);
    if let Some(rest) = t.strip_prefix("RTMIN") {
        let off = match rest.strip_prefix('+') {
            Some(n) => n.parse::<libc::c_int>().map_err(|_| bad())?,
            None if rest.is_empty() => 0,
            None => return Err(bad()),
        };
        let sig = rtmin_plus(off);
        return if sig <= libc::SIGRTMAX() { Ok(sig) } else { Err(bad()) };
    }
    NAMED
        .iter()
        .find(|(name, _)| *name == t)
        .map(|(_, n)| *n)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_numbers() {
        assert_eq!(parse("SIGTERM"), Ok(libc::SIGTERM));
        assert_eq!(parse("TERM"), Ok(libc::SIGTERM));
        assert_eq!(parse("9"), Ok(9));
        assert_eq!(parse("SIGRTMIN+3"), Ok(libc::SIGRTMIN() + 3));
        assert_eq!(parse("RTMIN"), Ok(libc::SIGRTMIN()));
        for bad in ["", "0", "SIGFOO", "RTMIN+99", "RTMIN3", "-1"] {
            assert_eq!(parse(bad), Err(InvalidSignal(bad.to_string())), "{bad}");
        }
    }
}
