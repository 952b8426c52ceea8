//! The scheduler's gRPC surface.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use zkmesh_kit::acl::caller;
use zkmesh_kit::error::{reasons, refusal};
use zkmesh_kit::identity::{Identity, Role};
use zkmesh_kit::paging::Page;
use zkmesh_kit::{random_id, sha256_hex};
use zkmesh_proto::scheduler_service_server::SchedulerService as SchedulerApi;
use zkmesh_proto::*;
use zkmesh_runtime::{Abi, ModuleError, Sandbox};

mod nodes;
mod quota;

use crate::dispatch::{Core, db_error, internal};
use crate::store::{HOLD_GIVEN_BACK, NewTask, Usage, is_terminal};

/// The scheduler's gRPC handler.
pub struct SchedulerService {
    core: Arc<Core>,
    sandbox: Arc<Sandbox>,
    /// One lock per account, held from a quota check to the write it allows, so one user's
    /// concurrent submissions or uploads cannot all pass the same check.
    quota_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl SchedulerService {
    pub(crate) fn new(core: Arc<Core>, sandbox: Arc<Sandbox>) -> Self {
        SchedulerService {
            core,
            sandbox,
            quota_locks: Default::default(),
        }
    }

    /// The task, if the caller may see it (its submitter, or an admin): its summary only, never
    /// its input or output. Others get NOT_FOUND, so that task ids leak nothing.
    async fn visible_task(&self, me: &Identity, task_id: &str) -> Result<Task, Status> {
        let task = self
            .core
            .store
            .task_summary(task_id)
            .await
            .map_err(db_error)?;
        match task {
            Some(t) if me.role == Role::Admin || t.submitter == me.account() => Ok(t),
            _ => Err(Status::not_found(format!("no task {task_id:?}"))),
        }
    }

    /// Refuses a proof task that no circuit class this mesh serves (ready or being set up)
    /// can hold, for what is known before it runs: its program, globals, initial data and
    /// input. Nodes would otherwise take it, find they cannot prove it, and give it back
    /// until its attempts run out.
    async fn check_provable(
        &self,
        module_hash: &str,
        input_len: usize,
        memory_limit_mib: u32,
    ) -> Result<(), Status> {
        use zkmesh_prover::zkvm;
        let circuits = self.core.verifier.list_circuits().await?;
        let served = |name: &str| {
            circuits.iter().any(|c| {
                c.circuit_class == name
                    && matches!(
                        c.state(),
                        CircuitSetupState::Ready | CircuitSetupState::SettingUp
                    )
            })
        };
        let Some(largest) = zkvm::CLASSES.iter().rev().find(|c| served(c.name)) else {
            return Ok(()); // the verifier's own policy check speaks for a mesh without keys
        };
        let bytes = (self.core.store.module_bytes(module_hash).await)
            .map_err(db_error)?
            .ok_or_else(|| no_module(module_hash))?;
        let program = zkvm::program(&bytes, (memory_limit_mib as u64) << 20).map_err(|e| {
            refusal(
                Code::FailedPrecondition,
                reasons::MODULE_NOT_PROVABLE,
                format!("policy proof: {e}"),
            )
        })?;
        zkvm::fits_statically(&program, input_len, largest).map_err(|e| {
            refusal(
                Code::FailedPrecondition,
                reasons::TASK_TOO_LARGE_TO_PROVE,
                format!(
                    "policy proof cannot prove this task in the largest circuit class this mesh \
                 serves ({}): {e}; use --policy replicate:K or --policy receipt, or set up a \
                 larger class",
                    largest.name
                ),
            )
        })
    }
}

/// No module with this hash was uploaded.
fn no_module(hash: &str) -> Status {
    refusal(
        Code::NotFound,
        reasons::MODULE_NOT_FOUND,
        format!("no module {hash:?}; upload it first"),
    )
}

/// A requested limit (0: the default), refused above the maximum.
fn limit(requested: u64, default: u64, max: u64, what: &str, unit: &str) -> Result<u64, Status> {
    let value = if requested == 0 { default } else { requested };
    if value > max {
        return Err(Status::invalid_argument(format!(
            "{what} {value}{unit} is above the maximum {max}{unit}"
        )));
    }
    Ok(value)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SchedulerApi for SchedulerService {
    async fn upload_module(
        &self,
        req: Request<Streaming<UploadModuleRequest>>,
    ) -> Result<Response<UploadModuleResponse>, Status> {
        let me = caller(&req)?;
        let mut stream = req.into_inner();
        let max = self.core.config.max_module_bytes;
        let mut bytes = Vec::new();
        let mut name = String::new();
        let mut expected = String::new();
        while let Some(msg) = stream.message().await? {
            if name.is_empty() {
                name = msg.name;
            }
            if expected.is_empty() {
                expected = msg.expected_sha256;
            }
            if bytes.len() + msg.chunk.len() > max {
                return Err(Status::invalid_argument(format!(
                    "module is larger than the limit of {max} bytes"
                )));
            }
            bytes.extend_from_slice(&msg.chunk);
        }
        if bytes.is_empty() {
            return Err(Status::invalid_argument("the module is empty"));
        }
        let hash = sha256_hex(&bytes);
        if !expected.is_empty() && !expected.eq_ignore_ascii_case(&hash) {
            return Err(Status::data_loss(format!(
                "the module's SHA-256 is {hash}, not the expected {expected}: upload corrupted"
            )));
        }
        if let Some(info) = self.core.store.module_info(&hash).await.map_err(db_error)? {
            return Ok(Response::new(UploadModuleResponse {
                module: Some(info),
                already_present: true,
            }));
        }
        let _quota = self.quota_lock(&me.account()).await;
        self.check_quota(
            &me.account(),
            Usage {
                module_bytes: bytes.len() as u64,
                ..Usage::default()
            },
        )
        .await?;
        let sandbox = self.sandbox.clone();
        let checked_bytes = bytes.clone();
        let inspection = tokio::task::spawn_blocking(move || sandbox.inspect(&checked_bytes))
            .await
            .map_err(|e| internal(format!("module check crashed: {e}")))?;
        let inspection = inspection.map_err(|e| match e {
            ModuleError::TooLarge { .. }
            | ModuleError::Invalid(_)
            | ModuleError::NoEntry(_)
            | ModuleError::CompileTimeout { .. } => refusal(
                Code::InvalidArgument,
                reasons::MODULE_REJECTED,
                format!("module rejected: {e}"),
            ),
            ModuleError::ForbiddenImport { .. } | ModuleError::Unsupported { .. } => refusal(
                Code::InvalidArgument,
                reasons::MODULE_REJECTED,
                format!("module rejected: {e}"),
            ),
            ModuleError::CompilersBusy { .. } => {
                Status::unavailable(format!("the scheduler is busy compiling: {e}"))
            }
        })?;
        let (provable, provable_reason) = crate::provability(&bytes);
        let info = ModuleInfo {
            module_hash: hash.clone(),
            size: bytes.len() as u64,
            abi: match inspection.abi {
                Abi::Zkmesh => GuestAbi::Zkmesh,
                Abi::Wasi => GuestAbi::Wasi,
            } as i32,
            imports: inspection.imports,
            provable,
            provable_reason,
            name,
        };
        self.core
            .store
            .insert_module(&info, &bytes, &me.account())
            .await
            .map_err(db_error)?;
        tracing::info!(module_hash = %hash, size = bytes.len(), abi = inspection.abi.as_str(), by = %me, "module stored");
        Ok(Response::new(UploadModuleResponse {
            module: Some(info),
            already_present: false,
        }))
    }

    async fn get_module(
        &self,
        req: Request<GetModuleRequest>,
    ) -> Result<Response<GetModuleResponse>, Status> {
        let hash = req.into_inner().module_hash;
        let module = self
            .core
            .store
            .module_info(&hash)
            .await
            .map_err(db_error)?
            .ok_or_else(|| no_module(&hash))?;
        Ok(Response::new(GetModuleResponse {
            module: Some(module),
        }))
    }

    async fn submit_task(
        &self,
        req: Request<SubmitTaskRequest>,
    ) -> Result<Response<SubmitTaskResponse>, Status> {
        let me = caller(&req)?;
        let req = req.into_inner();
        let config = &self.core.config;
        let bad = |m: String| Err(Status::invalid_argument(m));
        if req.request_id.len() > 128 {
            return bad("request_id is longer than 128 characters".into());
        }
        let Some(module) = self
            .core
            .store
            .module_info(&req.module_hash)
            .await
            .map_err(db_error)?
        else {
            return Err(no_module(&req.module_hash));
        };
        if req.policy.unwrap_or_default().kind() == PolicyKind::Proof && !module.provable {
            let why = module.provable_reason.trim_start_matches("not provable: ");
            return Err(refusal(
                Code::FailedPrecondition,
                reasons::MODULE_NOT_PROVABLE,
                format!(
                    "policy proof needs a module the zkVM can prove, and this one is not: {why}; \
                 use --policy replicate:K or --policy receipt"
                ),
            ));
        }
        if req.input.len() > config.max_input_bytes {
            return bad(format!(
                "input is {} bytes; the limit is {}",
                req.input.len(),
                config.max_input_bytes
            ));
        }
        let fuel = limit(
            req.fuel_limit,
            config.default_fuel,
            config.max_fuel,
            "fuel limit",
            "",
        )?;
        let memory = limit(
            req.memory_limit_mib.into(),
            config.default_memory_mib.into(),
            config.max_memory_mib.into(),
            "memory limit",
            " MiB",
        )? as u32;
        let timeout = limit(
            req.timeout_secs.into(),
            config.default_timeout_secs.into(),
            config.max_timeout_secs.into(),
            "timeout",
            "s",
        )? as u32;
        let policy = req.policy.unwrap_or(VerificationPolicy {
            kind: PolicyKind::Receipt as i32,
            replicas: 0,
        });
        let policy = match policy.kind() {
            PolicyKind::Replicate => policy,
            _ => VerificationPolicy {
                kind: policy.kind,
                replicas: 1,
            },
        };
        let account = me.account();
        let input_hash = sha256_hex(&req.input);
        // With a request id, the task's id follows from it: a retry finds the task (or the hold)
        // the first request made, and gets the same answer.
        let task_id = if req.request_id.is_empty() {
            random_id("t-")
        } else {
            let key =
                sha256_hex(format!("zkmesh.request\0{account}\0{}", req.request_id).as_bytes());
            format!("t-{}", &key[..32])
        };
        let same_request = |t: &Task| {
            t.module_hash == req.module_hash
                && t.input_hash == input_hash
                && t.fuel_limit == fuel
                && t.memory_limit_mib == memory
                && t.timeout_secs == timeout
                && t.policy.as_ref() == Some(&policy)
        };
        let earlier = |task: Option<Task>| -> Result<Option<SubmitTaskResponse>, Status> {
            let Some(task) = task else { return Ok(None) };
            if task.submitter != account || !same_request(&task) {
                return Err(refusal(
                    Code::AlreadyExists,
                    reasons::REQUEST_ID_REUSED,
                    format!(
                        "request_id {:?} was used for another task ({}); use a new one",
                        req.request_id, task.task_id
                    ),
                ));
            }
            Ok(Some(SubmitTaskResponse { task: Some(task) }))
        };
        // Before any check that asks another service or the mesh's state: a retry whose first
        // request made its task gets that task, whatever those would say now.
        let stored = || self.core.store.task_summary(&task_id);
        if !req.request_id.is_empty()
            && let Some(answer) = earlier(stored().await.map_err(db_error)?)?
        {
            return Ok(Response::new(answer));
        }
        if policy.kind() != PolicyKind::Receipt {
            // The verifier decides which policies it can judge.
            self.core.verifier.check_policy(policy).await?;
        }
        if policy.kind() == PolicyKind::Proof {
            self.check_provable(&req.module_hash, req.input.len(), memory)
                .await?;
        }
        if policy.kind() == PolicyKind::Replicate {
            let operators = self.core.connected_operators().await;
            if (operators as u32) < policy.replicas {
                return Err(refusal(
                    Code::FailedPrecondition,
                    reasons::NOT_ENOUGH_OPERATORS,
                    format!(
                        "replicate:{} needs nodes of {} different operators; nodes of {operators} are connected",
                        policy.replicas, policy.replicas
                    ),
                ));
            }
        }
        let replicas = policy.replicas.max(1) as u64;
        let hold =
            crate::cost(fuel, config.micro_credits_per_million_fuel).saturating_mul(replicas);
        let _quota = self.quota_lock(&account).await;
        self.check_quota(
            &account,
            Usage {
                tasks_in_flight: 1,
                queued_input_bytes: req.input.len() as u64,
                module_bytes: 0,
            },
        )
        .await?;
        // Noted first: if the answer from the ledger comes too late, or this scheduler stops
        // before it stores the task, a sweep gives the hold back.
        self.core
            .store
            .add_pending_hold(&task_id, &account, hold)
            .await
            .map_err(db_error)?;
        let held = match self
            .core
            .ledger
            .hold(HoldRequest {
                task_id: task_id.clone(),
                account: account.clone(),
                amount: hold,
            })
            .await
        {
            Ok(held) => held,
            Err(e) => {
                // A definite refusal made no hold: the note goes. Otherwise (no answer) the
                // hold may have been made, and the sweep gives it back unless a retry stores
                // the task.
                if !matches!(
                    e.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Internal
                ) {
                    let _ = self.core.store.drop_pending_hold(&task_id).await;
                }
                return Err(e);
            }
        };
        if held.state() != HoldState::Open {
            return Err(Status::aborted(
                "the hold for this request was given back (the submission took too long); submit again with a new request_id",
            ));
        }
        let new = NewTask {
            task_id: &task_id,
            submitter: &account,
            module_hash: &req.module_hash,
            input: &req.input,
            input_hash: &input_hash,
            fuel_limit: fuel,
            memory_limit_mib: memory,
            timeout_secs: timeout,
            policy,
            credits_held: hold,
            micro_credits_per_million_fuel: config.micro_credits_per_million_fuel,
            request_id: &req.request_id,
            pending_hold: true,
        };
        if let Err(e) = self.core.store.insert_task(&new).await {
            // The same request racing itself (a unique violation, or another error after the
            // twin stored the task): the twin's task, with the same hold, is the answer.
            if let Some(answer) = earlier(stored().await.map_err(db_error)?)? {
                return Ok(Response::new(answer));
            }
            if matches!(&e, sqlx::Error::Protocol(m) if m == HOLD_GIVEN_BACK) {
                // The sweep took the note (and may have found no hold yet): give back the hold
                // this request made, which nothing else would.
                let _ = self
                    .core
                    .ledger
                    .release(ReleaseRequest {
                        task_id: task_id.clone(),
                        reason: "the submission took too long".into(),
                    })
                    .await;
                return Err(Status::aborted(
                    "the submission took too long and its hold was given back; submit again with a new request_id",
                ));
            }
            // Give the credits back: the task never existed.
            let _ = self
                .core
                .ledger
                .release(ReleaseRequest {
                    task_id: task_id.clone(),
                    reason: "task could not be stored".into(),
                })
                .await;
            let _ = self.core.store.drop_pending_hold(&task_id).await;
            return Err(db_error(e));
        }
        self.core
            .emit(
                &task_id,
                TaskState::Queued,
                &format!("queued; {hold} micro-credits held"),
                "",
            )
            .await?;
        self.core.submitted();
        self.core.wake();
        let task = self
            .core
            .store
            .task_summary(&task_id)
            .await
            .map_err(db_error)?;
        Ok(Response::new(SubmitTaskResponse { task }))
    }

    async fn get_task(
        &self,
        req: Request<GetTaskRequest>,
    ) -> Result<Response<GetTaskResponse>, Status> {
        let me = caller(&req)?;
        let task = self.visible_task(&me, &req.into_inner().task_id).await?;
        Ok(Response::new(GetTaskResponse { task: Some(task) }))
    }

    type WatchTaskStream = BoxStream<WatchTaskResponse>;

    async fn watch_task(
        &self,
        req: Request<WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let me = caller(&req)?;
        let WatchTaskRequest { task_id, after_seq } = req.into_inner();
        // Subscribe before reading the history so no event falls between the two.
        let mut live = self.core.events.subscribe();
        let task = self.visible_task(&me, &task_id).await?;
        let history = self.core.store.events(&task_id).await.map_err(db_error)?;
        let (tx, rx) = mpsc::channel(64);
        let core = self.core.clone();
        tokio::spawn(async move {
            let send = |e: TaskEvent| {
                let tx = tx.clone();
                async move {
                    tx.send(Ok(WatchTaskResponse { event: Some(e) }))
                        .await
                        .is_ok()
                }
            };
            // Ended already (its terminal event is in the history, sent now or before the
            // resume point): nothing more will come.
            let ended = is_terminal(task.state()) || history.iter().any(|e| is_terminal(e.state()));
            let mut last = after_seq;
            for e in history.into_iter().filter(|e| e.seq > after_seq) {
                last = e.seq;
                let done = is_terminal(e.state());
                if !send(e).await || done {
                    return;
                }
            }
            if ended {
                return;
            }
            loop {
                let event = tokio::select! {
                    _ = core.shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("scheduler is shutting down"))).await;
                        return;
                    }
                    _ = tx.closed() => return,
                    e = live.recv() => e,
                };
                match event {
                    Ok(e) if e.task_id == task_id && e.seq > last => {
                        last = e.seq;
                        let done = is_terminal(e.state());
                        if !send(e).await || done {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow to follow live: catch up from the table.
                        let Ok(events) = core.store.events(&task_id).await else {
                            return;
                        };
                        let seen = last;
                        for e in events.into_iter().filter(|e| e.seq > seen) {
                            last = e.seq;
                            let done = is_terminal(e.state());
                            if !send(e).await || done {
                                return;
                            }
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_result(
        &self,
        req: Request<GetResultRequest>,
    ) -> Result<Response<GetResultResponse>, Status> {
        let me = caller(&req)?;
        let task_id = req.into_inner().task_id;
        self.visible_task(&me, &task_id).await?;
        let task = self.core.store.task(&task_id).await.map_err(db_error)?;
        Ok(Response::new(GetResultResponse {
            result: task.map(|t| t.result),
        }))
    }

    async fn cancel_task(
        &self,
        req: Request<CancelTaskRequest>,
    ) -> Result<Response<CancelTaskResponse>, Status> {
        let me = caller(&req)?;
        let task_id = req.into_inner().task_id;
        self.visible_task(&me, &task_id).await?;
        self.core.cancel(&task_id).await?;
        Ok(Response::new(CancelTaskResponse {
            task: Some(self.visible_task(&me, &task_id).await?),
        }))
    }

    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let me = caller(&req)?;
        let req = req.into_inner();
        let page = Page::of(req.page_size, &req.page_token, 100, 1000)?;
        // The token is "CREATED_AT_MS:TASK_ID" of the last task sent.
        let after = match &page.after {
            None => None,
            Some(key) => Some(
                key.split_once(':')
                    .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id.to_string())))
                    .ok_or_else(|| {
                        Status::invalid_argument("page_token is not one this service issued")
                    })?,
            ),
        };
        let account = me.account();
        let filter = (me.role != Role::Admin).then_some(account.as_str());
        let tasks = self
            .core
            .store
            .list_tasks(filter, after, page.read_limit() as u32)
            .await
            .map_err(db_error)?;
        let (tasks, next_page_token) =
            page.finish(tasks, |t| format!("{}:{}", t.created_at_ms, t.task_id));
        Ok(Response::new(ListTasksResponse {
            tasks,
            next_page_token,
        }))
    }

    async fn list_workers(
        &self,
        req: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        let req = req.into_inner();
        let page = Page::of(req.page_size, &req.page_token, 100, 1000)?;
        let mut workers = self.core.connected_workers().await;
        workers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let (workers, next_page_token) = page.slice(&workers, |w| w.node_id.clone());
        Ok(Response::new(ListWorkersResponse {
            workers,
            next_page_token,
        }))
    }

    async fn list_node_records(
        &self,
        req: Request<ListNodeRecordsRequest>,
    ) -> Result<Response<ListNodeRecordsResponse>, Status> {
        let req = req.into_inner();
        let page = Page::of(req.page_size, &req.page_token, 100, 1000)?;
        let (records, next_page_token) = self.core.node_records(&page).await?;
        Ok(Response::new(ListNodeRecordsResponse {
            records,
            next_page_token,
        }))
    }

    type WorkStream = BoxStream<WorkResponse>;

    async fn work(
        &self,
        req: Request<Streaming<WorkRequest>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        self.open_work(req).await
    }

    type FetchModuleStream = BoxStream<FetchModuleResponse>;

    async fn fetch_module(
        &self,
        req: Request<FetchModuleRequest>,
    ) -> Result<Response<Self::FetchModuleStream>, Status> {
        self.send_module(req).await
    }
}
