//! The verifier: the only judge of results. It checks every receipt's Ed25519 signature
//! against the key the registry holds for the node, checks that the receipt is about this task,
//! module and input and about the output the scheduler actually received, and decides
//! `replicate:k` by a majority of distinct operators.
//!
//! Under the `proof` policy it also checks the Groth16 proof against a statement it builds
//! itself: its own lowering of the module, the task's input, the reported output and the
//! claimed steps and exit. It runs the setup of each circuit class itself and serves the keys
//! ([`circuits`]).

pub mod circuits;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use sqlx::Row;
use tonic::{Request, Response, Status};
use zkmesh_kit::acl::{Acl, Allow};
use zkmesh_kit::config::ServerConfig;
use zkmesh_kit::db::{self, Pool};
use zkmesh_kit::identity::Role;
use zkmesh_kit::revocation::RevocationList;
use zkmesh_kit::server::{ServeSpec, Serving, serve};
use zkmesh_kit::telemetry::Metrics;
use zkmesh_kit::tls::TlsPem;
use zkmesh_kit::{CancellationToken, now_ms, random_id};
use zkmesh_proto::registry_service_client::RegistryServiceClient;
use zkmesh_proto::verifier_service_server::{
    VerifierService as VerifierApi, VerifierServiceServer,
};
use zkmesh_proto::*;

/// The verifier's configuration (`zkmesh verifier serve --config FILE`, `ZKMESH_VERIFIER_*`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifierConfig {
    /// `[server]`: listen address, metrics, database, drain time and TLS.
    pub server: ServerConfig,
    /// The registry: node receipt keys and the revocation list.
    pub registry_endpoint: String,
    /// Where circuit keys are kept (content-addressed; reused across restarts).
    #[serde(default = "default_keys_dir")]
    pub keys_dir: std::path::PathBuf,
    /// Classes to set up at start if their keys are not there yet (in the background).
    #[serde(default = "default_setup_classes")]
    pub setup_classes: Vec<String>,
}

/// Where the verifier listens when `[server] listen` is not set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7004";

fn default_keys_dir() -> std::path::PathBuf {
    "zkmesh-verifier-keys".into()
}

fn default_setup_classes() -> Vec<String> {
    vec!["c9".into(), "c10".into()]
}

/// Marks a check that could not be made (the registry is unreachable).
const UNAVAILABLE: &str = "registry unavailable: ";

/// The most replicas a task may ask for.
pub const MAX_REPLICAS: u32 = 9;

pub static ACL: Acl = Acl {
    service: "zkmesh.v1.VerifierService",
    methods: &[
        ("CheckPolicy", &[Allow::Service("scheduler")]),
        ("VerifyResult", &[Allow::Service("scheduler")]),
        (
            "GetVerdict",
            &[
                Allow::Role(Role::Admin),
                Allow::Role(Role::User),
                Allow::Role(Role::Service),
            ],
        ),
        (
            "ListCircuits",
            &[
                Allow::Role(Role::Admin),
                Allow::Role(Role::User),
                Allow::Role(Role::Service),
                Allow::Role(Role::Node),
            ],
        ),
        (
            "GetVerifyingKey",
            &[
                Allow::Role(Role::Admin),
                Allow::Role(Role::User),
                Allow::Role(Role::Service),
                Allow::Role(Role::Node),
            ],
        ),
        (
            "FetchProvingKey",
            &[Allow::Role(Role::Node), Allow::Role(Role::Admin)],
        ),
        ("SetupCircuit", &[Allow::Role(Role::Admin)]),
    ],
};

/// The schema, as SQL files under `migrations/sqlite/` (a PostgreSQL set can sit beside it),
/// embedded at build time and applied by sqlx's migrator.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct VerifierService {
    db: Pool,
    circuits: Arc<circuits::Circuits>,
    /// Lowered programs by module hash (the verifier's own lowering).
    programs: Mutex<HashMap<(String, u64), Arc<zkmesh_prover::isa::Program>>>,
    /// The program's share of the public inputs, by module hash and verifying key: computed once
    /// per module, it takes most of the multi-scalar product out of each verification.
    terms: Mutex<HashMap<(String, u64, String), Arc<zkmesh_prover::groth::ProgramTerm>>>,
    registry: RegistryServiceClient<tonic::transport::Channel>,
    verdicts: prometheus_client::metrics::family::Family<
        Vec<(String, String)>,
        prometheus_client::metrics::counter::Counter,
    >,
}

