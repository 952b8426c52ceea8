//! Running one attempt: memory and slot budgets, the sandbox run, the guest's log forwarded as
//! it is written, and the signed receipt.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::transport::Channel;
use zkmesh_kit::{now_ms, sha256_hex};
use zkmesh_proto::scheduler_service_client::SchedulerServiceClient;
use zkmesh_proto::*;
use zkmesh_runtime::{Exit, Limits, LogSink};

use crate::modules::module;
use crate::proving::prove;
use crate::shared::Shared;

/// Maps the sandbox's outcome to the wire's exit kind.
pub fn exit_kind(exit: &Exit) -> ExitKind {
    match exit {
        Exit::Ok => ExitKind::Ok,
        Exit::Trap(_) => ExitKind::Trap,
        Exit::OutOfFuel => ExitKind::OutOfFuel,
        Exit::OutOfMemory => ExitKind::OutOfMemory,
        Exit::StackExhausted => ExitKind::StackExhausted,
        Exit::Timeout => ExitKind::Timeout,
        Exit::OutputTooLarge => ExitKind::OutputTooLarge,
        Exit::ExitCode(_) => ExitKind::ExitCode,
        Exit::InvalidModule(_) => ExitKind::InvalidModule,
        Exit::ForbiddenImport(_) => ExitKind::ForbiddenImport,
    }
}

