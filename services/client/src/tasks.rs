//! Task operations that take several calls: uploading a module in chunks, following a task to
//! its end.

use std::time::Duration;

use tonic::transport::Channel;
use zkmesh_proto::scheduler_service_client::SchedulerServiceClient;
use zkmesh_proto::*;

/// Uploads a module in 256 KiB chunks.
pub async fn upload(
    scheduler: &mut SchedulerServiceClient<Channel>,
    name: &str,
    bytes: &[u8],
) -> Result<ModuleInfo, tonic::Status> {
    let expected = zkmesh_kit::sha256_hex(bytes);
    let mut messages: Vec<UploadModuleRequest> = bytes
        .chunks(256 << 10)
        .map(|c| UploadModuleRequest {
            chunk: c.to_vec(),
            ..Default::default()
        })
        .collect();
    if messages.is_empty() {
        messages.push(UploadModuleRequest::default());
    }
    messages[0].name = name.to_string();
    messages[0].expected_sha256 = expected;
    Ok(scheduler
        .upload_module(tokio_stream::iter(messages))
        .await?
        .into_inner())
}

pub fn is_terminal(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Settled | TaskState::Failed | TaskState::Cancelled
    )
}

/// Follows a task to its end, calling `progress` for each event, and returns its result.
pub async fn wait(
    scheduler: &mut SchedulerServiceClient<Channel>,
    task_id: &str,
    mut progress: impl FnMut(&TaskEvent),
) -> Result<TaskResult, tonic::Status> {
    let task_ref = || TaskRef {
        task_id: task_id.to_string(),
    };
    if let Ok(stream) = scheduler.watch_task(task_ref()).await {
        let mut stream = stream.into_inner();
        while let Ok(Some(event)) = stream.message().await {
            progress(&event);
            if is_terminal(event.state()) {
                return Ok(scheduler.get_result(task_ref()).await?.into_inner());
            }
        }
    }
    // The stream broke (the scheduler restarted, say): poll instead.
    loop {
        let task = scheduler.get_task(task_ref()).await?.into_inner();
        if is_terminal(task.state()) {
            return Ok(scheduler.get_result(task_ref()).await?.into_inner());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
