//! Man pages and shell completions, generated from the code, so neither can
//! drift from what berth parses: berth(1) and one page per subcommand from
//! the clap command (with the settings flags of `boot` and `check`),
//! berth.machine(5) from the key table, and bash, zsh and fish completions
//! from clap_complete, with machine names (the trees in /var/lib/machines)
//! for the NAME of `boot`, `run`, `check`, `status` and `export-tar`.
//!
//! `berth generate man DIR` and `berth generate completions DIR` (hidden:
//! for packagers) write them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::builder::PossibleValuesParser;
use clap::ValueHint;
use roff::{bold, italic, line_break, roman, Inline, Roff};

use crate::cli::{Generate, GenerateArgs};
use crate::config::keys::{KeyDef, KEYS, SECTIONS};
use crate::config::value::Kind;
use crate::config::SEARCH_DIRS;

/// Where machine trees live (and where completions look for names).
const MACHINES_DIR: &str = "/var/lib/machines";

/// The subcommands whose first positional is an existing machine, and that
/// positional's id: completed with the names of the trees in MACHINES_DIR.
/// `check` also takes a settings file there.
const MACHINE_ARGS: &[(&str, &str)] = &[
    ("boot", "name"),
    ("run", "name"),
    ("check", "target"),
    ("status", "name"),
    ("export-tar", "name"),
];

pub fn generate(args: GenerateArgs) -> anyhow::Result<i32> {
    let (dir, files) = match args.what {
        Generate::Man { dir } => (dir, man_pages()),
        Generate::Completions { dir } => (dir, completions()?),
    };
    for path in write_all(&dir, &files)? {
        println!("{}", path.display());
    }
    Ok(0)
}

fn write_all(dir: &Path, files: &[(String, String)]) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    files
        .iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
            Ok(path)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Man pages.

fn version() -> String {
    format!("berth {}", env!("CARGO_PKG_VERSION"))
}

const MANUAL: &str = "berth Manual";

/// The pages' date: SOURCE_DATE_EPOCH's day when it is set (package
/// builds: the date of the changelog entry, so builds are reproducible),
/// else today. Never empty: an empty .TH field would shift the next ones.
fn page_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
    ymd(secs)
}

/// YYYY-MM-DD of a Unix time (UTC), after Howard Hinnant's civil_from_days.
fn ymd(secs: i64) -> String {
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Every page, as (file name, roff text): berth.1, berth-SUBCOMMAND.1 for
/// each visible subcommand, berth.machine.5.
pub fn man_pages() -> Vec<(String, String)> {
    let date = page_date();
    let mut root = crate::cli::command().disable_help_subcommand(true);
    root.build();
    let mut pages = vec![command_page(&root, &date)];
    pages.extend(
        root.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| command_page(s, &date)),
    );
    pages.push(("berth.machine.5".to_string(), machine_page(&date)));
    pages
}

/// A section-1 page by clap_mangen, its synopsis clap's own usage line
/// (the settings flags are listed under OPTIONS, not in the synopsis), with
/// berth's extra sections before VERSION (or at the end).
fn command_page(cmd: &clap::Command, date: &str) -> (String, String) {
    let mut cmd = cmd.clone();
    let usage = cmd.render_usage().to_string();
    let usage = usage.trim().strip_prefix("Usage:").unwrap_or(&usage).trim().to_string();
    let man = clap_mangen::Man::new(cmd.clone().override_usage(usage))
        .date(date)
        .source(version())
        .manual(MANUAL);
    let mut buf = Vec::new();
    man.render(&mut buf).expect("rendering to a Vec does not fail");
    let mut text = String::from_utf8(buf).expect("clap_mangen writes UTF-8");
    // Rendered with roff's handling of apostrophes, without its preamble
    // (two lines defining \*(Aq, which clap_mangen's page already has).
    let extra = extra_sections(cmd.get_name()).render();
    let extra = extra.splitn(3, '\n').nth(2).unwrap_or_default();
    match text.find("\n.SH VERSION\n") {
        Some(at) => text.insert_str(at + 1, extra),
        None => text.push_str(extra),
    }
    (man.get_filename(), text)
}

fn section(r: &mut Roff, title: &str) {
    r.control("SH", [title]);
}

fn paragraph(r: &mut Roff, inlines: impl Into<Vec<Inline>>) {
    r.control("PP", []);
    r.text(inlines);
}

/// A tagged paragraph: TAG, then TEXT indented under it.
fn tagged(r: &mut Roff, tag: impl Into<Vec<Inline>>, text: impl Into<Vec<Inline>>) {
    r.control("TP", []);
    r.text(tag);
    r.text(text);
}

fn see_also(r: &mut Roff, pages: &[(&str, &str)]) {
    section(r, "SEE ALSO");
    let mut line = Vec::new();
    for (i, (name, sect)) in pages.iter().enumerate() {
        if i > 0 {
            line.push(roman(", "));
        }
        line.push(bold(*name));
        line.push(roman(format!("({sect})")));
    }
    r.text(line);
}

