//! The registry: the only authority on node identity and node state. It enrolls nodes with
//! join tokens, signs their certificates once an admin approves them, tracks their heartbeats,
//! and keeps the revocation list every other service refuses certificates from.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use sqlx::Row;
use tonic::{Request, Response, Status};
use zkmesh_kit::acl::{Acl, Allow, caller};
use zkmesh_kit::config::ServerConfig;
use zkmesh_kit::db::{self, Pool};
use zkmesh_kit::error::{Code, ServiceError};
use zkmesh_kit::identity::{Identity, MeshCa, Role, valid_name};
use zkmesh_kit::revocation::RevocationList;
use zkmesh_kit::server::{ServeSpec, Serving, serve};
use zkmesh_kit::telemetry::Metrics;
use zkmesh_kit::tls::TlsPem;
use zkmesh_kit::{CancellationToken, now_ms, random_id, sha256_hex};
use zkmesh_proto::registry_service_server::{
    RegistryService as RegistryApi, RegistryServiceServer,
};
use zkmesh_proto::*;

/// The registry's configuration (`zkmesh registry serve --config FILE`, `ZKMESH_REGISTRY_*`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// `[server]`: listen address, metrics, database, drain time and TLS.
    pub server: ServerConfig,
    /// Directory holding the mesh CA's `ca.crt` and `ca.key`: the registry signs node
    /// certificates.
    pub ca_dir: PathBuf,
    /// A node that has not sent a heartbeat for this long is offline.
    #[serde(default = "default_heartbeat_timeout")]
    pub heartbeat_timeout_secs: u64,
    #[serde(default = "default_cert_lifetime")]
    pub node_certificate_lifetime_secs: u64,
}

/// Where the registry listens when `[server] listen` is not set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7001";

fn default_heartbeat_timeout() -> u64 {
    15
}
fn default_cert_lifetime() -> u64 {
    24 * 3600
}

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
    ],
};

/// The schema, as SQL files under `migrations/sqlite/` (a PostgreSQL set can sit beside it),
/// embedded at build time and applied by sqlx's migrator.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Why a registry call failed; [`ServiceError::code`] decides the status.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Denied(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("certificate: {0}")]
    Cert(#[from] zkmesh_kit::identity::IdentityError),
}

impl ServiceError for RegistryError {
    fn code(&self) -> Code {
        match self {
            RegistryError::BadRequest(_) => Code::InvalidArgument,
            RegistryError::NotFound(_) => Code::NotFound,
            RegistryError::Precondition(_) => Code::FailedPrecondition,
            RegistryError::Denied(_) => Code::PermissionDenied,
            RegistryError::Db(e) => e.code(),
            // Requests are validated (the CSR parses, node ids are the registry's own) before
            // anything is signed, so a failure to sign is the registry's.
            RegistryError::Cert(_) => Code::Internal,
        }
    }
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Status {
        zkmesh_kit::error::status("registry", &e)
    }
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// The registry's gRPC handler.
pub struct RegistryService {
    db: Pool,
    ca: MeshCa,
    revoked: RevocationList,
    heartbeat_timeout_ms: i64,
    cert_lifetime: Duration,
    enrollments: prometheus_client::metrics::counter::Counter,
}

/// Starts the registry; it runs until `shutdown` is cancelled.
pub async fn start(config: RegistryConfig, shutdown: CancellationToken) -> anyhow::Result<Serving> {
    let tls = TlsPem::load(&config.server.tls)?;
    let ca = MeshCa::load(&config.ca_dir)?;
    let db = db::connect(&config.server.database_url).await?;
    db::migrate(&db, "registry", &MIGRATOR).await?;
    let revoked = RevocationList::default();
    let metrics = Metrics::new("registry");
    let service = RegistryService {
        db,
        revoked: revoked.clone(),
        heartbeat_timeout_ms: (config.heartbeat_timeout_secs * 1000) as i64,
        cert_lifetime: Duration::from_secs(config.node_certificate_lifetime_secs),
        enrollments: metrics.counter("node_enrollments", "Nodes enrolled"),
        ca,
    };
    service.load_revocations().await?;
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
        },
    )
    .await?;
    Ok(serving)
}

