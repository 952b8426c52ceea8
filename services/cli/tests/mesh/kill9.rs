//! Each service killed with SIGKILL and restarted, in turn, while a load runs: the four services
//! run as their own `zkmesh <service> serve` processes (SQLite files, mutual TLS), two workers
//! as `zkmesh worker` processes. A client that retries (with its request ids) gets every task it
//! submitted exactly once; each task ends settled, paid once, its hold closed once; no credit
//! is lost or made; the ledger's audit passes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use zkmesh_client::{ClientConfig, MeshClient};
use zkmesh_proto::*;

const SERVICES: [&str; 4] = ["registry", "ledger", "verifier", "scheduler"];
const TASKS: usize = 30;
const MINT: u64 = 1_000_000_000_000;

/// Calls that failed and were tried again: the kills were felt.
static RETRIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The mesh's processes; all are killed when it is dropped (a failed test leaves none behind).
struct Processes {
    dir: PathBuf,
    ports: HashMap<&'static str, u16>,
    children: HashMap<String, Child>,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port for a service: the kernel picks it (127.0.0.1:0), the service binds it, and binds it
/// again after a restart, so that its clients' endpoints stay true.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Processes {
    fn endpoint(&self, service: &str) -> String {
        format!("https://127.0.0.1:{}", self.ports[service])
    }

    /// Writes each service's config file.
    fn write_configs(&self, verifier_public: &str) {
        let d = self.dir.display();
        for service in SERVICES {
            let own = match service {
                "registry" => format!(
                    "ca_dir = \"{d}/registry-ca\"\nheartbeat_timeout_secs = 10\n\
                     node_certificate_lifetime_secs = 86400\ndefault_node_slots = 2\n"
                ),
                "ledger" => format!(
                    "key_file = \"{d}/ledger.key\"\nregistry_endpoint = \"{}\"\n\
                     verifier_keys = [\"{verifier_public}\"]\n",
                    self.endpoint("registry")
                ),
                "verifier" => format!(
                    "key_file = \"{d}/verifier.key\"\nregistry_endpoint = \"{}\"\n\
                     keys_dir = \"{d}/keys\"\nsetup_classes = []\n",
                    self.endpoint("registry")
                ),
                _ => format!(
                    "registry_endpoint = \"{}\"\nledger_endpoint = \"{}\"\n\
                     verifier_endpoint = \"{}\"\nlease_secs = 3\nmax_attempts = 10\n\
                     spot_check_rate = 0.0\n",
                    self.endpoint("registry"),
                    self.endpoint("ledger"),
                    self.endpoint("verifier")
                ),
            };
            let text = format!(
                "{own}\n[server]\nlisten = \"127.0.0.1:{}\"\ndatabase_url = \"sqlite://{d}/{service}.db\"\n\
                 grace_secs = 1\n\n[server.tls]\nca = \"{d}/ca/ca.crt\"\ncert = \"{d}/certs/{service}.crt\"\n\
                 key = \"{d}/certs/{service}.key\"\n",
                self.ports[service]
            );
            std::fs::write(self.dir.join(format!("{service}.toml")), text).unwrap();
        }
    }

    fn log(&self, name: &str) -> Stdio {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .unwrap()
            .into()
    }

