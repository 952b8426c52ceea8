//! `zkmesh`: see `zkmesh --help`.

use clap::Parser;
use zkmesh_cli::commands::{Cli, Command, LedgerCommand, ServeCommand, VerifierCommand};

fn main() {
    // clap's own errors exit 64 like every other bad command line (help and version exit 0).
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                zkmesh_cli::EXIT_USAGE
            } else {
                zkmesh_cli::EXIT_OK
            });
        }
    };
    let serving = matches!(
        cli.command,
        Command::Registry(ServeCommand::Serve { .. })
            | Command::Scheduler(ServeCommand::Serve { .. })
            | Command::Verifier(VerifierCommand::Serve { .. })
            | Command::Ledger(LedgerCommand::Serve { .. })
            | Command::Worker { .. }
            | Command::Dev(_)
    );
    let default_level = match (serving, cli.verbose) {
        (_, 2..) => "debug",
        (true, _) | (false, 1) => "info",
        (false, 0) => "warn",
    };
    zkmesh_kit::telemetry::init_tracing(default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(zkmesh_cli::EXIT_UNAVAILABLE);
        }
    };
    let code = match runtime.block_on(zkmesh_cli::commands::execute(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", zkmesh_cli::describe(&e));
            zkmesh_cli::exit_code(&e)
        }
    };
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    std::process::exit(code);
}
