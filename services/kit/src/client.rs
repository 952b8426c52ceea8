//! Channels to zkmesh services: mutual TLS with this process's certificate, and a check that
//! the server is the service the caller meant to reach.
//!
//! The mesh CA signs every role's certificate, so a chain check alone would let any service's
//! key (or a node's) answer for any other: a stolen verifier key could pose as the ledger. So
//! the server's certificate must also carry the identity `spiffe://<mesh>/service/<name>` of the
//! service asked for, in the CA's mesh; the handshake fails otherwise (a rustls verifier of
//! ours, given to tonic's TLS in place of its host-name-only one).

use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Uri};

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
    mesh: String,
    service: String,
    /// The mesh CA: a service's certificate must come from it directly (an intermediate, the
    /// node issuer, certifies nodes only).
    root_pem: String,
}

impl ServiceVerifier {
    /// Why the verified end-entity certificate is not the service asked for, if it is not.
    fn check_identity(&self, end_entity: &CertificateDer<'_>) -> Result<(), String> {
        let Some(id) = Identity::from_verified_der(end_entity) else {
            return Err("the server's certificate carries no zkmesh identity".into());
        };
        if crate::ca::issued_by_root(end_entity, &self.root_pem) != Some(true) {
            return Err(
                "the server's certificate is not issued by the mesh CA itself (an intermediate certifies nodes only)"
                    .into(),
            );
        }
        let wanted = Identity::new(&self.mesh, Role::Service, &self.service);
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
    // host:port only: credentials would travel in every request's authority, and a path or a
    // query would be silently dropped.
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
    if authority.contains('@') || !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("give only https://host:port".into()));
    }
    let roots = rustls_pemfile::certs(&mut tls.ca.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(&e))?;
    // One CA: the mesh name comes from it, and another CA in the file could otherwise issue
    // certificates in this mesh's name.
    let [root] = roots.as_slice() else {
        return Err(tls_err(&format!(
            "the CA file must hold exactly one certificate (the mesh CA), not {}",
            roots.len()
        )));
    };
    if !crate::ca::is_mesh_root(&tls.ca) {
        return Err(tls_err(
            &"the CA file must hold the mesh CA (a self-issued root), not an intermediate",
        ));
    }
    let mesh = crate::identity::mesh_of_ca(&tls.ca)
        .ok_or_else(|| tls_err(&"the CA certificate names no mesh (spiffe://<mesh>)"))?;
    let mut store = RootCertStore::empty();
    store.add(root.clone()).map_err(|e| tls_err(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map_err(|e| tls_err(&e))?;
    let verifier = Arc::new(ServiceVerifier {
        chain,
        mesh,
        service: service.to_string(),
        root_pem: tls.ca.clone(),
    });
    // A handshake that stalls (a server that accepts TCP and says nothing) is given up.
    let mut config = ClientTlsConfig::new().timeout(Duration::from_secs(5));
    if let Some((cert, key)) = &tls.identity {
        config = config.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    Ok(Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| bad(e.to_string()))?
        .tls_config_with_verifier(config, verifier)
        .map_err(|e| tls_err(&e))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::MeshCa;

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
            mesh: crate::identity::mesh_of_ca(&ca.cert_pem).unwrap(),
            service: service.into(),
            root_pem: ca.cert_pem.clone(),
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

    /// A CA file with a second CA in it (a rotation's old one, another mesh's) is refused: the
    /// other CA could issue certificates in this mesh's name. So is an endpoint that carries
    /// credentials or a path, and a scheme other than https.
    #[tokio::test]
    async fn only_one_ca_and_plain_endpoints_are_accepted() {
        let (a, b) = (
            MeshCa::generate("m").unwrap(),
            MeshCa::generate("m").unwrap(),
        );
        let one = ClientTls {
            ca: a.cert_pem.clone(),
            identity: None,
        };
        assert!(channel("https://127.0.0.1:1", &one, "ledger").is_ok());
        let two = ClientTls {
            ca: format!("{}{}", a.cert_pem, b.cert_pem),
            identity: None,
        };
        let err = channel("https://127.0.0.1:1", &two, "ledger").unwrap_err();
        assert!(err.to_string().contains("exactly one certificate"), "{err}");
        for endpoint in [
            "http://127.0.0.1:1",
            "https://user:secret@127.0.0.1:1",
            "https://127.0.0.1:1/path",
            "https://127.0.0.1:1/?q=1",
        ] {
            assert!(channel(endpoint, &one, "ledger").is_err(), "{endpoint}");
        }
    }
}
