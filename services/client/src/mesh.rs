//! An embedded mesh: the four services and some workers in this process, on loopback ports,
//! over real mutual TLS, with their state in a data directory. `zkmesh run` uses a temporary
//! one, `zkmesh dev` a persistent one, and the integration tests one per test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use zkmesh_kit::CancellationToken;
use zkmesh_kit::ca::MeshCa;
use zkmesh_kit::config::{ServerConfig, TlsFiles};
use zkmesh_kit::identity::{Identity, Role};
use zkmesh_kit::lists::{all_nodes, all_workers};
use zkmesh_kit::server::Serving;
use zkmesh_proto::*;
use zkmesh_worker::{WorkerConfig, WorkerHandle};

use crate::{ClientConfig, MeshClient};

/// Micro-credits minted for the embedded mesh's user.
pub const DEFAULT_MINT: u64 = 1_000_000_000_000;

/// How to lay out an embedded mesh.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    pub dir: PathBuf,
    pub workers: usize,
    pub worker_slots: u32,
    /// Listen addresses of registry, scheduler, ledger and verifier; `127.0.0.1:0` picks ports.
    pub listen: [String; 4],
    /// Expose Prometheus metrics for each service on a loopback port.
    pub metrics: bool,
    pub lease_secs: u32,
    pub heartbeat_secs: u64,
    pub user: String,
    pub mint: u64,
    /// Lifetime of the node certificates the registry signs.
    pub node_certificate_lifetime_secs: u64,
    /// Circuit keys, shared by the verifier and the workers (content-addressed, so meshes may
    /// share one directory and set each class up once).
    pub keys_dir: PathBuf,
    /// Circuit classes the verifier sets up at start (none: the proof policy is refused).
    pub setup_classes: Vec<String>,
    /// Upload and workers refuse a module that takes longer than this to compile.
    pub compile_timeout_secs: u64,
    /// Each worker's guest memory budget in MiB (0: three quarters of the machine's RAM).
    pub worker_memory_budget_mib: u64,
    /// More scheduler settings (`key`, integer value), as in its config file.
    pub scheduler_settings: Vec<(String, i64)>,
    /// The scheduler's share of receipt-policy results spot-checked (None: its default).
    pub spot_check_rate: Option<f64>,
    /// Every service's caps on connections, handshakes, streams and calls.
    pub limits: zkmesh_kit::admission::Limits,
}

/// Where embedded meshes keep circuit keys: `$ZKMESH_KEYS_DIR`, else the user's cache.
pub fn default_keys_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ZKMESH_KEYS_DIR") {
        return d.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("zkmesh").join("keys")
}

impl MeshOptions {
    pub fn new(dir: &Path) -> MeshOptions {
        MeshOptions {
            dir: dir.to_path_buf(),
            workers: 2,
            worker_slots: 2,
            listen: std::array::from_fn(|_| "127.0.0.1:0".to_string()),
            metrics: true,
            lease_secs: 10,
            heartbeat_secs: 2,
            user: "alice".into(),
            mint: DEFAULT_MINT,
            node_certificate_lifetime_secs: 24 * 3600,
            keys_dir: default_keys_dir(),
            setup_classes: vec![],
            compile_timeout_secs: 20,
            worker_memory_budget_mib: 0,
            scheduler_settings: Vec::new(),
            spot_check_rate: None,
            limits: Default::default(),
        }
    }
}

/// A running embedded mesh.
pub struct LocalMesh {
    pub dir: PathBuf,
    pub client: ClientConfig,
    pub registry: Serving,
    pub scheduler: Serving,
    pub ledger: Serving,
    pub verifier: Serving,
    pub workers: Vec<(WorkerHandle, CancellationToken)>,
    pub options: MeshOptions,
    shutdown: CancellationToken,
}

fn tls_files(dir: &Path, stem: &str) -> TlsFiles {
    TlsFiles {
        ca: dir.join("ca/ca.crt"),
        cert: dir.join(format!("certs/{stem}.crt")),
        key: dir.join(format!("certs/{stem}.key")),
    }
}

