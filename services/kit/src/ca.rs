//! The mesh's certificate authorities: the root (the mesh CA, whose key stays offline) and the
//! node issuer, an intermediate the root certifies, which the registry holds to sign node
//! certificates. Services accept a certificate from an intermediate for the node role only
//! ([`crate::tls`] and [`crate::client`] check it), so a stolen registry key mints nodes, never
//! an admin, a user or a service.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::identity::{
    BACKDATE_MS, Identity, IdentityError, Role, mesh_of_ca, read_file, valid_name, write_file,
};

/// A PEM certificate and its PEM private key.
#[derive(Clone)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The certificate, never the key.
impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl CertifiedKey {
    /// Writes `<stem>.crt` and `<stem>.key` (0600) into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), IdentityError> {
        write_file(
            &dir.join(format!("{stem}.crt")),
            self.cert_pem.as_bytes(),
            false,
        )?;
        write_file(
            &dir.join(format!("{stem}.key")),
            self.key_pem.as_bytes(),
            true,
        )
    }
}

/// A certificate authority of the mesh: the root (`ca.crt`, `ca.key`), or the node issuer
/// (`issuer.crt`, `issuer.key`, with the root's `ca.crt` beside them).
pub struct MeshCa {
    pub mesh: String,
    /// This authority's own certificate.
    pub cert_pem: String,
    /// The certificate peers trust: the root's (for the root itself, its own).
    pub trust_pem: String,
    /// Certificates to send after an issued certificate so peers can build the path to the
    /// root: the issuer's own, for the node issuer; nothing for the root.
    pub chain_pem: String,
    key: KeyPair,
}

