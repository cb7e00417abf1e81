use berth::cli::Command;

fn main() {
    berth::log::init();
    let invocation = berth::cli::parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let flags = invocation.settings;
    let result = match invocation.cli.command {
        Command::Boot(args) => berth::commands::boot(args, &flags),
        Command::Run(args) => berth::commands::run(args),
        Command::Check(args) => berth::check::check(args, &flags),
        Command::List(args) => berth::state::list(args),
        Command::Status(args) => berth::state::status(args),
        Command::Images(args) => berth::state::images(args),
        Command::ImportTar(args) => berth::image::import_tar(args),
        Command::ExportTar(args) => berth::image::export_tar(args),
        Command::Generate(args) => berth::manual::generate(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // The failing parent step, when it was one, as a field of its own.
            let step = e.downcast_ref::<berth::setup::StepError>().map(|s| s.step.clone());
            // And the OS error behind it, when there is one.
            let errno = e.chain().find_map(|c| {
                c.downcast_ref::<std::io::Error>()
                    .and_then(|io| io.raw_os_error())
                    .or_else(|| c.downcast_ref::<nix::errno::Errno>().map(|n| *n as i32))
            });
            // (An Option field is written only when it is Some.)
            tracing::error!(machine = berth::log::machine(), step, errno, "{e:#}");
            std::process::exit(berth::exit::EXIT_FAILURE);
        }
    }
}
