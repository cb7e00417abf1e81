//! What every benchmark of berth against its comparison needs.
#![allow(dead_code)]

/// Print why the benchmark cannot go on, and exit 1.
pub fn fail(msg: &str) -> ! {
    eprintln!("bench: {msg}");
    std::process::exit(1)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The middle value (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}