/// What clap does not know: exit status, files, units, see also.
fn extra_sections(name: &str) -> Roff {
    let mut r = Roff::new();
    match name {
        "berth" => {
            section(&mut r, "MACHINES AS SYSTEMD UNITS");
            r.text([
                roman("The template unit "),
                bold("machine@.service"),
                roman(" runs "),
                bold("berth boot"),
                roman(" NAME "),
                bold("--keep-unit"),
                roman(" as a "),
                bold("Type=notify"),
                roman(" service: "),
                bold("systemctl enable --now machine@"),
                italic("NAME"),
                roman(" boots /var/lib/machines/NAME now and at every boot (through "),
                bold("machines.target"),
                roman("), registered with systemd-machined, so that "),
                bold("machinectl"),
                roman(" and "),
                bold("journalctl -M"),
                roman(" work on it. Installing berth enables no machine."),
            ]);
            files_section(&mut r, true);
            see_also(
                &mut r,
                &[
                    ("berth.machine", "5"),
                    ("systemd-nspawn", "1"),
                    ("machinectl", "1"),
                    ("systemd-machined.service", "8"),
                ],
            );
        }
        "boot" | "run" => {
            section(&mut r, "EXIT STATUS");
            if name == "boot" {
                exit_status(
                    &mut r,
                    "0",
                    "The machine powered off or halted, or was stopped (SIGTERM, SIGINT).",
                );
                exit_status(
                    &mut r,
                    "133",
                    "The machine rebooted and --keep-unit was given: systemd starts the unit again (without --keep-unit, berth boots it again itself).",
                );
                exit_status(
                    &mut r,
                    "1",
                    "berth could not set the machine up (a missing tree, a settings error), or Ctrl-] was pressed three times.",
                );
                exit_status(&mut r, "128+N", "The init was killed by signal N.");
                exit_status(&mut r, "other", "The init's own exit status.");
            } else {
                exit_status(&mut r, "0", "The command succeeded.");
                exit_status(
                    &mut r,
                    "1",
                    "berth could not set the machine up (with a berth: line on standard error), or the command exited 1.",
                );
                exit_status(&mut r, "128+N", "The command was killed by signal N.");
                exit_status(&mut r, "other", "The command's own exit status.");
            }
            files_section(&mut r, false);
            see_also(
                &mut r,
                &[("berth", "1"), ("berth.machine", "5"), ("systemd-nspawn", "1")],
            );
        }
        "check" => {
            files_section(&mut r, false);
            see_also(&mut r, &[("berth", "1"), ("berth.machine", "5")]);
        }
        _ => see_also(&mut r, &[("berth", "1")]),
    }
    r
}

fn exit_status(r: &mut Roff, code: &str, text: &str) {
    tagged(r, [bold(code)], [roman(text)]);
}

/// FILES of berth(1) (`state`: with /run/berth) and of boot, run, check.
fn files_section(r: &mut Roff, state: bool) {
    section(r, "FILES");
    tagged(
        r,
        [italic(format!("{MACHINES_DIR}/NAME"))],
        [roman("The tree of machine NAME.")],
    );
    tagged(
        r,
        [italic(format!("{}/NAME.ini", SEARCH_DIRS[0]))],
        [
            roman("The settings of machine NAME (also searched in "),
            roman(SEARCH_DIRS[1..].join(" and ")),
            roman("; a NAME.ini next to the tree is not trusted); see "),
            bold("berth.machine"),
            roman("(5)."),
        ],
    );
    if state {
        tagged(
            r,
            [italic("/run/berth")],
            [roman(
                "berth's state: one entry and one lock per running machine, and a lock per tree in use.",
            )],
        );
    }
}

/// A value type in words, for berth.machine(5). Exhaustive on purpose: a
/// new Kind does not compile until it is described here.
pub fn kind_in_words(kind: Kind) -> String {
    match kind {
        Kind::Bool => "boolean (yes/no; also true/false, on/off, 1/0)".into(),
        Kind::AbsolutePath => "absolute path, without \"..\"".into(),
        Kind::Words => "words separated by spaces; \"double\" or 'single' quotes keep spaces in a word".into(),
        Kind::EnvAssignment => "NAME=VALUE, NAME of letters, digits and _ (not starting with a digit)".into(),
        Kind::Hostname => "hostname (letters, digits, - and .)".into(),
        Kind::Signal => "signal name like SIGTERM or SIGRTMIN+3, or number".into(),
        Kind::Capabilities => "capability names separated by spaces (CAP_ optional, like NET_ADMIN), or all".into(),
        Kind::SystemCalls => "system call names or @groups separated by spaces, each possibly after ~".into(),
        Kind::Choice(choices) => format!("one of {}", choices.join(", ")),
        Kind::UserName => "user name or numeric uid".into(),
        Kind::BindMount => "SOURCE[:DESTINATION[:OPTIONS]], absolute paths, ':' in a path written '\\:'".into(),
        Kind::TmpFs => "PATH[:OPTIONS], an absolute path and tmpfs mount options".into(),
        Kind::InterfaceName => "network interface name, at most 15 characters".into(),
        Kind::ZoneName => "zone name, at most 12 characters (the bridge is vz-ZONE)".into(),
        Kind::MacAddress => "unicast MAC address like 02:00:00:12:34:56".into(),
        Kind::AddressPrefix => "IPv4 or IPv6 ADDRESS/PREFIX, like 192.168.100.10/24 or fd00::2/64".into(),
        Kind::IpAddress => "IPv4 or IPv6 address".into(),
        Kind::PortForward => "[tcp:|udp:]HOSTPORT[:MACHINEPORT], ports 1 to 65535".into(),
        Kind::Size => "size in bytes with K, M, G, T suffix (powers of 1024), or infinity".into(),
        Kind::Percent => "percentage like 50% (more than 100% for more than one CPU)".into(),
        Kind::Weight => "integer from 1 to 10000".into(),
        Kind::Count => "positive integer, or infinity".into(),
        Kind::CpuList => "CPU numbers and ranges like 0-3,6".into(),
        Kind::PrivateUsers => {
            "pick, no, identity, or a host UID with an optional range size UID[:RANGE] (at most 65536)".into()
        }
    }
}

fn section_intro(section: &str) -> &'static str {
    match section {
        "Exec" => "What the machine runs, and how it is started and stopped.",
        "Files" => "The machine's tree and what it sees of the host's files.",
        "Network" => "The machine's network. Without any of these keys the machine shares the host's network, as with systemd-nspawn.",
        "Resources" => "Limits of the machine's cgroup, set on the cgroup above the machine's own, where it cannot raise them.",
        _ => "",
    }
}

