//! The verifier: the only judge of results. It checks every receipt's Ed25519 signature
//! against the key the registry holds for the node, checks that the receipt is about this task,
//! module and input and about the output the scheduler actually received, and decides
//! `replicate:k` by a majority of distinct operators.
//!
//! A verdict that accepts a result carries a settlement signed with the verifier's key: who is
//! paid (the operators the registry names for the accepted nodes) and for how much fuel. The
//! ledger pays nothing else.
//!
//! Under the `proof` policy it also checks the Groth16 proof against a statement it builds
//! itself: its own lowering of the module, the task's input, the reported output and the
//! claimed steps and exit. It runs the setup of each circuit class itself and serves the keys
//! ([`circuits`]).

pub mod circuits;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use zkmesh_kit::CancellationToken;
use zkmesh_kit::acl::{Acl, Allow};
use zkmesh_kit::db::{self};
use zkmesh_kit::identity::Role;
use zkmesh_kit::revocation::RevocationList;
use zkmesh_kit::server::{ServeSpec, Serving, serve};
use zkmesh_kit::telemetry::Metrics;
use zkmesh_kit::tls::TlsPem;
use zkmesh_proto::registry_service_client::RegistryServiceClient;
use zkmesh_proto::verifier_service_server::VerifierServiceServer;

use crate::checker::Checker;

mod checker;
mod config;
mod error;
mod handlers;
mod policy;
mod settlement;

pub use config::{DEFAULT_LISTEN, VerifierConfig};
pub use handlers::VerifierService;
pub use policy::{MAX_REPLICAS, check_policy};

pub static ACL: Acl = Acl {
    service: "zkmesh.v1.VerifierService",
    methods: &[
        ("CheckPolicy", &[Allow::Service("scheduler")]),
        ("VerifyResult", &[Allow::Service("scheduler")]),
        (
            "GetVerdict",
            &[
                Allow::Role(Role::Admin),
                Allow::Role(Role::User),
                Allow::Role(Role::Service),
            ],
        ),
        (
            "ListCircuits",
            &[
                Allow::Role(Role::Admin),
                Allow::Role(Role::User),
                Allow::Role(Role::Service),
                Allow::Role(Role::Node),
            ],
        ),
        (
            "GetVerifyingKey",
            &[
                Allow::Role(Role::Admin),
                Allow::Role(Role::User),
                Allow::Role(Role::Service),
                Allow::Role(Role::Node),
            ],
        ),
        (
            "FetchProvingKey",
            &[Allow::Role(Role::Node), Allow::Role(Role::Admin)],
        ),
        ("SetupCircuit", &[Allow::Role(Role::Admin)]),
        ("GetVerifierKey", &[Allow::AnyRole]),
    ],
};

/// Starts the verifier; it runs until `shutdown` is cancelled.
pub async fn start(config: VerifierConfig, shutdown: CancellationToken) -> anyhow::Result<Serving> {
    let tls = TlsPem::load(&config.server.tls)?;
    let db = db::connect(&config.server.database_url).await?;
    db::migrate(&db, "verifier", &checker::MIGRATOR).await?;
    let registry_channel =
        zkmesh_kit::client::channel(&config.registry_endpoint, &(&tls).into(), "registry")?;
    let revoked = RevocationList::default();
    zkmesh_kit::revocation::follow_revocations(
        registry_channel.clone(),
        revoked.clone(),
        Duration::from_secs(1),
        shutdown.clone(),
    );
    let key = zkmesh_kit::signing_key::load_or_create_key(&config.key_file)?;
    tracing::info!(public_key = %hex::encode(key.verifying_key().to_bytes()), "verifier settlement key");
    let metrics = Metrics::new("verifier");
    let circuits = circuits::Circuits::open(&config.keys_dir)?;
    for name in &config.setup_classes {
        anyhow::ensure!(
            zkmesh_prover::zkvm::class_named(name).is_some(),
            "setup_classes: unknown circuit class {name:?}"
        );
    }
    {
        // Set up missing classes one after the other, in the background: the service answers
        // meanwhile, and `ListCircuits` shows the progress.
        let (circuits, names) = (circuits.clone(), config.setup_classes.clone());
        tokio::task::spawn_blocking(move || {
            for name in names {
                let _ = circuits.setup(&name);
            }
        });
    }
    let service = VerifierService {
        checker: Checker {
            circuits,
            programs: Mutex::new(HashMap::new()),
            terms: Mutex::new(HashMap::new()),
            db,
            key,
            registry: RegistryServiceClient::new(registry_channel),
            verdicts: metrics.counter_family("verdicts", "Verdicts by policy and outcome"),
        },
    };
    Ok(serve(
        // A proof's verdict request carries the module, the input and the output.
        VerifierServiceServer::new(service).max_decoding_message_size(MAX_VERIFY_REQUEST),
        ServeSpec {
            name: "verifier",
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
            message_caps: vec![("VerifyResult", MAX_VERIFY_REQUEST)],
        },
    )
    .await?)
}

/// The largest VerifyResult request: under the proof policy a module (64 MiB by default), an
/// input (16 MiB) and an output (16 MiB), with the proof and receipts.
pub const MAX_VERIFY_REQUEST: usize = 128 << 20;
