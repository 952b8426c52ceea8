//! The zkmesh client library: what the `zkmesh` command, the benches, the tests and other
//! tools use to talk to a mesh, without the command line.
//!
//! - [`ClientConfig`] says where the services are and which certificates to present;
//!   [`MeshClient`] holds a channel to each service, as the user and as the admin.
//! - [`upload`], [`wait`] and [`audit`] are the operations that take several calls.
//! - [`mesh::LocalMesh`] starts a whole mesh in-process (the four services and workers, over
//!   mutual TLS on loopback), for `zkmesh run`, `zkmesh dev`, tests and benches.
//! - [`bundle::Bundle`] is a result with everything needed to check it offline.

pub mod audit;
pub mod bundle;
mod config;
mod connection;
pub mod mesh;
mod tasks;

pub use audit::{AuditReport, Expect, audit, audit_expecting};
pub use config::ClientConfig;
pub use connection::MeshClient;
pub use tasks::{is_terminal, result, submit, task, upload, upload_module, wait};