/// Starts the verifier; it runs until `shutdown` is cancelled.
pub async fn start(config: VerifierConfig, shutdown: CancellationToken) -> anyhow::Result<Serving> {
    let tls = TlsPem::load(&config.server.tls)?;
    let db = db::connect(&config.server.database_url).await?;
    db::migrate(&db, "verifier", &MIGRATOR).await?;
    let registry_channel = zkmesh_kit::client::channel(&config.registry_endpoint, &(&tls).into())?;
    let revoked = RevocationList::default();
    zkmesh_kit::revocation::follow_revocations(
        registry_channel.clone(),
        revoked.clone(),
        Duration::from_secs(1),
        shutdown.clone(),
    );
    let metrics = Metrics::new("verifier");
    let circuits = circuits::Circuits::open(&config.keys_dir)?;
    for name in &config.setup_classes {
        anyhow::ensure!(
            zkmesh_prover::zkvm::class_named(name).is_some(),
            "setup_classes: unknown circuit class {name:?}"
        );
    }
    {
        // Set up missing classes one after the other, in the background: the service answers
        // meanwhile, and `ListCircuits` shows the progress.
        let (circuits, names) = (circuits.clone(), config.setup_classes.clone());
        tokio::task::spawn_blocking(move || {
            for name in names {
                let _ = circuits.setup(&name);
            }
        });
    }
    let service = VerifierService {
        circuits,
        programs: Mutex::new(HashMap::new()),
        terms: Mutex::new(HashMap::new()),
        db,
        registry: RegistryServiceClient::new(registry_channel),
        verdicts: metrics.counter_family("verdicts", "Verdicts by policy and outcome"),
    };
    Ok(serve(
        VerifierServiceServer::new(service),
        ServeSpec {
            name: "verifier",
            acl: &ACL,
            tls,
            listen: config.server.listen_or(DEFAULT_LISTEN),
            metrics_listen: config.server.metrics_listen.clone(),
            metrics,
            revoked,
            shutdown,
            grace: config.server.grace(),
        },
    )
    .await?)
}

/// Checks a policy's shape; the reason is the client's error message.
pub fn check_policy(policy: &VerificationPolicy) -> Result<(), Status> {
    match policy.kind() {
        PolicyKind::Receipt => Ok(()),
        PolicyKind::Replicate if (2..=MAX_REPLICAS).contains(&policy.replicas) => Ok(()),
        PolicyKind::Replicate => Err(Status::invalid_argument(format!(
            "replicate:k needs 2 <= k <= {MAX_REPLICAS}, got {}",
            policy.replicas
        ))),
        PolicyKind::Proof => Ok(()),
        PolicyKind::Unspecified => Err(Status::invalid_argument(
            "a policy is required: receipt, replicate:K or proof",
        )),
    }
}

impl VerifierService {
    /// The node's receipt key, operator and status, from the registry (asked every time: the
    /// status may have changed to revoked).
    async fn node_key(&self, node_id: &str) -> Result<(Vec<u8>, String, NodeStatus), Status> {
        let node = self
            .registry
            .clone()
            .get_node(NodeRef {
                node_id: node_id.to_string(),
            })
            .await?
            .into_inner();
        let status = node.status();
        Ok((node.receipt_public_key, node.operator, status))
    }

    /// Why a report is not acceptable, if it is not.
    async fn check_report(
        &self,
        task: &VerifyResultRequest,
        report: &ReportedResult,
    ) -> Option<String> {
        let Some(receipt) = &report.receipt else {
            return Some("no receipt".into());
        };
        if receipt.task_id != task.task_id
            || receipt.module_hash != task.module_hash
            || receipt.input_hash != task.input_hash
        {
            return Some("receipt is for another task, module or input".into());
        }
        if receipt.node_id != report.node_id {
            return Some("receipt names another node".into());
        }
        if receipt.output_hash != report.observed_output_hash {
            return Some("receipt's output hash differs from the output reported".into());
        }
        let (key, _operator, status) = match self.node_key(&report.node_id).await {
            Ok(k) => k,
            Err(e) if e.code() == tonic::Code::NotFound => {
                return Some(format!("node unknown to the registry: {}", e.message()));
            }
            // The registry is down: no verdict now, rather than a wrong one.
            Err(e) => return Some(format!("{UNAVAILABLE}{}", e.message())),
        };
        if status == NodeStatus::Revoked || status == NodeStatus::Denied {
            return Some("node is revoked".into());
        }
        zkmesh_kit::receipt::verify(receipt, &key)
            .err()
            .map(|e| e.to_string())
    }

