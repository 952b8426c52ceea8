//! Server-side TLS for every service.
//!
//! The handshake asks for a client certificate and checks that the client holds its key, but
//! the certificate's chain is judged by the authorization layer (`auth.rs`), with the same webpki
//! verifier, once per connection. A caller with no certificate, or one from another CA, then
//! gets a plain gRPC `UNAUTHENTICATED` that says why, instead of a failed handshake that
//! clients report as an opaque transport error.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::admission::{Admission, Permit, Who};
use crate::config::TlsFiles;
use crate::identity::{Identity, Role, read_file};

/// TLS material that cannot be used: unreadable, not PEM, or not a certificate and key.
#[derive(Debug, thiserror::Error)]
#[error("TLS material: {0}")]
pub struct TlsError(pub String);

/// PEM material for a server or client.
#[derive(Clone)]
pub struct TlsPem {
    /// The mesh CA certificate.
    pub ca: String,
    /// This process's certificate chain.
    pub cert: String,
    /// This process's private key.
    pub key: String,
}

/// The certificates, never the key.
impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPem")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl TlsPem {
    /// Reads the three files.
    pub fn load(files: &TlsFiles) -> Result<TlsPem, TlsError> {
        let read = |p: &std::path::Path| read_file(p).map_err(|e| TlsError(e.to_string()));
        Ok(TlsPem {
            ca: read(&files.ca)?,
            cert: read(&files.cert)?,
            key: read(&files.key)?,
        })
    }
}

/// What the auth layer knows about a connection's peer.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The verdict on the certificate, computed once per connection.
    pub verdict: Arc<OnceLock<Result<Option<Identity>, String>>>,
    /// The serial numbers of the presented certificates (its own, then any intermediate),
    /// read once per connection for the revocation check; `Err` if one has none readable.
    pub serials: Result<Arc<[String]>, String>,
    /// SHA-256 (lowercase hex) of the peer's own certificate, as presented (DER): what the
    /// registry binds a node to. A serial would not do: whoever holds an issuer's key picks its
    /// certificates' serials, while these bytes carry the node's public key.
    pub leaf_sha256: Option<Arc<str>>,
}

/// A TLS connection with its peer information, its place under the listener's caps, and
/// the moment it is closed (its client certificate's expiry, or its age limit).
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    _permit: Permit,
    ends: Pin<Box<tokio::time::Sleep>>,
}

