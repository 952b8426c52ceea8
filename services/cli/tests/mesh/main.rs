//! The whole mesh, end to end: real services on 127.0.0.1:0 over mutual TLS, real SQLite
//! files, real workers running wasmtime. One test binary, a module per topic.

mod support;

mod auth;
mod cli;
mod compile_cache;
mod failover;
mod fake_node;
mod guests;
mod hostile;
mod hostile_clients;
mod identities;
mod kill9;
mod ledger;
mod lifecycle;
mod proofs;
mod python;
mod renewal;
mod replication;
mod revocation;
mod services;
mod settlement;
mod spot_checks;
