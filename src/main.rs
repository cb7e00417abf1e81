use berth::cli::Command;

fn main() {
    let invocation = berth::cli::parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let flags = invocation.settings;
    let result = match invocation.cli.command {
        Command::Boot(args) => berth::commands::boot(args, &flags),
        Command::Run(args) => berth::commands::run(args),
        Command::Check(args) => berth::check::check(args, &flags),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("berth: {e:#}");
            std::process::exit(berth::exit::EXIT_FAILURE);
        }
    }
}