/// Sends a running guest's stderr as `Progress` log events, at most one every
/// [`LOG_INTERVAL`], each cut at a UTF-8 character boundary; ends when the sandbox drops its
/// sink, after sending what is left.
pub(crate) async fn forward_logs(
    mut chunks: mpsc::UnboundedReceiver<Vec<u8>>,
    attempt_id: String,
    outbox: mpsc::Sender<WorkRequest>,
) {
    let mut pending = Vec::new();
    let mut open = true;
    loop {
        // Wait for something to send (or the end), then gather whatever else has arrived.
        if pending.is_empty() && open {
            match chunks.recv().await {
                Some(chunk) => pending.extend_from_slice(&chunk),
                None => open = false,
            }
        }
        while open {
            match chunks.try_recv() {
                Ok(chunk) => pending.extend_from_slice(&chunk),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        // A character split across writes waits for its other half, unless this is the end.
        let cut = match (open, std::str::from_utf8(&pending)) {
            (_, Ok(_)) | (false, _) => pending.len(),
            (true, Err(e)) if e.error_len().is_none() => e.valid_up_to(),
            (true, Err(_)) => pending.len(),
        };
        if cut > 0 {
            let log = String::from_utf8_lossy(&pending[..cut]).into_owned();
            pending.drain(..cut);
            let message = WorkRequest {
                kind: Some(work_request::Kind::Progress(TaskProgress {
                    attempt_id: attempt_id.clone(),
                    message: format!("guest log: {} bytes of stderr", log.len()),
                    log,
                })),
            };
            if outbox.send(message).await.is_err() {
                return;
            }
        }
        if !open {
            return;
        }
        // At most one event per interval, but no waiting once the guest has ended: its
        // result waits for this task, and holds its slot meanwhile.
        let until = tokio::time::Instant::now() + LOG_INTERVAL;
        while open {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                chunk = chunks.recv() => match chunk {
                    Some(chunk) => pending.extend_from_slice(&chunk),
                    None => open = false,
                },
            }
        }
    }
}

/// Returns once `flag` is set (polled: the flag is a plain atomic).
pub(crate) async fn cancelled(flag: &AtomicBool) {
    while !flag.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How often a running guest's stderr is sent on.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_millis(200);

pub(crate) async fn execute(
    a: Assignment,
    shared: &Arc<Shared>,
    scheduler: SchedulerServiceClient<Channel>,
    outbox: &mpsc::Sender<WorkRequest>,
) -> Result<(), String> {
    let wasm = module(shared, scheduler, &a.module_hash).await?;
    let _permit = shared
        .slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| e.to_string())?;
    let cancel = shared
        .running
        .lock()
        .unwrap()
        .get(&a.attempt_id)
        .cloned()
        .unwrap_or_default();
    if cancel.load(Ordering::Relaxed) {
        return Ok(());
    }
    let _ = outbox
        .send(WorkRequest {
            kind: Some(work_request::Kind::Started(TaskStarted {
                attempt_id: a.attempt_id.clone(),
            })),
        })
        .await;
    // `module` checked that the bytes hash to the task's module hash.
    let sha256: [u8; 32] = hex::decode(&a.module_hash)
        .ok()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| format!("module hash {} is not a SHA-256", a.module_hash))?;
    // Compile first: a module this node cannot compile now (its compilers busy, or too slow
    // for it under its load) is no result of the task. Leave it to another node, whose lease
    // the scheduler gives once this one's runs out, rather than settle it as invalid.
    let (runner, module_bytes) = (shared.clone(), wasm.clone());
    let prepared =
        tokio::task::spawn_blocking(move || runner.sandbox.prepare_hashed(sha256, &module_bytes))
            .await
            .map_err(|e| format!("sandbox crashed: {e}"))?;
    if let Err(e) = &prepared
        && e.is_node_condition()
    {
        let note = format!("{e}; this node leaves the task to another");
        return leave(outbox, &a.attempt_id, note).await;
    }
    // Guests' memory limits share the node's budget: a task waits for its own to be free, so
    // that tasks which all touch their whole limit cannot together exhaust the machine. (A
    // module that did not compile is reported at once, without waiting.)
    let mut memory = None;
    if prepared.is_ok() {
        let wanted = a.memory_limit_mib.max(1);
        if wanted > shared.memory_budget_mib {
            let note = format!(
                "the task may use {wanted} MiB of memory; this node's guest memory budget is {} MiB, so it leaves the task to another",
                shared.memory_budget_mib
            );
            return leave(outbox, &a.attempt_id, note).await;
        }
        if shared.memory.available_permits() < wanted as usize {
            tracing::info!(attempt_id = %a.attempt_id, mib = wanted, "waiting for guest memory");
        }
        let permit = tokio::select! {
            permit = shared.memory.clone().acquire_many_owned(wanted) => {
                permit.map_err(|e| e.to_string())?
            }
            () = cancelled(&cancel) => return Ok(()),
        };
        memory = Some(permit);
    }
    // The guest's stderr reaches the submitter while it runs, as log events on WatchTask.
    let (log_tx, log_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let forwarder = tokio::spawn(forward_logs(log_rx, a.attempt_id.clone(), outbox.clone()));
    let limits = Limits {
        fuel: a.fuel_limit,
        memory_bytes: (a.memory_limit_mib as u64) << 20,
        timeout: Duration::from_secs(a.timeout_secs.max(1) as u64),
        cancel: Some(cancel.clone()),
        // Bounded by the sandbox's stderr cap: the channel never holds more than that.
        log: Some(LogSink(Arc::new(move |bytes: &[u8]| {
            let _ = log_tx.send(bytes.to_vec());
        }))),
    };
    let started = now_ms();
    let runner = shared.clone();
    let wasm_for_proof = wasm.clone();
    let (task_id, input) = (a.task_id.clone(), a.input.clone());
    // Guests run on the blocking pool, never on the async runtime's threads. The module is the
    // one just prepared: it is not looked up (and cannot be compiled) again.
    let outcome = tokio::task::spawn_blocking(move || match prepared {
        Ok(module) => runner
            .sandbox
            .run_prepared(&module, &input, &limits, task_id.as_bytes()),
        Err(e) => runner.sandbox.refused(&e, &limits),
    })
    .await
    .map_err(|e| format!("sandbox crashed: {e}"))?;
    // The guest is done with its memory (proving, if any, is not counted against it).
    drop(memory);
    // The sink went with the guest's store: the forwarder sends what is left and ends.
    let _ = forwarder.await;
    if cancel.load(Ordering::Relaxed) {
        return Ok(());
    }
    tracing::info!(
        attempt_id = %a.attempt_id, task_id = %a.task_id, exit = outcome.exit.kind(),
        fuel = outcome.fuel_used, cpu_us = outcome.cpu_time.as_micros() as u64,
        ms = now_ms() - started, "task finished"
    );
    shared.metrics.record(&outcome, shared.sandbox.stats());
    if outcome.stderr_dropped > 0 {
        let _ = outbox
            .send(WorkRequest {
                kind: Some(work_request::Kind::Progress(TaskProgress {
                    attempt_id: a.attempt_id.clone(),
                    message: format!(
                        "guest log truncated: {} bytes of stderr kept, {} more dropped",
                        outcome.stderr.len(),
                        outcome.stderr_dropped
                    ),
                    log: String::new(),
                })),
            })
            .await;
    }
    let exit = exit_kind(&outcome.exit);
    let mut receipt = Receipt {
        task_id: a.task_id.clone(),
        module_hash: a.module_hash.clone(),
        input_hash: sha256_hex(&a.input),
        output_hash: sha256_hex(&outcome.output),
        fuel_used: outcome.fuel_used,
        exit: exit as i32,
        node_id: shared.node_id.clone(),
        signature: Vec::new(),
    };
    zkmesh_kit::receipt::sign(&mut receipt, &shared.receipt_key).map_err(|e| e.to_string())?;
    let message = outcome.message.clone();
    let mut proof = None;
    if a.policy.unwrap_or_default().kind() == PolicyKind::Proof {
        let attempt_id = a.attempt_id.clone();
        let progress = move |message: String| WorkRequest {
            kind: Some(work_request::Kind::Progress(TaskProgress {
                attempt_id: attempt_id.clone(),
                message,
                log: String::new(),
            })),
        };
        let _ = outbox
            .send(progress("ran in wasmtime; tracing in the zkVM".into()))
            .await;
        let sender = outbox.clone();
        let report = move |m: String| {
            let _ = sender.try_send(progress(m));
        };
        match prove(
            shared,
            &a.task_id,
            wasm_for_proof,
            a.input.clone(),
            a.memory_limit_mib,
            &outcome.output,
            exit,
            report,
        )
        .await
        {
            Ok(p) => {
                tracing::info!(attempt_id = %a.attempt_id, class = %p.circuit_class, steps = p.steps, ms = p.prove_time_ms, "proved");
                proof = Some(p);
            }
            Err(e) => {
                // Not a dishonest result: this node cannot prove the run (no key for a class
                // large enough, a run too long, a prover failure). It gives the task back
                // rather than report a result the verifier would have to reject.
                tracing::warn!(attempt_id = %a.attempt_id, error = %e, "cannot prove; giving the task back");
                if cancel.load(Ordering::Relaxed) {
                    return Ok(());
                }
                return leave(outbox, &a.attempt_id, format!("cannot prove the run: {e}")).await;
            }
        }
        if cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
    outbox
        .send(WorkRequest {
            kind: Some(work_request::Kind::Report(TaskReport {
                attempt_id: a.attempt_id,
                output: outcome.output,
                exit: exit as i32,
                exit_message: message,
                fuel_used: outcome.fuel_used,
                receipt: Some(receipt),
                run_time_us: outcome.run_time.as_micros() as u64,
                cpu_time_us: outcome.cpu_time.as_micros() as u64,
                proof,
                proof_error: String::new(),
            })),
        })
        .await
        .map_err(|_| "worker is shutting down".to_string())
}

/// Gives back an attempt this node cannot run, with the reason: the scheduler puts the task
/// back in the queue at once, for another node (and says why on the task's events).
pub(crate) async fn leave(
    outbox: &mpsc::Sender<WorkRequest>,
    attempt_id: &str,
    note: String,
) -> Result<(), String> {
    let _ = outbox
        .send(WorkRequest {
            kind: Some(work_request::Kind::Declined(TaskDeclined {
                attempt_id: attempt_id.to_string(),
                reason: note.clone(),
            })),
        })
        .await;
    Err(note)
}