/// One key of the table: "Key=" tagged, its description, then one line each
/// for value type, default, repetition, the untrusted file and the flag.
fn key_entry(r: &mut Roff, k: &KeyDef) {
    r.control("TP", []);
    r.text([bold(format!("{}=", k.key))]);
    let mut lines: Vec<Vec<Inline>> = vec![vec![roman(format!("{}.", k.description))]];
    lines.push(vec![italic("Value:"), roman(format!(" {}.", kind_in_words(k.kind)))]);
    let mut line = vec![italic("Default:"), roman(" ")];
    line.push(match (k.default, k.repeatable) {
        (Some(d), _) => bold(d),
        (None, true) => roman("empty"),
        (None, false) => roman("unset"),
    });
    line.push(roman("."));
    lines.push(line);
    lines.push(vec![roman(if k.repeatable {
        "Repeatable: each assignment adds a value; an empty assignment clears the list."
    } else {
        "Given at most once in a file."
    })]);
    lines.push(vec![roman(if k.privileged {
        "Refused in the untrusted NAME.ini next to the tree: it widens what the machine may do."
    } else {
        "Allowed in the untrusted NAME.ini next to the tree."
    })]);
    lines.push(vec![
        italic("Flag:"),
        roman(" "),
        bold(format!("--{}", k.flag())),
        roman(if matches!(k.kind, Kind::Bool) {
            "[=VALUE]"
        } else {
            "=VALUE"
        }),
        roman(" of "),
        bold("berth boot"),
        roman(" and "),
        bold("berth check"),
        roman("."),
    ]);
    let mut all = Vec::new();
    for (i, l) in lines.into_iter().enumerate() {
        if i > 0 {
            all.push(line_break());
        }
        all.extend(l);
    }
    r.text(all);
}

/// An example file for EXAMPLES; a test loads it with the real loader.
const EXAMPLE: &str = "\
[Exec]
Hostname=web
Environment=LANG=C.UTF-8

[Files]
Volatile=state
TemporaryFileSystem=/var/tmp:size=256M

[Network]
VirtualEthernet=yes
Zone=web
Address=10.0.10.2/24
Gateway=10.0.10.1
DNS=10.0.10.1
Port=tcp:8080:80

[Resources]
MemoryMax=2G
CPUQuota=200%
";

/// berth.machine(5), written from the key table.
pub fn machine_page(date: &str) -> String {
    let mut r = Roff::new();
    r.control("TH", ["BERTH.MACHINE", "5", date, &version(), MANUAL]);
    section(&mut r, "NAME");
    r.text([roman("berth.machine - settings of a machine booted by berth")]);

    section(&mut r, "SYNOPSIS");
    let mut synopsis = Vec::new();
    for dir in SEARCH_DIRS {
        synopsis.push(italic(format!("{dir}/NAME.ini")));
        synopsis.push(line_break());
    }
    synopsis.push(italic(format!("{MACHINES_DIR}/NAME.ini")));
    r.text(synopsis);

    section(&mut r, "DESCRIPTION");
    r.text([
        roman("The settings of machine NAME, booted by "),
        bold("berth boot"),
        roman(" NAME or "),
        bold("machine@"),
        italic("NAME"),
        bold(".service"),
        roman(" from the tree "),
        italic(format!("{MACHINES_DIR}/NAME")),
        roman(", are one file in systemd's INI style: "),
        bold("[Section]"),
        roman(" headers, "),
        bold("Key=Value"),
        roman(" lines, comment lines starting with # or ;, and a \\ at the end of a line continuing it on the next. The sections are "),
        roman(SECTIONS.iter().map(|s| format!("[{s}]")).collect::<Vec<_>>().join(", ")),
        roman("."),
    ]);
    paragraph(
        &mut r,
        [roman(
            "Files are strict: an unknown section or key, a value that does not parse, a key that is not repeatable given twice, or a Bind= source that does not exist is an error naming the file and line. Every error of a file is shown at once, and nothing boots.",
        )],
    );
    paragraph(
        &mut r,
        [
            roman("Every key is also a flag of "),
            bold("berth boot"),
            roman(" and "),
            bold("berth check"),
            roman(" ("),
            bold("BindReadOnly="),
            roman(" is "),
            bold("--bind-read-only"),
            roman("), and a flag wins over the file; the flags of a repeatable key replace the file's list. With "),
            bold("--flags-are-defaults"),
            roman(" (as in machine@.service) the file wins instead. An empty assignment (Key=) resets a key to its default and clears a list. "),
            bold("berth check"),
            roman(" NAME shows the effective settings and where each came from."),
        ],
    );
    paragraph(
        &mut r,
        [roman(
            "Keys that widen what the machine may do are refused in a NAME.ini lying next to the tree, which travels with an image and is not trusted (see FILES).",
        )],
    );

    for s in SECTIONS {
        section(&mut r, &format!("[{}] SECTION", s.to_uppercase()));
        let intro = section_intro(s);
        if !intro.is_empty() {
            r.text([roman(intro)]);
        }
        for k in KEYS.iter().filter(|k| k.section == *s) {
            key_entry(&mut r, k);
        }
    }

    section(&mut r, "FILES");
    r.text([roman(
        "The first NAME.ini found in these places is the machine's file, unless --config FILE names another (trusted) file:",
    )]);
    for dir in SEARCH_DIRS {
        let role = match *dir {
            "/etc/berth/machines.d" => "The administrator's settings.",
            "/run/berth/machines.d" => "Runtime settings, gone at the next boot.",
            "/usr/lib/berth/machines.d" => "Settings shipped by packages.",
            _ => "Trusted settings.",
        };
        tagged(&mut r, [italic(format!("{dir}/NAME.ini"))], [roman(role)]);
    }
    let refused: Vec<String> = KEYS
        .iter()
        .filter(|k| k.privileged)
        .map(|k| format!("{}=", k.key))
        .collect();
    tagged(
        &mut r,
        [italic("NAME.ini next to the tree")],
        [roman(format!(
            "For the tree {MACHINES_DIR}/NAME (or -D DIR), {MACHINES_DIR}/NAME.ini (the directory's own name, .ini, beside it). It travels with an image and is untrusted: it is read only when no file above exists, it must be a plain file (not a symbolic link), and these keys are refused in it: {}.",
            refused.join(", ")
        ))],
    );

    section(&mut r, "EXAMPLES");
    r.text([roman(
        "A machine on zone web, with its changes to /var kept off the tree, port 8080 of the host forwarded to its port 80, and at most 2G of memory:",
    )]);
    r.control("PP", []);
    r.control("nf", []);
    r.control("RS", ["4"]);
    for line in EXAMPLE.lines() {
        r.text([roman(line)]);
    }
    r.control("RE", []);
    r.control("fi", []);

    see_also(
        &mut r,
        &[
            ("berth", "1"),
            ("berth-boot", "1"),
            ("berth-check", "1"),
            ("systemd-nspawn", "1"),
            ("machinectl", "1"),
            ("systemd.nspawn", "5"),
        ],
    );
    r.render()
}

