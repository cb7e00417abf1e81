//! berth's log: `tracing` events, written
//! - to the journal with structured fields (MACHINE=, STEP=, ...) when
//!   berth runs under systemd with its stderr connected to the journal
//!   (JOURNAL_STREAM names stderr, as systemd sets it for a unit);
//! - else as one line per event on stderr, "berth: MESSAGE", the format
//!   berth always had (tests and admins' scripts read it).

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::fd::AsFd;
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

static MACHINE: OnceLock<String> = OnceLock::new();

/// The machine this run of berth is about (for the final error's fields).
pub fn set_machine(name: &str) {
    let _ = MACHINE.set(name.to_string());
}

pub fn machine() -> &'static str {
    MACHINE.get().map(String::as_str).unwrap_or("")
}

/// Whether stderr is the journal stream systemd gave this process.
fn stderr_is_journal() -> bool {
    let Some(want) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    want.to_string_lossy() == format!("{}:{}", st.st_dev, st.st_ino)
}

/// Set up the log once, at the start of main.
pub fn init() {
    let journal = if stderr_is_journal() {
        tracing_journald::layer().ok().map(|l| {
            l.with_syslog_identifier("berth".into())
                // MACHINE=, STEP=, ERRNO= as such (not F_MACHINE=).
                .with_field_prefix(None)
        })
    } else {
        None
    };
    let result = match journal {
        Some(j) => tracing::subscriber::set_global_default(tracing_subscriber::registry().with(j)),
        None => tracing::subscriber::set_global_default(tracing_subscriber::registry().with(StderrLines)),
    };
    // A second init (tests) keeps the first.
    drop(result);
}

/// One line per event on stderr: "berth: MESSAGE".
struct StderrLines;

#[derive(Default)]
struct MessageOnly(String);

impl Visit for MessageOnly {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for StderrLines {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut m = MessageOnly::default();
        event.record(&mut m);
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "berth: {}", m.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_only_when_stderr_is_the_journal_stream() {
        // JOURNAL_STREAM must name stderr's own device and inode.
        let st = nix::sys::stat::fstat(std::io::stderr().as_fd()).unwrap();
        std::env::set_var("JOURNAL_STREAM", "1:2");
        assert!(!stderr_is_journal());
        std::env::set_var("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino));
        assert!(stderr_is_journal());
        std::env::remove_var("JOURNAL_STREAM");
        assert!(!stderr_is_journal());
    }
}
