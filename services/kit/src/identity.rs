//! The identities the mesh CA certifies ([`crate::ca`]), and reading them from certificates.
//!
//! Every certificate carries one URI SAN, `spiffe://<mesh>/<role>/<name>`; the role decides what
//! its holder may call. TLS keys are ECDSA P-256 (understood by every TLS stack, including the
//! grpcio clients generated from `proto/`); receipts use a separate Ed25519 key.

use std::path::{Path, PathBuf};

/// What a certificate's holder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Mesh administrator: approves nodes, mints credits.
    Admin,
    /// Task submitter.
    User,
    /// A worker node.
    Node,
    /// One of the four services, talking to another.
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
            Role::Node => "node",
            Role::Service => "service",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "user" => Role::User,
            "node" => Role::Node,
            "service" => Role::Service,
            _ => return None,
        })
    }
}

/// A verified caller: its role and its name within the role (a node id, a user name, ...).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub mesh: String,
    pub role: Role,
    pub name: String,
}

impl Identity {
    pub fn new(mesh: &str, role: Role, name: &str) -> Identity {
        Identity {
            mesh: mesh.to_string(),
            role,
            name: name.to_string(),
        }
    }

    pub fn uri(&self) -> String {
        format!(
            "spiffe://{}/{}/{}",
            self.mesh,
            self.role.as_str(),
            self.name
        )
    }

    /// The ledger account this identity pays from or is paid into.
    pub fn account(&self) -> String {
        format!("{}/{}", self.role.as_str(), self.name)
    }

    pub fn parse_uri(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix("spiffe://")?;
        let mut parts = rest.splitn(3, '/');
        let mesh = parts.next()?;
        let role = Role::parse(parts.next()?)?;
        let name = parts.next()?;
        if mesh.is_empty() || !valid_name(name) {
            return None;
        }
        Some(Identity::new(mesh, role, name))
    }

    /// The identity in a DER certificate that a TLS stack has already verified: its one URI
    /// SAN (a certificate with none, several, or one that is not a zkmesh identity has none).
    pub fn from_verified_der(der: &[u8]) -> Option<Identity> {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        let mut uris = san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            });
        match (uris.next(), uris.next()) {
            (Some(uri), None) => Identity::parse_uri(uri),
            _ => None,
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.role.as_str(), self.name)
    }
}

/// Names are short and path-safe: letters, digits, `-`, `_`, `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate error: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid name {0:?}: use 1-64 letters, digits, '-', '_' or '.'")]
    BadName(String),
    #[error("{0} already exists; refusing to overwrite a mesh CA")]
    Exists(PathBuf),
    #[error("the CA of mesh {ca:?} does not certify identities of mesh {mesh:?}")]
    OtherMesh { mesh: String, ca: String },
    #[error(
        "the node issuer certifies nodes only, not a {0}: issue it from the mesh CA (the root)"
    )]
    NodesOnly(&'static str),
    #[error("only the mesh CA (the root) makes a node issuer")]
    NotRoot,
    #[error(
        "this mesh CA was made before node issuers existed (its path length is 0): it cannot certify one; make a new mesh CA with `zkmesh ca init`"
    )]
    RootTooOld,
}

/// Expiry of a PEM certificate, in milliseconds since the epoch.
pub fn not_after_ms(cert_pem: &str) -> Option<i64> {
    validity_ms(cert_pem).map(|(_, not_after)| not_after)
}

/// `not_after` of a DER certificate, in milliseconds since the epoch.
pub fn not_after_ms_of_der(der: &[u8]) -> Option<i64> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.timestamp() * 1000)
}

/// How much slack before the issue time the CA gives every certificate (clock skew).
pub const BACKDATE_MS: i64 = 60_000;

/// `(not_before, not_after)` of a PEM certificate, in milliseconds since the epoch.
pub fn validity_ms(cert_pem: &str) -> Option<(i64, i64)> {
    use x509_parser::prelude::*;
    let (_, pem) = parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let v = cert.validity();
    Some((
        v.not_before.timestamp() * 1000,
        v.not_after.timestamp() * 1000,
    ))
}

/// A DER certificate's serial number: lowercase hex of its bytes as DER encodes them (the
/// form revocations name).
pub fn serial_of_der(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(hex::encode(cert.raw_serial()))
}