    /// Why a report's proof does not prove its result, if it does not. The statement is built
    /// here, from this verifier's own lowering of the module, the task's input and the output
    /// the scheduler received.
    async fn check_proof(
        &self,
        task: &VerifyResultRequest,
        report: &ReportedResult,
    ) -> Option<String> {
        let Some(proof) = report.proof.clone() else {
            if report.proof_error.is_empty() {
                return Some("no proof attached".into());
            }
            return Some(format!("no proof: {}", report.proof_error));
        };
        if sha256_hex(&task.module) != task.module_hash
            || sha256_hex(&task.input) != task.input_hash
        {
            return Some(format!(
                "{UNAVAILABLE}the scheduler sent a module or input that does not match the task"
            ));
        }
        let Ok(keys) = self.checked(&proof.circuit_class).await else {
            let state = self.circuits.state(&proof.circuit_class);
            if state.starts_with("setting up") {
                return Some(format!(
                    "{UNAVAILABLE}circuit {} is {state}",
                    proof.circuit_class
                ));
            }
            return Some(format!(
                "proof is for circuit class {:?}, which is {state} here",
                proof.circuit_class
            ));
        };
        let receipt = report.receipt.as_ref().expect("checked before");
        // The receipt's exit is the one the proof's halt status means: returned, a trap, or a
        // memory.grow past the task's memory limit.
        let proved = zkmesh_prover::zkvm::ending(proof.status);
        if zkmesh_prover::zkvm::ending_of_exit(receipt.exit) != Some(proved) {
            return Some(format!(
                "the receipt's exit ({}) contradicts the proof's halt status {} ({proved:?})",
                receipt.exit, proof.status
            ));
        }
        // Every stored task has its effective limit (the scheduler substitutes its default); 0
        // comes only from a scheduler older than the field, whose statement would be another.
        if task.memory_limit_mib == 0 {
            return Some(format!(
                "{UNAVAILABLE}the scheduler sent no memory limit, which the proof's program depends on"
            ));
        }
        let memory_limit = (task.memory_limit_mib as u64) << 20;
        let program = match self.program(&task.module_hash, memory_limit, &task.module) {
            Ok(p) => p,
            Err(e) => return Some(format!("module is not provable: {e}")),
        };
        let (input, output) = (task.input.clone(), report.output.clone());
        // Each segment's proof is bound to this task and to the node that reports it.
        let binding = zkmesh_prover::zkvm::Binding::new(&task.task_id, &report.node_id);
        let links: Vec<(u64, &str, &str)> = proof
            .links
            .iter()
            .map(|l| (l.steps, l.state_out.as_str(), l.memory_out.as_str()))
            .collect();
        let claim = match zkmesh_prover::zkvm::Claim::parse(
            &proof.circuit_class,
            proof.steps,
            proof.status,
            &proof.state_out,
            &links,
        ) {
            Ok(c) => c,
            Err(e) => return Some(format!("malformed proof claim: {e}")),
        };
        let mut proofs: Vec<Vec<u8>> = proof.links.iter().map(|l| l.proof.clone()).collect();
        proofs.push(proof.proof.clone());
        let started = std::time::Instant::now();
        let term_key = (
            task.module_hash.clone(),
            memory_limit,
            keys.info.verifying_key_sha256.clone(),
        );
        let cached = self.terms.lock().unwrap().get(&term_key).cloned();
        let result = tokio::task::spawn_blocking(move || {
            use zkmesh_prover::zkvm;
            let class = zkvm::class_named(&claim.class)
                .ok_or_else(|| zkvm::VerifyError::UnknownClass(claim.class.clone()))?;
            let term = match cached {
                Some(t) => t,
                None => Arc::new(zkvm::program_term(&keys.pvk, &class, &program)?),
            };
            zkvm::verify_in(
                &class,
                &keys.pvk,
                Some(&term),
                &program,
                &input,
                &output,
                &claim,
                &proofs,
                &binding,
            )
            .map(|()| term)
        })
        .await
        .map_err(|e| format!("verification crashed: {e}"))
        .and_then(|r| r.map_err(|e| e.to_string()));
        let result = result.map(|term| {
            let mut terms = self.terms.lock().unwrap();
            if terms.len() >= 256 {
                terms.clear();
            }
            terms.insert(term_key, term);
        });
        tracing::info!(task_id = %task.task_id, us = started.elapsed().as_micros() as u64, ok = result.is_ok(), "proof checked");
        result.err()
    }

