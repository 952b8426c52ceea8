//! The node lifecycle and its SQL: join tokens, enrollment, approval and the certificates it
//! signs, heartbeats, and the revocation list.

use std::time::Duration;

use sqlx::Row;
use zkmesh_kit::ca::MeshCa;
use zkmesh_kit::db::Pool;
use zkmesh_kit::identity::{Identity, Role, valid_name};
use zkmesh_kit::revocation::RevocationList;
use zkmesh_kit::{now_ms, random_id, sha256_hex};
use zkmesh_proto::*;

use crate::config::MAX_NODE_SLOTS;
use crate::error::{RegistryError, Result};

/// The schema, as SQL files under `migrations/sqlite/` (a PostgreSQL set can sit beside it),
/// embedded at build time and applied by sqlx's migrator.
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A node certificate the registry issued.
pub(crate) struct Issued {
    pub(crate) pem: String,
    pub(crate) expires_at_ms: i64,
    /// SHA-256 of its DER, lowercase hex.
    pub(crate) sha256: String,
}

/// The registry's state: its database, the mesh CA it signs with, the revocation list.
pub(crate) struct Nodes {
    pub(crate) db: Pool,
    pub(crate) ca: MeshCa,
    pub(crate) revoked: RevocationList,
    pub(crate) heartbeat_timeout_ms: i64,
    pub(crate) cert_lifetime: Duration,
    /// Slots granted when an approval or a pre-approving token names none.
    pub(crate) default_slots: u32,
    pub(crate) enrollments: prometheus_client::metrics::counter::Counter,
}

impl Nodes {
    /// Records the fingerprint of each node's certificate issued before the registry kept them.
    pub(crate) async fn backfill_fingerprints(&self) -> Result<()> {
        let rows = sqlx::query(
            "SELECT node_id, certificate_pem FROM nodes WHERE certificate_sha256 = '' AND certificate_pem IS NOT NULL AND certificate_pem != ''",
        )
        .fetch_all(&self.db)
        .await?;
        for row in &rows {
            let (node_id, pem): (String, String) = (row.get(0), row.get(1));
            let Some(sha256) = zkmesh_kit::identity::fingerprint_of_pem(&pem) else {
                tracing::warn!(%node_id, "a node's stored certificate does not parse");
                continue;
            };
            sqlx::query("UPDATE nodes SET certificate_sha256 = $1 WHERE node_id = $2")
                .bind(&sha256)
                .bind(&node_id)
                .execute(&self.db)
                .await?;
        }
        Ok(())
    }

    /// Whether `presented` (the fingerprint of the certificate a caller presents as the node) is
    /// of one this registry issued to that node: its latest, or the one it renewed with. A
    /// certificate for the node's id from anywhere else (a stolen node issuer) is refused.
    pub(crate) fn check_certificate(node: &Node, presented: Option<&str>) -> Result<()> {
        match presented {
            Some(s) if !s.is_empty() && node.certificate_sha256s.iter().any(|x| x == s) => Ok(()),
            _ => Err(RegistryError::Precondition(format!(
                "this certificate is not one the registry issued to node {} (it was issued elsewhere, or replaced: the node fetches its own with FetchCertificate)",
                node.node_id
            ))),
        }
    }

    pub(crate) async fn load_revocations(&self) -> Result<()> {
        let rows = sqlx::query("SELECT node_id FROM nodes WHERE state = 'revoked'")
            .fetch_all(&self.db)
            .await?;
        self.revoked
            .replace(rows.iter().map(|r| r.get::<String, _>(0)));
        let serials = sqlx::query("SELECT serial FROM revoked_certificates")
            .fetch_all(&self.db)
            .await?;
        for row in &serials {
            self.revoked.insert_serial(&row.get::<String, _>(0));
        }
        Ok(())
    }