    fn spawn(&mut self, service: &str) {
        let config = self.dir.join(format!("{service}.toml"));
        let child = Command::new(env!("CARGO_BIN_EXE_zkmesh"))
            .args([service, "serve", "--config"])
            .arg(&config)
            .env("ZKMESH_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(self.log(service))
            .spawn()
            .unwrap();
        self.children.insert(service.to_string(), child);
    }

    fn spawn_worker(&mut self, name: &str, token: &str) {
        let d = &self.dir;
        let child = Command::new(env!("CARGO_BIN_EXE_zkmesh"))
            .arg("worker")
            .env("ZKMESH_WORKER_DATA_DIR", d.join(name))
            .env("ZKMESH_WORKER_REGISTRY_ENDPOINT", self.endpoint("registry"))
            .env(
                "ZKMESH_WORKER_SCHEDULER_ENDPOINT",
                self.endpoint("scheduler"),
            )
            .env("ZKMESH_WORKER_CA_CERT", d.join("ca/ca.crt"))
            .env("ZKMESH_WORKER_JOIN_TOKEN", token)
            .env("ZKMESH_WORKER_NAME", name)
            .env("ZKMESH_WORKER_SLOTS", "2")
            .env("ZKMESH_WORKER_HEARTBEAT_SECS", "1")
            .env("ZKMESH_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(self.log(name))
            .spawn()
            .unwrap();
        self.children.insert(name.to_string(), child);
    }

    /// SIGKILL: no drain, no shutdown hook.
    fn kill(&mut self, name: &str) {
        let mut child = self.children.remove(name).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Waits until `service` answers its health check with SERVING.
    async fn wait_healthy(&self, service: &str) {
        let ca = std::fs::read_to_string(self.dir.join("ca/ca.crt")).unwrap();
        let anonymous = zkmesh_kit::client::ClientTls { ca, identity: None };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ch =
                zkmesh_kit::client::channel(&self.endpoint(service), &anonymous, service).unwrap();
            let answer = tonic_health::pb::health_client::HealthClient::new(ch)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await;
            if answer.is_ok_and(|a| a.into_inner().status == ServingStatus::Serving as i32) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{service} is not healthy: {}",
            std::fs::read_to_string(self.dir.join(format!("{service}.log"))).unwrap_or_default()
        );
    }
}

/// Retries `call` until it succeeds (a service is being restarted), for at most a minute.
async fn retried<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match call().await {
            Ok(v) => return v,
            Err(_) if Instant::now() < deadline => {
                RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_ends_once_while_services_are_killed_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    zkmesh_client::mesh::ensure_pki(dir.path(), "alice").unwrap();
    let verifier_key =
        zkmesh_kit::signing_key::load_or_create_key(&dir.path().join("verifier.key")).unwrap();
    let verifier_public = hex::encode(verifier_key.verifying_key().to_bytes());
    let mut mesh = Processes {
        dir: dir.path().to_path_buf(),
        ports: SERVICES.iter().map(|s| (*s, free_port())).collect(),
        children: HashMap::new(),
    };
    mesh.write_configs(&verifier_public);
    for service in SERVICES {
        mesh.spawn(service);
        mesh.wait_healthy(service).await;
    }
    let ledger_public = zkmesh_kit::signing_key::public_hex(
        &std::fs::read_to_string(dir.path().join("ledger.key")).unwrap(),
    )
    .unwrap();
    let d = dir.path();
    let config = ClientConfig {
        registry: mesh.endpoint("registry"),
        scheduler: mesh.endpoint("scheduler"),
        ledger: mesh.endpoint("ledger"),
        verifier: mesh.endpoint("verifier"),
        ca: d.join("ca/ca.crt"),
        cert: d.join("certs/user.crt"),
        key: d.join("certs/user.key"),
        admin_cert: Some(d.join("certs/admin.crt")),
        admin_key: Some(d.join("certs/admin.key")),
        ledger_public_key: Some(ledger_public),
        verifier_public_key: Some(verifier_public),
    };
    let api = MeshClient::connect(&config).unwrap();
    api.wait_until_current(Duration::from_secs(20))
        .await
        .unwrap();
    retried("mint", || {
        let mut ledger = api.admin_ledger().unwrap();
        async move {
            ledger
                .mint(MintRequest {
                    account: "user/alice".into(),
                    amount: MINT,
                    request_id: "kill9-mint".into(),
                })
                .await
        }
    })
    .await;
    for (name, operator) in [("w1", "op-one"), ("w2", "op-two")] {
        let token = api
            .admin_registry()
            .unwrap()
            .create_join_token(CreateJoinTokenRequest {
                operator: operator.into(),
                pre_approved: true,
                max_uses: 1,
                ttl_secs: 600,
                slots: 2,
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        mesh.spawn_worker(name, &token);
    }
    wait_for_two_workers(&api).await;

    let sha = zkmesh_guests::get("sha256").unwrap();
    let module = retried("upload", || {
        let mut s = api.scheduler().unwrap();
        async move { zkmesh_client::upload(&mut s, "sha256", sha.wasm).await }
    })
    .await
    .module_hash;
    // The load: tasks submitted and followed by a client that retries with its request ids.
    let load = {
        let api = MeshClient::connect(&config).unwrap();
        let module = module.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..TASKS)
                .map(|i| {
                    let (api, module) = (&api, module.clone());
                    async move {
                        tokio::time::sleep(Duration::from_millis(150 * i as u64)).await;
                        let input = format!("kill -9 #{i}");
                        let task = retried("submit", || {
                            let mut s = api.scheduler().unwrap();
                            let request = SubmitTaskRequest {
                                module_hash: module.clone(),
                                input: input.clone().into_bytes(),
                                policy: Some(VerificationPolicy {
                                    kind: PolicyKind::Receipt as i32,
                                    replicas: 0,
                                }),
                                request_id: format!("kill9-{i}"),
                                ..Default::default()
                            };
                            async move { s.submit_task(request).await }
                        })
                        .await
                        .into_inner()
                        .task
                        .unwrap();
                        let result = retried("wait", || {
                            let mut s = api.scheduler().unwrap();
                            let id = task.task_id.clone();
                            async move { zkmesh_client::wait(&mut s, &id, |_| {}).await }
                        })
                        .await;
                        (input, task.task_id, result)
                    }
                })
                .buffer_unordered(TASKS)
                .collect::<Vec<_>>()
                .await
        })
    };
    // Kill each service in turn (the scheduler twice) while the load runs.
    for service in ["scheduler", "ledger", "verifier", "registry", "scheduler"] {
        tokio::time::sleep(Duration::from_millis(800)).await;
        mesh.kill(service);
        tokio::time::sleep(Duration::from_millis(300)).await;
        mesh.spawn(service);
        mesh.wait_healthy(service).await;
    }
    let results = tokio::time::timeout(Duration::from_secs(180), load)
        .await
        .expect("the load ends within three minutes")
        .unwrap();

    assert!(
        RETRIES.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "no call of the load met a killed service"
    );
    // Every task ended settled with its output, exactly one task per request id.
    assert_eq!(results.len(), TASKS);
    let mut charged = 0;
    for (input, task_id, result) in &results {
        assert_eq!(result.state(), TaskState::Settled, "{task_id}: {result:?}");
        assert_eq!(
            result.output,
            zkmesh_guests::reference_output("sha256", input.as_bytes()).unwrap()
        );
        charged += result.credits_charged;
        // Paid once, held once, its hold closed once.
        let entries = retried("history", || {
            let mut ledger = api.admin_ledger().unwrap();
            let task_id = task_id.clone();
            async move {
                ledger
                    .history(HistoryRequest {
                        task_id,
                        ..Default::default()
                    })
                    .await
            }
        })
        .await
        .into_inner()
        .entries;
        let count = |k: &str| {
            entries
                .iter()
                .filter(|e| JournalEntryKind::short_name_of(e.kind) == k)
                .count()
        };
        assert_eq!(
            (count("hold"), count("pay"), count("refund")),
            (1, 1, 1),
            "{task_id}: {entries:?}"
        );
    }
    let listed = api
        .scheduler()
        .unwrap()
        .list_tasks(ListTasksRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(
        listed.len(),
        TASKS,
        "a retried submission made a second task"
    );
    // No credit lost or made: what the user paid is what the operators hold.
    let balance = |account: &'static str| {
        let api = &api;
        async move {
            api.admin_ledger()
                .unwrap()
                .get_balance(GetBalanceRequest {
                    account: account.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .account
                .map_or(0, |a| a.balance)
        }
    };
    assert_eq!(balance("user/alice").await, MINT - charged);
    assert_eq!(
        balance("operator/op-one").await + balance("operator/op-two").await,
        charged
    );
    let report = zkmesh_client::audit(&api).await.expect("the audit passes");
    assert!(report.entries > 0);
    drop(mesh);
}

async fn wait_for_two_workers(api: &MeshClient) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let workers = zkmesh_kit::lists::all_workers(&api.admin_scheduler().unwrap()).await;
        if workers.is_ok_and(|w| w.len() == 2) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the workers did not connect");
}
