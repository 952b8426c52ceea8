//! What each command does: [`execute`] runs a parsed command line; one module per command
//! group, the argument definitions in `args.rs` and the rendering in `render.rs`.

use std::path::PathBuf;

use zkmesh_kit::config::{load, process_env};

use crate::{EXIT_CONFIG, exit};
use zkmesh_client::{ClientConfig, MeshClient};

mod ca;
mod circuits;
mod dev;
mod ledger;
mod node;
mod run;
mod serve;
mod tasks;
mod verify;

pub use crate::args::{
    CaCommand, CircuitsCommand, Cli, Command, DevArgs, LedgerCommand, NodeCommand, RunArgs,
    ServeCommand, VerifierCommand, parse_policy,
};
pub use crate::render::{result_json, task_exit_code};
pub use run::{EMBEDDED_MAX_CLASS, load_module, proof_class};

/// `$ZKMESH_HOME`, or `~/.zkmesh`.
pub fn zkmesh_home() -> PathBuf {
    std::env::var_os("ZKMESH_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".zkmesh")))
        .unwrap_or_else(|| PathBuf::from(".zkmesh"))
}

/// The configured mesh, if any.
pub(crate) fn configured(flag: &Option<PathBuf>) -> Option<PathBuf> {
    flag.clone()
        .or_else(|| std::env::var_os("ZKMESH_CLIENT_CONFIG").map(PathBuf::from))
        .or_else(|| Some(zkmesh_home().join("client.toml")).filter(|p| p.exists()))
}

/// A client of the configured mesh (exit 78 when none is).
pub(crate) fn client(flag: &Option<PathBuf>) -> anyhow::Result<MeshClient> {
    let path = configured(flag).ok_or_else(|| {
        exit(
            EXIT_CONFIG,
            format!(
                "no mesh configured: start one with `zkmesh dev`, pass --mesh FILE, or set ZKMESH_CLIENT_CONFIG (looked for {})",
                zkmesh_home().join("client.toml").display()
            ),
        )
    })?;
    let config = ClientConfig::load(&path).map_err(|e| exit(EXIT_CONFIG, format!("{e:#}")))?;
    MeshClient::connect(&config).map_err(|e| exit(EXIT_CONFIG, format!("{e:#}")))
}

/// A service's or the worker's config from `file` and `ZKMESH_<SECTION>_*` (exit 78 if bad).
pub(crate) fn config<T: serde::de::DeserializeOwned>(
    file: &Option<PathBuf>,
    section: &str,
) -> anyhow::Result<T> {
    load(file.as_deref(), section, &process_env()).map_err(|e| exit(EXIT_CONFIG, e.to_string()))
}

/// Runs a parsed command line and returns the process exit code.
pub async fn execute(cli: Cli) -> anyhow::Result<i32> {
    let mesh = cli.mesh.clone();
    match cli.command {
        Command::Run(args) => run::run(&mesh, args).await,
        Command::Dev(args) => dev::dev(args).await,
        Command::Submit(args) => tasks::submit(&mesh, args).await,
        Command::Upload { module, json } => tasks::upload_module(&mesh, module, json).await,
        Command::Status { task, json } => tasks::status(&mesh, task, json).await,
        Command::Watch { task, json } => tasks::watch(&mesh, task, json).await,
        Command::Result {
            task,
            json,
            output,
            bundle,
        } => tasks::result(&mesh, task, json, output, bundle).await,
        Command::Verify {
            bundle,
            module,
            vk,
            json,
        } => verify::verify(&mesh, &bundle, module.as_deref(), vk.as_deref(), json).await,
        Command::Circuits(c) => circuits::circuits(&mesh, c).await,
        Command::Cancel { task } => tasks::cancel(&mesh, task).await,
        Command::Tasks { limit } => tasks::list(&mesh, limit).await,
        Command::Guests => tasks::guests(),
        Command::Node(cmd) => node::node(&mesh, cmd).await,
        Command::Ledger(LedgerCommand::Serve { config: file }) => {
            serve::service(&file, "ledger").await
        }
        Command::Ledger(LedgerCommand::Key { config: file }) => {
            let c: zkmesh_ledger::LedgerConfig = config(&file, "ledger")?;
            serve::print_public_key(&c.key_file)
        }
        Command::Ledger(cmd) => ledger::ledger(&mesh, cmd).await,
        Command::Ca(cmd) => ca::ca(&mesh, cmd).await,
        Command::Registry(ServeCommand::Serve { config: file }) => {
            serve::service(&file, "registry").await
        }
        Command::Scheduler(ServeCommand::Serve { config: file }) => {
            serve::service(&file, "scheduler").await
        }
        Command::Verifier(VerifierCommand::Serve { config: file }) => {
            serve::service(&file, "verifier").await
        }
        Command::Verifier(VerifierCommand::Key { config: file }) => {
            let c: zkmesh_verifier::VerifierConfig = config(&file, "verifier")?;
            serve::print_public_key(&c.key_file)
        }
        Command::Worker { config: file } => serve::worker(&file).await,
    }
}
