//! A node that speaks the protocol by hand: enrolls like a worker, opens a Work stream, and
//! then does whatever a test needs (lie, stay silent).

use ed25519_dalek::SigningKey;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use zkmesh_kit::client::{ClientTls, channel};
use zkmesh_proto::registry_service_client::RegistryServiceClient;
use zkmesh_proto::scheduler_service_client::SchedulerServiceClient;
use zkmesh_proto::*;

use crate::support::Sandbox;

pub struct FakeNode {
    pub node_id: String,
    pub receipt_key: SigningKey,
    pub up: mpsc::Sender<WorkRequest>,
    pub down: Streaming<WorkResponse>,
    /// The node's own registry client, for the heartbeats that keep it active there.
    pub registry: RegistryServiceClient<tonic::transport::Channel>,
    /// The node's own scheduler client, for opening more Work streams.
    pub scheduler: SchedulerServiceClient<tonic::transport::Channel>,
}

impl FakeNode {
    /// Opens another Work stream with this node's certificate, saying hello with `slots`.
    pub async fn open_stream(
        &mut self,
        slots: u32,
    ) -> (mpsc::Sender<WorkRequest>, Streaming<WorkResponse>) {
        open_stream(&mut self.scheduler, slots).await
    }
}

async fn open_stream(
    scheduler: &mut SchedulerServiceClient<tonic::transport::Channel>,
    slots: u32,
) -> (mpsc::Sender<WorkRequest>, Streaming<WorkResponse>) {
    let (up, rx) = mpsc::channel(16);
    up.send(WorkRequest {
        kind: Some(work_request::Kind::Hello(WorkerHello {
            slots,
            version: "fake".into(),
        })),
    })
    .await
    .unwrap();
    let down = scheduler
        .work(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (up, down)
}

/// Enrolls a node of `operator` granted `slots`, which it also asks for.
pub async fn enroll(sb: &Sandbox, operator: &str, slots: u32) -> FakeNode {
    let token = sb
        .mesh
        .join_token_granting(operator, 1, slots)
        .await
        .unwrap();
    enroll_with(sb, &token, operator, slots).await
}

/// Enrolls with `token` (whose operator the node becomes), asking for `slots` in its Hello.
pub async fn enroll_with(sb: &Sandbox, token: &str, name: &str, slots: u32) -> FakeNode {
    let token = token.to_string();
    let ca = std::fs::read_to_string(&sb.mesh.client.ca).unwrap();
    let anonymous = ClientTls {
        ca: ca.clone(),
        identity: None,
    };
    let mut registry = RegistryServiceClient::new(
        channel(&sb.mesh.client.registry, &anonymous, "registry").unwrap(),
    );
    let (key_pem, csr) = zkmesh_kit::ca::generate_csr(name).unwrap();
    let receipt_key = SigningKey::from_bytes(&[9u8; 32]);
    // Each node its own secret: the same token and secret are the same enrollment (a retry).
    let secret = hex::decode(zkmesh_kit::sha256_hex(
        zkmesh_kit::random_id("secret").as_bytes(),
    ))
    .unwrap();
    let enrolled = registry
        .enroll(EnrollRequest {
            join_token: token,
            csr_pem: csr,
            receipt_public_key: receipt_key.verifying_key().to_bytes().to_vec(),
            name: name.into(),
            enrollment_secret_sha256: hex::decode(zkmesh_kit::sha256_hex(&secret)).unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    let cert = registry
        .fetch_certificate(FetchCertificateRequest {
            node_id: enrolled.node_id.clone(),
            enrollment_secret: secret.to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .certificate_pem;
    assert!(
        !cert.is_empty(),
        "pre-approved token gives a certificate at once"
    );
    let tls = ClientTls {
        ca,
        identity: Some((cert, key_pem)),
    };
    let mut registry =
        RegistryServiceClient::new(channel(&sb.mesh.client.registry, &tls, "registry").unwrap());
    // Be active at the registry before asking for work.
    registry
        .heartbeat(HeartbeatRequest { running_tasks: 0 })
        .await
        .unwrap();
    let mut scheduler =
        SchedulerServiceClient::new(channel(&sb.mesh.client.scheduler, &tls, "scheduler").unwrap());
    let (up, down) = open_stream(&mut scheduler, slots).await;
    FakeNode {
        node_id: enrolled.node_id,
        receipt_key,
        up,
        down,
        registry,
        scheduler,
    }
}

/// A completed report for assignment `a` with `output`, its receipt signed by `key` for
/// `node_id` (1 unit of fuel, 1 µs). The key and output are the test's to get wrong.
pub fn signed_report(
    a: &Assignment,
    node_id: &str,
    key: &SigningKey,
    output: Vec<u8>,
) -> TaskReport {
    let mut receipt = Receipt {
        task_id: a.task_id.clone(),
        module_hash: a.module_hash.clone(),
        input_hash: zkmesh_kit::sha256_hex(&a.input),
        output_hash: zkmesh_kit::sha256_hex(&output),
        fuel_used: 1,
        exit: ExitKind::Ok as i32,
        node_id: node_id.to_string(),
        signature: vec![],
    };
    zkmesh_kit::receipt::sign(&mut receipt, key).unwrap();
    TaskReport {
        attempt_id: a.attempt_id.clone(),
        output,
        exit: ExitKind::Ok as i32,
        exit_message: "completed".into(),
        fuel_used: 1,
        receipt: Some(receipt),
        run_time_us: 1,
        ..Default::default()
    }
}
