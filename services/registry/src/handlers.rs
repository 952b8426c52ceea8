//! The gRPC handlers: each registry RPC, checked against the caller, on top of [`Nodes`].

use sqlx::Row;
use tonic::{Request, Response, Status};
use zkmesh_kit::acl::{caller, caller_certificate};
use zkmesh_kit::now_ms;
use zkmesh_kit::paging::Page;
use zkmesh_proto::registry_service_server::RegistryService as RegistryApi;
use zkmesh_proto::*;

use crate::error::{RegistryError, Result};
use crate::nodes::Nodes;

/// The registry's gRPC service: [`Nodes`] behind the access rules.
pub struct RegistryService {
    pub(crate) nodes: Nodes,
}

#[tonic::async_trait]
impl RegistryApi for RegistryService {
    async fn create_join_token(
        &self,
        req: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        Ok(Response::new(
            self.nodes.create_join_token(req.into_inner()).await?,
        ))
    }

    async fn enroll(
        &self,
        req: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        Ok(Response::new(self.nodes.enroll(req.into_inner()).await?))
    }

    async fn fetch_certificate(
        &self,
        req: Request<FetchCertificateRequest>,
    ) -> Result<Response<FetchCertificateResponse>, Status> {
        Ok(Response::new(
            self.nodes.fetch_certificate(req.into_inner()).await?,
        ))
    }

    async fn renew_certificate(
        &self,
        req: Request<RenewCertificateRequest>,
    ) -> Result<Response<RenewCertificateResponse>, Status> {
        let me = caller(&req)?;
        let presented = caller_certificate(&req);
        let req = req.into_inner();
        if rcgen::CertificateSigningRequestParams::from_pem(&req.csr_pem).is_err() {
            return Err(Status::invalid_argument(
                "csr_pem is not a valid PKCS#10 request",
            ));
        }
        let node = self.nodes.node(&me.name).await?;
        if node.status() == NodeStatus::Revoked || node.status() == NodeStatus::Denied {
            return Err(Status::permission_denied("node is not approved"));
        }
        // Only with a certificate this registry issued the node: one minted elsewhere for its
        // id must not turn itself into a registered one.
        Nodes::check_certificate(&node, presented.as_deref())?;
        let issued = self.nodes.sign(&req.csr_pem, &me.name)?;
        // The certificate renewed with stays the node's until the next renewal: the node may
        // still use it while it switches (or if it lost the new one before saving it).
        let changed = sqlx::query(
            "UPDATE nodes SET csr_pem = $1, certificate_pem = $2, certificate_expires_at_ms = $3, certificate_sha256 = $4, previous_certificate_sha256 = $5 WHERE node_id = $6 AND state = 'approved' AND (certificate_sha256 = $5 OR previous_certificate_sha256 = $5)",
        )
        .bind(&req.csr_pem)
        .bind(&issued.pem)
        .bind(issued.expires_at_ms)
        .bind(&issued.sha256)
        .bind(presented.as_deref().unwrap_or_default())
        .bind(&me.name)
        .execute(&self.nodes.db)
        .await
        .map_err(RegistryError::from)?;
        if changed.rows_affected() != 1 {
            return Err(Status::aborted(
                "the node's certificate changed meanwhile; renew again",
            ));
        }
        Ok(Response::new(RenewCertificateResponse {
            status: node.status,
            certificate_pem: issued.pem,
            ca_certificate_pem: self.nodes.ca.trust_pem.clone(),
            expires_at_ms: issued.expires_at_ms,
        }))
    }

    async fn approve_node(
        &self,
        req: Request<ApproveNodeRequest>,
    ) -> Result<Response<ApproveNodeResponse>, Status> {
        let req = req.into_inner();
        let node = self
            .nodes
            .approve(&req.node_id, req.slots, &req.operator)
            .await?;
        Ok(Response::new(ApproveNodeResponse { node: Some(node) }))
    }

    async fn deny_node(
        &self,
        req: Request<DenyNodeRequest>,
    ) -> Result<Response<DenyNodeResponse>, Status> {
        let id = req.into_inner().node_id;
        let node = self
            .nodes
            .transition(&id, &["pending"], "denied", None)
            .await?;
        Ok(Response::new(DenyNodeResponse { node: Some(node) }))
    }

