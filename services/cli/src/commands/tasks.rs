//! The task commands: `submit`, `upload`, `status`, `watch`, `result`, `cancel`, `tasks` and
//! `guests`.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;
use zkmesh_proto::*;

use crate::args::RunArgs;
use crate::commands::client;
use crate::commands::run::{load_module, prepare, submit_and_wait};
use crate::render::{print_log, print_result, result_json, safe, task_exit_code};
use crate::{EXIT_TASK, exit};
use zkmesh_client::wait;

/// `zkmesh submit`: submits to the configured mesh and follows the task.
pub(crate) async fn submit(mesh: &Option<PathBuf>, args: RunArgs) -> anyhow::Result<i32> {
    let task = prepare(&args)?;
    submit_and_wait(&client(mesh)?, &args, task, true).await
}

/// `zkmesh upload`: uploads a module and prints its hash.
pub(crate) async fn upload_module(
    mesh: &Option<PathBuf>,
    module: String,
    json: bool,
) -> anyhow::Result<i32> {
    let (name, wasm) = load_module(&module)?;
    let api = client(mesh)?;
    let uploaded = zkmesh_client::upload_module(&mut api.scheduler()?, &name, &wasm).await?;
    let info = uploaded.module.unwrap_or_default();
    if json {
        println!(
            "{}",
            json!({
                "module_hash": info.module_hash, "size": info.size,
                "abi": GuestAbi::short_name_of(info.abi),
                "imports": info.imports, "provable": info.provable, "provable_reason": info.provable_reason,
                "already_present": uploaded.already_present,
            })
        );
    } else {
        println!("{}", info.module_hash);
        eprintln!(
            "{} bytes, {:?} ABI; provable: {} ({})",
            info.size,
            GuestAbi::try_from(info.abi).unwrap_or(GuestAbi::Unspecified),
            info.provable,
            safe(&info.provable_reason)
        );
    }
    Ok(0)
}

/// `zkmesh status`: a task's state and latest message.
pub(crate) async fn status(
    mesh: &Option<PathBuf>,
    task: String,
    json: bool,
) -> anyhow::Result<i32> {
    let t = zkmesh_client::task(&mut client(mesh)?.scheduler()?, &task).await?;
    if json {
        println!(
            "{}",
            json!({"task_id": t.task_id, "state": TaskState::short_name_of(t.state), "message": t.message, "attempts": t.attempts, "policy": t.policy.unwrap_or_default().to_string(), "module_hash": t.module_hash, "credits_held": t.credits_held})
        );
    } else {
        println!("{}", task_line(&t));
    }
    Ok(0)
}

/// `zkmesh watch`: follows a task's events to its end.
pub(crate) async fn watch(mesh: &Option<PathBuf>, task: String, json: bool) -> anyhow::Result<i32> {
    let api = client(mesh)?;
    let mut s = api.scheduler()?;
    let result = wait(&mut s, &task, |e| {
        if json {
            println!("{}", json!({"seq": e.seq, "state": TaskState::short_name_of(e.state), "message": e.message, "node_id": e.node_id, "at_ms": e.at_ms, "log": e.log}));
        } else {
            println!(
                "{:>3}  {:<9} {}",
                e.seq,
                TaskState::short_name_of(e.state),
                safe(&e.message)
            );
            print_log(e, |line| println!("     {line}"));
        }
    })
    .await?;
    Ok(task_exit_code(&result))
}

/// `zkmesh result`: a task's result, its output to a file, or a verification bundle.
pub(crate) async fn result(
    mesh: &Option<PathBuf>,
    task: String,
    json: bool,
    output: Option<PathBuf>,
    bundle: Option<PathBuf>,
) -> anyhow::Result<i32> {
    let api = client(mesh)?;
    let mut s = api.scheduler()?;
    let t = zkmesh_client::task(&mut s, &task).await?;
    let r = zkmesh_client::result(&mut s, &task).await?;
    if let Some(path) = &bundle {
        if r.verdict() != Verdict::Verified {
            return Err(exit(
                EXIT_TASK,
                format!("task {} is not verified; no bundle written", t.task_id),
            ));
        }
        let module = api.module_bytes(&t.module_hash).await?;
        let b = zkmesh_client::bundle::Bundle::new(&t, &r, &module)
            .map_err(|e| exit(EXIT_TASK, e.to_string()))?;
        std::fs::write(path, serde_json::to_vec_pretty(&b)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bundle written to {}", path.display());
    }
    if let Some(path) = &output {
        std::fs::write(path, &r.output).with_context(|| format!("writing {}", path.display()))?;
    }
    if json {
        println!("{}", result_json(&t, &r));
    } else {
        print_result(&t, &r, None, output.is_none());
    }
    Ok(task_exit_code(&r))
}

/// `zkmesh cancel`.
pub(crate) async fn cancel(mesh: &Option<PathBuf>, task: String) -> anyhow::Result<i32> {
    let t = client(mesh)?
        .scheduler()?
        .cancel_task(CancelTaskRequest { task_id: task })
        .await?
        .into_inner()
        .task
        .unwrap_or_default();
    println!("{}", task_line(&t));
    Ok(0)
}

/// `zkmesh tasks`: the caller's recent tasks (an admin's: everyone's).
pub(crate) async fn list(mesh: &Option<PathBuf>, limit: u32) -> anyhow::Result<i32> {
    let tasks = client(mesh)?
        .scheduler()?
        .list_tasks(ListTasksRequest {
            page_size: limit,
            page_token: String::new(),
        })
        .await?
        .into_inner()
        .tasks;
    for t in tasks {
        println!(
            "{}  {:<9} {:<12} {}",
            t.task_id,
            TaskState::short_name_of(t.state),
            t.policy.unwrap_or_default().to_string(),
            safe(&t.message)
        );
    }
    Ok(0)
}

/// `zkmesh guests`: the built-in guests.
pub(crate) fn guests() -> anyhow::Result<i32> {
    for g in zkmesh_guests::all() {
        println!(
            "{:<10} {:<7} {}",
            g.name,
            format!("{:?}", g.abi).to_lowercase(),
            g.about
        );
    }
    Ok(0)
}

/// A task in one line: id, state, last event.
fn task_line(t: &Task) -> String {
    format!(
        "{}  {}  {}",
        t.task_id,
        TaskState::short_name_of(t.state),
        safe(&t.message)
    )
}