impl TlsConn {
    /// Past its end the connection reads and writes nothing more: the peer sees it closed.
    fn ended(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.ends.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection reached its age limit or its certificate's expiry",
            )
        })
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.ended(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.ended(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.ended(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Asks for a client certificate and checks the handshake signatures (the client holds the
/// key), leaving the chain to [`MeshTls::verify_peer`].
#[derive(Debug)]
struct DeferredChainVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for DeferredChainVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A service's TLS setup: the server config, and the strict verifier for client chains.
#[derive(Clone)]
pub struct MeshTls {
    pub server: Arc<ServerConfig>,
    strict: Arc<dyn ClientCertVerifier>,
    mesh: Arc<str>,
    /// The mesh CA (the root): only nodes may be certified below it, by the node issuer.
    root_pem: Arc<str>,
}

fn tls_err(e: impl std::fmt::Display) -> TlsError {
    TlsError(e.to_string())
}

impl MeshTls {
    pub fn new(pem: &TlsPem, mesh: &str) -> Result<MeshTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        let certs = rustls_pemfile::certs(&mut pem.ca.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(tls_err)?;
        // One CA: the mesh name comes from it, and another CA in the file could otherwise issue
        // certificates in this mesh's name.
        if certs.len() == 1 && !crate::ca::is_mesh_root(&pem.ca) {
            return Err(tls_err(
                "the CA file must hold the mesh CA (a self-issued root), not an intermediate",
            ));
        }
        if certs.len() != 1 {
            return Err(tls_err(format!(
                "the CA file must hold exactly one certificate (the mesh CA), not {}",
                certs.len()
            )));
        }
        for cert in certs {
            roots.add(cert).map_err(tls_err)?;
        }
        let strict = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(tls_err)?;
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.cert.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(tls_err)?;
        let key = rustls_pemfile::private_key(&mut pem.key.as_bytes())
            .map_err(tls_err)?
            .ok_or_else(|| tls_err("no private key in the key file"))?;
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_client_cert_verifier(Arc::new(DeferredChainVerifier {
                inner: strict.clone(),
            }))
            .with_single_cert(chain, key)
            .map_err(tls_err)?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        Ok(MeshTls {
            server: Arc::new(server),
            strict,
            mesh: mesh.into(),
            root_pem: pem.ca.as_str().into(),
        })
    }

    /// The peer's identity: `Ok(None)` for a caller without a certificate, `Err` for a
    /// certificate this mesh did not issue (or that has expired).
    pub fn verify_peer(&self, peer: &PeerInfo) -> Result<Option<Identity>, String> {
        peer.verdict
            .get_or_init(|| {
                let Some(certs) = peer.certs.as_ref().filter(|c| !c.is_empty()) else {
                    return Ok(None);
                };
                self.strict
                    .verify_client_cert(&certs[0], &certs[1..], UnixTime::now())
                    .map_err(|e| format!("client certificate rejected: {e}"))?;
                let direct = crate::ca::issued_by_root(&certs[0], &self.root_pem);
                match Identity::from_verified_der(&certs[0]) {
                    // The node issuer (an intermediate) certifies nodes only: an admin, user or
                    // service certificate must come from the mesh CA itself.
                    Some(id) if id.role != Role::Node && direct != Some(true) => Err(format!(
                        "a {} certificate must be issued by the mesh CA itself, not by an intermediate",
                        id.role.as_str()
                    )),
                    Some(id) if *id.mesh == *self.mesh => Ok(Some(id)),
                    Some(id) => Err(format!(
                        "certificate is for mesh {:?}, not {:?}",
                        id.mesh, self.mesh
                    )),
                    None => Err("certificate carries no zkmesh identity (URI SAN)".into()),
                }
            })
            .clone()
    }
}

/// Accepts TCP connections and completes TLS handshakes concurrently, so that a slow or
/// silent client never holds up the others, each within `admission`'s caps: a handshake over
/// them is not started, a connection over them is closed once its caller is known.
pub fn incoming(
    listener: TcpListener,
    tls: &MeshTls,
    admission: Admission,
    shutdown: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    let acceptor = TlsAcceptor::from(tls.server.clone());
    let tls = tls.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let handshake = match admission.handshake(remote.ip()) {
                Ok(permit) => permit,
                Err(cap) => {
                    tracing::debug!(%remote, cap = cap.as_str(), "handshake refused");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, tls, admission) =
                (acceptor.clone(), tx.clone(), tls.clone(), admission.clone());
            let limits = admission.limits().clone();
            tokio::spawn(async move {
                let handshake_timeout = Duration::from_secs(limits.handshake_timeout_secs);
                let accepted = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await;
                drop(handshake);
                match accepted {
                    Ok(Ok(stream)) => {
                        let certs: Option<Arc<Vec<CertificateDer<'static>>>> =
                            stream.get_ref().1.peer_certificates().map(|c| {
                                Arc::new(c.iter().map(|d| d.clone().into_owned()).collect())
                            });
                        let serials = certs
                            .iter()
                            .flat_map(|c| c.iter())
                            .map(|c| {
                                crate::identity::serial_of_der(c).ok_or_else(|| {
                                    "a presented certificate has no readable serial".to_string()
                                })
                            })
                            .collect();
                        let leaf_sha256 = certs
                            .as_ref()
                            .and_then(|c| c.first())
                            .map(|leaf| Arc::from(crate::sha256_hex(leaf.as_ref())));
                        let info = PeerInfo {
                            remote: Some(remote),
                            leaf_sha256,
                            certs,
                            verdict: Arc::new(OnceLock::new()),
                            serials,
                        };
                        // Counted by its verified identity (the verdict is the auth layer's,
                        // computed once here): a certificate this mesh did not issue counts as
                        // no certificate, so nobody fills another's place by naming it.
                        let who = match tls.verify_peer(&info) {
                            Ok(Some(id)) => Who::Identity(id.to_string()),
                            _ => Who::Anonymous(remote.ip()),
                        };
                        let permit = match admission.connection(who) {
                            Ok(permit) => permit,
                            Err(cap) => {
                                tracing::debug!(%remote, cap = cap.as_str(), "connection refused");
                                return;
                            }
                        };
                        let age = Duration::from_secs(limits.max_connection_age_secs);
                        let until_expiry = info
                            .certs
                            .as_ref()
                            .and_then(|c| c.first())
                            .and_then(|leaf| crate::identity::not_after_ms_of_der(leaf))
                            .map(|ms| Duration::from_millis((ms - crate::now_ms()).max(0) as u64));
                        let lasts = until_expiry.map_or(age, |left| left.min(age));
                        let ends = Box::pin(tokio::time::sleep(lasts));
                        let conn = TlsConn {
                            stream,
                            info,
                            _permit: permit,
                            ends,
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