/// Lifetime of the CA certificate.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl MeshCa {
    /// A new CA for the mesh named `mesh`.
    pub fn generate(mesh: &str) -> Result<MeshCa, IdentityError> {
        if !valid_name(mesh) {
            return Err(IdentityError::BadName(mesh.to_string()));
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(&format!("zkmesh {mesh} CA"));
        // One intermediate below the root: the node issuer.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(format!("spiffe://{mesh}").try_into()?)];
        set_validity(&mut params, CA_LIFETIME);
        let cert = params.self_signed(&key)?;
        Ok(MeshCa {
            mesh: mesh.to_string(),
            cert_pem: cert.pem(),
            trust_pem: cert.pem(),
            chain_pem: String::new(),
            key,
        })
    }

    /// Cuts a certificate's lifetime to end no later than this authority's own: a node
    /// certificate outliving its issuer would fail without warning when the issuer expires.
    fn within_own_validity(&self, params: &mut CertificateParams) {
        if let Some((_, not_after_ms)) = crate::identity::validity_ms(&self.cert_pem)
            && let Ok(end) =
                time::OffsetDateTime::from_unix_timestamp_nanos(not_after_ms as i128 * 1_000_000)
            && params.not_after > end
        {
            params.not_after = end;
        }
    }

    /// Whether this is the node issuer (an intermediate), not the root.
    pub fn is_node_issuer(&self) -> bool {
        !self.chain_pem.is_empty()
    }

    /// A new node issuer certified by this root: an intermediate CA that may sign only leaf
    /// certificates (path length 0), which services accept for the node role only.
    pub fn node_issuer(&self, lifetime: Duration) -> Result<MeshCa, IdentityError> {
        if self.is_node_issuer() {
            return Err(IdentityError::NotRoot);
        }
        if root_path_len(&self.cert_pem) == Some(0) {
            return Err(IdentityError::RootTooOld);
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(&format!("zkmesh {} node issuer", self.mesh));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names =
            vec![SanType::URI(format!("spiffe://{}", self.mesh).try_into()?)];
        set_validity(&mut params, lifetime);
        self.within_own_validity(&mut params);
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(MeshCa {
            mesh: self.mesh.clone(),
            cert_pem: cert.pem(),
            trust_pem: self.cert_pem.clone(),
            chain_pem: cert.pem(),
            key,
        })
    }

    /// Writes the node issuer's `issuer.crt`, `issuer.key` and the root's `ca.crt` into `dir`
    /// (the registry's `ca_dir`); refuses to overwrite an existing issuer.
    pub fn save_node_issuer(&self, dir: &Path) -> Result<(), IdentityError> {
        let key_path = dir.join("issuer.key");
        if key_path.exists() {
            return Err(IdentityError::Exists(key_path));
        }
        write_file(&dir.join("ca.crt"), self.trust_pem.as_bytes(), false)?;
        write_file(&dir.join("issuer.crt"), self.cert_pem.as_bytes(), false)?;
        write_file(&key_path, self.key.serialize_pem().as_bytes(), true)
    }

    /// Loads the authority in `dir`: the node issuer (`issuer.crt`, `issuer.key`, `ca.crt`)
    /// if there is one, else the root (`ca.crt`, `ca.key`).
    pub fn load(dir: &Path) -> Result<MeshCa, IdentityError> {
        let root_pem = read_file(&dir.join("ca.crt"))?;
        let mesh = mesh_of_ca(&root_pem).unwrap_or_else(|| "zkmesh".to_string());
        if dir.join("issuer.key").exists() {
            let cert_pem = read_file(&dir.join("issuer.crt"))?;
            let key = KeyPair::from_pem(&read_file(&dir.join("issuer.key"))?)?;
            return Ok(MeshCa {
                mesh,
                chain_pem: cert_pem.clone(),
                cert_pem,
                trust_pem: root_pem,
                key,
            });
        }
        let key = KeyPair::from_pem(&read_file(&dir.join("ca.key"))?)?;
        Ok(MeshCa {
            mesh,
            cert_pem: root_pem.clone(),
            trust_pem: root_pem,
            chain_pem: String::new(),
            key,
        })
    }

    /// Writes `ca.crt` and `ca.key`; refuses to overwrite an existing CA.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        let key_path = dir.join("ca.key");
        if key_path.exists() {
            return Err(IdentityError::Exists(key_path));
        }
        std::fs::create_dir_all(dir).map_err(|source| IdentityError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        write_file(&dir.join("ca.crt"), self.cert_pem.as_bytes(), false)?;
        write_file(&key_path, self.key.serialize_pem().as_bytes(), true)
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, IdentityError> {
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?)
    }

    /// A new key and certificate for `identity`. Services also get server names
    /// (`localhost`, loopback addresses and `hosts`) so that clients can verify them.
    pub fn issue(
        &self,
        identity: &Identity,
        hosts: &[String],
        lifetime: Duration,
    ) -> Result<CertifiedKey, IdentityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = self.leaf_params(identity, hosts, lifetime)?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(CertifiedKey {
            cert_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a node's CSR. Only the CSR's public key is used: the names in the certificate are
    /// the registry's decision, never the requester's.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<String, IdentityError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let params = self.leaf_params(identity, &[], lifetime)?;
        let leaf = params.signed_by(&csr.public_key, &self.issuer()?)?.pem();
        Ok(format!("{leaf}{}", self.chain_pem))
    }

    fn leaf_params(
        &self,
        identity: &Identity,
        hosts: &[String],
        lifetime: Duration,
    ) -> Result<CertificateParams, IdentityError> {
        if !valid_name(&identity.name) {
            return Err(IdentityError::BadName(identity.name.clone()));
        }
        // The node issuer certifies nodes, and nothing else.
        if self.is_node_issuer() && identity.role != Role::Node {
            return Err(IdentityError::NodesOnly(identity.role.as_str()));
        }
        // A CA certifies identities of its own mesh only.
        if identity.mesh != self.mesh {
            return Err(IdentityError::OtherMesh {
                mesh: identity.mesh.clone(),
                ca: self.mesh.clone(),
            });
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(&identity.to_string());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let mut sans = vec![SanType::URI(identity.uri().try_into()?)];
        if identity.role == Role::Service {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
            sans.push(SanType::DnsName("localhost".try_into()?));
            sans.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            sans.push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
            for host in hosts {
                sans.push(match host.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(host.clone().try_into()?),
                });
            }
        }
        params.subject_alt_names = sans;
        set_validity(&mut params, lifetime);
        self.within_own_validity(&mut params);
        Ok(params)
    }
}

/// A fresh TLS key pair and a CSR for it (the worker side of enrollment).
pub fn generate_csr(common_name: &str) -> Result<(String, String), IdentityError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn(common_name);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// Whether the certificate (the first in `cert_pem`) is for the private key in `key_pem`.
pub fn certifies_key(cert_pem: &str, key_pem: &str) -> bool {
    use x509_parser::prelude::*;
    let Ok(key) = KeyPair::from_pem(key_pem) else {
        return false;
    };
    let Ok((_, pem)) = parse_x509_pem(cert_pem.as_bytes()) else {
        return false;
    };
    let Ok(cert) = pem.parse_x509() else {
        return false;
    };
    cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // Slack for clocks that disagree a little.
    params.not_before = now - time::Duration::milliseconds(BACKDATE_MS);
    params.not_after = now + time::Duration::seconds(lifetime.as_secs() as i64);
}

/// The path length a CA certificate allows below it, if it states one.
fn root_path_len(cert_pem: &str) -> Option<u32> {
    use x509_parser::prelude::*;
    let (_, pem) = parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    cert.basic_constraints()
        .ok()
        .flatten()
        .and_then(|bc| bc.value.path_len_constraint)
}

/// Whether a PEM certificate is a root: self-issued (its issuer is its subject) and allowing
/// an intermediate below it. A CA file must hold one (not the node issuer's certificate, which
/// would make its nodes-only certificates look issued by the root).
pub fn is_mesh_root(cert_pem: &str) -> bool {
    use x509_parser::prelude::*;
    let Ok((_, pem)) = parse_x509_pem(cert_pem.as_bytes()) else {
        return false;
    };
    let Ok(cert) = pem.parse_x509() else {
        return false;
    };
    let self_issued = cert.issuer().as_raw() == cert.subject().as_raw();
    // Meshes made before node issuers have roots of path length 0; they are roots still.
    self_issued && cert.is_ca()
}

/// Whether the verified DER certificate `leaf` was issued by the root `root_pem` itself (its
/// issuer is the root's subject), not by an intermediate. Call it on a chain a TLS stack has
/// verified to that root: then no other issuer can carry the root's name.
pub fn issued_by_root(leaf: &[u8], root_pem: &str) -> Option<bool> {
    use x509_parser::prelude::*;
    let (_, leaf) = X509Certificate::from_der(leaf).ok()?;
    let (_, pem) = parse_x509_pem(root_pem.as_bytes()).ok()?;
    let root = pem.parse_x509().ok()?;
    Some(leaf.issuer().as_raw() == root.subject().as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf_der(pem: &str) -> Vec<u8> {
        use x509_parser::prelude::*;
        parse_x509_pem(pem.as_bytes()).unwrap().1.contents
    }

    /// A certificate signed for a request certifies that request's key and no other.
    #[test]
    fn a_certificate_certifies_its_requests_key_only() {
        let root = MeshCa::generate("m").unwrap();
        let (key, csr) = generate_csr("n").unwrap();
        let (other_key, _) = generate_csr("n").unwrap();
        let cert = root
            .sign_csr(
                &csr,
                &Identity::new("m", Role::Node, "n-1"),
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(certifies_key(&cert, &key));
        assert!(!certifies_key(&cert, &other_key));
        assert!(!certifies_key("not a certificate", &key));
    }

    /// The node issuer signs nodes only, sends its own certificate after each, and a root made
    /// before intermediates (path length 0) cannot make one.
    #[test]
    fn the_node_issuer_certifies_nodes_only() {
        let root = MeshCa::generate("m").unwrap();
        let issuer = root.node_issuer(Duration::from_secs(3600)).unwrap();
        assert!(issuer.is_node_issuer() && !root.is_node_issuer());
        assert_eq!(issuer.trust_pem, root.cert_pem);
        let year = Duration::from_secs(3600);
        let node = issuer
            .issue(&Identity::new("m", Role::Node, "n-1"), &[], year)
            .unwrap();
        assert!(node.cert_pem.ends_with(&issuer.cert_pem));
        assert_eq!(
            issued_by_root(&leaf_der(&node.cert_pem), &root.cert_pem),
            Some(false)
        );
        for role in [Role::Admin, Role::User, Role::Service] {
            assert!(matches!(
                issuer.issue(&Identity::new("m", role, "x"), &[], year),
                Err(IdentityError::NodesOnly(_))
            ));
        }
        let admin = root
            .issue(&Identity::new("m", Role::Admin, "a"), &[], year)
            .unwrap();
        assert_eq!(
            issued_by_root(&leaf_der(&admin.cert_pem), &root.cert_pem),
            Some(true)
        );
        assert!(matches!(
            issuer.node_issuer(year),
            Err(IdentityError::NotRoot)
        ));
        let dir = tempfile::tempdir().unwrap();
        issuer.save_node_issuer(dir.path()).unwrap();
        // No certificate outlives its issuer.
        let long = issuer
            .issue(
                &Identity::new("m", Role::Node, "n-2"),
                &[],
                Duration::from_secs(10 * 365 * 86400),
            )
            .unwrap();
        let issuer_end = crate::identity::validity_ms(&issuer.cert_pem).unwrap().1;
        assert!(crate::identity::validity_ms(&long.cert_pem).unwrap().1 <= issuer_end);
        assert!(is_mesh_root(&root.cert_pem) && !is_mesh_root(&issuer.cert_pem));
        let loaded = MeshCa::load(dir.path()).unwrap();
        assert!(loaded.is_node_issuer());
        assert_eq!(
            (loaded.mesh.as_str(), &loaded.trust_pem),
            ("m", &root.cert_pem)
        );
    }
}
