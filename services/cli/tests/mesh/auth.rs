//! Callers with no certificate, a certificate from another CA, the wrong role, or a revoked
//! node certificate are refused with UNAUTHENTICATED or PERMISSION_DENIED, and nothing changes
//! in any database.

use std::time::Duration;

use tonic::Code;
use tonic::transport::Channel;
use zkmesh_kit::ca::MeshCa;
use zkmesh_kit::client::{ClientTls, channel};
use zkmesh_kit::identity::{Identity, Role};
use zkmesh_proto::ledger_service_client::LedgerServiceClient;
use zkmesh_proto::registry_service_client::RegistryServiceClient;
use zkmesh_proto::scheduler_service_client::SchedulerServiceClient;
use zkmesh_proto::*;

use crate::support::*;

struct As {
    registry: RegistryServiceClient<Channel>,
    scheduler: SchedulerServiceClient<Channel>,
    ledger: LedgerServiceClient<Channel>,
}

fn as_caller(sb: &Sandbox, tls: &ClientTls) -> As {
    let c = &sb.mesh.client;
    As {
        registry: RegistryServiceClient::new(channel(&c.registry, tls, "registry").unwrap()),
        scheduler: SchedulerServiceClient::new(channel(&c.scheduler, tls, "scheduler").unwrap()),
        ledger: LedgerServiceClient::new(channel(&c.ledger, tls, "ledger").unwrap()),
    }
}

/// Every row of every service's database, minus heartbeat times.
async fn snapshot(sb: &Sandbox) -> Vec<String> {
    let mut all = Vec::new();
    for name in ["registry", "scheduler", "ledger", "verifier"] {
        let url = format!(
            "sqlite://{}",
            sb.mesh.dir.join(format!("{name}.db")).display()
        );
        let pool = zkmesh_kit::db::connect(&url).await.unwrap();
        let rows = zkmesh_kit::db::snapshot(&pool, &["last_heartbeat_at_ms"])
            .await
            .unwrap();
        all.extend(rows.into_iter().map(|r| format!("{name}.{r}")));
        pool.close().await;
    }
    all
}

