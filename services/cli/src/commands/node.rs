//! `zkmesh node`: join tokens, approving, denying and revoking nodes, listing them.

use std::path::PathBuf;

use serde_json::json;
use zkmesh_kit::lists::{all_node_records, all_nodes};
use zkmesh_proto::*;

use crate::args::NodeCommand;
use crate::commands::client;
use crate::render::safe;

/// `zkmesh node`.
pub(crate) async fn node(mesh: &Option<PathBuf>, cmd: NodeCommand) -> anyhow::Result<i32> {
    let api = client(mesh)?;
    let mut registry = api.admin_registry()?;
    let show = |n: &Node| {
        println!(
            "{}  {:<8} {:<16} {:<16} slots={}",
            n.node_id,
            zkmesh_registry::describe_status(n.status),
            safe(&n.name),
            safe(&n.operator),
            n.slots
        )
    };
    match cmd {
        NodeCommand::List { json } => {
            let nodes = all_nodes(&registry, NodeStatus::Unspecified).await?;
            // Each node's record (reputation) is the scheduler's, from the verdicts.
            let records: std::collections::HashMap<String, NodeRecord> =
                all_node_records(&api.admin_scheduler()?)
                    .await?
                    .into_iter()
                    .map(|r| (r.node_id.clone(), r))
                    .collect();
            let record = |n: &Node| records.get(&n.node_id).cloned().unwrap_or_default();
            if json {
                let list: Vec<_> = nodes
                    .iter()
                    .map(|n| {
                        let r = record(n);
                        json!({
                            "node_id": n.node_id, "name": n.name, "operator": n.operator,
                            "status": zkmesh_registry::describe_status(n.status), "slots": n.slots,
                            "last_heartbeat_at_ms": n.last_heartbeat_at_ms,
                            "verified": r.verified, "rejected": r.rejected,
                            "spot_checks": r.spot_checks, "spot_failures": r.spot_failures,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for n in &nodes {
                    let r = record(n);
                    println!(
                        "{}  {:<8} {:<16} {:<16} slots={} verified={} rejected={} spot_checks={} spot_failures={}",
                        n.node_id,
                        zkmesh_registry::describe_status(n.status),
                        safe(&n.name),
                        safe(&n.operator),
                        n.slots,
                        r.verified,
                        r.rejected,
                        r.spot_checks,
                        r.spot_failures
                    );
                }
            }
        }
        NodeCommand::Approve {
            node,
            slots,
            operator,
        } => show(
            &registry
                .approve_node(ApproveNodeRequest {
                    node_id: node,
                    slots: slots.unwrap_or(0),
                    operator: operator.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .node
                .unwrap_or_default(),
        ),
        NodeCommand::Deny { node } => show(
            &registry
                .deny_node(DenyNodeRequest { node_id: node })
                .await?
                .into_inner()
                .node
                .unwrap_or_default(),
        ),
        NodeCommand::Revoke { node } => show(
            &registry
                .revoke_node(RevokeNodeRequest { node_id: node })
                .await?
                .into_inner()
                .node
                .unwrap_or_default(),
        ),
        NodeCommand::Token {
            operator,
            slots,
            pre_approved,
            uses,
            ttl_secs,
        } => {
            let t = registry
                .create_join_token(CreateJoinTokenRequest {
                    pre_approved,
                    ttl_secs,
                    max_uses: uses,
                    operator,
                    slots: slots.unwrap_or(0),
                })
                .await?
                .into_inner();
            println!("{}", t.token);
        }
    }
    Ok(0)
}