// ---------------------------------------------------------------------------
// Completions.

/// The command the completions describe: berth's, without the hidden
/// subcommands, with value hints and choices for the settings flags, and
/// a marker hint on each machine NAME (the zsh script's action for it is
/// then replaced with the machine lister: clap has no hint for "a name from
/// this directory").
fn completion_command(shell: clap_complete::Shell) -> clap::Command {
    let full = crate::cli::command();
    let mut cmd = clap::Command::new(full.get_name().to_string())
        .subcommand_required(full.is_subcommand_required_set())
        .args(full.get_arguments().cloned());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    if let Some(version) = full.get_version() {
        cmd = cmd.version(version.to_string());
    }
    for sub in full.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut sub = sub.clone();
        let positionals: Vec<String> = sub.get_positionals().map(|a| a.get_id().to_string()).collect();
        for k in KEYS {
            if sub.get_arguments().any(|a| a.get_id() == k.flag().as_str()) {
                sub = sub.mut_arg(k.flag(), |a| value_completion(a, k.kind, shell));
            }
        }
        // What follows "--" (the init's arguments, run's command) is for the
        // machine: nothing of the host's to complete. Without this, zsh
        // offers the host's files and commands at NAME too.
        let last: Vec<String> = sub
            .get_positionals()
            .filter(|a| a.is_last_set())
            .map(|a| a.get_id().to_string())
            .collect();
        for id in last {
            sub = sub.mut_arg(id, |a| a.value_hint(ValueHint::Other));
        }
        // import-tar's NAME is a new machine's: nothing to complete.
        if sub.get_name() == "import-tar" {
            sub = sub.mut_arg("name", |a| a.value_hint(ValueHint::Other));
        }
        if let Some((_, id)) = MACHINE_ARGS.iter().find(|(name, _)| *name == sub.get_name()) {
            let hint = if sub.get_name() == "check" {
                CHECK_MARKER_HINT
            } else {
                NAME_MARKER_HINT
            };
            sub = sub.mut_arg(*id, |a| a.value_hint(hint));
        }
        // mut_arg moves an argument to the end, and the zsh script lists
        // positionals in that order: move them all, in their own order.
        for id in positionals {
            sub = sub.mut_arg(id, |a| a);
        }
        cmd = cmd.subcommand(sub);
    }
    cmd.build();
    cmd
}

/// The hints standing for "a machine" and "a machine or a file" in the
/// generated zsh script (berth has no user or host argument of its own).
const NAME_MARKER_HINT: ValueHint = ValueHint::Username;
const CHECK_MARKER_HINT: ValueHint = ValueHint::Hostname;

/// What a settings flag's value completes to: choices, or a host path for
/// Bind=, or nothing (paths of the machine are not the host's files).
fn value_completion(arg: clap::Arg, kind: Kind, shell: clap_complete::Shell) -> clap::Arg {
    match kind {
        // fish's script ignores require_equals: it would offer yes and no
        // as the next word, which berth takes as NAME. There a boolean
        // flag is completed as a plain flag (alone, it means yes).
        Kind::Bool if shell == clap_complete::Shell::Fish => clap::Arg::new(arg.get_id().clone())
            .long(arg.get_long().expect("settings flags are long").to_string())
            .help(arg.get_help().cloned().unwrap_or_default())
            .action(clap::ArgAction::SetTrue),
        Kind::Bool => arg.value_parser(PossibleValuesParser::new(["yes", "no"])),
        Kind::Choice(choices) => arg.value_parser(PossibleValuesParser::new(choices.iter().copied())),
        Kind::BindMount => arg.value_hint(ValueHint::AnyPath),
        Kind::AbsolutePath
        | Kind::Words
        | Kind::EnvAssignment
        | Kind::Hostname
        | Kind::Signal
        | Kind::Capabilities
        | Kind::SystemCalls
        | Kind::UserName
        | Kind::TmpFs
        | Kind::InterfaceName
        | Kind::ZoneName
        | Kind::MacAddress
        | Kind::AddressPrefix
        | Kind::IpAddress
        | Kind::PortForward
        | Kind::Size
        | Kind::Percent
        | Kind::Weight
        | Kind::Count
        | Kind::CpuList
        | Kind::PrivateUsers => arg.value_hint(ValueHint::Other),
    }
}

/// The options of a subcommand that take their value as the next word
/// (`--console pipe`, `-D DIR`), for the shells that must skip it to find
/// the NAME position. Boolean settings flags take theirs only after '='.
fn options_with_separate_value(sub: &clap::Command) -> Vec<String> {
    let mut out = Vec::new();
    for a in sub.get_arguments() {
        if a.is_positional() || !a.get_action().takes_values() || a.is_require_equals_set() {
            continue;
        }
        out.extend(
            a.get_short_and_visible_aliases()
                .into_iter()
                .flatten()
                .map(|s| format!("-{s}")),
        );
        out.extend(
            a.get_long_and_visible_aliases()
                .into_iter()
                .flatten()
                .map(|l| format!("--{l}")),
        );
    }
    out
}

fn machine_subcommands(cmd: &clap::Command) -> Vec<(&'static str, Vec<String>)> {
    MACHINE_ARGS
        .iter()
        .map(|(name, _)| {
            let sub = cmd
                .find_subcommand(name)
                .unwrap_or_else(|| panic!("no subcommand {name}"));
            (*name, options_with_separate_value(sub))
        })
        .collect()
}

