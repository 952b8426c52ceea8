//! A service's Ed25519 signing key (the ledger's journal key, the verifier's settlement key):
//! a PKCS#8 PEM file, created 0600 on first start.

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};

#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error("{path}: not an Ed25519 PKCS#8 key: {reason}")]
    Parse { path: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] crate::identity::IdentityError),
}

/// Parses an Ed25519 PKCS#8 PEM key.
pub fn load_key_pem(pem: &str) -> Result<SigningKey, SigningKeyError> {
    SigningKey::from_pkcs8_pem(pem).map_err(|e| SigningKeyError::Parse {
        path: "<pem>".into(),
        reason: e.to_string(),
    })
}

/// Loads the key at `path`, creating it on first start.
pub fn load_or_create_key(path: &std::path::Path) -> Result<SigningKey, SigningKeyError> {
    let shown = path.display().to_string();
    let io = |source| SigningKeyError::Io {
        path: shown.clone(),
        source,
    };
    if path.exists() {
        let pem = std::fs::read_to_string(path).map_err(io)?;
        return SigningKey::from_pkcs8_pem(&pem).map_err(|e| SigningKeyError::Parse {
            path: shown.clone(),
            reason: e.to_string(),
        });
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| SigningKeyError::Parse {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
    crate::identity::write_file(path, pem.as_bytes(), true)?;
    Ok(key)
}

/// The hex public key of an Ed25519 PKCS#8 PEM private key.
pub fn public_hex(pem: &str) -> Result<String, SigningKeyError> {
    Ok(hex::encode(load_key_pem(pem)?.verifying_key().to_bytes()))
}
