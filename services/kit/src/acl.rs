//! Who may call what: one table per service ([`Acl`]) naming the roles that may call each RPC,
//! and the check of a caller's identity against it.

use crate::identity::{Identity, Role};
use crate::revocation::RevocationList;

/// Who may call an RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allow {
    /// Anyone who completed the TLS handshake, even without a client certificate (only the
    /// registry accepts such connections, for enrollment).
    Anonymous,
    /// Any verified certificate of this mesh.
    AnyRole,
    Role(Role),
    /// One named service.
    Service(&'static str),
}

impl Allow {
    /// The name the proto files use for this entry in an RPC's "Roles:" line: `anonymous`,
    /// `any`, a role (`admin`, `user`, `node`, `service`), or `service:NAME`.
    pub fn name(&self) -> String {
        match self {
            Allow::Anonymous => "anonymous".into(),
            Allow::AnyRole => "any".into(),
            Allow::Role(role) => role.as_str().into(),
            Allow::Service(name) => format!("service:{name}"),
        }
    }
}

/// One service's table: `(method name, who may call it)`. A method missing from the table is
/// refused for everyone.
#[derive(Debug)]
pub struct Acl {
    /// gRPC service path, e.g. `zkmesh.v1.SchedulerService`.
    pub service: &'static str,
    pub methods: &'static [(&'static str, &'static [Allow])],
}

/// The methods every service serves besides its own, named exactly (so a made-up method under
/// these services is refused like any other), and who may call them: health checking to
/// anyone who reached it over TLS, server reflection (both versions) only to a caller with a
/// certificate from the mesh CA.
const COMMON_METHODS: &[(&str, &str, &[Allow])] = &[
    ("grpc.health.v1.Health", "Check", &[Allow::Anonymous]),
    ("grpc.health.v1.Health", "Watch", &[Allow::Anonymous]),
    (
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
        &[Allow::AnyRole],
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        "ServerReflectionInfo",
        &[Allow::AnyRole],
    ),
];

impl Acl {
    /// The method at `path` (`/package.Service/Method`) as this table names it, and who may call
    /// it; `None` if the service serves no such method. The name is `'static`, so whatever
    /// labels it (metrics) comes from a fixed set, never from the caller's bytes.
    pub fn method(&self, path: &str) -> Option<(&'static str, &'static [Allow])> {
        let path = path.strip_prefix('/')?;
        let (service, method) = path.split_once('/')?;
        if let Some((_, name, allow)) = COMMON_METHODS
            .iter()
            .find(|(s, m, _)| *s == service && *m == method)
        {
            return Some((name, allow));
        }
        if service != self.service {
            return None;
        }
        self.methods
            .iter()
            .find(|(name, _)| *name == method)
            .map(|(name, allow)| (*name, *allow))
    }

    /// Who may call the method at `path`; `None` if the service serves no such method.
    pub fn allowed(&self, path: &str) -> Option<&'static [Allow]> {
        self.method(path).map(|(_, allow)| allow)
    }
}

/// Checks an identity against a method's allow list. `None` is an anonymous caller.
pub fn check(
    allow: &[Allow],
    identity: Option<&Identity>,
    serials: &[String],
    revoked: &RevocationList,
) -> Result<(), tonic::Status> {
    // A revoked certificate (or the intermediate that issued it) is refused whatever it calls;
    // a revoked node by any certificate.
    if let Some(serial) = serials.iter().find(|s| revoked.contains_serial(s)) {
        return Err(tonic::Status::permission_denied(format!(
            "certificate {serial} is revoked"
        )));
    }
    if let Some(id) = identity
        && id.role == Role::Node
        && revoked.contains(&id.name)
    {
        return Err(tonic::Status::permission_denied(format!(
            "node {} is revoked",
            id.name
        )));
    }
    if allow.contains(&Allow::Anonymous) {
        return Ok(());
    }
    let Some(id) = identity else {
        return Err(tonic::Status::unauthenticated(
            "a client certificate from this mesh's CA is required",
        ));
    };
    let ok = allow.iter().any(|a| match a {
        Allow::Anonymous | Allow::AnyRole => true,
        Allow::Role(r) => *r == id.role,
        Allow::Service(name) => id.role == Role::Service && id.name == *name,
    });
    if ok {
        Ok(())
    } else {
        Err(tonic::Status::permission_denied(format!(
            "{id} may not call this method"
        )))
    }
}