    /// A class's keys, checked against today's constraint system at the class's first use
    /// ([`circuits::Circuits::checked`]), or FAILED_PRECONDITION saying what state the class
    /// is in.
    async fn ready(&self, name: &str) -> Result<Arc<circuits::Ready>, Status> {
        self.checked(name)
            .await
            .map_err(|e| Status::failed_precondition(format!("circuit class {name:?} {e}")))
    }

    async fn checked(&self, name: &str) -> Result<Arc<circuits::Ready>, String> {
        let (circuits, name) = (self.circuits.clone(), name.to_string());
        tokio::task::spawn_blocking(move || circuits.checked(&name))
            .await
            .unwrap_or_else(|e| Err(format!("check crashed: {e}")))
    }

    /// The verifier's own lowering of a module for a memory limit (part of the program: the
    /// limit's check before every memory.grow), cached by both.
    fn program(
        &self,
        hash: &str,
        memory_limit: u64,
        wasm: &[u8],
    ) -> Result<Arc<zkmesh_prover::isa::Program>, String> {
        let key = (hash.to_string(), memory_limit);
        if let Some(p) = self.programs.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let p =
            Arc::new(zkmesh_prover::zkvm::program(wasm, memory_limit).map_err(|e| e.to_string())?);
        let mut programs = self.programs.lock().unwrap();
        // Bounded, as the terms are: a submitter could name many limits for one module.
        if programs.len() >= 256 {
            programs.clear();
        }
        programs.insert(key, p.clone());
        Ok(p)
    }

    async fn judge(&self, req: &VerifyResultRequest) -> Result<VerifyResultResponse, Status> {
        check_policy(
            req.policy
                .as_ref()
                .unwrap_or(&VerificationPolicy::default()),
        )?;
        let policy = req.policy.unwrap_or_default();
        let mut valid = Vec::new();
        let mut rejected = Vec::new();
        let mut reasons = Vec::new();
        for report in &req.reports {
            let mut verdict = self.check_report(req, report).await;
            if verdict.is_none() && policy.kind() == PolicyKind::Proof {
                verdict = self.check_proof(req, report).await;
            }
            match verdict {
                Some(why) if why.starts_with(UNAVAILABLE) => {
                    return Err(Status::unavailable(why));
                }
                None => valid.push(report),
                Some(why) => {
                    tracing::warn!(task_id = %req.task_id, node_id = %report.node_id, %why, "report rejected");
                    reasons.push(format!("{}: {why}", report.node_id));
                    rejected.push(report.attempt_id.clone());
                }
            }
        }
        let needed = match policy.kind() {
            PolicyKind::Replicate => policy.replicas as usize / 2 + 1,
            _ => 1,
        };
        // Group valid reports by everything the receipt asserts about the run; count each
        // operator once so one operator's many nodes cannot outvote the others.
        let mut groups: BTreeMap<(String, i32, u64), Vec<&ReportedResult>> = BTreeMap::new();
        for r in &valid {
            let receipt = r.receipt.as_ref().expect("checked above");
            // A run stopped by the wall clock is not deterministic (how far it got depends on
            // the machine), so timeouts agree on the exit alone.
            let key = if receipt.exit == ExitKind::Timeout as i32 {
                (String::new(), receipt.exit, 0)
            } else {
                (receipt.output_hash.clone(), receipt.exit, receipt.fuel_used)
            };
            groups.entry(key).or_default().push(r);
        }
        let winner = groups.iter().find(|(_, members)| {
            members
                .iter()
                .map(|m| m.operator.as_str())
                .collect::<BTreeSet<_>>()
                .len()
                >= needed
        });
        let response = match winner {
            Some((_, members)) => {
                let output_hash = &members[0]
                    .receipt
                    .as_ref()
                    .expect("checked above")
                    .output_hash;
                let accepted: Vec<String> = members.iter().map(|m| m.attempt_id.clone()).collect();
                for r in &valid {
                    if !accepted.contains(&r.attempt_id) {
                        reasons.push(format!("{}: outvoted", r.node_id));
                        rejected.push(r.attempt_id.clone());
                    }
                }
                VerifyResultResponse {
                    task_id: req.task_id.clone(),
                    verdict: Verdict::Verified as i32,
                    reason: match policy.kind() {
                        PolicyKind::Replicate => {
                            format!("{} of {} operators agree", members.len(), policy.replicas)
                        }
                        PolicyKind::Proof => {
                            let p = members[0].proof.as_ref().expect("checked above");
                            if p.links.is_empty() {
                                format!(
                                    "Groth16 proof valid ({} steps, class {})",
                                    p.steps, p.circuit_class
                                )
                            } else {
                                format!(
                                    "Groth16 proofs valid ({} steps in {} chained segments, class {})",
                                    p.steps,
                                    p.links.len() + 1,
                                    p.circuit_class
                                )
                            }
                        }
                        _ => "receipt signature valid".into(),
                    },
                    accepted_attempt_ids: accepted,
                    rejected_attempt_ids: rejected,
                    output_hash: output_hash.clone(),
                }
            }
            None => {
                rejected.extend(valid.iter().map(|r| r.attempt_id.clone()));
                if reasons.is_empty() {
                    reasons.push(format!("no result has the agreement of {needed} operators"));
                }
                VerifyResultResponse {
                    task_id: req.task_id.clone(),
                    verdict: Verdict::Rejected as i32,
                    reason: reasons.join("; "),
                    accepted_attempt_ids: vec![],
                    rejected_attempt_ids: rejected,
                    output_hash: String::new(),
                }
            }
        };
        Ok(response)
    }
}