/// Creates the CA and every certificate the embedded mesh needs, unless they exist.
pub fn ensure_pki(dir: &Path, user: &str) -> anyhow::Result<MeshCa> {
    let ca_dir = dir.join("ca");
    let ca = if ca_dir.join("ca.key").exists() {
        MeshCa::load(&ca_dir)?
    } else {
        let ca = MeshCa::generate("local")?;
        ca.save(&ca_dir)?;
        ca
    };
    // The registry signs nodes with a node issuer of its own, not with the root key (a mesh
    // made before node issuers existed keeps its registry on the root).
    let issuer_dir = dir.join("registry-ca");
    if !issuer_dir.join("issuer.key").exists() {
        match ca.node_issuer(Duration::from_secs(5 * 365 * 24 * 3600)) {
            Ok(issuer) => issuer.save_node_issuer(&issuer_dir)?,
            Err(zkmesh_kit::identity::IdentityError::RootTooOld) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let certs = dir.join("certs");
    let year = Duration::from_secs(365 * 24 * 3600);
    let mut wanted: Vec<(String, Identity)> = ["registry", "scheduler", "ledger", "verifier"]
        .iter()
        .map(|s| (s.to_string(), Identity::new(&ca.mesh, Role::Service, s)))
        .collect();
    wanted.push((
        "admin".into(),
        Identity::new(&ca.mesh, Role::Admin, "admin"),
    ));
    wanted.push(("user".into(), Identity::new(&ca.mesh, Role::User, user)));
    for (stem, identity) in wanted {
        if !certs.join(format!("{stem}.crt")).exists() {
            ca.issue(&identity, &[], year)?.write(&certs, &stem)?;
        }
    }
    Ok(ca)
}

impl LocalMesh {
    pub async fn start(options: MeshOptions) -> anyhow::Result<LocalMesh> {
        let dir = options.dir.clone();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        ensure_pki(&dir, &options.user)?;
        let shutdown = CancellationToken::new();
        let db = |name: &str| format!("sqlite://{}", dir.join(format!("{name}.db")).display());
        let metrics = |_: ()| options.metrics.then(|| "127.0.0.1:0".to_string());
        let endpoint = |s: &Serving| format!("https://127.0.0.1:{}", s.addr.port());
        let server = |i: usize, name: &str| ServerConfig {
            listen: Some(options.listen[i].clone()),
            metrics_listen: metrics(()),
            database_url: db(name),
            grace_secs: 2,
            tls: tls_files(&dir, name),
            max_revocation_age_secs: 30,
            limits: options.limits.clone(),
        };

        let registry = zkmesh_registry::start(
            zkmesh_registry::RegistryConfig {
                server: server(0, "registry"),
                ca_dir: if dir.join("registry-ca/issuer.key").exists() {
                    dir.join("registry-ca")
                } else {
                    dir.join("ca")
                },
                heartbeat_timeout_secs: (options.heartbeat_secs * 4).max(5),
                node_certificate_lifetime_secs: options.node_certificate_lifetime_secs,
                default_node_slots: options.worker_slots,
            },
            shutdown.clone(),
        )
        .await
        .context("starting the registry")?;
        // The verifier's settlement key, made before the ledger starts: the ledger pays only on
        // settlements it signs.
        let verifier_key = zkmesh_kit::signing_key::load_or_create_key(&dir.join("verifier.key"))?;
        let verifier_public = hex::encode(verifier_key.verifying_key().to_bytes());
        let ledger = zkmesh_ledger::start(
            zkmesh_ledger::LedgerConfig {
                server: server(2, "ledger"),
                key_file: dir.join("ledger.key"),
                registry_endpoint: endpoint(&registry),
                verifier_keys: vec![verifier_public.clone()],
            },
            shutdown.clone(),
        )
        .await
        .context("starting the ledger")?;
        let verifier = zkmesh_verifier::start(
            zkmesh_verifier::VerifierConfig {
                server: server(3, "verifier"),
                registry_endpoint: endpoint(&registry),
                key_file: dir.join("verifier.key"),
                keys_dir: options.keys_dir.clone(),
                setup_classes: options.setup_classes.clone(),
            },
            shutdown.clone(),
        )
        .await
        .context("starting the verifier")?;
        let scheduler_config: zkmesh_scheduler::SchedulerConfig =
            toml::Value::Table(toml::Table::from_iter(
                [
                    (
                        "server".to_string(),
                        toml::Value::try_from(server(1, "scheduler"))
                            .expect("server config serialises"),
                    ),
                    (
                        "registry_endpoint".to_string(),
                        toml::Value::String(endpoint(&registry)),
                    ),
                    (
                        "ledger_endpoint".to_string(),
                        toml::Value::String(endpoint(&ledger)),
                    ),
                    (
                        "verifier_endpoint".to_string(),
                        toml::Value::String(endpoint(&verifier)),
                    ),
                    (
                        "lease_secs".to_string(),
                        toml::Value::Integer(options.lease_secs as i64),
                    ),
                    (
                        "compile_timeout_secs".to_string(),
                        toml::Value::Integer(options.compile_timeout_secs as i64),
                    ),
                ]
                .into_iter()
                .chain(
                    options
                        .scheduler_settings
                        .iter()
                        .map(|(k, v)| (k.clone(), toml::Value::Integer(*v))),
                )
                .chain(
                    options
                        .spot_check_rate
                        .map(|r| ("spot_check_rate".to_string(), toml::Value::Float(r))),
                ),
            ))
            .try_into()
            .context("scheduler defaults")?;
        let scheduler = zkmesh_scheduler::start(scheduler_config, shutdown.clone())
            .await
            .context("starting the scheduler")?;

        let ledger_key =
            zkmesh_kit::signing_key::public_hex(&std::fs::read_to_string(dir.join("ledger.key"))?)?;
        let client = ClientConfig {
            registry: endpoint(&registry),
            scheduler: endpoint(&scheduler),
            ledger: endpoint(&ledger),
            verifier: endpoint(&verifier),
            ca: dir.join("ca/ca.crt"),
            cert: dir.join("certs/user.crt"),
            key: dir.join("certs/user.key"),
            admin_cert: Some(dir.join("certs/admin.crt")),
            admin_key: Some(dir.join("certs/admin.key")),
            ledger_public_key: Some(ledger_key),
            verifier_public_key: Some(verifier_public),
        };
        let mut mesh = LocalMesh {
            dir,
            client,
            registry,
            scheduler,
            ledger,
            verifier,
            workers: Vec::new(),
            options: options.clone(),
            shutdown,
        };
        let api = MeshClient::connect(&mesh.client)?;
        // A service refuses calls until its first revocation list has come from the registry
        // (it fails closed): wait for each, briefly, before anyone calls.
        api.wait_until_current(Duration::from_secs(20)).await?;
        // Mint once per data directory: a restarted dev mesh keeps its balances.
        let account = format!("user/{}", options.user);
        let balance = api
            .admin_ledger()?
            .get_balance(GetBalanceRequest {
                account: account.clone(),
            })
            .await?
            .into_inner()
            .account
            .map_or(0, |a| a.balance);
        if balance == 0 && options.mint > 0 {
            api.admin_ledger()?
                .mint(MintRequest {
                    request_id: format!("dev-mesh-first-mint:{account}"),
                    account,
                    amount: options.mint,
                })
                .await?;
        }
        for i in 0..options.workers {
            mesh.add_worker(&format!("worker-{}", i + 1), &format!("operator-{}", i + 1))
                .await?;
        }
        Ok(mesh)
    }

    /// A pre-approved join token for `uses` nodes of `operator`, each granted the mesh's worker
    /// slots.
    pub async fn join_token(&self, operator: &str, uses: u32) -> anyhow::Result<String> {
        self.join_token_granting(operator, uses, self.options.worker_slots)
            .await
    }

    /// [`LocalMesh::join_token`], granting each node `slots`.
    pub async fn join_token_granting(
        &self,
        operator: &str,
        uses: u32,
        slots: u32,
    ) -> anyhow::Result<String> {
        let api = MeshClient::connect(&self.client)?;
        Ok(api
            .admin_registry()?
            .create_join_token(CreateJoinTokenRequest {
                pre_approved: true,
                ttl_secs: 3600,
                max_uses: uses,
                operator: operator.to_string(),
                slots,
            })
            .await?
            .into_inner()
            .token)
    }

    /// The configuration a worker of this mesh uses (for starting one elsewhere, e.g. in
    /// another process); its operator is the one its join token names.
    pub fn worker_config(&self, name: &str, token: Option<String>) -> WorkerConfig {
        WorkerConfig {
            data_dir: self.dir.join("workers").join(name),
            registry_endpoint: self.client.registry.clone(),
            scheduler_endpoint: self.client.scheduler.clone(),
            ca_cert: self.client.ca.clone(),
            join_token: token,
            name: name.to_string(),
            operator: None,
            slots: self.options.worker_slots,
            heartbeat_secs: self.options.heartbeat_secs,
            approval_timeout_secs: 60,
            memory_budget_mib: self.options.worker_memory_budget_mib,
            verifier_endpoint: Some(self.client.verifier.clone()),
            keys_dir: Some(self.options.keys_dir.clone()),
            compile_cache_dir: None,
            compile_cache_max_mib: 1024,
            compile_timeout_secs: self.options.compile_timeout_secs,
            metrics_addr: self
                .options
                .metrics
                .then(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        }
    }

    /// Starts one more in-process worker of `operator` and returns its node id.
    pub async fn add_worker(&mut self, name: &str, operator: &str) -> anyhow::Result<String> {
        let config = self.worker_config(name, None);
        let token = if config.data_dir.join("node.json").exists() {
            None
        } else {
            Some(self.join_token(operator, 1).await?)
        };
        let config = WorkerConfig {
            join_token: token,
            ..config
        };
        let stop = self.shutdown.child_token();
        let handle = zkmesh_worker::start(config, stop.clone())
            .await
            .with_context(|| format!("starting {name}"))?;
        let id = handle.node_id.clone();
        self.workers.push((handle, stop));
        Ok(id)
    }

    /// Waits until `n` workers are active at the registry and connected to the scheduler (or
    /// the time runs out), asking both services.
    pub async fn wait_for_workers(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        let api = MeshClient::connect(&self.client)?;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let active = all_nodes(&api.admin_registry()?, NodeStatus::Active).await?;
            let connected = all_workers(&api.admin_scheduler()?).await?;
            let ready = connected
                .iter()
                .filter(|w| active.iter().any(|a| a.node_id == w.node_id))
                .count();
            if ready >= n {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "only {ready} of {n} workers became ready ({} active at the registry, {} connected to the scheduler)",
                    active.len(),
                    connected.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Graceful shutdown of workers, then services.
    pub async fn stop(self) {
        for (_, stop) in &self.workers {
            stop.cancel();
        }
        for (handle, _) in self.workers {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle.task).await;
        }
        self.shutdown.cancel();
        for serving in [self.scheduler, self.ledger, self.verifier, self.registry] {
            let _ = tokio::time::timeout(Duration::from_secs(5), serving.task).await;
        }
    }
}
