//! berth's command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::console::ConsoleMode;

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "Boot whole operating-system trees as containers, managed by systemd"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot the tree of machine NAME (/var/lib/machines/NAME) with its own init as PID 1.
    Boot(BootArgs),
    /// Run one command in the tree of machine NAME, without booting its init.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct MachineArgs {
    /// Machine name (also its hostname); defaults to the --directory's name.
    pub name: Option<String>,
    /// The machine's tree, when it is not /var/lib/machines/NAME.
    #[arg(short = 'D', long, value_name = "DIR")]
    pub directory: Option<PathBuf>,
    /// What to do with the machine's console [default: interactive on a
    /// terminal, else read-only for boot and pipe for run].
    #[arg(long, value_enum)]
    pub console: Option<ConsoleMode>,
    /// berth is the main process of a systemd unit (machine@NAME.service):
    /// use the unit's cgroup, and exit 133 on reboot so systemd restarts it.
    #[arg(long)]
    pub keep_unit: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum YesNo {
    Yes,
    No,
}

#[derive(Debug, Args)]
pub struct BootArgs {
    #[command(flatten)]
    pub machine: MachineArgs,
    /// The init to run, a path inside the tree [default: the first of
    /// /usr/lib/systemd/systemd, /lib/systemd/systemd, /sbin/init].
    #[arg(long, value_name = "PATH")]
    pub init: Option<PathBuf>,
    /// Report ready when the init sends READY=1 (yes) or once it is started (no).
    #[arg(long, value_enum, default_value = "yes")]
    pub notify_ready: YesNo,
    /// Signal for an orderly shutdown of the init [default: SIGRTMIN+3, systemd's halt].
    #[arg(long, value_name = "SIGNAL")]
    pub kill_signal: Option<String>,
    /// Arguments for the init.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub machine: MachineArgs,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_boot_and_run() {
        let cli =
            Cli::try_parse_from(["berth", "boot", "debian", "--console=pipe", "--", "--log-level=debug"]).unwrap();
        let Command::Boot(b) = cli.command else { panic!() };
        assert_eq!(b.machine.name.as_deref(), Some("debian"));
        assert_eq!(b.machine.console, Some(ConsoleMode::Pipe));
        assert_eq!(b.args, ["--log-level=debug"]);
        assert_eq!(b.notify_ready, YesNo::Yes);

        let cli = Cli::try_parse_from(["berth", "run", "-D", "/srv/t", "--", "ls", "-l"]).unwrap();
        let Command::Run(r) = cli.command else { panic!() };
        assert_eq!(r.machine.directory, Some(PathBuf::from("/srv/t")));
        assert_eq!(r.command, ["ls", "-l"]);
        assert!(Cli::try_parse_from(["berth", "run", "x"]).is_err());
        assert!(Cli::try_parse_from(["berth", "boot", "x", "--console=loud"]).is_err());
    }
}
