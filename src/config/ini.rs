//! A small, strict INI reader for machine files, in systemd's dialect:
//! `[Section]` headers, `Key=Value` assignments, `#` and `;` comment lines,
//! a trailing `\` continuing a line (joined with a space). Every assignment
//! keeps its line number, and every malformed line is reported, not only the
//! first: errors of a file are shown together.
//!
//! Written here rather than with rust-ini: that crate reports no line
//! numbers, and "FILE:LINE: what is wrong" is the point of strict files.
//! Values are not unquoted or unescaped here; each value type does that.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub section: String,
    pub key: String,
    pub value: String,
    /// 1-based line of the key (the first line of a continued value).
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

/// Parse a whole file. Ok only when every line is well formed.
pub fn parse(text: &[u8]) -> Result<Vec<Assignment>, Vec<LineError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut section: Option<String> = None;
    // A value continued with '\': (first line, accumulated text).
    let mut pending: Option<(usize, String)> = None;

    for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(line) = std::str::from_utf8(raw) else {
            errors.push(LineError {
                line: number,
                message: "the line is not valid UTF-8".into(),
            });
            continue;
        };
        if line.contains('\0') {
            errors.push(LineError {
                line: number,
                message: "the line contains a NUL byte".into(),
            });
            continue;
        }
        let trimmed = line.trim();
        if pending.is_some() && (trimmed.starts_with('#') || trimmed.starts_with(';')) {
            continue; // comments inside a continued value are skipped
        }
        let (start, mut logical) = match pending.take() {
            Some((start, mut acc)) => {
                acc.push(' ');
                acc.push_str(trimmed);
                (start, acc)
            }
            None => (number, trimmed.to_string()),
        };
        if let Some(stripped) = logical.strip_suffix('\\') {
            logical = stripped.trim_end().to_string();
            pending = Some((start, logical));
            continue;
        }
        match classify(&logical) {
            Line::Blank => {}
            Line::Section(name) => section = Some(name.to_string()),
            Line::Assignment(key, value) => match &section {
                Some(s) => out.push(Assignment {
                    section: s.clone(),
                    key: key.to_string(),
                    value: value.to_string(),
                    line: start,
                }),
                None => errors.push(LineError {
                    line: start,
                    message: format!("{key}={value}: assignment outside of a section"),
                }),
            },
            Line::Bad(message) => errors.push(LineError { line: start, message }),
        }
    }
    if let Some((start, _)) = pending {
        errors.push(LineError {
            line: start,
            message: "the file ends inside a continued line (trailing '\\')".into(),
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

enum Line<'a> {
    Blank,
    Section(&'a str),
    Assignment(&'a str, &'a str),
    Bad(String),
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn classify(line: &str) -> Line<'_> {
    if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
        return Line::Blank;
    }
    if let Some(rest) = line.strip_prefix('[') {
        return match rest.strip_suffix(']') {
            Some(name) if is_name(name) => Line::Section(name),
            _ => Line::Bad(format!(
                "{line}: a section header is [Name], with letters and digits only"
            )),
        };
    }
    match line.split_once('=') {
        Some((key, value)) if is_name(key.trim()) => Line::Assignment(key.trim(), value.trim()),
        Some((key, _)) => Line::Bad(format!("{line}: \"{}\" is not a valid key name", key.trim())),
        None => Line::Bad(format!("{line}: expected [Section] or Key=Value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(section: &str, key: &str, value: &str, line: usize) -> Assignment {
        Assignment {
            section: section.into(),
            key: key.into(),
            value: value.into(),
            line,
        }
    }

    #[test]
    fn reads_systemd_style_files() {
        let text = b"# a machine\n[Exec]\nBoot = yes\n; comment\nEnvironment=A=1 2\nParameters=--one \\\n  # skipped\n  --two\n\n[Files]\r\nBind=/srv:/srv:ro\nBind=\n";
        assert_eq!(
            parse(text).unwrap(),
            vec![
                a("Exec", "Boot", "yes", 3),
                a("Exec", "Environment", "A=1 2", 5),
                a("Exec", "Parameters", "--one --two", 6),
                a("Files", "Bind", "/srv:/srv:ro", 11),
                a("Files", "Bind", "", 12),
            ]
        );
    }

    #[test]
    fn reports_every_bad_line() {
        let text = "Boot=yes\n[Exec\n[Exec]\njust words\n Bad Key=1\nOK=1\n[Files]\nX=\\".as_bytes();
        let errs = parse(text).unwrap_err();
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.message.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (1, "Boot=yes: assignment outside of a section"),
                (2, "[Exec: a section header is [Name], with letters and digits only"),
                (4, "just words: expected [Section] or Key=Value"),
                (5, "Bad Key=1: \"Bad Key\" is not a valid key name"),
                (8, "the file ends inside a continued line (trailing '\\')"),
            ]
        );
        let errs = parse(b"[Exec]\nBoot=\xff\n").unwrap_err();
        assert_eq!(
            errs[0],
            LineError {
                line: 2,
                message: "the line is not valid UTF-8".into()
            }
        );
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A cheap, deterministic property test (xorshift): the parser must
        // answer Ok or Err for any input, with line numbers inside the input.
        let alphabet = b"[]=\\#;\n\r \tabcXYZ019-_\xff\x00";
        let mut state: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| alphabet[((state >> (i % 56)) as usize + i * 7) % alphabet.len()])
                .collect();
            let lines = bytes.split(|&b| b == b'\n').count();
            match parse(&bytes) {
                Ok(v) => assert!(v.iter().all(|a| a.line >= 1 && a.line <= lines)),
                Err(e) => assert!(!e.is_empty() && e.iter().all(|e| e.line >= 1 && e.line <= lines)),
            }
        }
    }
}