fn clap_script(shell: clap_complete::Shell, cmd: &mut clap::Command) -> String {
    let mut buf = Vec::new();
    clap_complete::generate(shell, cmd, "berth", &mut buf);
    String::from_utf8(buf).expect("clap_complete writes UTF-8")
}

/// Replace `from` with `to` in `text`, exactly `count` times, or fail: the
/// scripts clap_complete writes changed shape.
fn replace_exactly(text: &str, from: &str, to: &str, count: usize, what: &str) -> anyhow::Result<String> {
    let found = text.matches(from).count();
    anyhow::ensure!(
        found == count,
        "the {what} completion script of clap_complete has {found} times {from:?}, not {count}: berth's additions need updating"
    );
    Ok(text.replace(from, to))
}

/// The completion files, as (file name, text): `berth` (bash), `_berth`
/// (zsh), `berth.fish`.
pub fn completions() -> anyhow::Result<Vec<(String, String)>> {
    use clap_complete::Shell;
    let mut cmd = completion_command(Shell::Bash);
    let subs = machine_subcommands(&cmd);
    Ok(vec![
        ("berth".into(), bash_script(&mut cmd, &subs)?),
        ("_berth".into(), zsh_script(&mut completion_command(Shell::Zsh))?),
        (
            "berth.fish".into(),
            fish_script(&mut completion_command(Shell::Fish), &subs),
        ),
    ])
}

const BASH_MACHINES: &str = r#"
# --- berth: machine names (the trees in /var/lib/machines, or in
# $BERTH_MACHINES_DIR) for the NAME of boot, run, check, status and
# export-tar; everything else is clap_complete's _berth above.
_berth_machines() {
    local dir=${BERTH_MACHINES_DIR:-/var/lib/machines} d
    for d in "$dir"/*/; do
        [[ -d $d ]] || continue
        d=${d%/}
        printf '%s\n' "${d##*/}"
    done
}