/// [`serial_of_der`] of a PEM certificate (the first in the text).
pub fn serial_of_pem(cert_pem: &str) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, pem) = parse_x509_pem(cert_pem.as_bytes()).ok()?;
    serial_of_der(&pem.contents)
}

/// SHA-256 (lowercase hex) of a PEM certificate's DER (the first in the text): the fingerprint
/// a TLS peer presenting it has (see [`crate::tls::PeerInfo::leaf_sha256`]).
pub fn fingerprint_of_pem(cert_pem: &str) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, pem) = parse_x509_pem(cert_pem.as_bytes()).ok()?;
    Some(crate::sha256_hex(&pem.contents))
}

/// The identity in a PEM certificate (the first in the text), unverified: for display.
pub fn identity_of_pem(cert_pem: &str) -> Option<Identity> {
    use x509_parser::prelude::*;
    let (_, pem) = parse_x509_pem(cert_pem.as_bytes()).ok()?;
    Identity::from_verified_der(&pem.contents)
}

/// The mesh name a CA certificate was made for.
pub fn mesh_of_ca(cert_pem: &str) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, pem) = parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => uri.strip_prefix("spiffe://").map(str::to_string),
        _ => None,
    })
}

pub fn read_file(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a file atomically (a temporary file beside it, synced, then renamed over it), private
/// to its owner when `secret`: a secret file is created with mode 0600, so its bytes are never
/// readable by others, not even for a moment, and a crash leaves the old file or the new one.
pub fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), IdentityError> {
    use std::io::Write;
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", crate::random_id("")));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    // The rename itself is durable once the directory is synced.
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CertifiedKey, MeshCa, generate_csr};
    use std::time::Duration;

    #[test]
    fn debug_output_never_shows_a_private_key() {
        let ca = MeshCa::generate("testmesh").unwrap();
        let (key_pem, _) = generate_csr("n1").unwrap();
        assert!(key_pem.contains("PRIVATE KEY"));
        let shown = [
            format!(
                "{:?}",
                CertifiedKey {
                    cert_pem: ca.cert_pem.clone(),
                    key_pem: key_pem.clone()
                }
            ),
            format!(
                "{:?}",
                crate::tls::TlsPem {
                    ca: ca.cert_pem.clone(),
                    cert: ca.cert_pem.clone(),
                    key: key_pem.clone()
                }
            ),
            format!(
                "{:?}",
                crate::client::ClientTls {
                    ca: ca.cert_pem.clone(),
                    identity: Some((ca.cert_pem.clone(), key_pem.clone()))
                }
            ),
        ];
        for text in shown {
            assert!(!text.contains("PRIVATE KEY"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
        }
    }

    #[test]
    fn secret_files_are_private_from_the_start_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key.pem");
        write_file(&path, b"one", true).unwrap();
        write_file(&path, b"two", true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["key.pem"]);
    }

    #[test]
    fn issued_certificates_carry_their_identity() {
        let ca = MeshCa::generate("testmesh").unwrap();
        let id = Identity::new("testmesh", Role::User, "alice");
        let ck = ca.issue(&id, &[], Duration::from_secs(60)).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(ck.cert_pem.as_bytes()).unwrap();
        assert_eq!(Identity::from_verified_der(&pem.contents), Some(id));
        assert_eq!(mesh_of_ca(&ca.cert_pem).as_deref(), Some("testmesh"));
    }

    #[test]
    fn csr_names_are_ignored() {
        let ca = MeshCa::generate("m").unwrap();
        let (_key, csr) = generate_csr("admin/root").unwrap();
        let id = Identity::new("m", Role::Node, "n-1");
        let cert = ca.sign_csr(&csr, &id, Duration::from_secs(60)).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap();
        assert_eq!(Identity::from_verified_der(&pem.contents), Some(id));
        assert!(not_after_ms(&cert).unwrap() > crate::now_ms());
    }

    #[test]
    fn uris_parse_strictly() {
        assert!(Identity::parse_uri("spiffe://m/node/abc").is_some());
        assert!(Identity::parse_uri("spiffe://m/root/abc").is_none());
        assert!(Identity::parse_uri("spiffe://m/node/a/b").is_none());
        assert!(Identity::parse_uri("https://m/node/a").is_none());
    }
}