impl RegistryService {
    async fn load_revocations(&self) -> Result<()> {
        let rows = sqlx::query("SELECT node_id FROM nodes WHERE state = 'revoked'")
            .fetch_all(&self.db)
            .await?;
        self.revoked
            .replace(rows.iter().map(|r| r.get::<String, _>(0)));
        Ok(())
    }

    fn node_from_row(&self, row: &sqlx::sqlite::SqliteRow) -> Node {
        let state: String = row.get("state");
        let last: i64 = row.get("last_heartbeat_at_ms");
        let status = match state.as_str() {
            "pending" => NodeStatus::Pending,
            "denied" => NodeStatus::Denied,
            "revoked" => NodeStatus::Revoked,
            _ if now_ms() - last <= self.heartbeat_timeout_ms => NodeStatus::Active,
            _ => NodeStatus::Offline,
        };
        Node {
            node_id: row.get("node_id"),
            name: row.get("name"),
            operator: row.get("operator"),
            status: status as i32,
            receipt_public_key: row.get("receipt_public_key"),
            enrolled_at_ms: row.get("enrolled_at_ms"),
            last_heartbeat_at_ms: last,
            certificate_expires_at_ms: row.get("certificate_expires_at_ms"),
            slots: row.get::<i64, _>("slots") as u32,
        }
    }

