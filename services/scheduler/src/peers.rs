//! The services the scheduler calls, behind one trait each: the registry (node facts), the
//! ledger (holds and their settlement) and the verifier (policies, circuits and verdicts).
//!
//! In the mesh each is a gRPC client with a deadline ([`Peers::grpc`]); the scheduler's unit
//! tests put in-process stand-ins behind the same traits, so leases, placement, requeueing and
//! settlement are tested without starting a mesh.

use std::sync::Arc;
use std::time::Duration;

use tonic::Status;
use tonic::transport::Channel;
use zkmesh_kit::lists::{all_circuits, all_nodes};
use zkmesh_proto::ledger_service_client::LedgerServiceClient;
use zkmesh_proto::registry_service_client::RegistryServiceClient;
use zkmesh_proto::verifier_service_client::VerifierServiceClient;
use zkmesh_proto::*;

/// Deadline for calls to the other services, so a hung one cannot hold a task forever.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// A call to another service, with [`RPC_TIMEOUT`].
pub async fn call<T>(
    f: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    within_deadline(async { f.await.map(tonic::Response::into_inner) }).await
}

/// A call of several RPCs (every page of a list), with [`RPC_TIMEOUT`] for the whole.
async fn within_deadline<T>(
    f: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout(RPC_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(Status::unavailable("a mesh service did not answer in time")))
}

/// The registry, as the scheduler uses it.
#[tonic::async_trait]
pub trait Registry: Send + Sync {
    /// The registry's current view of one node.
    async fn get_node(&self, node_id: &str) -> Result<Node, Status>;
    /// Every node the registry knows.
    async fn list_nodes(&self) -> Result<Vec<Node>, Status>;
}

/// The ledger, as the scheduler uses it. Capture and release are idempotent at the ledger, so
/// the scheduler retries them until they succeed.
#[tonic::async_trait]
pub trait Ledger: Send + Sync {
    /// Holds a task's credits at submission.
    async fn hold(&self, req: HoldRequest) -> Result<HoldInfo, Status>;
    /// Pays the nodes of a verified result and refunds the rest.
    async fn capture(&self, req: CaptureRequest) -> Result<HoldInfo, Status>;
    /// Gives a failed or cancelled task's hold back.
    async fn release(&self, req: ReleaseRequest) -> Result<HoldInfo, Status>;
}

/// The verifier, as the scheduler uses it.
#[tonic::async_trait]
pub trait Verifier: Send + Sync {
    /// Refuses a policy the verifier cannot serve.
    async fn check_policy(&self, policy: VerificationPolicy) -> Result<(), Status>;
    /// The circuit classes it serves or is setting up.
    async fn list_circuits(&self) -> Result<Vec<CircuitInfo>, Status>;
    /// Judges a task's reports.
    async fn verify_result(&self, req: VerifyResultRequest) -> Result<TaskVerdict, Status>;
}

/// The three services, shared by the scheduler's engine and handlers.
#[derive(Clone)]
pub struct Peers {
    pub registry: Arc<dyn Registry>,
    pub ledger: Arc<dyn Ledger>,
    pub verifier: Arc<dyn Verifier>,
}

impl Peers {
    /// The mesh's services over gRPC (mutual TLS is in the channels).
    pub fn grpc(registry: Channel, ledger: Channel, verifier: Channel) -> Peers {
        Peers {
            registry: Arc::new(RegistryServiceClient::new(registry)),
            ledger: Arc::new(LedgerServiceClient::new(ledger)),
            verifier: Arc::new(VerifierServiceClient::new(verifier)),
        }
    }
}

#[tonic::async_trait]
impl Registry for RegistryServiceClient<Channel> {
    async fn get_node(&self, node_id: &str) -> Result<Node, Status> {
        call(RegistryServiceClient::get_node(
            &mut self.clone(),
            GetNodeRequest {
                node_id: node_id.to_string(),
            },
        ))
        .await?
        .node
        .ok_or_else(|| Status::internal("the registry answered GetNode without a node"))
    }

    async fn list_nodes(&self) -> Result<Vec<Node>, Status> {
        within_deadline(all_nodes(self, NodeStatus::Unspecified)).await
    }
}

#[tonic::async_trait]
impl Ledger for LedgerServiceClient<Channel> {
    async fn hold(&self, req: HoldRequest) -> Result<HoldInfo, Status> {
        let hold = call(LedgerServiceClient::hold(&mut self.clone(), req)).await?;
        hold.hold.ok_or_else(no_hold)
    }

    async fn capture(&self, req: CaptureRequest) -> Result<HoldInfo, Status> {
        let hold = call(LedgerServiceClient::capture(&mut self.clone(), req)).await?;
        hold.hold.ok_or_else(no_hold)
    }

    async fn release(&self, req: ReleaseRequest) -> Result<HoldInfo, Status> {
        let hold = call(LedgerServiceClient::release(&mut self.clone(), req)).await?;
        hold.hold.ok_or_else(no_hold)
    }
}

fn no_hold() -> Status {
    Status::internal("the ledger answered without the hold")
}

#[tonic::async_trait]
impl Verifier for VerifierServiceClient<Channel> {
    async fn check_policy(&self, policy: VerificationPolicy) -> Result<(), Status> {
        call(VerifierServiceClient::check_policy(
            &mut self.clone(),
            CheckPolicyRequest {
                policy: Some(policy),
            },
        ))
        .await
        .map(|_| ())
    }

    async fn list_circuits(&self) -> Result<Vec<CircuitInfo>, Status> {
        within_deadline(all_circuits(self)).await
    }

    async fn verify_result(&self, req: VerifyResultRequest) -> Result<TaskVerdict, Status> {
        call(VerifierServiceClient::verify_result(&mut self.clone(), req))
            .await?
            .verdict
            .ok_or_else(|| Status::internal("the verifier answered without a verdict"))
    }
}
