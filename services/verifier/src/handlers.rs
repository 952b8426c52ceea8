//! The gRPC handlers: each verifier RPC on top of the [`Checker`] and the circuits.

use std::time::Duration;

use sqlx::Row;
use tonic::{Request, Response, Status};
use zkmesh_kit::error::{reasons, refusal};
use zkmesh_kit::paging::Page;
use zkmesh_kit::{now_ms, random_id};
use zkmesh_proto::verifier_service_server::VerifierService as VerifierApi;
use zkmesh_proto::*;

use crate::checker::Checker;
use crate::error::{db_error, internal};
use crate::policy::check_policy;

pub(crate) type KeyStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<FetchProvingKeyResponse, Status>> + Send>,
>;
pub(crate) type SetupStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<SetupCircuitResponse, Status>> + Send>,
>;

/// The verifier's gRPC service: the [`Checker`] behind the access rules.
pub struct VerifierService {
    pub(crate) checker: Checker,
}

#[tonic::async_trait]
impl VerifierApi for VerifierService {
    type FetchProvingKeyStream = KeyStream;
    type SetupCircuitStream = SetupStream;

    async fn list_circuits(
        &self,
        req: Request<ListCircuitsRequest>,
    ) -> Result<Response<ListCircuitsResponse>, Status> {
        let req = req.into_inner();
        let page = Page::of(req.page_size, &req.page_token, 100, 1000)?;
        let mut all = self.checker.circuits.list();
        all.sort_by(|a, b| a.circuit_class.cmp(&b.circuit_class));
        let (circuits, next_page_token) = page.slice(&all, |c| c.circuit_class.clone());
        Ok(Response::new(ListCircuitsResponse {
            circuits,
            next_page_token,
        }))
    }

    async fn get_verifying_key(
        &self,
        req: Request<GetVerifyingKeyRequest>,
    ) -> Result<Response<GetVerifyingKeyResponse>, Status> {
        let name = req.into_inner().circuit_class;
        let ready = self.checker.ready(&name).await?;
        Ok(Response::new(GetVerifyingKeyResponse {
            info: Some(ready.info.clone()),
            verifying_key: ready.vk_bytes.clone(),
        }))
    }

    async fn fetch_proving_key(
        &self,
        req: Request<FetchProvingKeyRequest>,
    ) -> Result<Response<KeyStream>, Status> {
        let name = req.into_inner().circuit_class;
        let ready = self.checker.ready(&name).await?;
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
                let chunk = FetchProvingKeyResponse {
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
        req: Request<SetupCircuitRequest>,
    ) -> Result<Response<SetupStream>, Status> {
        let name = req.into_inner().circuit_class;
        if zkmesh_prover::zkvm::class_named(&name).is_none() {
            return Err(Status::invalid_argument(format!(
                "unknown circuit class {name:?}"
            )));
        }
        let circuits = self.checker.circuits.clone();
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
                            Ok(Ok(ready)) => Ok(SetupCircuitResponse {
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
                        let progress = SetupCircuitResponse {
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
        req: Request<CheckPolicyRequest>,
    ) -> Result<Response<CheckPolicyResponse>, Status> {
        let policy = req.into_inner().policy.unwrap_or_default();
        check_policy(&policy)?;
        if policy.kind() == PolicyKind::Proof && !self.checker.circuits.any_available() {
            return Err(refusal(
                tonic::Code::FailedPrecondition,
                reasons::POLICY_UNAVAILABLE,
                "policy proof needs zkVM circuit keys, and this verifier has none set up \
                 (list classes in its setup_classes, or run `zkmesh circuits setup CLASS`); \
                 use --policy receipt or --policy replicate:K meanwhile",
            ));
        }
        Ok(Response::new(CheckPolicyResponse {}))
    }

    async fn verify_result(
        &self,
        req: Request<VerifyResultRequest>,
    ) -> Result<Response<VerifyResultResponse>, Status> {
        let req = req.into_inner();
        let response = self.checker.judge(&req).await?;
        let policy = req.policy.unwrap_or_default().to_string();
        sqlx::query(
            "INSERT INTO verdicts (verdict_id, task_id, policy, verdict, reason, output_hash, accepted, rejected, at_ms, settlement) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
        .bind(
            response
                .settlement
                .as_ref()
                .map(prost::Message::encode_to_vec),
        )
        .execute(&self.checker.db)
        .await
        .map_err(|e| db_error(&e))?;
        self.checker
            .verdicts
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
        Ok(Response::new(VerifyResultResponse {
            verdict: Some(response),
        }))
    }

    async fn get_verdict(
        &self,
        req: Request<GetVerdictRequest>,
    ) -> Result<Response<GetVerdictResponse>, Status> {
        let task_id = req.into_inner().task_id;
        let row =
            sqlx::query("SELECT * FROM verdicts WHERE task_id = $1 ORDER BY at_ms DESC LIMIT 1")
                .bind(&task_id)
                .fetch_optional(&self.checker.db)
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
        Ok(Response::new(GetVerdictResponse {
            verdict: Some(TaskVerdict {
                task_id,
                verdict: verdict as i32,
                reason: row.get("reason"),
                accepted_attempt_ids: list(row.get("accepted")),
                rejected_attempt_ids: list(row.get("rejected")),
                output_hash: row.get("output_hash"),
                settlement: row
                    .get::<Option<Vec<u8>>, _>("settlement")
                    .and_then(|b| prost::Message::decode(b.as_slice()).ok()),
                // What VerifyResult answered the scheduler with; not kept with the verdict.
                spot_checks: 0,
            }),
        }))
    }

    async fn get_verifier_key(
        &self,
        _req: Request<GetVerifierKeyRequest>,
    ) -> Result<Response<GetVerifierKeyResponse>, Status> {
        Ok(Response::new(GetVerifierKeyResponse {
            public_key: self.checker.key.verifying_key().to_bytes().to_vec(),
        }))
    }
}
