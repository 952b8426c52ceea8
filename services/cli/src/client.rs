//! Talking to a mesh as a user or an admin: the client config that `zkmesh dev` writes and the
//! other commands read, the channels, and the multi-step operations (upload, run, audit).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use zkmesh_kit::client::{ClientTls, channel};
use zkmesh_proto::ledger_service_client::LedgerServiceClient;
use zkmesh_proto::registry_service_client::RegistryServiceClient;
use zkmesh_proto::scheduler_service_client::SchedulerServiceClient;
use zkmesh_proto::*;
use zkmesh_proto::{Empty, ModuleRef};

/// Where the services are and which certificates this client presents.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub registry: String,
    pub scheduler: String,
    pub ledger: String,
    pub verifier: String,
    /// The mesh CA certificate.
    pub ca: PathBuf,
    /// The user certificate (task submission).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The admin certificate, for `node`, `ledger mint` and `ledger audit`.
    pub admin_cert: Option<PathBuf>,
    pub admin_key: Option<PathBuf>,
    /// The ledger's Ed25519 public key (hex), pinned for `ledger audit`.
    pub ledger_public_key: Option<String>,
}

impl ClientConfig {
    pub fn load(path: &Path) -> anyhow::Result<ClientConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the client config {}", path.display()))?;
        let mut config: ClientConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        // Relative paths are relative to the config file.
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut config.ca, &mut config.cert, &mut config.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for p in [&mut config.admin_cert, &mut config.admin_key]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = toml::to_string_pretty(self)?;
        zkmesh_kit::identity::write_file(path, text.as_bytes(), false)?;
        Ok(())
    }
}

/// Channels to every service, as the user and (when configured) as the admin.
pub struct MeshClient {
    pub config: ClientConfig,
    user: ClientTls,
    admin: Option<ClientTls>,
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

const MAX_MESSAGE: usize = 80 << 20;

impl MeshClient {
    pub fn connect(config: &ClientConfig) -> anyhow::Result<MeshClient> {
        let ca = read(&config.ca)?;
        let user = ClientTls {
            ca: ca.clone(),
            identity: Some((read(&config.cert)?, read(&config.key)?)),
        };
        let admin = match (&config.admin_cert, &config.admin_key) {
            (Some(c), Some(k)) => Some(ClientTls {
                ca,
                identity: Some((read(c)?, read(k)?)),
            }),
            _ => None,
        };
        Ok(MeshClient {
            config: config.clone(),
            user,
            admin,
        })
    }

    fn admin_tls(&self) -> anyhow::Result<&ClientTls> {
        self.admin
            .as_ref()
            .context("this client config has no admin certificate (admin_cert, admin_key)")
    }

