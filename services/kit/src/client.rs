//! Channels to zkmesh services: mutual TLS with this process's certificate, and a check that
//! the server is the service the caller meant to reach.
//!
//! The mesh CA signs every role's certificate, so a chain check alone would let any service's
//! key (or a node's) answer for any other: a stolen verifier key could pose as the ledger. So
//! the server's certificate must also carry the identity `spiffe://<mesh>/service/<name>` of the
//! service asked for, in the CA's mesh; the handshake fails otherwise. rustls does the TLS here
//! (tonic's own TLS cannot check a URI SAN), and tonic speaks HTTP/2 over the stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::identity::{Identity, Role};
use crate::tls::TlsPem;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("TLS setup for {endpoint}: {reason}")]
    Tls { endpoint: String, reason: String },
}

/// How a client presents itself: the CA to trust, and optionally its own certificate.
#[derive(Clone)]
pub struct ClientTls {
    pub ca: String,
    /// Its certificate and private key (PEM).
    pub identity: Option<(String, String)>,
}

/// The certificates, never the key.
impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca)
            .field("cert", &self.identity.as_ref().map(|(cert, _)| cert))
            .field("key", &self.identity.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl From<&TlsPem> for ClientTls {
    fn from(p: &TlsPem) -> ClientTls {
        ClientTls {
            ca: p.ca.clone(),
            identity: Some((p.cert.clone(), p.key.clone())),
        }
    }
}

/// The chain check of the mesh CA, then the identity: the server must be `service/<name>`
/// of the CA's mesh.
#[derive(Debug)]
struct ServiceVerifier {
    chain: Arc<WebPkiServerVerifier>,
    mesh: Option<String>,
    service: String,
}

impl ServiceVerifier {
    /// Why the verified end-entity certificate is not the service asked for, if it is not.
    fn check_identity(&self, end_entity: &CertificateDer<'_>) -> Result<(), String> {
        let Some(id) = Identity::from_verified_der(end_entity) else {
            return Err("the server's certificate carries no zkmesh identity".into());
        };
        let wanted = Identity::new(
            self.mesh.as_deref().unwrap_or(&id.mesh),
            Role::Service,
            &self.service,
        );
        if id != wanted {
            return Err(format!(
                "the server is {}, not {} (a certificate of another role or service)",
                id.uri(),
                wanted.uri()
            ));
        }
        Ok(())
    }
}

impl ServerCertVerifier for ServiceVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.check_identity(end_entity)
            .map_err(rustls::Error::General)?;
        Ok(verified)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Connects TCP, then TLS with the service check, to the endpoint's host and port.
#[derive(Clone)]
struct ServiceConnector {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    address: String,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for ServiceConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&this.address).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(this.config)
                .connect(this.server_name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// A lazily connecting channel to the service `service` (`"ledger"`, ...) at `endpoint`
/// (`https://host:port`). One channel multiplexes every call, so keep and clone it rather than
/// connecting per call. A server whose certificate is not `service/<service>` of the CA's mesh
/// fails the handshake (the call is UNAVAILABLE, saying whom it found).
pub fn channel(endpoint: &str, tls: &ClientTls, service: &str) -> Result<Channel, ClientError> {
    let bad = |reason: String| ClientError::Endpoint {
        endpoint: endpoint.to_string(),
        reason,
    };
    let tls_err = |e: &dyn std::fmt::Display| ClientError::Tls {
        endpoint: endpoint.to_string(),
        reason: e.to_string(),
    };
    let uri: Uri = endpoint
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("the scheme must be https".into()));
    }
    let host = uri
        .host()
        .ok_or_else(|| bad("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let server_name = ServerName::try_from(host.clone()).map_err(|e| bad(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut tls.ca.as_bytes()) {
        roots
            .add(cert.map_err(|e| tls_err(&e))?)
            .map_err(|e| tls_err(&e))?;
    }
    let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls_err(&e))?;
    let verifier = Arc::new(ServiceVerifier {
        chain,
        mesh: crate::identity::mesh_of_ca(&tls.ca),
        service: service.to_string(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(&e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &tls.identity {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| tls_err(&e))?;
            let key = rustls_pemfile::private_key(&mut key.as_bytes())
                .map_err(|e| tls_err(&e))?
                .ok_or_else(|| tls_err(&"no private key in the key file"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_err(&e))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = ServiceConnector {
        config: Arc::new(config),
        server_name,
        address: format!("{}:{port}", uri.host().unwrap_or_default()),
    };
    // rustls speaks TLS in the connector, so tonic is given the plain scheme (its own TLS
    // would refuse an https URI it does not secure); the stream is encrypted all the same.
    let plain = format!(
        "http://{}",
        uri.authority().map(|a| a.as_str()).unwrap_or("")
    );
    Ok(Endpoint::from_shared(plain)
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(connector))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::MeshCa;

    fn verifier(ca: &MeshCa, service: &str) -> ServiceVerifier {
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca.cert_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        ServiceVerifier {
            chain: WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(rustls::crypto::ring::default_provider()),
            )
            .build()
            .unwrap(),
            mesh: crate::identity::mesh_of_ca(&ca.cert_pem),
            service: service.into(),
        }
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
    }

    /// A certificate of another service, another role of the same name, or another mesh's
    /// service of the same name is not the service asked for.
    #[test]
    fn only_the_service_asked_for_may_answer() {
        let ca = MeshCa::generate("m").unwrap();
        let ledger = verifier(&ca, "ledger");
        let issue = |role, name: &str| {
            let id = Identity::new("m", role, name);
            let hosts = ["localhost".to_string()];
            der(&ca
                .issue(&id, &hosts, Duration::from_secs(60))
                .unwrap()
                .cert_pem)
        };
        assert!(
            ledger
                .check_identity(&issue(Role::Service, "ledger"))
                .is_ok()
        );
        for (role, name) in [
            (Role::Service, "verifier"),
            (Role::Service, "scheduler"),
            (Role::Node, "ledger"),
            (Role::User, "ledger"),
            (Role::Admin, "ledger"),
        ] {
            let why = ledger.check_identity(&issue(role, name)).unwrap_err();
            assert!(why.contains("not spiffe://m/service/ledger"), "{why}");
        }
        let elsewhere = MeshCa::generate("other").unwrap();
        let id = Identity::new("other", Role::Service, "ledger");
        let foreign = elsewhere
            .issue(&id, &["localhost".to_string()], Duration::from_secs(60))
            .unwrap();
        assert!(ledger.check_identity(&der(&foreign.cert_pem)).is_err());
    }
}
