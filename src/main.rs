use clap::Parser;

use berth::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Boot(args) => berth::commands::boot(args),
        Command::Run(args) => berth::commands::run(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("berth: {e:#}");
            std::process::exit(berth::exit::EXIT_FAILURE);
        }
    }
}
