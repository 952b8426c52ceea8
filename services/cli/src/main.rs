//! `zkmesh`: see `zkmesh --help`.

use clap::Parser;
use zkmesh_cli::commands::{Cli, Command, LedgerCommand, ServeCommand};

fn main() {
    let cli = Cli::parse();
    let serving = matches!(
        cli.command,
        Command::Registry(ServeCommand::Serve { .. })
            | Command::Scheduler(ServeCommand::Serve { .. })
            | Command::Verifier(ServeCommand::Serve { .. })
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
