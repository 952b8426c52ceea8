//! Channels to zkmesh services: mutual TLS with this process's certificate.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::tls::TlsPem;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad endpoint {endpoint:?}: {source}")]
    Endpoint {
        endpoint: String,
        source: tonic::transport::Error,
    },
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

/// A lazily connecting channel to `endpoint` (`https://host:port`). One channel multiplexes
/// every call, so keep and clone it rather than connecting per call.
pub fn channel(endpoint: &str, tls: &ClientTls) -> Result<Channel, ClientError> {
    let err = |source| ClientError::Endpoint {
        endpoint: endpoint.to_string(),
        source,
    };
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca));
    if let Some((cert, key)) = &tls.identity {
        config = config.identity(Identity::from_pem(cert, key));
    }
    let endpoint_value = Endpoint::from_shared(endpoint.to_string()).map_err(err)?;
    Ok(endpoint_value
        .tls_config(config)
        .map_err(err)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_lazy())
}
