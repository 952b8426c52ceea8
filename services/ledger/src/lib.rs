//! The ledger: the only authority on credits. Accounts, mints, holds on submission, capture
//! (nodes paid for the fuel they used, the rest refunded) and release, all recorded in an
//! append-only journal whose entries are hash-chained and signed by the ledger's key.
//!
//! Nothing is paid without the verifier's word: a capture pays exactly the payees of a
//! settlement signed by a configured verifier key, and journals it beside each payout.
//!
//! Amounts are integer micro-credits. Every change to a balance or a hold happens in the same
//! SQL transaction as the journal entries that explain it, so the journal alone replays to the
//! balances (`zkmesh ledger audit` checks exactly that).

use std::time::Duration;

use zkmesh_kit::CancellationToken;
use zkmesh_kit::acl::{Acl, Allow};
use zkmesh_kit::db;
use zkmesh_kit::identity::Role;
use zkmesh_kit::revocation::RevocationList;
use zkmesh_kit::server::{ServeSpec, Serving, serve};
use zkmesh_kit::telemetry::Metrics;
use zkmesh_kit::tls::TlsPem;
use zkmesh_proto::ledger_service_server::LedgerServiceServer;

use crate::store::Store;

mod config;
mod error;
mod handlers;
mod store;
#[cfg(test)]
mod tests;

pub use config::{DEFAULT_LISTEN, LedgerConfig};
pub use error::LedgerError;
pub use handlers::LedgerService;

pub static ACL: Acl = Acl {
    service: "zkmesh.v1.LedgerService",
    methods: &[
        ("Mint", &[Allow::Role(Role::Admin)]),
        (
            "GetBalance",
            &[
                Allow::Role(Role::Admin),
                Allow::Role(Role::User),
                Allow::Role(Role::Service),
            ],
        ),
        ("ListAccounts", &[Allow::Role(Role::Admin)]),
        ("Hold", &[Allow::Service("scheduler")]),
        ("Capture", &[Allow::Service("scheduler")]),
        ("Release", &[Allow::Service("scheduler")]),
        (
            "History",
            &[Allow::Role(Role::Admin), Allow::Role(Role::User)],
        ),
        ("ReadJournal", &[Allow::Role(Role::Admin)]),
        ("ListHolds", &[Allow::Role(Role::Admin)]),
        ("GetLedgerKey", &[Allow::AnyRole]),
    ],
};

/// Starts the ledger; it runs until `shutdown` is cancelled.
pub async fn start(config: LedgerConfig, shutdown: CancellationToken) -> anyhow::Result<Serving> {
    let tls = TlsPem::load(&config.server.tls)?;
    let key = zkmesh_kit::signing_key::load_or_create_key(&config.key_file)?;
    tracing::info!(public_key = %hex::encode(key.verifying_key().to_bytes()), "ledger journal key");
    let verifiers = zkmesh_kit::settlement::verifier_keys_hex(&config.verifier_keys)
        .map_err(|e| anyhow::anyhow!("verifier_keys: {e}"))?;
    if verifiers.contains(&key.verifying_key()) {
        anyhow::bail!(
            "verifier_keys holds the ledger's own journal key: the ledger's key alone would then \
             settle payouts; give the verifier a key of its own"
        );
    }
    if verifiers.is_empty() {
        anyhow::bail!(
            "verifier_keys is empty: the ledger pays only on settlements the verifier signs, so \
             it needs the verifier's public key (hex; the verifier logs it at start and serves it \
             with GetVerifierKey)"
        );
    }
    let db = db::connect_durable(&config.server.database_url).await?;
    let metrics = Metrics::new("ledger");
    let revoked = RevocationList::default();
    let registry =
        zkmesh_kit::client::channel(&config.registry_endpoint, &(&tls).into(), "registry")?;
    zkmesh_kit::revocation::follow_revocations(
        registry,
        revoked.clone(),
        Duration::from_secs(1),
        shutdown.clone(),
    );
    let store = Store::open(
        db,
        key,
        metrics.counter("journal_entries", "Journal entries appended"),
    )
    .await?;
    let service = LedgerService { store, verifiers };
    Ok(serve(
        LedgerServiceServer::new(service),
        ServeSpec {
            name: "ledger",
            acl: &ACL,
            tls,
            listen: config.server.listen_or(DEFAULT_LISTEN),
            metrics_listen: config.server.metrics_listen.clone(),
            metrics,
            revoked,
            shutdown,
            grace: config.server.grace(),
            max_revocation_age: config.server.max_revocation_age(),
            limits: config.server.limits.clone(),
            message_caps: vec![],
        },
    )
    .await?)
}