# Whether the word being completed is the NAME of a subcommand taking one:
# the first word after the subcommand that is neither an option nor an
# option's value, before any "--". Sets _berth_cur and _berth_sub. Reads
# COMP_LINE, split on blanks only (COMP_WORDS splits --opt=value at '=').
_berth_at_name() {
    local line=${COMP_LINE:0:COMP_POINT} valopts w i=1 skip=0
    local -a words
    read -ra words <<< "$line"
    if [[ -z $line || $line == *[[:blank:]] ]]; then
        _berth_cur=""
    else
        _berth_cur=${words[-1]}
        unset 'words[-1]'
    fi
    [[ $_berth_cur == -* ]] && return 1
    # The subcommand: the first word after berth that is not an option.
    while (( i < ${#words[@]} )) && [[ ${words[i]} == -* ]]; do
        i=$((i + 1))
    done
    (( i < ${#words[@]} )) || return 1
    _berth_sub=${words[i]}
    # Its options that take the next word as their value.
    case $_berth_sub in
@CASES@
        *) return 1 ;;
    esac
    for w in "${words[@]:i+1}"; do
        if (( skip )); then
            skip=0
            continue
        fi
        [[ $w == -- ]] && return 1
        if [[ $w == -* ]]; then
            [[ " $valopts " == *" $w "* ]] && skip=1
            continue
        fi
        return 1
    done
    (( ! skip ))
}

_berth_complete() {
    local _berth_cur _berth_sub
    if [[ -n ${COMP_LINE+set} ]] && _berth_at_name; then
        local IFS=$'\n'
        COMPREPLY=($(compgen -W "$(_berth_machines)" -- "$_berth_cur"))
        if [[ $_berth_sub == check ]]; then
            # check also takes a settings file
            COMPREPLY+=($(compgen -f -- "$_berth_cur"))
            compopt -o filenames 2>/dev/null
        else
            compopt +o default +o bashdefault 2>/dev/null
        fi
        return 0
    fi
    _berth "$@"
}
"#;

fn bash_script(cmd: &mut clap::Command, subs: &[(&str, Vec<String>)]) -> anyhow::Result<String> {
    let script = clap_script(clap_complete::Shell::Bash, cmd);
    // clap_complete registers _berth twice (one branch for bash < 4.4).
    let script = replace_exactly(
        &script,
        "complete -F _berth ",
        "complete -F _berth_complete ",
        2,
        "bash",
    )?;
    let (head, tail) = script.rsplit_once("\nif [[ \"${BASH_VERSINFO[0]}\" -eq 4").context(
        "the bash completion script of clap_complete has no final registration: berth's additions need updating",
    )?;
    let mut cases = String::new();
    for (name, valopts) in subs {
        writeln!(cases, "        {name}) valopts=\"{}\" ;;", valopts.join(" ")).unwrap();
    }
    let helpers = BASH_MACHINES.replace("@CASES@\n", &cases);
    Ok(format!(
        "{head}\n{helpers}\nif [[ \"${{BASH_VERSINFO[0]}}\" -eq 4{tail}"
    ))
}

const ZSH_MACHINES: &str = r#"
# --- berth: machine names (the trees in /var/lib/machines, or in
# $BERTH_MACHINES_DIR) for the NAME of boot, run, check, status and
# export-tar.
_berth_machines() {
    local expl
    local -a names
    names=(${BERTH_MACHINES_DIR:-/var/lib/machines}/*(N-/:t))
    _wanted machines expl 'machine' compadd -a names
}

_berth_machine_or_file() {
    _alternative 'machines:machine:_berth_machines' 'files:settings file:_files'
}
"#;

fn zsh_script(cmd: &mut clap::Command) -> anyhow::Result<String> {
    let script = clap_script(clap_complete::Shell::Zsh, cmd);
    let names = MACHINE_ARGS.iter().filter(|(s, _)| *s != "check").count();
    let script = replace_exactly(&script, ":_users' \\\n", ":_berth_machines' \\\n", names, "zsh")?;
    let script = replace_exactly(&script, ":_hosts' \\\n", ":_berth_machine_or_file' \\\n", 1, "zsh")?;
    let (first, rest) = script
        .split_once('\n')
        .context("the zsh completion script of clap_complete is empty")?;
    anyhow::ensure!(
        first.starts_with("#compdef"),
        "the zsh script does not start with #compdef"
    );
    Ok(format!("{first}\n{ZSH_MACHINES}{rest}"))
}

const FISH_MACHINES: &str = r#"
# --- berth: machine names (the trees in /var/lib/machines, or in
# $BERTH_MACHINES_DIR) for the NAME of boot, run, check, status and
# export-tar.
function __fish_berth_machines
    set -l dir /var/lib/machines
    set -q BERTH_MACHINES_DIR; and set dir $BERTH_MACHINES_DIR
    for d in $dir/*/
        string replace -r '^.*/([^/]+)/$' '$1' -- $d
    end
end

# Whether the token being completed is the NAME of one of the subcommands
# given as arguments: the first word after the subcommand that is neither
# an option nor an option's value, before any "--".
function __fish_berth_at_name
    set -l words (commandline -opc)
    set -e words[1]
    set -l sub
    while set -q words[1]
        set -l w $words[1]
        set -e words[1]
        if not string match -q -- '-*' $w
            set sub $w
            break
        end
    end
    contains -- "$sub" $argv; or return 1
    set -l valopts
    switch $sub
@CASES@
    end
    set -l skip 0
    for w in $words
        if test $skip -eq 1
            set skip 0
            continue
        end
        test "$w" = --; and return 1
        if string match -q -- '-*' $w
            contains -- $w $valopts; and set skip 1
            continue
        end
        return 1
    end
    test $skip -eq 0
end

complete -c berth -n '__fish_berth_at_name @NAMES@' -f -a '(__fish_berth_machines)' -d Machine
complete -c berth -n '__fish_berth_at_name check' -F -a '(__fish_berth_machines)' -d Machine
"#;

fn fish_script(cmd: &mut clap::Command, subs: &[(&str, Vec<String>)]) -> String {
    let script = clap_script(clap_complete::Shell::Fish, cmd);
    let mut cases = String::new();
    for (name, valopts) in subs {
        writeln!(cases, "        case {name}").unwrap();
        if !valopts.is_empty() {
            writeln!(cases, "            set valopts -- {}", valopts.join(" ")).unwrap();
        }
    }
    let names: Vec<&str> = subs.iter().map(|(n, _)| *n).filter(|n| *n != "check").collect();
    let helpers = FISH_MACHINES
        .replace("@CASES@\n", &cases)
        .replace("@NAMES@", &names.join(" "));
    format!("{script}{helpers}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn have(program: &str) -> bool {
        Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn page(name: &str) -> String {
        man_pages()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no page {name}"))
            .1
    }

    /// Format a page as a reader sees it, with man(1) and its warnings on
    /// (as lintian runs it), or with groff when man is missing. Asserts
    /// that nothing was warned about, and returns the plain text (words
    /// hyphenated at a line's end joined again). Fails, saying what to
    /// install, when neither program is there.
    fn render(name: &str, text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = if have("man") {
            Command::new("man")
                .args(["--warnings", "-E", "UTF-8", "-l", "-Tutf8"])
                .arg(&path)
                .env("LC_ALL", "C.UTF-8")
                .env("MANROFFSEQ", "")
                .env("MANWIDTH", "80")
                // man-db's sandbox can fail in restricted containers.
                .env("MAN_DISABLE_SECCOMP", "1")
                .output()
                .unwrap()
        } else if have("groff") {
            Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-P-cbou", "-rLL=80n"])
                .arg(&path)
                .output()
                .unwrap()
        } else {
            panic!("neither man nor groff is installed, so {name} cannot be rendered: apt-get install man-db");
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.trim().is_empty(), "{name}: {stderr}");
        // Without a terminal, grotty still overstrikes bold and underline
        // ("X\bX", "_\bX"): keep the last character of each.
        let mut plain = String::new();
        for c in String::from_utf8_lossy(&out.stdout).chars() {
            if c == '\u{8}' {
                plain.pop();
            } else {
                plain.push(c);
            }
        }
        let mut joined = String::new();
        let mut lines = plain.lines().peekable();
        while let Some(line) = lines.next() {
            match line.strip_suffix('\u{2010}') {
                Some(head) if lines.peek().is_some() => {
                    joined.push_str(head);
                    joined.push_str(lines.next().unwrap().trim_start());
                }
                _ => joined.push_str(line),
            }
            joined.push('\n');
        }
        joined
    }

    /// roff's escapes of the text of a page: '-' and the apostrophe.
    fn escaped(text: &str) -> String {
        text.replace('\\', "\\\\").replace('-', "\\-").replace('\'', "\\*(Aq")
    }

    #[test]
    fn machine_page_has_every_key_and_renders() {
        let text = page("berth.machine.5");
        for k in KEYS {
            assert!(text.contains(&format!("\\fB{}=\\fR", k.key)), "{} is missing", k.id());
            assert!(text.contains(&escaped(&kind_in_words(k.kind))), "{}: no type", k.id());
            assert!(text.contains(&escaped(k.description)), "{}: no description", k.id());
        }
        for s in SECTIONS {
            assert!(text.contains(&format!(".SH \"[{}] SECTION\"", s.to_uppercase())), "{s}");
        }
        for f in SEARCH_DIRS {
            assert!(text.contains(&format!("\\fI{}/NAME.ini\\fR", escaped(f))), "{f}");
        }
        assert!(text.contains("NAME.ini next to the tree"));
        for see in ["berth", "systemd\\-nspawn", "machinectl", "systemd.nspawn"] {
            assert!(text.contains(&format!("\\fB{see}\\fR")), "SEE ALSO {see}");
        }
        // Rendered by man(1) (as lintian checks pages), else by groff.
        let out = render("berth.machine.5", &text);
        for k in KEYS {
            let tag = format!("\n       {}=", k.key);
            assert!(out.contains(&tag), "{} not rendered:\n{out}", k.id());
        }
        for s in SECTIONS {
            assert!(out.contains(&format!("\n[{}] SECTION\n", s.to_uppercase())), "{s}");
        }
        let see_also = out.split("\nSEE ALSO\n").nth(1).expect("a SEE ALSO section");
        for page in ["berth(1)", "systemd-nspawn(1)", "machinectl(1)", "systemd.nspawn(5)"] {
            assert!(see_also.contains(page), "{page} not in SEE ALSO: {see_also}");
        }
    }

    #[test]
    fn command_pages_render() {
        let pages = man_pages();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        for want in [
            "berth.1",
            "berth-boot.1",
            "berth-run.1",
            "berth-check.1",
            "berth-list.1",
            "berth-status.1",
            "berth-images.1",
            "berth-import-tar.1",
            "berth-export-tar.1",
            "berth.machine.5",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("generate")), "{names:?}");
        let boot = page("berth-boot.1");
        assert!(boot.starts_with(".ie \\n(.g .ds Aq \\(aq"), "{}", &boot[..80]);
        assert!(boot.contains(".TH berth-boot 1 "), "{}", &boot[..300]);
        assert!(boot.contains("\\fBberth boot\\fR [OPTIONS] [NAME] [\\-\\- <ARGS>...]"));
        for k in KEYS {
            assert!(
                boot.contains(&format!("\\fB\\-\\-{}\\fR", k.flag().replace('-', "\\-"))),
                "{}",
                k.id()
            );
        }
        assert!(boot.contains(".SH \"EXIT STATUS\""));
        // The extra sections came without a second preamble, apostrophes
        // escaped as in the rest of the page.
        assert_eq!(boot.matches(".ds Aq").count(), 2, "{boot}");
        assert!(boot.contains("The init\\*(Aqs own exit status."));
        assert!(page("berth.1").contains("\nberth\\-boot(1)\n"));
        for (name, text) in &pages {
            let out = render(name, text);
            assert!(
                out.contains("\nNAME\n"),
                "{name} rendered without a NAME section:\n{out}"
            );
        }
    }

    #[test]
    fn every_kind_is_described() {
        let choice = kind_in_words(Kind::Choice(&["auto", "off", "bind"]));
        assert_eq!(choice, "one of auto, off, bind");
        assert_eq!(
            kind_in_words(Kind::Bool),
            "boolean (yes/no; also true/false, on/off, 1/0)"
        );
        assert!(kind_in_words(Kind::Size).contains("K, M, G, T suffix"));
        assert!(kind_in_words(Kind::Size).contains("infinity"));
    }

    #[test]
    fn dates() {
        assert_eq!(ymd(0), "1970-01-01");
        assert_eq!(ymd(951_782_400), "2000-02-29");
        assert_eq!(ymd(1_764_028_800), "2025-11-25");
        assert_eq!(ymd(1_764_115_199), "2025-11-25");
    }

    /// The example of berth.machine(5) is a valid file.
    #[test]
    fn example_parses() {
        let mut settings = crate::config::Settings::default();
        let mut errors = Vec::new();
        let file = crate::config::SettingsFile {
            path: "example.ini".into(),
            trusted: true,
        };
        crate::config::load_text(&mut settings, &file, EXAMPLE.as_bytes(), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(settings.text("Network", "Zone"), Some("web"));
    }

    /// A machines directory with trees alpha and beta, a file (not a tree)
    /// and a hidden directory.
    fn machines_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for d in ["alpha", "beta", ".#gamma.lck"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), "").unwrap();
        dir
    }

    fn script(name: &str) -> String {
        completions().unwrap().into_iter().find(|(n, _)| n == name).unwrap().1
    }

    /// Complete `line` (the cursor at its end) with the bash script, as
    /// bash's programmable completion calls it: COMP_LINE, COMP_POINT,
    /// COMP_WORDS, COMP_CWORD, and the function with the command, the
    /// current and the previous word.
    fn bash_complete(line: &str) -> Vec<String> {
        let machines = machines_dir();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth");
        std::fs::write(&path, script("berth")).unwrap();
        let program = r#"
source "$1"
line=$2
read -ra COMP_WORDS <<< "$line"
[[ $line == *' ' ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE=$line
COMP_POINT=${#line}
spec=$(complete -p berth)
[[ $spec == *"-F _berth_complete "* ]] || { echo "not registered: $spec" >&2; exit 1; }
prev=""
(( COMP_CWORD > 0 )) && prev=${COMP_WORDS[COMP_CWORD-1]}
_berth_complete berth "${COMP_WORDS[COMP_CWORD]}" "$prev" 2>/dev/null
printf '%s\n' "${COMPREPLY[@]}"
"#;
        let out = Command::new("bash")
            .args(["--norc", "--noprofile", "-c", program, "bash"])
            .arg(&path)
            .arg(line)
            .env("BERTH_MACHINES_DIR", machines.path())
            .current_dir(dir.path())
            .output()
            .unwrap();
        candidates(line, &out)
    }

    /// A shell's completion candidates for `line`, sorted (the first
    /// tab-separated field of each non-empty line; fish adds descriptions).
    fn candidates(line: &str, out: &std::process::Output) -> Vec<String> {
        assert!(
            out.status.success(),
            "{line:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('\t').next().unwrap_or_default().to_string())
            .collect();
        got.sort();
        got
    }

    #[test]
    fn bash_completes_machine_names() {
        let both = ["alpha", "beta"];
        for line in [
            "berth boot ",
            "berth run ",
            "berth status ",
            "berth export-tar ",
            "berth boot --console pipe ",
            "berth boot --console=pipe ",
            "berth boot --read-only ",
            "berth boot -D /srv/x --bind /srv ",
            "berth run --register no ",
        ] {
            assert_eq!(bash_complete(line), both, "{line:?}");
        }
        assert_eq!(bash_complete("berth boot a"), ["alpha"]);
        assert_eq!(bash_complete("berth status b"), ["beta"]);
        // check: machines and settings files (the script file, in the cwd).
        assert_eq!(bash_complete("berth check "), ["alpha", "berth", "beta"]);
        // Not at NAME: clap_complete's own completion, without machines.
        for line in [
            "berth boot alpha ",
            "berth boot -- ",
            "berth boot --console ",
            "berth export-tar alpha ",
            "berth import-tar ",
            "berth list ",
            "berth ",
        ] {
            let got = bash_complete(line);
            assert!(!got.contains(&"alpha".to_string()), "{line:?}: {got:?}");
        }
        assert_eq!(
            bash_complete("berth boot --console "),
            ["interactive", "passive", "pipe", "read-only"]
        );
        let subcommands = bash_complete("berth ");
        assert!(subcommands.contains(&"boot".to_string()), "{subcommands:?}");
        assert!(!subcommands.contains(&"generate".to_string()), "{subcommands:?}");
        assert!(bash_complete("berth boot --vol").contains(&"--volatile".to_string()));
    }

    #[test]
    fn fish_completes_machine_names() {
        // fish completes a command line itself (complete -C), without a
        // terminal.
        let text = script("berth.fish");
        assert!(text.contains("__fish_berth_at_name boot run status export-tar"));
        assert!(
            have("fish"),
            "fish is missing, so berth's fish completion cannot be run: apt-get install fish"
        );
        let machines = machines_dir();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.fish");
        std::fs::write(&path, &text).unwrap();
        let complete = |line: &str| -> Vec<String> {
            let out = Command::new("fish")
                .args(["--no-config", "-c", "source $argv[1]; complete -C $argv[2]"])
                .arg(&path)
                .arg(line)
                .env("BERTH_MACHINES_DIR", machines.path())
                .current_dir(dir.path())
                .output()
                .unwrap();
            candidates(line, &out)
        };
        assert_eq!(complete("berth boot "), ["alpha", "beta"]);
        assert_eq!(complete("berth boot --console pipe b"), ["beta"]);
        assert_eq!(complete("berth run -D /srv/x "), ["alpha", "beta"]);
        assert_eq!(complete("berth export-tar "), ["alpha", "beta"]);
        assert!(complete("berth check ").contains(&"alpha".to_string()));
        assert!(complete("berth check ").contains(&"berth.fish".to_string()));
        assert!(!complete("berth boot alpha ").contains(&"alpha".to_string()));
        assert!(!complete("berth import-tar ").contains(&"alpha".to_string()));
        let subcommands = complete("berth ");
        assert!(subcommands.contains(&"boot".to_string()) && !subcommands.contains(&"generate".to_string()));
    }

    #[test]
    fn zsh_completes_machine_names() {
        let text = script("_berth");
        assert_eq!(text.matches(":_berth_machines' \\\n").count(), 4);
        assert_eq!(text.matches(":_berth_machine_or_file' \\\n").count(), 1);
        assert!(
            have("zsh"),
            "zsh is missing, so berth's zsh completion cannot be run: apt-get install zsh"
        );
        let machines = machines_dir();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("_berth"), &text).unwrap();
        // zsh completes only in its line editor: drive an interactive zsh
        // on a pseudo-terminal (zpty), with compadd wrapped to print the
        // matches it adds (as zsh-capture-completion does); for each line,
        // wait for the prompt (zle reads the keys raw only then), type it
        // and a Tab, then clear it and print a marker to wait for.
        let program = r#"
zmodload zsh/zpty || exit 2
zpty z zsh -f -i
zpty -w z "PS1='<zp>' RPROMPT=''; fpath=($1 \$fpath); autoload -Uz compinit; compinit -u -D; export BERTH_MACHINES_DIR=$2"
zpty -w z 'compadd() { if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return; fi; local -a hits; builtin compadd -A hits "$@"; (( $#hits )) && print -rl -- "" MATCH:${^hits}; builtin compadd "$@"; }'
zpty -w z 'print READY'
zpty -r -m z out '*READY*READY*<zp>*' || exit 3
for (( i = 3; i <= $#; i++ )); do
    zpty -n -w z "${argv[i]}"$'\t'
    zpty -w z $'\C-u'"print DO''NE-$i-"
    zpty -r -m z out "*DONE-$i-*<zp>*" || exit 4
    print -r -- "LINE-$i" "$out"
done
zpty -d z
"#;
        let lines = [
            "berth boot ",
            "berth run --console pipe ",
            "berth status b",
            "berth export-tar ",
            "berth check ",
            "berth export-tar alpha ",
            "berth boot alpha ",
            "berth ",
        ];
        let out = Command::new("timeout")
            .args(["120", "zsh", "-f", "-c", program, "zsh"])
            .arg(dir.path())
            .arg(machines.path())
            .args(lines)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "zsh: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let got: Vec<Vec<String>> = (0..lines.len())
            .map(|i| {
                let from = stdout
                    .find(&format!("LINE-{} ", i + 3))
                    .expect("every line was completed");
                let part = stdout[from..].split("\nLINE-").next().unwrap();
                let mut matches: Vec<String> = part
                    .split(['\r', '\n'])
                    .filter_map(|l| l.strip_prefix("MATCH:"))
                    .map(String::from)
                    .collect();
                matches.sort();
                matches.dedup();
                matches
            })
            .collect();
        let both = ["alpha", "beta"];
        assert_eq!(got[0], both, "{}", lines[0]);
        assert_eq!(got[1], both, "{}", lines[1]);
        assert_eq!(got[2], ["beta"], "{}", lines[2]);
        assert_eq!(got[3], both, "{}", lines[3]);
        assert_eq!(got[4], ["_berth", "alpha", "beta"], "{}", lines[4]);
        assert!(!got[5].contains(&"alpha".to_string()), "{}: {:?}", lines[5], got[5]);
        assert!(got[6].is_empty(), "{}: {:?}", lines[6], got[6]);
        assert!(got[7].contains(&"boot".to_string()) && !got[7].contains(&"generate".to_string()));
    }
}
