//! Every item of the mesh's paged lists, for the callers that want them all (a status page, a
//! readiness check, the scheduler's sweeps). Each reads page after page with
//! [`collect_pages`](crate::paging::collect_pages), at the service's largest page size.

use tonic::Status;
use tonic::transport::Channel;
use zkmesh_proto::ledger_service_client::LedgerServiceClient;
use zkmesh_proto::registry_service_client::RegistryServiceClient;
use zkmesh_proto::scheduler_service_client::SchedulerServiceClient;
use zkmesh_proto::verifier_service_client::VerifierServiceClient;
use zkmesh_proto::*;

use crate::paging::collect_pages;

/// Every circuit class the verifier serves.
pub async fn all_circuits(
    verifier: &VerifierServiceClient<Channel>,
) -> Result<Vec<CircuitInfo>, Status> {
    collect_pages(|page_token| {
        let mut verifier = verifier.clone();
        async move {
            let page = verifier
                .list_circuits(ListCircuitsRequest {
                    page_size: 1000,
                    page_token,
                })
                .await?
                .into_inner();
            Ok((page.circuits, page.next_page_token))
        }
    })
    .await
}

/// Every node the registry knows in `status` (`Unspecified`: all).
pub async fn all_nodes(
    registry: &RegistryServiceClient<Channel>,
    status: NodeStatus,
) -> Result<Vec<Node>, Status> {
    collect_pages(|page_token| {
        let mut registry = registry.clone();
        async move {
            let page = registry
                .list_nodes(ListNodesRequest {
                    status: status as i32,
                    page_size: 1000,
                    page_token,
                })
                .await?
                .into_inner();
            Ok((page.nodes, page.next_page_token))
        }
    })
    .await
}

/// Every node's record at the scheduler (nodes with no verdict yet have none).
pub async fn all_node_records(
    scheduler: &SchedulerServiceClient<Channel>,
) -> Result<Vec<NodeRecord>, Status> {
    collect_pages(|page_token| {
        let mut scheduler = scheduler.clone();
        async move {
            let page = scheduler
                .list_node_records(ListNodeRecordsRequest {
                    page_size: 1000,
                    page_token,
                })
                .await?
                .into_inner();
            Ok((page.records, page.next_page_token))
        }
    })
    .await
}

/// Every worker connected to the scheduler.
pub async fn all_workers(
    scheduler: &SchedulerServiceClient<Channel>,
) -> Result<Vec<ConnectedWorker>, Status> {
    collect_pages(|page_token| {
        let mut scheduler = scheduler.clone();
        async move {
            let page = scheduler
                .list_workers(ListWorkersRequest {
                    page_size: 1000,
                    page_token,
                })
                .await?
                .into_inner();
            Ok((page.workers, page.next_page_token))
        }
    })
    .await
}

/// Every journal entry of `account` (empty: the caller's own), of `task_id` when it is not
/// empty.
pub async fn all_history(
    ledger: &LedgerServiceClient<Channel>,
    account: &str,
    task_id: &str,
) -> Result<Vec<JournalEntry>, Status> {
    collect_pages(|page_token| {
        let mut ledger = ledger.clone();
        let (account, task_id) = (account.to_string(), task_id.to_string());
        async move {
            let page = ledger
                .history(HistoryRequest {
                    account,
                    task_id,
                    page_size: 10_000,
                    page_token,
                })
                .await?
                .into_inner();
            Ok((page.entries, page.next_page_token))
        }
    })
    .await
}

/// Every revoked node id.
pub async fn all_revoked(registry: &RegistryServiceClient<Channel>) -> Result<Vec<String>, Status> {
    collect_pages(|page_token| {
        let mut registry = registry.clone();
        async move {
            let page = registry
                .list_revoked(ListRevokedRequest {
                    page_size: 10_000,
                    page_token,
                })
                .await?
                .into_inner();
            Ok((page.node_ids, page.next_page_token))
        }
    })
    .await
}

/// Every revoked certificate's serial number, over all pages.
pub async fn all_revoked_certificates(
    registry: &RegistryServiceClient<Channel>,
) -> Result<Vec<String>, Status> {
    collect_pages(|page_token| {
        let mut registry = registry.clone();
        async move {
            let page = registry
                .list_revoked_certificates(ListRevokedCertificatesRequest {
                    page_size: 10_000,
                    page_token,
                })
                .await?
                .into_inner();
            Ok((page.serials, page.next_page_token))
        }
    })
    .await
}
