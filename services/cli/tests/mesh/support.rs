//! A sandbox per test: an embedded mesh in a temporary directory, and helpers to run tasks.

use std::time::Duration;

use tempfile::TempDir;
use tonic::transport::Channel;
use zkmesh_client::mesh::{LocalMesh, MeshOptions};
use zkmesh_client::{MeshClient, audit, upload, wait};
use zkmesh_proto::scheduler_service_client::SchedulerServiceClient;
use zkmesh_proto::*;

pub struct Sandbox {
    pub mesh: LocalMesh,
    pub api: MeshClient,
    // Last, so the directory outlives the services using it.
    _dir: TempDir,
}

pub async fn start(workers: usize) -> Sandbox {
    start_with(workers, |_| {}).await
}

/// Circuit keys for every test (content-addressed, so tests share them, and a class is set up
/// once per machine rather than once per test).
pub fn test_keys_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("zkmesh-test-keys")
}

/// A mesh whose verifier has circuit class `class` ready.
pub async fn start_proving(workers: usize, class: &str) -> Sandbox {
    let sb = start_with(workers, |o| {
        o.keys_dir = test_keys_dir();
        o.setup_classes = vec![class.to_string()];
    })
    .await;
    tokio::time::timeout(
        Duration::from_secs(600),
        sb.api.wait_for_circuit(class, true),
    )
    .await
    .expect("circuit setup within 10 minutes")
    .unwrap();
    sb
}

pub async fn start_with(workers: usize, tune: impl FnOnce(&mut MeshOptions)) -> Sandbox {
    let dir = tempfile::tempdir().unwrap();
    let mut options = MeshOptions::new(dir.path());
    options.workers = workers;
    // Keys of this mesh only (start_proving shares the tests' own directory): a verifier loads
    // every class it finds, so keys in the user's cache would change what a test sees.
    options.keys_dir = dir.path().join("keys");
    // No spot checks unless a test asks for them: which results are checked is random.
    options.spot_check_rate = Some(0.0);
    tune(&mut options);
    options.lease_secs = 3;
    options.heartbeat_secs = 1;
    let mesh = LocalMesh::start(options).await.expect("mesh starts");
    mesh.wait_for_workers(workers, Duration::from_secs(20))
        .await
        .unwrap();
    let api = MeshClient::connect(&mesh.client).unwrap();
    Sandbox {
        mesh,
        api,
        _dir: dir,
    }
}

pub fn policy(s: &str) -> VerificationPolicy {
    zkmesh_cli::commands::parse_policy(s).unwrap()
}

#[derive(Clone, Copy)]
pub struct Job<'a> {
    pub wasm: &'a [u8],
    pub input: &'a [u8],
    pub policy: &'a str,
    pub fuel: u64,
    pub memory_mib: u32,
    pub timeout_secs: u32,
}

impl<'a> Job<'a> {
    pub fn new(wasm: &'a [u8], input: &'a [u8]) -> Job<'a> {
        Job {
            wasm,
            input,
            policy: "receipt",
            fuel: 0,
            memory_mib: 0,
            timeout_secs: 0,
        }
    }
}

pub async fn submit(
    s: &mut SchedulerServiceClient<Channel>,
    job: &Job<'_>,
) -> Result<Task, tonic::Status> {
    let module = upload(s, "test", job.wasm).await?;
    s.submit_task(SubmitTaskRequest {
        module_hash: module.module_hash,
        input: job.input.to_vec(),
        fuel_limit: job.fuel,
        memory_limit_mib: job.memory_mib,
        timeout_secs: job.timeout_secs,
        policy: Some(policy(job.policy)),
        request_id: String::new(),
    })
    .await?
    .into_inner()
    .task
    .ok_or_else(|| tonic::Status::internal("no task in the answer"))
}

/// Submits and waits (at most three minutes: the tests that prove share the two cores) for the
/// end of the task.
pub async fn run(api: &MeshClient, job: &Job<'_>) -> Result<(Task, TaskResult), tonic::Status> {
    let mut s = api.scheduler().unwrap();
    let task = submit(&mut s, job).await?;
    let result = tokio::time::timeout(
        Duration::from_secs(180),
        wait(&mut s, &task.task_id, |_| {}),
    )
    .await
    .expect("task ends within three minutes")?;
    let task = zkmesh_client::task(&mut s, &task.task_id).await?;
    Ok((task, result))
}

pub fn assert_verified(result: &TaskResult, expected_output: &[u8]) {
    assert_eq!(result.state(), TaskState::Settled, "{result:?}");
    assert_eq!(result.exit(), ExitKind::Ok, "{}", result.exit_message);
    assert_eq!(
        result.verdict(),
        Verdict::Verified,
        "{}",
        result.verdict_reason
    );
    assert_eq!(
        String::from_utf8_lossy(&result.output),
        String::from_utf8_lossy(expected_output)
    );
    assert_eq!(result.output_hash, zkmesh_kit::sha256_hex(&result.output));
}

pub async fn assert_audit_passes(api: &MeshClient) {
    let report = audit(api).await.expect("ledger audit passes");
    assert!(report.entries > 0);
}

/// Every event of a task that has ended, in order (`WatchTask` replays them and then closes).
pub async fn history(s: &mut SchedulerServiceClient<Channel>, task_id: &str) -> Vec<TaskEvent> {
    history_after(s, task_id, 0).await
}

/// A task's event stream, after the event numbered `after_seq` (0: from the first).
pub async fn watch(
    s: &mut SchedulerServiceClient<Channel>,
    task_id: &str,
    after_seq: u64,
) -> tonic::Streaming<WatchTaskResponse> {
    s.watch_task(WatchTaskRequest {
        task_id: task_id.to_string(),
        after_seq,
    })
    .await
    .unwrap()
    .into_inner()
}

/// The events of a task that has ended after the one numbered `after_seq` (a resumed watch).
pub async fn history_after(
    s: &mut SchedulerServiceClient<Channel>,
    task_id: &str,
    after_seq: u64,
) -> Vec<TaskEvent> {
    let mut stream = watch(s, task_id, after_seq).await;
    let mut events = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        events.push(e.event.expect("every message carries an event"));
    }
    events
}

/// A plain HTTP GET on loopback, to read a service's Prometheus metrics.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or(text))
}

/// One more ledger process beside the mesh's, with its own database and keys under `stem`, the
/// TLS files `tls`, following the registry at `registry` (attack tests serve as one).
pub async fn another_ledger(
    stem: &std::path::Path,
    tls: zkmesh_kit::config::TlsFiles,
    registry: String,
    verifier_key: String,
    max_revocation_age_secs: u64,
    shutdown: &zkmesh_kit::CancellationToken,
) -> zkmesh_kit::server::Serving {
    zkmesh_ledger::start(
        zkmesh_ledger::LedgerConfig {
            server: zkmesh_kit::config::ServerConfig {
                listen: Some("127.0.0.1:0".into()),
                metrics_listen: None,
                database_url: format!("sqlite://{}.db", stem.display()),
                grace_secs: 1,
                tls,
                max_revocation_age_secs,
                limits: Default::default(),
            },
            key_file: std::path::PathBuf::from(format!("{}-journal.key", stem.display())),
            registry_endpoint: registry,
            verifier_keys: vec![verifier_key],
        },
        shutdown.clone(),
    )
    .await
    .unwrap()
}
