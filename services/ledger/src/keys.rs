//! The ledger's Ed25519 signing key: loaded, or created on first start.

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};

/// Parses an Ed25519 PKCS#8 PEM key.
pub fn load_key_pem(pem: &str) -> anyhow::Result<SigningKey> {
    SigningKey::from_pkcs8_pem(pem).map_err(|e| anyhow::anyhow!("not an Ed25519 PKCS#8 key: {e}"))
}

/// Loads the ledger key, creating it on first start.
pub fn load_or_create_key(path: &std::path::Path) -> anyhow::Result<SigningKey> {
    if path.exists() {
        let pem = std::fs::read_to_string(path)?;
        return load_key_pem(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| anyhow::anyhow!("encoding the ledger key: {e}"))?;
    zkmesh_kit::identity::write_file(path, pem.as_bytes(), true)?;
    Ok(key)
}