    async fn node(&self, node_id: &str) -> Result<Node> {
        let row = sqlx::query("SELECT * FROM nodes WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(&self.db)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("no node {node_id:?}")))?;
        Ok(self.node_from_row(&row))
    }

    fn sign(&self, csr_pem: &str, node_id: &str) -> Result<(String, i64)> {
        let identity = Identity::new(&self.ca.mesh, Role::Node, node_id);
        let cert = self.ca.sign_csr(csr_pem, &identity, self.cert_lifetime)?;
        let expires = zkmesh_kit::identity::not_after_ms(&cert).unwrap_or(0);
        Ok((cert, expires))
    }

    /// Moves a node from one of `from` to `to`, signing its certificate on approval.
    async fn transition(&self, node_id: &str, from: &[&str], to: &str) -> Result<Node> {
        let node = self.node(node_id).await?;
        let row = sqlx::query("SELECT state, csr_pem FROM nodes WHERE node_id = $1")
            .bind(node_id)
            .fetch_one(&self.db)
            .await?;
        let state: String = row.get(0);
        if state == to {
            return Ok(node);
        }
        if !from.contains(&state.as_str()) {
            return Err(RegistryError::Precondition(format!(
                "node {node_id} is {state}; only a node that is {} can become {to}",
                from.join(" or ")
            )));
        }
        // The state read above is the condition of the update, so two racing transitions
        // cannot both apply.
        let changed = if to == "approved" {
            let (cert, expires) = self.sign(&row.get::<String, _>(1), node_id)?;
            sqlx::query(
                "UPDATE nodes SET state = $1, certificate_pem = $2, certificate_expires_at_ms = $3, last_heartbeat_at_ms = $4 WHERE node_id = $5 AND state = $6",
            )
            .bind(to)
            .bind(cert)
            .bind(expires)
            .bind(now_ms())
            .bind(node_id)
            .bind(&state)
            .execute(&self.db)
            .await?
        } else {
            sqlx::query("UPDATE nodes SET state = $1 WHERE node_id = $2 AND state = $3")
                .bind(to)
                .bind(node_id)
                .bind(&state)
                .execute(&self.db)
                .await?
        };
        if changed.rows_affected() != 1 {
            return Err(RegistryError::Precondition(format!(
                "node {node_id} changed state meanwhile; try again"
            )));
        }
        if to == "revoked" {
            self.revoked.insert(node_id);
        }
        tracing::info!(node_id, from = %state, to, "node state changed");
        self.node(node_id).await
    }

    async fn create_join_token(
        &self,
        req: CreateJoinTokenRequest,
    ) -> Result<CreateJoinTokenResponse> {
        let token = random_id("zkj_") + &random_id("");
        let ttl = if req.ttl_secs == 0 {
            24 * 3600
        } else {
            req.ttl_secs as i64
        };
        let expires = now_ms() + ttl * 1000;
        sqlx::query(
            "INSERT INTO join_tokens (token_hash, pre_approved, uses_left, expires_at_ms, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(sha256_hex(token.as_bytes()))
        .bind(req.pre_approved as i64)
        .bind(req.max_uses.max(1) as i64)
        .bind(expires)
        .bind(now_ms())
        .execute(&self.db)
        .await?;
        Ok(CreateJoinTokenResponse {
            token,
            expires_at_ms: expires,
        })
    }

    async fn enroll(&self, req: EnrollRequest) -> Result<EnrollResponse> {
        let bad = |m: &str| Err(RegistryError::BadRequest(m.to_string()));
        if !valid_name(&req.name) || !valid_name(&req.operator) {
            return bad("name and operator must be 1-64 letters, digits, '-', '_' or '.'");
        }
        if req.receipt_public_key.len() != 32 {
            return bad("receipt_public_key must be a 32-byte Ed25519 public key");
        }
        if req.enrollment_secret_sha256.len() != 32 {
            return bad("enrollment_secret_sha256 must be 32 bytes");
        }
        if rcgen::CertificateSigningRequestParams::from_pem(&req.csr_pem).is_err() {
            return bad("csr_pem is not a valid, self-signed PKCS#10 request");
        }
        let mut tx = self.db.begin().await?;
        let token = sqlx::query(
            "SELECT pre_approved, uses_left, expires_at_ms FROM join_tokens WHERE token_hash = $1",
        )
        .bind(sha256_hex(req.join_token.as_bytes()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(token) = token else {
            return Err(RegistryError::Denied("unknown join token".into()));
        };
        let (pre_approved, uses_left, expires): (i64, i64, i64) =
            (token.get(0), token.get(1), token.get(2));
        if uses_left <= 0 || expires < now_ms() {
            return Err(RegistryError::Denied(
                "join token is used up or expired".into(),
            ));
        }
        sqlx::query("UPDATE join_tokens SET uses_left = uses_left - 1 WHERE token_hash = $1")
            .bind(sha256_hex(req.join_token.as_bytes()))
            .execute(&mut *tx)
            .await?;
        let node_id = random_id("n-");
        sqlx::query(
            "INSERT INTO nodes (node_id, name, operator, state, csr_pem, receipt_public_key, secret_hash, certificate_pem, certificate_expires_at_ms, enrolled_at_ms, last_heartbeat_at_ms, slots)
             VALUES ($1, $2, $3, 'pending', $4, $5, $6, NULL, 0, $7, 0, $8)",
        )
        .bind(&node_id)
        .bind(&req.name)
        .bind(&req.operator)
        .bind(&req.csr_pem)
        .bind(&req.receipt_public_key)
        .bind(hex::encode(&req.enrollment_secret_sha256))
        .bind(now_ms())
        .bind(req.slots.max(1) as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.enrollments.inc();
        tracing::info!(%node_id, name = %req.name, operator = %req.operator, pre_approved = pre_approved != 0, "node enrolled");
        let node = if pre_approved != 0 {
            self.transition(&node_id, &["pending"], "approved").await?
        } else {
            self.node(&node_id).await?
        };
        Ok(EnrollResponse {
            node_id,
            status: node.status,
        })
    }

    async fn fetch_certificate(
        &self,
        req: FetchCertificateRequest,
    ) -> Result<FetchCertificateResponse> {
        let row =
            sqlx::query("SELECT secret_hash, certificate_pem, state FROM nodes WHERE node_id = $1")
                .bind(&req.node_id)
                .fetch_optional(&self.db)
                .await?;
        let Some(row) = row else {
            return Err(RegistryError::NotFound(format!(
                "no node {:?}",
                req.node_id
            )));
        };
        if row.get::<String, _>(0) != sha256_hex(&req.enrollment_secret) {
            return Err(RegistryError::Denied("wrong enrollment secret".into()));
        }
        let node = self.node(&req.node_id).await?;
        let state: String = row.get(2);
        let cert = if state == "approved" {
            row.get::<Option<String>, _>(1).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(FetchCertificateResponse {
            status: node.status,
            certificate_pem: cert,
            ca_certificate_pem: self.ca.cert_pem.clone(),
            expires_at_ms: node.certificate_expires_at_ms,
        })
    }
}

#[tonic::async_trait]
impl RegistryApi for RegistryService {
    async fn create_join_token(
        &self,
        req: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        Ok(Response::new(
            RegistryService::create_join_token(self, req.into_inner()).await?,
        ))
    }

    async fn enroll(
        &self,
        req: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        Ok(Response::new(
            RegistryService::enroll(self, req.into_inner()).await?,
        ))
    }

    async fn fetch_certificate(
        &self,
        req: Request<FetchCertificateRequest>,
    ) -> Result<Response<FetchCertificateResponse>, Status> {
        Ok(Response::new(
            RegistryService::fetch_certificate(self, req.into_inner()).await?,
        ))
    }

    async fn renew_certificate(
        &self,
        req: Request<RenewCertificateRequest>,
    ) -> Result<Response<FetchCertificateResponse>, Status> {
        let me = caller(&req)?;
        let req = req.into_inner();
        if rcgen::CertificateSigningRequestParams::from_pem(&req.csr_pem).is_err() {
            return Err(Status::invalid_argument(
                "csr_pem is not a valid PKCS#10 request",
            ));
        }
        let node = self.node(&me.name).await?;
        if node.status() == NodeStatus::Revoked || node.status() == NodeStatus::Denied {
            return Err(Status::permission_denied("node is not approved"));
        }
        let (cert, expires) = self.sign(&req.csr_pem, &me.name)?;
        sqlx::query(
            "UPDATE nodes SET csr_pem = $1, certificate_pem = $2, certificate_expires_at_ms = $3 WHERE node_id = $4",
        )
        .bind(&req.csr_pem)
        .bind(&cert)
        .bind(expires)
        .bind(&me.name)
        .execute(&self.db)
        .await
        .map_err(RegistryError::from)?;
        Ok(Response::new(FetchCertificateResponse {
            status: node.status,
            certificate_pem: cert,
            ca_certificate_pem: self.ca.cert_pem.clone(),
            expires_at_ms: expires,
        }))
    }

    async fn approve_node(&self, req: Request<NodeRef>) -> Result<Response<Node>, Status> {
        let id = req.into_inner().node_id;
        Ok(Response::new(
            self.transition(&id, &["pending"], "approved").await?,
        ))
    }

    async fn deny_node(&self, req: Request<NodeRef>) -> Result<Response<Node>, Status> {
        let id = req.into_inner().node_id;
        Ok(Response::new(
            self.transition(&id, &["pending"], "denied").await?,
        ))
    }

    async fn revoke_node(&self, req: Request<NodeRef>) -> Result<Response<Node>, Status> {
        let id = req.into_inner().node_id;
        Ok(Response::new(
            self.transition(&id, &["pending", "approved"], "revoked")
                .await?,
        ))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let me = caller(&req)?;
        let before = self.node(&me.name).await?;
        sqlx::query(
            "UPDATE nodes SET last_heartbeat_at_ms = $1 WHERE node_id = $2 AND state = 'approved'",
        )
        .bind(now_ms())
        .bind(&me.name)
        .execute(&self.db)
        .await
        .map_err(RegistryError::from)?;
        if before.status() == NodeStatus::Offline {
            tracing::info!(node_id = %me.name, "node is back online");
        }
        let node = self.node(&me.name).await?;
        Ok(Response::new(HeartbeatResponse {
            status: node.status,
            certificate_expires_at_ms: node.certificate_expires_at_ms,
        }))
    }

    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let want = req.into_inner().status();
        let rows = sqlx::query("SELECT * FROM nodes ORDER BY enrolled_at_ms, node_id")
            .fetch_all(&self.db)
            .await
            .map_err(RegistryError::from)?;
        let nodes = rows
            .iter()
            .map(|r| self.node_from_row(r))
            .filter(|n| want == NodeStatus::Unspecified || n.status() == want)
            .collect();
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn get_node(&self, req: Request<NodeRef>) -> Result<Response<Node>, Status> {
        Ok(Response::new(self.node(&req.into_inner().node_id).await?))
    }

    async fn list_revoked(
        &self,
        _req: Request<ListRevokedRequest>,
    ) -> Result<Response<ListRevokedResponse>, Status> {
        let rows =
            sqlx::query("SELECT node_id FROM nodes WHERE state = 'revoked' ORDER BY node_id")
                .fetch_all(&self.db)
                .await
                .map_err(RegistryError::from)?;
        Ok(Response::new(ListRevokedResponse {
            node_ids: rows.iter().map(|r| r.get(0)).collect(),
        }))
    }
}

/// A readable name for a node status (`active`, `pending`, ...).
pub fn describe_status(status: i32) -> &'static str {
    NodeStatus::short_name_of(status)
}
