//! Machine names: they become the hostname, a lock file name, a cgroup name
//! and machined's registry key, so they follow machined's rules (those of
//! a hostname: letters, digits, '-' and '.'; systemd-nspawn's too).

use std::fmt;

pub const MAX_LEN: usize = 64;

/// A validated machine name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid machine name \"{name}\": {why}")]
pub struct InvalidName {
    pub name: String,
    pub why: &'static str,
}

impl MachineName {
    pub fn parse(name: &str) -> Result<Self, InvalidName> {
        let bad = |why| InvalidName {
            name: name.to_string(),
            why,
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.len() > MAX_LEN {
            return Err(bad("it is longer than 64 characters"));
        }
        if name.contains('/') {
            return Err(bad("it must not contain '/'"));
        }
        if name == "." || name.contains("..") {
            return Err(bad("it must not be '.' or contain '..'"));
        }
        if name.starts_with(['-', '.']) {
            return Err(bad("it must not start with '-' or '.'"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
        {
            return Err(bad(
                "only letters, digits, '-' and '.' are allowed, as in a hostname (systemd-machined's rule)",
            ));
        }
        Ok(MachineName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MachineName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hostnames() {
        for n in ["debian", "web-1", "a.b-c", "X9", &"a".repeat(64)] {
            assert_eq!(MachineName::parse(n).unwrap().as_str(), n);
        }
    }

    #[test]
    fn rejects_with_reason() {
        let cases = [
            ("", "it is empty"),
            ("a/b", "it must not contain '/'"),
            ("..", "it must not be '.' or contain '..'"),
            ("a..b", "it must not be '.' or contain '..'"),
            (".hidden", "it must not start with '-' or '.'"),
            ("-x", "it must not start with '-' or '.'"),
            (
                "caf\u{e9}",
                "only letters, digits, '-' and '.' are allowed, as in a hostname (systemd-machined's rule)",
            ),
            (
                "web_1",
                "only letters, digits, '-' and '.' are allowed, as in a hostname (systemd-machined's rule)",
            ),
            (
                "a b",
                "only letters, digits, '-' and '.' are allowed, as in a hostname (systemd-machined's rule)",
            ),
        ];
        for (n, why) in cases {
            assert_eq!(MachineName::parse(n).unwrap_err().why, why, "{n:?}");
        }
        let long = "a".repeat(65);
        assert_eq!(
            MachineName::parse(&long).unwrap_err().to_string(),
            format!("invalid machine name \"{long}\": it is longer than 64 characters")
        );
    }
}