    pub fn scheduler(&self) -> anyhow::Result<SchedulerServiceClient<Channel>> {
        Ok(
            SchedulerServiceClient::new(channel(&self.config.scheduler, &self.user)?)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
    }

    pub fn admin_scheduler(&self) -> anyhow::Result<SchedulerServiceClient<Channel>> {
        Ok(
            SchedulerServiceClient::new(channel(&self.config.scheduler, self.admin_tls()?)?)
                .max_decoding_message_size(MAX_MESSAGE),
        )
    }

    pub fn verifier(
        &self,
    ) -> anyhow::Result<zkmesh_proto::verifier_service_client::VerifierServiceClient<Channel>> {
        Ok(
            zkmesh_proto::verifier_service_client::VerifierServiceClient::new(channel(
                &self.config.verifier,
                &self.user,
            )?)
            .max_decoding_message_size(MAX_MESSAGE),
        )
    }

    pub fn admin_verifier(
        &self,
    ) -> anyhow::Result<zkmesh_proto::verifier_service_client::VerifierServiceClient<Channel>> {
        Ok(
            zkmesh_proto::verifier_service_client::VerifierServiceClient::new(channel(
                &self.config.verifier,
                self.admin_tls()?,
            )?)
            .max_decoding_message_size(MAX_MESSAGE),
        )
    }

    /// The module's bytes, by hash.
    pub async fn module_bytes(&self, hash: &str) -> anyhow::Result<Vec<u8>> {
        let mut stream = self
            .scheduler()?
            .fetch_module(ModuleRef {
                module_hash: hash.to_string(),
            })
            .await?
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await? {
            bytes.extend_from_slice(&chunk.chunk);
        }
        Ok(bytes)
    }

    /// Waits until a circuit class is ready on the verifier, showing progress on stderr.
    pub async fn wait_for_circuit(&self, class: &str, quiet: bool) -> anyhow::Result<()> {
        let mut verifier = self.verifier()?;
        let mut last = String::new();
        let started = std::time::Instant::now();
        loop {
            let circuits = verifier
                .list_circuits(Empty {})
                .await?
                .into_inner()
                .circuits;
            let Some(c) = circuits.iter().find(|c| c.circuit_class == class) else {
                anyhow::bail!("the verifier has no circuit class {class}");
            };
            if c.state == "ready" {
                return Ok(());
            }
            // A setup asked for at start may not have begun yet.
            let stalled = c.state == "not set up" && started.elapsed() > Duration::from_secs(10);
            if c.state.starts_with("failed") || stalled {
                anyhow::bail!("circuit class {class} is {}", c.state);
            }
            if !quiet && c.state != last {
                eprintln!("circuit {class}: {}", c.state);
                last = c.state.clone();
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    pub fn ledger(&self) -> anyhow::Result<LedgerServiceClient<Channel>> {
        Ok(LedgerServiceClient::new(channel(
            &self.config.ledger,
            &self.user,
        )?))
    }

    pub fn admin_ledger(&self) -> anyhow::Result<LedgerServiceClient<Channel>> {
        Ok(LedgerServiceClient::new(channel(
            &self.config.ledger,
            self.admin_tls()?,
        )?))
    }

    pub fn admin_registry(&self) -> anyhow::Result<RegistryServiceClient<Channel>> {
        Ok(RegistryServiceClient::new(channel(
            &self.config.registry,
            self.admin_tls()?,
        )?))
    }
}

/// Uploads a module in 256 KiB chunks.
pub async fn upload(
    scheduler: &mut SchedulerServiceClient<Channel>,
    name: &str,
    bytes: &[u8],
) -> Result<ModuleInfo, tonic::Status> {
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
    let task_ref = || TaskRef {
        task_id: task_id.to_string(),
    };
    if let Ok(stream) = scheduler.watch_task(task_ref()).await {
        let mut stream = stream.into_inner();
        while let Ok(Some(event)) = stream.message().await {
            progress(&event);
            if is_terminal(event.state()) {
                return Ok(scheduler.get_result(task_ref()).await?.into_inner());
            }
        }
    }
    // The stream broke (the scheduler restarted, say): poll instead.
    loop {
        let task = scheduler.get_task(task_ref()).await?.into_inner();
        if is_terminal(task.state()) {
            return Ok(scheduler.get_result(task_ref()).await?.into_inner());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What `zkmesh ledger audit` found.
#[derive(Debug, Serialize)]
pub struct AuditReport {
    pub entries: u64,
    pub accounts: usize,
    pub open_holds: usize,
    pub minted: u64,
}

/// Re-checks the ledger: every journal entry's hash, chain link and signature (with the pinned
/// key when the config has one), the replayed balances and holds against the ledger's tables,
/// and that balances plus holds equal everything minted.
pub async fn audit(api: &MeshClient) -> anyhow::Result<AuditReport> {
    let mut ledger = api.admin_ledger()?;
    let served_key = ledger
        .get_ledger_key(Empty {})
        .await?
        .into_inner()
        .public_key;
    let key = match &api.config.ledger_public_key {
        Some(pinned) => {
            let pinned = hex::decode(pinned).context("ledger_public_key is not hex")?;
            anyhow::ensure!(
                pinned == served_key,
                "the ledger presents a different key than the one pinned in the client config"
            );
            pinned
        }
        None => served_key,
    };
    let mut stream = ledger
        .read_journal(ReadJournalRequest { from_seq: 1 })
        .await?
        .into_inner();
    let mut entries = Vec::new();
    while let Some(e) = stream.message().await? {
        entries.push(e);
    }
    let replay = zkmesh_kit::journal::replay(&entries, &key)?;
    anyhow::ensure!(
        replay.conserved(),
        "balances plus holds do not equal the {} micro-credits minted",
        replay.minted
    );
    let accounts = ledger.list_accounts(Empty {}).await?.into_inner().accounts;
    for a in &accounts {
        let replayed = replay.balances.get(&a.account).copied().unwrap_or(0);
        anyhow::ensure!(
            replayed == a.balance,
            "account {} holds {} but the journal gives {replayed}",
            a.account,
            a.balance
        );
    }
    for (account, balance) in &replay.balances {
        if *balance > 0 {
            anyhow::ensure!(
                accounts.iter().any(|a| &a.account == account),
                "the journal gives {account} {balance} but the ledger has no such account"
            );
        }
    }
    let holds = ledger.list_holds(Empty {}).await?.into_inner().holds;
    let open: Vec<&HoldInfo> = holds
        .iter()
        .filter(|h| h.state() == HoldState::Open)
        .collect();
    for h in &open {
        let replayed = replay.holds.get(&h.task_id).copied().unwrap_or(0);
        anyhow::ensure!(
            replayed == h.amount,
            "hold for task {} is {} but the journal gives {replayed}",
            h.task_id,
            h.amount
        );
    }
    anyhow::ensure!(
        open.len() == replay.holds.len(),
        "the ledger has {} open holds but the journal gives {}",
        open.len(),
        replay.holds.len()
    );
    Ok(AuditReport {
        entries: replay.entries,
        accounts: accounts.len(),
        open_holds: open.len(),
        minted: replay.minted,
    })
}
