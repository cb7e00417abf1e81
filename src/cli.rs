//! berth's command line. The settings flags of `berth boot` and `berth
//! check` are made from the key table (config::keys::KEYS), one flag per
//! key, so the file and the command line can never drift apart.

use std::path::PathBuf;

use clap::{Arg, ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::keys::{KeyDef, KEYS};
use crate::config::value::Kind;
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
    /// Check machine NAME's settings (or a settings FILE) without booting, and
    /// print the effective settings with where each value came from.
    Check(CheckArgs),
    /// List the running machines (from berth's own state in /run/berth).
    List(ListArgs),
    /// Show one running machine: leader, since, addresses, unit, tree.
    Status(StatusArgs),
    /// List the trees in /var/lib/machines: OS, size, whether a machine runs on it.
    Images(ListArgs),
    /// Import a tarball (plain, gzip, xz or zstd; FILE or - for stdin) as the
    /// tree of machine NAME in /var/lib/machines.
    ImportTar(ImportTarArgs),
    /// Write the tree of machine NAME as a tarball (compressed as FILE's
    /// extension says: .tar, .tar.gz, .tar.xz, .tar.zst; - for stdout, plain).
    ExportTar(ExportTarArgs),
    /// Write berth's man pages or shell completions (for packagers).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The machine's name.
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImportTarArgs {
    /// The tarball, or - for standard input.
    pub file: PathBuf,
    /// The machine's name (its tree becomes /var/lib/machines/NAME).
    pub name: String,
    /// Refuse the tarball unless its SHA-256 is this (sha256:HEX).
    #[arg(long, value_name = "sha256:HEX")]
    pub checksum: Option<String>,
    /// Replace an existing tree of that name (never one a machine runs on).
    #[arg(long)]
    pub force: bool,
    /// The machines directory, instead of /var/lib/machines: for berth's
    /// own tests and bench (hidden; a flag, not an environment variable,
    /// so that nothing inherited redirects where root writes).
    #[arg(long, hide = true, value_name = "DIR")]
    pub machines_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExportTarArgs {
    /// The machine's name.
    pub name: String,
    /// The tarball to write, or - for standard output.
    pub file: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
    /// The machines directory, instead of /var/lib/machines (hidden: for
    /// berth's own tests; see import-tar's).
    #[arg(long, hide = true, value_name = "DIR")]
    pub machines_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: Generate,
}

#[derive(Debug, Subcommand)]
pub enum Generate {
    /// berth(1), one page per subcommand, and berth.machine(5), into DIR.
    Man { dir: PathBuf },
    /// bash, zsh and fish completions, into DIR.
    Completions { dir: PathBuf },
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
    /// The settings flags given are defaults: the machine's settings file
    /// wins over them (what machine@.service's ExecStart= uses).
    #[arg(long)]
    pub flags_are_defaults: bool,
    /// Register the machine with systemd-machined (machinectl, journalctl
    /// -M) when the host runs systemd.
    #[arg(long, value_name = "BOOL", value_parser = clap::builder::BoolishValueParser::new(), default_value = "yes", action = ArgAction::Set)]
    pub register: bool,
    /// The machine's settings file [default: the first NAME.ini in
    /// /etc/berth/machines.d, /run/berth/machines.d, /usr/lib/berth/machines.d].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BootArgs {
    #[command(flatten)]
    pub machine: MachineArgs,
    /// Arguments for the init ([Exec] Parameters=).
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

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A machine name, or the path of a settings file.
    pub target: String,
    /// The machine's tree, when it is not /var/lib/machines/NAME.
    #[arg(short = 'D', long, value_name = "DIR")]
    pub directory: Option<PathBuf>,
    /// Print the effective settings as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The parsed command line: the fixed arguments, and the settings flags
/// given, in table order.
pub struct Invocation {
    pub cli: Cli,
    pub settings: Vec<(&'static KeyDef, Vec<String>)>,
}

/// The help line of a settings flag: "[Exec] Boot=: DESCRIPTION [default: yes]".
fn flag_help(k: &KeyDef) -> String {
    let default = k.default.map(|d| format!(" [default: {d}]")).unwrap_or_default();
    format!("[{}] {}=: {}{default}", k.section, k.key, k.description)
}

fn setting_args(cmd: clap::Command) -> clap::Command {
    cmd.args(KEYS.iter().map(|k| {
        let arg = Arg::new(k.flag())
            .long(k.flag())
            .value_name("VALUE")
            .help(flag_help(k))
            .help_heading(format!("Settings of [{}]", k.section));
        match (k.kind, k.repeatable) {
            // `--read-only` or `--read-only=no`: the value only with '='.
            (Kind::Bool, _) => arg
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("yes")
                .action(ArgAction::Set),
            (_, true) => arg.num_args(1).allow_hyphen_values(true).action(ArgAction::Append),
            (_, false) => arg.num_args(1).allow_hyphen_values(true).action(ArgAction::Set),
        }
    }))
}

pub fn command() -> clap::Command {
    Cli::command()
        .mut_subcommand("boot", setting_args)
        .mut_subcommand("check", setting_args)
}

pub fn parse_from<I, T>(args: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let mut settings = Vec::new();
    if let Some((_, sub)) = matches.subcommand() {
        for k in KEYS {
            let given = sub.try_contains_id(&k.flag()).unwrap_or(false)
                && sub.value_source(&k.flag()) == Some(clap::parser::ValueSource::CommandLine);
            if given {
                let values: Vec<String> = sub
                    .get_many::<String>(&k.flag())
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect();
                settings.push((k, values));
            }
        }
    }
    Ok(Invocation { cli, settings })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_boot_run_and_settings_flags() {
        let inv = parse_from([
            "berth",
            "boot",
            "debian",
            "--console=pipe",
            "--bind",
            "/srv",
            "--bind=/opt:/opt:ro",
            "--read-only",
            "--kill-signal",
            "SIGTERM",
            "--",
            "--log-level=debug",
        ])
        .unwrap();
        let Command::Boot(b) = inv.cli.command else { panic!() };
        assert_eq!(b.machine.name.as_deref(), Some("debian"));
        assert_eq!(b.machine.console, Some(ConsoleMode::Pipe));
        assert_eq!(b.args, ["--log-level=debug"]);
        let got: Vec<(String, Vec<String>)> = inv.settings.iter().map(|(k, v)| (k.id(), v.clone())).collect();
        assert_eq!(
            got,
            vec![
                ("Exec.KillSignal".to_string(), vec!["SIGTERM".to_string()]),
                ("Files.ReadOnly".to_string(), vec!["yes".to_string()]),
                (
                    "Files.Bind".to_string(),
                    vec!["/srv".to_string(), "/opt:/opt:ro".to_string()]
                ),
            ]
        );

        let inv = parse_from(["berth", "run", "-D", "/srv/t", "--", "ls", "-l"]).unwrap();
        let Command::Run(r) = inv.cli.command else { panic!() };
        assert_eq!(r.machine.directory, Some(PathBuf::from("/srv/t")));
        assert_eq!(r.command, ["ls", "-l"]);
        assert!(parse_from(["berth", "run", "x"]).is_err());
        assert!(parse_from(["berth", "boot", "x", "--console=loud"]).is_err());
        assert!(parse_from(["berth", "run", "x", "--bind=/srv", "--", "true"]).is_err());
    }

    #[test]
    fn flag_help_has_description_and_default() {
        let help = |s, k| flag_help(crate::config::keys::find(s, k).unwrap());
        assert_eq!(
            help("Exec", "Boot"),
            "[Exec] Boot=: Run the tree's own init as PID 1 (yes) or only the command in Parameters= (no) [default: yes]"
        );
        assert_eq!(
            help("Exec", "Hostname"),
            "[Exec] Hostname=: The machine's hostname; unset, the machine's name"
        );
        assert_eq!(
            help("Network", "Private"),
            "[Network] Private=: Give the machine a network namespace of its own [default: no]"
        );
    }

    #[test]
    fn every_key_has_a_boot_flag() {
        let cmd = command();
        let boot = cmd.find_subcommand("boot").unwrap();
        for k in KEYS {
            assert!(
                boot.get_arguments().any(|a| a.get_long() == Some(k.flag().as_str())),
                "no --{} for {}",
                k.flag(),
                k.id()
            );
        }
    }
}
