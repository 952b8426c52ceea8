//! Task operations that take several calls: uploading a module in chunks, following a task to
//! its end.

use std::time::Duration;

use tonic::transport::Channel;
use zkmesh_proto::scheduler_service_client::SchedulerServiceClient;
use zkmesh_proto::*;

/// Uploads a module in 256 KiB chunks; the module as the scheduler holds it.
pub async fn upload(
    scheduler: &mut SchedulerServiceClient<Channel>,
    name: &str,
    bytes: &[u8],
) -> Result<ModuleInfo, tonic::Status> {
    upload_module(scheduler, name, bytes)
        .await?
        .module
        .ok_or_else(|| tonic::Status::internal("the scheduler answered without the module"))
}

/// [`upload`], with the whole answer (whether the module was there already).
pub async fn upload_module(
    scheduler: &mut SchedulerServiceClient<Channel>,
    name: &str,
    bytes: &[u8],
) -> Result<UploadModuleResponse, tonic::Status> {
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
    // Follow the events; when the stream breaks (the scheduler restarted, say), resume after
    // the last event seen, a few times, then poll.
    let mut after_seq = 0;
    for _ in 0..5 {
        let Ok(stream) = scheduler
            .watch_task(WatchTaskRequest {
                task_id: task_id.to_string(),
                after_seq,
            })
            .await
        else {
            break;
        };
        let mut stream = stream.into_inner();
        while let Ok(Some(message)) = stream.message().await {
            let Some(event) = message.event else { continue };
            after_seq = after_seq.max(event.seq);
            progress(&event);
            if is_terminal(event.state()) {
                return result(scheduler, task_id).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        let task = task(scheduler, task_id).await?;
        if is_terminal(task.state()) {
            return result(scheduler, task_id).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Submits a task, safely retried: the request carries an idempotency key (a fresh one unless
/// it has its own), so when the answer is lost (the scheduler unavailable, a deadline, a broken
/// connection) the same request is sent again, up to three times, and can only ever make one
/// task and one hold.
pub async fn submit(
    scheduler: &mut SchedulerServiceClient<Channel>,
    mut request: SubmitTaskRequest,
) -> Result<Task, tonic::Status> {
    if request.request_id.is_empty() {
        request.request_id = zkmesh_kit::random_id("r-");
    }
    let mut tries = 0;
    loop {
        tries += 1;
        match scheduler.submit_task(request.clone()).await {
            Ok(answer) => {
                return answer.into_inner().task.ok_or_else(|| {
                    tonic::Status::internal("the scheduler answered without the task")
                });
            }
            Err(e)
                if tries < 3
                    && matches!(
                        e.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::DeadlineExceeded
                            | tonic::Code::Unknown
                    ) =>
            {
                tokio::time::sleep(Duration::from_millis(500 * tries)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A task, by id.
pub async fn task(
    scheduler: &mut SchedulerServiceClient<Channel>,
    task_id: &str,
) -> Result<Task, tonic::Status> {
    scheduler
        .get_task(GetTaskRequest {
            task_id: task_id.to_string(),
        })
        .await?
        .into_inner()
        .task
        .ok_or_else(|| tonic::Status::internal("the scheduler answered without the task"))
}

/// A task's result, by id.
pub async fn result(
    scheduler: &mut SchedulerServiceClient<Channel>,
    task_id: &str,
) -> Result<TaskResult, tonic::Status> {
    scheduler
        .get_result(GetResultRequest {
            task_id: task_id.to_string(),
        })
        .await?
        .into_inner()
        .result
        .ok_or_else(|| tonic::Status::internal("the scheduler answered without the result"))
}
