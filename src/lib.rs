//! berth: boot whole operating-system trees as containers.
//!
//! One module per concern; `main.rs` only parses the command line and
//! prints errors. The order of a start is in [`commands`].

pub mod bus;
pub mod caps;
pub mod cgroup;
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod console;
pub mod devices;
pub mod exit;
pub mod halt;
pub mod image;
pub mod inroot;
pub mod lock;
pub mod log;
pub mod manual;
pub mod mountinfo;
pub mod name;
pub mod net;
pub mod nft;
pub mod notify;
pub mod protocol;
pub mod proxy;
pub mod resources;
pub mod rootfs;
pub mod seccomp;
pub mod setup;
pub mod signals;
pub mod spawn;
pub mod spec;
pub mod state;
pub mod supervisor;
pub mod sys;
pub mod tree;
pub mod userns;
pub mod util;
