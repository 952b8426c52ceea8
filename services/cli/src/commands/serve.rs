//! `zkmesh <service> serve` and `zkmesh worker`: one process per service, until SIGINT or
//! SIGTERM.

use std::path::PathBuf;

use zkmesh_kit::CancellationToken;

use crate::commands::config;

/// Serves until SIGINT or SIGTERM, then drains.
pub(crate) async fn serve_until_signal(
    serving: zkmesh_kit::server::Serving,
    shutdown: CancellationToken,
) -> anyhow::Result<i32> {
    let mut task = serving.task;
    tokio::select! {
        r = &mut task => { r??; return Ok(0); }
        _ = zkmesh_kit::server::shutdown_signal() => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
    task.await??;
    Ok(0)
}

/// Prints the hex public key of the Ed25519 signing key at `path`, making it on first use (as
/// the service would at its first start).
pub(crate) fn print_public_key(path: &std::path::Path) -> anyhow::Result<i32> {
    let key = zkmesh_kit::signing_key::load_or_create_key(path)
        .map_err(|e| crate::exit::exit(crate::exit::EXIT_CONFIG, e.to_string()))?;
    println!("{}", hex::encode(key.verifying_key().to_bytes()));
    Ok(0)
}

/// Serves one of the four services with the config from `file` and `ZKMESH_<SERVICE>_*`.
pub(crate) async fn service(file: &Option<PathBuf>, name: &str) -> anyhow::Result<i32> {
    zkmesh_kit::telemetry::init_tracing("info");
    let shutdown = CancellationToken::new();
    let serving = match name {
        "registry" => zkmesh_registry::start(config(file, name)?, shutdown.clone()).await?,
        "scheduler" => zkmesh_scheduler::start(config(file, name)?, shutdown.clone()).await?,
        "ledger" => zkmesh_ledger::start(config(file, name)?, shutdown.clone()).await?,
        "verifier" => zkmesh_verifier::start(config(file, name)?, shutdown.clone()).await?,
        other => unreachable!("no service {other}"),
    };
    serve_until_signal(serving, shutdown).await
}

/// `zkmesh worker`: runs a node until SIGINT or SIGTERM.
pub(crate) async fn worker(file: &Option<PathBuf>) -> anyhow::Result<i32> {
    zkmesh_kit::telemetry::init_tracing("info");
    let shutdown = CancellationToken::new();
    let handle = zkmesh_worker::start(config(file, "worker")?, shutdown.clone()).await?;
    let mut task = handle.task;
    tokio::select! {
        r = &mut task => { r??; return Ok(0); }
        _ = zkmesh_kit::server::shutdown_signal() => {}
    }
    shutdown.cancel();
    task.await??;
    Ok(0)
}