/// A database error, as the caller sees it (logged once, in [`zkmesh_kit::error::status`]).
fn db_error(e: &sqlx::Error) -> Status {
    zkmesh_kit::error::status("verifier", e)
}

/// An internal failure that is not the database's (logged, hidden from the caller).
fn internal(message: impl Into<String>) -> Status {
    zkmesh_kit::error::status("verifier", &zkmesh_kit::error::Failure::internal(message))
}

fn sha256_hex(bytes: &[u8]) -> String {
    zkmesh_prover::zkvm::sha256_hex(bytes)
}

type KeyStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<KeyChunk, Status>> + Send>>;
type SetupStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<SetupProgress, Status>> + Send>>;

#[tonic::async_trait]
impl VerifierApi for VerifierService {
    type FetchProvingKeyStream = KeyStream;
    type SetupCircuitStream = SetupStream;

    async fn list_circuits(
        &self,
        _req: Request<Empty>,
    ) -> Result<Response<ListCircuitsResponse>, Status> {
        Ok(Response::new(ListCircuitsResponse {
            circuits: self.circuits.list(),
        }))
    }

    async fn get_verifying_key(
        &self,
        req: Request<CircuitRef>,
    ) -> Result<Response<VerifyingKeyData>, Status> {
        let name = req.into_inner().circuit_class;
        let ready = self.ready(&name).await?;
        Ok(Response::new(VerifyingKeyData {
            info: Some(ready.info.clone()),
            verifying_key: ready.vk_bytes.clone(),
        }))
    }