    pub(crate) fn node_from_row(&self, row: &sqlx::sqlite::SqliteRow) -> Node {
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
            certificate_sha256s: [
                row.get::<String, _>("certificate_sha256"),
                row.get::<String, _>("previous_certificate_sha256"),
            ]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect(),
        }
    }

    pub(crate) async fn node(&self, node_id: &str) -> Result<Node> {
        let row = sqlx::query("SELECT * FROM nodes WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(&self.db)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("no node {node_id:?}")))?;
        Ok(self.node_from_row(&row))
    }

    /// A certificate for `node_id`'s request: its PEM, expiry and fingerprint.
    pub(crate) fn sign(&self, csr_pem: &str, node_id: &str) -> Result<Issued> {
        let identity = Identity::new(&self.ca.mesh, Role::Node, node_id);
        let pem = self.ca.sign_csr(csr_pem, &identity, self.cert_lifetime)?;
        let expires_at_ms = zkmesh_kit::identity::not_after_ms(&pem).unwrap_or(0);
        let sha256 = zkmesh_kit::identity::fingerprint_of_pem(&pem).ok_or_else(|| {
            RegistryError::Internal("a certificate just issued does not parse".into())
        })?;
        Ok(Issued {
            pem,
            expires_at_ms,
            sha256,
        })
    }

    /// The slots an approval grants: `requested`, or the default for 0; more than the most a
    /// node may have is refused.
    pub(crate) fn granted_slots(&self, requested: u32) -> Result<u32> {
        match requested {
            0 => Ok(self.default_slots),
            n if n <= MAX_NODE_SLOTS => Ok(n),
            n => Err(RegistryError::BadRequest(format!(
                "slots {n} is more than the most a node may have ({MAX_NODE_SLOTS})"
            ))),
        }
    }

    /// Approves a pending node, granting it `slots` (0: the default); approving an approved
    /// node with slots changes its grant. A node enrolled before join tokens named operators
    /// named its own, so its approval must name it (`operator`); any other node's operator is
    /// its token's and cannot be named here.
    pub(crate) async fn approve(&self, node_id: &str, slots: u32, operator: &str) -> Result<Node> {
        let row = sqlx::query("SELECT state, token_hash, operator FROM nodes WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(&self.db)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("no node {node_id:?}")))?;
        let (state, token_hash, current): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        let legacy = token_hash.is_empty();
        if legacy && operator.is_empty() && state != "approved" {
            return Err(RegistryError::BadRequest(format!(
                "node {node_id} enrolled before join tokens named operators and named its own ({current:?}), which is not trusted: approve it with --operator NAME"
            )));
        }
        if !operator.is_empty() {
            if !legacy {
                return Err(RegistryError::BadRequest(format!(
                    "the operator of node {node_id} is its join token's ({current}); it cannot be named at approval"
                )));
            }
            if !valid_name(operator) {
                return Err(RegistryError::BadRequest(
                    "operator must be 1-64 letters, digits, '-', '_' or '.'".into(),
                ));
            }
            if state != "pending" {
                return Err(RegistryError::Precondition(format!(
                    "node {node_id} is {state}; its operator is named only when it is approved"
                )));
            }
            sqlx::query("UPDATE nodes SET operator = $1 WHERE node_id = $2 AND state = 'pending'")
                .bind(operator)
                .bind(node_id)
                .execute(&self.db)
                .await?;
        }
        let granted = self.granted_slots(slots)?;
        if state == "approved" {
            if slots != 0 {
                sqlx::query("UPDATE nodes SET slots = $1 WHERE node_id = $2")
                    .bind(i64::from(granted))
                    .bind(node_id)
                    .execute(&self.db)
                    .await?;
                tracing::info!(node_id, slots = granted, "node's slots changed");
            }
            return self.node(node_id).await;
        }
        self.transition(node_id, &["pending"], "approved", Some(granted))
            .await
    }

    /// Moves a node from one of `from` to `to`, signing its certificate on approval (and
    /// granting it `slots`, when given).
    pub(crate) async fn transition(
        &self,
        node_id: &str,
        from: &[&str],
        to: &str,
        slots: Option<u32>,
    ) -> Result<Node> {
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
            // A fresh approval: only this certificate is the node's (none from before).
            let issued = self.sign(&row.get::<String, _>(1), node_id)?;
            sqlx::query(
                "UPDATE nodes SET state = $1, certificate_pem = $2, certificate_expires_at_ms = $3, last_heartbeat_at_ms = $4, slots = COALESCE($5, slots), certificate_sha256 = $8, previous_certificate_sha256 = '' WHERE node_id = $6 AND state = $7",
            )
            .bind(to)
            .bind(issued.pem)
            .bind(issued.expires_at_ms)
            .bind(now_ms())
            .bind(slots.map(i64::from))
            .bind(node_id)
            .bind(&state)
            .bind(issued.sha256)
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

    pub(crate) async fn create_join_token(
        &self,
        req: CreateJoinTokenRequest,
    ) -> Result<CreateJoinTokenResponse> {
        if !valid_name(&req.operator) {
            return Err(RegistryError::BadRequest(
                "a join token names the operator its nodes belong to (`zkmesh node token --operator NAME`): 1-64 letters, digits, '-', '_' or '.'".into(),
            ));
        }
        let slots = if req.slots == 0 {
            0
        } else {
            self.granted_slots(req.slots)?
        };
        let token = random_id("zkj_") + &random_id("");
        let ttl = if req.ttl_secs == 0 {
            24 * 3600
        } else {
            req.ttl_secs as i64
        };
        let expires = now_ms() + ttl * 1000;
        sqlx::query(
            "INSERT INTO join_tokens (token_hash, pre_approved, uses_left, expires_at_ms, created_at_ms, operator, slots) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(sha256_hex(token.as_bytes()))
        .bind(req.pre_approved as i64)
        .bind(req.max_uses.max(1) as i64)
        .bind(expires)
        .bind(now_ms())
        .bind(&req.operator)
        .bind(i64::from(slots))
        .execute(&self.db)
        .await?;
        Ok(CreateJoinTokenResponse {
            token,
            expires_at_ms: expires,
        })
    }

    pub(crate) async fn enroll(&self, req: EnrollRequest) -> Result<EnrollResponse> {
        let bad = |m: &str| Err(RegistryError::BadRequest(m.to_string()));
        if !valid_name(&req.name) {
            return bad("name must be 1-64 letters, digits, '-', '_' or '.'");
        }
        if zkmesh_kit::receipt::receipt_key(&req.receipt_public_key).is_err() {
            return bad(
                "receipt_public_key must be a 32-byte Ed25519 public key, and not a weak one",
            );
        }
        if req.enrollment_secret_sha256.len() != 32 {
            return bad("enrollment_secret_sha256 must be 32 bytes");
        }
        if rcgen::CertificateSigningRequestParams::from_pem(&req.csr_pem).is_err() {
            return bad("csr_pem is not a valid, self-signed PKCS#10 request");
        }
        let token_hash = sha256_hex(req.join_token.as_bytes());
        let secret_hash = hex::encode(&req.enrollment_secret_sha256);
        // A retried enrollment (its answer was lost) is the node it enrolled: the secret is the
        // node's own random 32 bytes, so the same token and secret are the same request.
        if let Some(enrolled) = self.enrolled_before(&token_hash, &secret_hash).await? {
            return Ok(enrolled);
        }
        let mut tx = self.db.begin().await?;
        let token = sqlx::query(
            "SELECT pre_approved, expires_at_ms, operator, slots FROM join_tokens WHERE token_hash = $1",
        )
        .bind(&token_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(token) = token else {
            return Err(RegistryError::Denied("unknown join token".into()));
        };
        let (pre_approved, expires, operator, token_slots): (i64, i64, String, i64) =
            (token.get(0), token.get(1), token.get(2), token.get(3));
        if operator.is_empty() {
            return Err(RegistryError::Denied(
                "this join token was made before tokens named an operator; ask the admin for a new one (`zkmesh node token --operator NAME`)".into(),
            ));
        }
        // One statement takes a use, so two enrollments racing for the last use cannot both
        // have it (on any database).
        let taken = sqlx::query(
            "UPDATE join_tokens SET uses_left = uses_left - 1 WHERE token_hash = $1 AND uses_left > 0 AND expires_at_ms >= $2",
        )
        .bind(&token_hash)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if taken != 1 || expires < now_ms() {
            return Err(RegistryError::Denied(
                "join token is used up or expired".into(),
            ));
        }
        let slots = match token_slots {
            0 => self.default_slots,
            n => n as u32,
        };
        let node_id = random_id("n-");
        let inserted = sqlx::query(
            "INSERT INTO nodes (node_id, name, operator, state, csr_pem, receipt_public_key, secret_hash, certificate_pem, certificate_expires_at_ms, enrolled_at_ms, last_heartbeat_at_ms, slots, token_hash)
             VALUES ($1, $2, $3, 'pending', $4, $5, $6, NULL, 0, $7, 0, $8, $9)",
        )
        .bind(&node_id)
        .bind(&req.name)
        .bind(&operator)
        .bind(&req.csr_pem)
        .bind(&req.receipt_public_key)
        .bind(&secret_hash)
        .bind(now_ms())
        .bind(i64::from(slots))
        .bind(&token_hash)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => tx.commit().await?,
            // The same request racing itself: the other one enrolled the node (and took the use).
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                drop(tx);
                if let Some(enrolled) = self.enrolled_before(&token_hash, &secret_hash).await? {
                    return Ok(enrolled);
                }
                return Err(sqlx::Error::Database(e).into());
            }
            Err(e) => return Err(e.into()),
        }
        self.enrollments.inc();
        tracing::info!(%node_id, name = %req.name, %operator, slots, pre_approved = pre_approved != 0, "node enrolled");
        let node = if pre_approved != 0 {
            self.transition(&node_id, &["pending"], "approved", None)
                .await?
        } else {
            self.node(&node_id).await?
        };
        Ok(EnrollResponse {
            node_id,
            status: node.status,
        })
    }

    /// The node an earlier enrollment with this token and secret made, if one did.
    async fn enrolled_before(
        &self,
        token_hash: &str,
        secret_hash: &str,
    ) -> Result<Option<EnrollResponse>> {
        let row =
            sqlx::query("SELECT node_id FROM nodes WHERE token_hash = $1 AND secret_hash = $2")
                .bind(token_hash)
                .bind(secret_hash)
                .fetch_optional(&self.db)
                .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let node = self.node(&row.get::<String, _>(0)).await?;
        Ok(Some(EnrollResponse {
            node_id: node.node_id,
            status: node.status,
        }))
    }

    pub(crate) async fn fetch_certificate(
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
            ca_certificate_pem: self.ca.trust_pem.clone(),
            expires_at_ms: node.certificate_expires_at_ms,
        })
    }
}
