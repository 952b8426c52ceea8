//! A hostile client, for the load generator and the fault tests: idle TLS connections without a
//! certificate from one address, held open, and calls to made-up methods. Bounded: it opens and
//! calls exactly as many as it is told.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Idle connections held open; drop them to close them.
pub struct Idle {
    /// Connections the service served (its HTTP/2 settings arrived).
    pub kept: Vec<TlsStream<TcpStream>>,
    /// Connections it closed at once, or whose handshake it refused.
    pub refused: usize,
}

/// Opens `n` TLS connections without a client certificate from `from` to `to`, `concurrency`
/// at a time, and holds those the service keeps.
pub async fn idle_connections(
    ca_pem: &str,
    from: IpAddr,
    to: SocketAddr,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Idle> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let opened = futures::stream::iter(0..n)
        .map(|_| {
            let connector = connector.clone();
            async move {
                let socket = tokio::net::TcpSocket::new_v4().ok()?;
                socket.bind(SocketAddr::new(from, 0)).ok()?;
                let tcp = socket.connect(to).await.ok()?;
                let name = ServerName::try_from("localhost").ok()?;
                let mut tls = connector.connect(name, tcp).await.ok()?;
                let mut first = [0u8; 9];
                let read =
                    tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut first))
                        .await;
                matches!(read, Ok(Ok(n)) if n > 0).then_some(tls)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let refused = opened.iter().filter(|c| c.is_none()).count();
    Ok(Idle {
        kept: opened.into_iter().flatten().collect(),
        refused,
    })
}

/// Makes `n` calls to made-up methods of `service` (`zkmesh.v1.SchedulerService`, say) over
/// `channel`, `concurrency` at a time; returns how many ended with each status code (they should
/// all be refused: UNIMPLEMENTED, or UNAUTHENTICATED for a caller without a certificate).
pub async fn made_up_calls(
    channel: tonic::transport::Channel,
    service: &str,
    n: usize,
    concurrency: usize,
) -> BTreeMap<String, usize> {
    let outcomes = Mutex::new(BTreeMap::new());
    futures::stream::iter(0..n)
        .for_each_concurrent(concurrency.max(1), |i| {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            let path = format!("/{service}/MadeUp{i}");
            let outcomes = &outcomes;
            async move {
                let outcome = match path.parse::<http::uri::PathAndQuery>() {
                    Err(_) => "bad path".to_string(),
                    Ok(path) => match grpc.ready().await {
                        Err(e) => format!("not ready: {e}"),
                        Ok(()) => match grpc
                            .unary::<(), (), _>(
                                tonic::Request::new(()),
                                path,
                                tonic_prost::ProstCodec::default(),
                            )
                            .await
                        {
                            Ok(_) => "OK".to_string(),
                            Err(s) if s.code() == tonic::Code::Unknown => {
                                format!("Unknown: {}", s.message())
                            }
                            Err(s) => format!("{:?}", s.code()),
                        },
                    },
                };
                *outcomes.lock().unwrap().entry(outcome).or_default() += 1;
            }
        })
        .await;
    outcomes.into_inner().unwrap()
}