    async fn revoke_node(
        &self,
        req: Request<RevokeNodeRequest>,
    ) -> Result<Response<RevokeNodeResponse>, Status> {
        let id = req.into_inner().node_id;
        let node = self
            .nodes
            .transition(&id, &["pending", "approved"], "revoked", None)
            .await?;
        Ok(Response::new(RevokeNodeResponse { node: Some(node) }))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let me = caller(&req)?;
        let before = self.nodes.node(&me.name).await?;
        // An approved node heartbeats under the certificate the registry issued it; one waiting
        // for approval (or refused) only learns its status.
        if matches!(before.status(), NodeStatus::Active | NodeStatus::Offline) {
            Nodes::check_certificate(&before, caller_certificate(&req).as_deref())?;
        }
        sqlx::query(
            "UPDATE nodes SET last_heartbeat_at_ms = $1 WHERE node_id = $2 AND state = 'approved'",
        )
        .bind(now_ms())
        .bind(&me.name)
        .execute(&self.nodes.db)
        .await
        .map_err(RegistryError::from)?;
        if before.status() == NodeStatus::Offline {
            tracing::info!(node_id = %me.name, "node is back online");
        }
        let node = self.nodes.node(&me.name).await?;
        Ok(Response::new(HeartbeatResponse {
            status: node.status,
            certificate_expires_at_ms: node.certificate_expires_at_ms,
        }))
    }

    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let req = req.into_inner();
        let want = req.status();
        let page = Page::of(req.page_size, &req.page_token, 100, 1000)?;
        // The status is derived (offline from the heartbeats), so the filter runs here.
        let rows =
            sqlx::query("SELECT * FROM nodes WHERE $1 IS NULL OR node_id > $2 ORDER BY node_id")
                .bind(page.after.as_deref())
                .bind(page.after.as_deref())
                .fetch_all(&self.nodes.db)
                .await
                .map_err(RegistryError::from)?;
        let nodes = rows
            .iter()
            .map(|r| self.nodes.node_from_row(r))
            .filter(|n| want == NodeStatus::Unspecified || n.status() == want)
            .take(page.size + 1)
            .collect();
        let (nodes, next_page_token) = page.finish(nodes, |n| n.node_id.clone());
        Ok(Response::new(ListNodesResponse {
            nodes,
            next_page_token,
        }))
    }

    async fn get_node(
        &self,
        req: Request<GetNodeRequest>,
    ) -> Result<Response<GetNodeResponse>, Status> {
        let node = self.nodes.node(&req.into_inner().node_id).await?;
        Ok(Response::new(GetNodeResponse { node: Some(node) }))
    }

    async fn list_revoked(
        &self,
        req: Request<ListRevokedRequest>,
    ) -> Result<Response<ListRevokedResponse>, Status> {
        let req = req.into_inner();
        let (node_ids, next_page_token) = self
            .page_of_keys(
                "SELECT node_id FROM nodes WHERE state = 'revoked' AND ($1 IS NULL OR node_id > $2) ORDER BY node_id LIMIT $3",
                req.page_size,
                &req.page_token,
            )
            .await?;
        Ok(Response::new(ListRevokedResponse {
            node_ids,
            next_page_token,
        }))
    }

    async fn revoke_certificate(
        &self,
        req: Request<RevokeCertificateRequest>,
    ) -> Result<Response<RevokeCertificateResponse>, Status> {
        let me = caller(&req)?;
        let req = req.into_inner();
        let serial = req.serial.trim().to_ascii_lowercase();
        let hex_ok = !serial.is_empty()
            && serial.len() <= 64
            && serial.len().is_multiple_of(2)
            && serial.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_ok {
            return Err(RegistryError::BadRequest(format!(
                "serial {:?} is not a certificate serial number (hex of its bytes, at most 32)",
                req.serial
            ))
            .into());
        }
        if req.reason.len() > 1024 {
            return Err(
                RegistryError::BadRequest("reason is longer than 1,024 bytes".into()).into(),
            );
        }
        sqlx::query(
            "INSERT INTO revoked_certificates (serial, reason, revoked_by, revoked_at_ms) VALUES ($1, $2, $3, $4) ON CONFLICT (serial) DO NOTHING",
        )
        .bind(&serial)
        .bind(&req.reason)
        .bind(me.to_string())
        .bind(now_ms())
        .execute(&self.nodes.db)
        .await
        .map_err(RegistryError::from)?;
        self.nodes.revoked.insert_serial(&serial);
        let revoked_at_ms: i64 =
            sqlx::query_scalar("SELECT revoked_at_ms FROM revoked_certificates WHERE serial = $1")
                .bind(&serial)
                .fetch_one(&self.nodes.db)
                .await
                .map_err(RegistryError::from)?;
        tracing::warn!(%serial, by = %me, reason = %req.reason, "certificate revoked");
        Ok(Response::new(RevokeCertificateResponse { revoked_at_ms }))
    }

    async fn list_revoked_certificates(
        &self,
        req: Request<ListRevokedCertificatesRequest>,
    ) -> Result<Response<ListRevokedCertificatesResponse>, Status> {
        let req = req.into_inner();
        let (serials, next_page_token) = self
            .page_of_keys(
                "SELECT serial FROM revoked_certificates WHERE ($1 IS NULL OR serial > $2) ORDER BY serial LIMIT $3",
                req.page_size,
                &req.page_token,
            )
            .await?;
        Ok(Response::new(ListRevokedCertificatesResponse {
            serials,
            next_page_token,
        }))
    }
}

impl RegistryService {
    /// One page of a list of keys: `sql` selects one text column, binding the page's start
    /// twice and then its read limit.
    async fn page_of_keys(
        &self,
        sql: &'static str,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<String>, String), Status> {
        let page = Page::of(page_size, page_token, 1000, 10_000)?;
        let rows = sqlx::query(sql)
            .bind(page.after.as_deref())
            .bind(page.after.as_deref())
            .bind(page.read_limit())
            .fetch_all(&self.nodes.db)
            .await
            .map_err(RegistryError::from)?;
        let keys: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(page.finish(keys, |k| k.clone()))
    }
}

/// A readable name for a node status (`active`, `pending`, ...).
pub fn describe_status(status: i32) -> &'static str {
    NodeStatus::short_name_of(status)
}
