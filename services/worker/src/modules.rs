//! Modules downloaded from the scheduler, checked against their hash and held in memory.

use std::sync::Arc;

use tonic::transport::Channel;
use zkmesh_kit::sha256_hex;
use zkmesh_proto::scheduler_service_client::SchedulerServiceClient;
use zkmesh_proto::*;

use crate::shared::Shared;

pub(crate) async fn module(
    shared: &Shared,
    mut scheduler: SchedulerServiceClient<Channel>,
    hash: &str,
) -> Result<Arc<Vec<u8>>, String> {
    if let Some(m) = shared.modules.lock().unwrap().get(hash) {
        return Ok(m.clone());
    }
    let mut stream = scheduler
        .fetch_module(FetchModuleRequest {
            module_hash: hash.to_string(),
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|e| e.message().to_string())?
    {
        bytes.extend_from_slice(&chunk.chunk);
        if bytes.len() > MAX_MODULE_BYTES {
            return Err(format!(
                "module {hash} is over {} MiB: not a module this node runs",
                MAX_MODULE_BYTES >> 20
            ));
        }
    }
    // Content addressing: run exactly the module the task names, whatever the scheduler sent.
    if sha256_hex(&bytes) != hash {
        return Err(format!("module download does not hash to {hash}"));
    }
    let bytes = Arc::new(bytes);
    let mut modules = shared.modules.lock().unwrap();
    // Downloaded modules are kept (for the next task and for proving) up to a bound; past it
    // the map starts afresh, and a module needed again is fetched again.
    let held: usize = modules.values().map(|m| m.len()).sum();
    if held + bytes.len() > MODULES_HELD_BYTES {
        modules.clear();
    }
    modules.insert(hash.to_string(), bytes.clone());
    Ok(bytes)
}

/// The largest module a worker downloads (the scheduler's upload limit, and the sandbox's).
pub(crate) const MAX_MODULE_BYTES: usize = 64 << 20;
/// Bytes of downloaded modules a worker keeps in memory.
pub(crate) const MODULES_HELD_BYTES: usize = 256 << 20;