    async fn fetch_proving_key(
        &self,
        req: Request<CircuitRef>,
    ) -> Result<Response<KeyStream>, Status> {
        let name = req.into_inner().circuit_class;
        let ready = self.ready(&name).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut file = match tokio::fs::File::open(&ready.pk_path).await {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.send(Err(internal(format!("proving key: {e}")))).await;
                    return;
                }
            };
            let mut first = true;
            loop {
                let mut buf = vec![0u8; 1 << 20];
                let n = match file.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(internal(format!("proving key: {e}")))).await;
                        return;
                    }
                };
                buf.truncate(n);
                let chunk = KeyChunk {
                    chunk: buf,
                    total_size: if first {
                        ready.info.proving_key_size
                    } else {
                        0
                    },
                    sha256: if first {
                        ready.info.proving_key_sha256.clone()
                    } else {
                        String::new()
                    },
                };
                first = false;
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn setup_circuit(
        &self,
        req: Request<CircuitRef>,
    ) -> Result<Response<SetupStream>, Status> {
        let name = req.into_inner().circuit_class;
        if zkmesh_prover::zkvm::class_named(&name).is_none() {
            return Err(Status::invalid_argument(format!(
                "unknown circuit class {name:?}"
            )));
        }
        let circuits = self.circuits.clone();
        let started = std::time::Instant::now();
        let job = {
            let (circuits, name) = (circuits.clone(), name.clone());
            tokio::task::spawn_blocking(move || circuits.setup(&name))
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut job = job;
            loop {
                tokio::select! {
                    done = &mut job => {
                        let msg = match done {
                            Ok(Ok(ready)) => Ok(SetupProgress {
                                circuit_class: name.clone(),
                                phase: "ready".into(),
                                elapsed_ms: started.elapsed().as_millis() as u64,
                                done: true,
                                info: Some(ready.info.clone()),
                            }),
                            Ok(Err(e)) => Err(Status::failed_precondition(e)),
                            Err(e) => Err(internal(e.to_string())),
                        };
                        let _ = tx.send(msg).await;
                        return;
                    }
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        let phase = circuits.state(&name);
                        let progress = SetupProgress {
                            circuit_class: name.clone(),
                            phase,
                            elapsed_ms: started.elapsed().as_millis() as u64,
                            done: false,
                            info: None,
                        };
                        if tx.send(Ok(progress)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn check_policy(
        &self,
        req: Request<VerificationPolicy>,
    ) -> Result<Response<Empty>, Status> {
        let policy = req.into_inner();
        check_policy(&policy)?;
        if policy.kind() == PolicyKind::Proof && !self.circuits.any_available() {
            return Err(Status::failed_precondition(
                "policy proof needs zkVM circuit keys, and this verifier has none set up \
                 (list classes in its setup_classes, or run `zkmesh circuits setup CLASS`); \
                 use --policy receipt or --policy replicate:K meanwhile",
            ));
        }
        Ok(Response::new(Empty {}))
    }

    async fn verify_result(
        &self,
        req: Request<VerifyResultRequest>,
    ) -> Result<Response<VerifyResultResponse>, Status> {
        let req = req.into_inner();
        let response = self.judge(&req).await?;
        let policy = req.policy.unwrap_or_default().to_string();
        sqlx::query(
            "INSERT INTO verdicts (verdict_id, task_id, policy, verdict, reason, output_hash, accepted, rejected, at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(random_id("v-"))
        .bind(&req.task_id)
        .bind(&policy)
        .bind(Verdict::short_name_of(response.verdict))
        .bind(&response.reason)
        .bind(&response.output_hash)
        .bind(response.accepted_attempt_ids.join(","))
        .bind(response.rejected_attempt_ids.join(","))
        .bind(now_ms())
        .execute(&self.db)
        .await
        .map_err(|e| db_error(&e))?;
        self.verdicts
            .get_or_create(&vec![
                (
                    "policy".into(),
                    policy.split(':').next().unwrap_or("").to_string(),
                ),
                (
                    "verdict".into(),
                    Verdict::short_name_of(response.verdict).into(),
                ),
            ])
            .inc();
        tracing::info!(task_id = %req.task_id, verdict = Verdict::short_name_of(response.verdict), reason = %response.reason, "verdict");
        Ok(Response::new(response))
    }

    async fn get_verdict(
        &self,
        req: Request<TaskRef>,
    ) -> Result<Response<VerifyResultResponse>, Status> {
        let task_id = req.into_inner().task_id;
        let row =
            sqlx::query("SELECT * FROM verdicts WHERE task_id = $1 ORDER BY at_ms DESC LIMIT 1")
                .bind(&task_id)
                .fetch_optional(&self.db)
                .await
                .map_err(|e| db_error(&e))?
                .ok_or_else(|| Status::not_found(format!("no verdict for task {task_id}")))?;
        let list = |s: String| -> Vec<String> {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        };
        let verdict = row
            .get::<String, _>("verdict")
            .parse()
            .unwrap_or(Verdict::Pending);
        Ok(Response::new(VerifyResultResponse {
            task_id,
            verdict: verdict as i32,
            reason: row.get("reason"),
            accepted_attempt_ids: list(row.get("accepted")),
            rejected_attempt_ids: list(row.get("rejected")),
            output_hash: row.get("output_hash"),
        }))
    }
}