/// The SHA-256 (lowercase hex) of the certificate the caller presented (DER), as the
/// [`AuthLayer`] read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallerCertificate(pub String);

/// [`CallerCertificate`]: the fingerprint of the caller's own certificate (not of an
/// intermediate), if it presented one.
pub fn caller_certificate<T>(req: &tonic::Request<T>) -> Option<String> {
    req.extensions()
        .get::<CallerCertificate>()
        .map(|s| s.0.clone())
}

/// The caller's identity as the [`AuthLayer`] found it; handlers read it from the request.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Identity, tonic::Status> {
    req.extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| tonic::Status::unauthenticated("no verified client certificate"))
}

#[cfg(test)]
mod tests {
    use super::*;

    static ACL: Acl = Acl {
        service: "zkmesh.v1.Test",
        methods: &[
            ("Open", &[Allow::Anonymous]),
            ("Users", &[Allow::Role(Role::User)]),
            ("Sched", &[Allow::Service("scheduler")]),
        ],
    };

    #[test]
    fn table_decides() {
        let revoked = RevocationList::default();
        let user = Identity::new("m", Role::User, "u");
        let node = Identity::new("m", Role::Node, "n1");
        let sched = Identity::new("m", Role::Service, "scheduler");
        let ledger = Identity::new("m", Role::Service, "ledger");
        let users = ACL.allowed("/zkmesh.v1.Test/Users").unwrap();
        assert!(check(users, Some(&user), &[], &revoked).is_ok());
        assert_eq!(
            check(users, Some(&node), &[], &revoked).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            check(users, None, &[], &revoked).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let sched_only = ACL.allowed("/zkmesh.v1.Test/Sched").unwrap();
        assert!(check(sched_only, Some(&sched), &[], &revoked).is_ok());
        assert!(check(sched_only, Some(&ledger), &[], &revoked).is_err());
        assert!(ACL.allowed("/zkmesh.v1.Test/Missing").is_none());
        assert!(ACL.allowed("/zkmesh.v1.Other/Users").is_none());
        let open = ACL.allowed("/zkmesh.v1.Test/Open").unwrap();
        assert!(check(open, None, &[], &revoked).is_ok());
        assert_eq!(
            ACL.method("/grpc.health.v1.Health/Check"),
            Some(("Check", &[Allow::Anonymous][..]))
        );
        let reflection = ACL
            .allowed("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
            .unwrap();
        assert_eq!(
            check(reflection, None, &[], &revoked).unwrap_err().code(),
            tonic::Code::Unauthenticated,
            "reflection needs a certificate"
        );
        assert!(check(reflection, Some(&sched), &[], &revoked).is_ok());
        assert!(ACL.allowed("/grpc.health.v1.Health/Made\"Up").is_none());
        assert!(ACL.allowed("/grpc.reflection.v9/Anything").is_none());
        assert!(ACL.allowed("/grpc.health.v1.Health/Check/extra").is_none());
        revoked.insert("n1");
        assert_eq!(
            check(open, Some(&node), &[], &revoked).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        // A revoked certificate of any role is refused everywhere, anonymous methods too.
        revoked.insert_serial("0abc");
        for id in [&user, &sched] {
            for allow in [users, sched_only, open] {
                assert_eq!(
                    check(allow, Some(id), &["0abc".to_string()], &revoked)
                        .unwrap_err()
                        .code(),
                    tonic::Code::PermissionDenied
                );
            }
        }
        assert!(check(users, Some(&user), &["0abd".to_string()], &revoked).is_ok());
    }
}