/// Each state-changing call a caller might try; returns the status codes it got.
async fn attempt_everything(
    who: &mut As,
    node_id: &str,
    module_hash: &str,
) -> Vec<(&'static str, Code)> {
    let mut codes = Vec::new();
    let submit = SubmitTaskRequest {
        module_hash: module_hash.to_string(),
        input: b"x".to_vec(),
        policy: Some(policy("receipt")),
        ..Default::default()
    };
    let code =
        |r: Result<_, tonic::Status>| r.err().map(|e: tonic::Status| e.code()).unwrap_or(Code::Ok);
    codes.push((
        "submit",
        code(who.scheduler.submit_task(submit).await.map(|_| ())),
    ));
    codes.push((
        "upload",
        code(
            zkmesh_client::upload(
                &mut who.scheduler,
                "x",
                zkmesh_guests::get("sha256").unwrap().wasm,
            )
            .await
            .map(|_| ()),
        ),
    ));
    codes.push((
        "mint",
        code(
            who.ledger
                .mint(MintRequest {
                    request_id: String::new(),
                    account: "user/mallory".into(),
                    amount: 5,
                })
                .await
                .map(|_| ()),
        ),
    ));
    codes.push((
        "capture",
        code(
            who.ledger
                .capture(CaptureRequest {
                    task_id: "t-x".into(),
                    settlement: None,
                })
                .await
                .map(|_| ()),
        ),
    ));
    codes.push((
        "approve",
        code(
            who.registry
                .approve_node(ApproveNodeRequest {
                    node_id: node_id.into(),
                    slots: 0,
                    operator: String::new(),
                })
                .await
                .map(|_| ()),
        ),
    ));
    codes.push((
        "revoke",
        code(
            who.registry
                .revoke_node(RevokeNodeRequest {
                    node_id: node_id.into(),
                })
                .await
                .map(|_| ()),
        ),
    ));
    codes.push((
        "token",
        code(
            who.registry
                .create_join_token(CreateJoinTokenRequest {
                    pre_approved: true,
                    ttl_secs: 60,
                    max_uses: 1,
                    operator: "operator-x".into(),
                    slots: 0,
                })
                .await
                .map(|_| ()),
        ),
    ));
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_callers_change_nothing() {
    let sb = start(1).await;
    let ca_pem = std::fs::read_to_string(&sb.mesh.client.ca).unwrap();
    let node_id = sb.mesh.workers[0].0.node_id.clone();
    let sha = zkmesh_guests::get("sha256").unwrap();
    let module = zkmesh_client::upload(&mut sb.api.scheduler().unwrap(), "sha", sha.wasm)
        .await
        .unwrap();
    let before = snapshot(&sb).await;

    // No client certificate at all.
    let anonymous = ClientTls {
        ca: ca_pem.clone(),
        identity: None,
    };
    for (call, code) in attempt_everything(
        &mut as_caller(&sb, &anonymous),
        &node_id,
        &module.module_hash,
    )
    .await
    {
        assert_eq!(code, Code::Unauthenticated, "anonymous {call}");
    }

    // A certificate for the same mesh name, from another CA.
    let foreign_ca = MeshCa::generate("local").unwrap();
    let forged = foreign_ca
        .issue(
            &Identity::new("local", Role::Admin, "admin"),
            &[],
            Duration::from_secs(600),
        )
        .unwrap();
    let foreign = ClientTls {
        ca: ca_pem.clone(),
        identity: Some((forged.cert_pem, forged.key_pem)),
    };
    for (call, code) in
        attempt_everything(&mut as_caller(&sb, &foreign), &node_id, &module.module_hash).await
    {
        assert_eq!(code, Code::Unauthenticated, "foreign CA {call}");
    }

    // The wrong role: a node may not submit, mint or approve; a user may not mint or approve.
    let node_dir = sb.mesh.dir.join("workers/worker-1");
    let node_tls = ClientTls {
        ca: ca_pem.clone(),
        identity: Some((
            std::fs::read_to_string(node_dir.join("tls.crt")).unwrap(),
            std::fs::read_to_string(node_dir.join("tls.key")).unwrap(),
        )),
    };
    for (call, code) in attempt_everything(
        &mut as_caller(&sb, &node_tls),
        &node_id,
        &module.module_hash,
    )
    .await
    {
        assert_eq!(code, Code::PermissionDenied, "node {call}");
    }
    let user_tls = ClientTls {
        ca: ca_pem.clone(),
        identity: Some((
            std::fs::read_to_string(&sb.mesh.client.cert).unwrap(),
            std::fs::read_to_string(&sb.mesh.client.key).unwrap(),
        )),
    };
    // (The user may upload and submit: an already-present module and a missing one leave
    // nothing to change.)
    let missing = "00".repeat(32);
    for (call, code) in attempt_everything(&mut as_caller(&sb, &user_tls), &node_id, &missing).await
    {
        let expected = match call {
            "upload" => Code::Ok,
            "submit" => Code::NotFound,
            _ => Code::PermissionDenied,
        };
        assert_eq!(code, expected, "user {call}");
    }
    // A user cannot read another account either.
    let err = as_caller(&sb, &user_tls)
        .ledger
        .get_balance(GetBalanceRequest {
            account: "operator/operator-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        snapshot(&sb).await,
        before,
        "a refused call changed a database"
    );

    // A revoked node is refused everywhere within seconds.
    sb.api
        .admin_registry()
        .unwrap()
        .revoke_node(RevokeNodeRequest {
            node_id: node_id.clone(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let revoked_snapshot = snapshot(&sb).await;
    let mut node = as_caller(&sb, &node_tls);
    let heartbeat = node
        .registry
        .heartbeat(HeartbeatRequest { running_tasks: 0 })
        .await
        .unwrap_err();
    assert_eq!(heartbeat.code(), Code::PermissionDenied);
    let key = node
        .ledger
        .get_ledger_key(GetLedgerKeyRequest {})
        .await
        .unwrap_err();
    assert_eq!(key.code(), Code::PermissionDenied);
    let fetch = node
        .scheduler
        .fetch_module(FetchModuleRequest {
            module_hash: module.module_hash.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(fetch.code(), Code::PermissionDenied);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WorkRequest {
        kind: Some(work_request::Kind::Hello(WorkerHello {
            slots: 1,
            version: "t".into(),
        })),
    })
    .await
    .unwrap();
    let work = node
        .scheduler
        .work(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(work.code(), Code::PermissionDenied);
    assert_eq!(
        snapshot(&sb).await,
        revoked_snapshot,
        "a revoked node changed a database"
    );
    assert_audit_passes(&sb.api).await;
    sb.mesh.stop().await;
}

/// The CLI tells a refusal (exit 2: here a user's certificate where an admin's is needed) from
/// a mesh it cannot reach (exit 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exits_2_when_refused_and_3_when_the_mesh_is_unreachable() {
    let sb = start(0).await;
    let cli = |config: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_zkmesh"))
            .args(["--mesh", config.to_str().unwrap()])
            .args(["ledger", "mint", "user/someone", "5"])
            .output()
            .unwrap()
    };
    let mut user_as_admin = sb.mesh.client.clone();
    user_as_admin.admin_cert = Some(user_as_admin.cert.clone());
    user_as_admin.admin_key = Some(user_as_admin.key.clone());
    let config = sb.mesh.dir.join("user-as-admin.toml");
    user_as_admin.save(&config).unwrap();
    let out = cli(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("PermissionDenied"), "{stderr}");

    let mut gone = sb.mesh.client.clone();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    gone.ledger = format!("https://127.0.0.1:{port}");
    let config = sb.mesh.dir.join("gone.toml");
    gone.save(&config).unwrap();
    let out = cli(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
}
