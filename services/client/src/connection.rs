//! [`MeshClient`]: channels to every service, as the user and (when configured) as the admin.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tonic::transport::Channel;
use zkmesh_kit::client::{ClientTls, channel};
use zkmesh_proto::ledger_service_client::LedgerServiceClient;
use zkmesh_proto::registry_service_client::RegistryServiceClient;
use zkmesh_proto::scheduler_service_client::SchedulerServiceClient;
use zkmesh_proto::{CircuitInfo, CircuitSetupState, FetchModuleRequest};

use crate::config::ClientConfig;

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
            SchedulerServiceClient::new(channel(&self.config.scheduler, &self.user, "scheduler")?)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
    }

    pub fn admin_scheduler(&self) -> anyhow::Result<SchedulerServiceClient<Channel>> {
        Ok(SchedulerServiceClient::new(channel(
            &self.config.scheduler,
            self.admin_tls()?,
            "scheduler",
        )?)
        .max_decoding_message_size(MAX_MESSAGE))
    }

    pub fn verifier(
        &self,
    ) -> anyhow::Result<zkmesh_proto::verifier_service_client::VerifierServiceClient<Channel>> {
        Ok(
            zkmesh_proto::verifier_service_client::VerifierServiceClient::new(channel(
                &self.config.verifier,
                &self.user,
                "verifier",
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
                "verifier",
            )?)
            .max_decoding_message_size(MAX_MESSAGE),
        )
    }

    /// The module's bytes, by hash.
    pub async fn module_bytes(&self, hash: &str) -> anyhow::Result<Vec<u8>> {
        let mut stream = self
            .scheduler()?
            .fetch_module(FetchModuleRequest {
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

    /// Every circuit class the verifier serves, over all pages.
    pub async fn circuits(&self) -> anyhow::Result<Vec<CircuitInfo>> {
        Ok(zkmesh_kit::lists::all_circuits(&self.verifier()?).await?)
    }

    /// Waits until a circuit class is ready on the verifier, showing progress on stderr.
    pub async fn wait_for_circuit(&self, class: &str, quiet: bool) -> anyhow::Result<()> {
        let mut last = String::new();
        let started = std::time::Instant::now();
        loop {
            let circuits = self.circuits().await?;
            let Some(c) = circuits.iter().find(|c| c.circuit_class == class) else {
                anyhow::bail!("the verifier has no circuit class {class}");
            };
            let line = c.state_line();
            match c.state() {
                CircuitSetupState::Ready => return Ok(()),
                CircuitSetupState::Failed => anyhow::bail!("circuit class {class} is {line}"),
                // A setup asked for at start may not have begun yet.
                CircuitSetupState::NotSetUp | CircuitSetupState::Unspecified
                    if started.elapsed() > Duration::from_secs(10) =>
                {
                    anyhow::bail!("circuit class {class} is {line}")
                }
                _ => {}
            }
            if !quiet && line != last {
                eprintln!("circuit {class}: {line}");
                last = line;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    /// Waits (at most `limit`) until the ledger, the verifier and the scheduler answer an
    /// authenticated call: each refuses with UNAVAILABLE until its first revocation list has
    /// come from the registry.
    pub async fn wait_until_current(&self, limit: std::time::Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + limit;
        let mut ledger = self.admin_ledger()?;
        let mut verifier = self.admin_verifier()?;
        let mut scheduler = self.admin_scheduler()?;
        loop {
            let answers = [
                ledger
                    .get_balance(zkmesh_proto::GetBalanceRequest::default())
                    .await
                    .err(),
                verifier
                    .get_verifier_key(zkmesh_proto::GetVerifierKeyRequest {})
                    .await
                    .err(),
                scheduler
                    .list_workers(zkmesh_proto::ListWorkersRequest::default())
                    .await
                    .err(),
            ];
            let waiting = answers
                .iter()
                .flatten()
                .find(|e| e.code() == tonic::Code::Unavailable);
            match waiting {
                None => return Ok(()),
                Some(e) if std::time::Instant::now() >= deadline => {
                    anyhow::bail!("the mesh is not serving yet: {}", e.message())
                }
                Some(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    pub fn ledger(&self) -> anyhow::Result<LedgerServiceClient<Channel>> {
        Ok(LedgerServiceClient::new(channel(
            &self.config.ledger,
            &self.user,
            "ledger",
        )?))
    }

    pub fn admin_ledger(&self) -> anyhow::Result<LedgerServiceClient<Channel>> {
        Ok(LedgerServiceClient::new(channel(
            &self.config.ledger,
            self.admin_tls()?,
            "ledger",
        )?))
    }

    pub fn admin_registry(&self) -> anyhow::Result<RegistryServiceClient<Channel>> {
        Ok(RegistryServiceClient::new(channel(
            &self.config.registry,
            self.admin_tls()?,
            "registry",
        )?))
    }
}
