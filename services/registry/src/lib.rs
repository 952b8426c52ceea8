//! The registry: the only authority on node identity and node state. It enrolls nodes with
//! join tokens, signs their certificates once an admin approves them, tracks their heartbeats,
//! and keeps the revocation list every other service refuses certificates from.

use std::time::Duration;

use zkmesh_kit::CancellationToken;
use zkmesh_kit::acl::{Acl, Allow};
use zkmesh_kit::ca::MeshCa;
use zkmesh_kit::db::{self};
use zkmesh_kit::identity::Role;
use zkmesh_kit::revocation::RevocationList;
use zkmesh_kit::server::{ServeSpec, Serving, serve};
use zkmesh_kit::telemetry::Metrics;
use zkmesh_kit::tls::TlsPem;
use zkmesh_proto::registry_service_server::RegistryServiceServer;

use crate::nodes::Nodes;

mod config;
mod error;
mod handlers;
mod nodes;

pub use config::{DEFAULT_LISTEN, RegistryConfig};
pub use error::RegistryError;
pub use handlers::{RegistryService, describe_status};

/// Who may call each registry RPC.
pub static ACL: Acl = Acl {
    service: "zkmesh.v1.RegistryService",
    methods: &[
        ("CreateJoinToken", &[Allow::Role(Role::Admin)]),
        ("Enroll", &[Allow::Anonymous]),
        ("FetchCertificate", &[Allow::Anonymous]),
        ("RenewCertificate", &[Allow::Role(Role::Node)]),
        ("ApproveNode", &[Allow::Role(Role::Admin)]),
        ("DenyNode", &[Allow::Role(Role::Admin)]),
        ("RevokeNode", &[Allow::Role(Role::Admin)]),
        ("Heartbeat", &[Allow::Role(Role::Node)]),
        (
            "ListNodes",
            &[Allow::Role(Role::Admin), Allow::Role(Role::Service)],
        ),
        (
            "GetNode",
            &[Allow::Role(Role::Admin), Allow::Role(Role::Service)],
        ),
        (
            "ListRevoked",
            &[Allow::Role(Role::Service), Allow::Role(Role::Admin)],
        ),
        ("RevokeCertificate", &[Allow::Role(Role::Admin)]),
        (
            "ListRevokedCertificates",
            &[Allow::Role(Role::Service), Allow::Role(Role::Admin)],
        ),
    ],
};

/// Starts the registry; it runs until `shutdown` is cancelled.
pub async fn start(config: RegistryConfig, shutdown: CancellationToken) -> anyhow::Result<Serving> {
    let tls = TlsPem::load(&config.server.tls)?;
    let ca = MeshCa::load(&config.ca_dir)?;
    if config.ca_dir.join("ca.key").exists() && ca.is_node_issuer() {
        anyhow::bail!(
            "{} holds the mesh CA's root key beside the node issuer: move ca.key off this host \
             (the registry needs only issuer.crt, issuer.key and ca.crt)",
            config.ca_dir.display()
        );
    }
    if !ca.is_node_issuer() {
        tracing::warn!(
            ca_dir = %config.ca_dir.display(),
            "the registry holds the mesh CA's root key: whoever takes this host can certify any \
             admin, user or service; make a node issuer (`zkmesh ca issuer`), point ca_dir at it \
             and keep the root key offline"
        );
    }
    let db = db::connect(&config.server.database_url).await?;
    db::migrate(&db, "registry", &nodes::MIGRATOR).await?;
    // The registry's list is the authority: always current.
    let revoked = RevocationList::authority();
    let metrics = Metrics::new("registry");
    let nodes = Nodes {
        db,
        revoked: revoked.clone(),
        heartbeat_timeout_ms: (config.heartbeat_timeout_secs * 1000) as i64,
        cert_lifetime: Duration::from_secs(config.node_certificate_lifetime_secs),
        default_slots: config.default_node_slots.clamp(1, config::MAX_NODE_SLOTS),
        enrollments: metrics.counter("node_enrollments", "Nodes enrolled"),
        ca,
    };
    nodes.backfill_fingerprints().await?;
    nodes.load_revocations().await?;
    let service = RegistryService { nodes };
    let serving = serve(
        RegistryServiceServer::new(service),
        ServeSpec {
            name: "registry",
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
    .await?;
    Ok(serving)
}
