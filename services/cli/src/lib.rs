//! The `zkmesh` command: every service's `serve`, the worker, the embedded mesh (`run`, `dev`)
//! and the client commands for submitters, operators and admins.
//!
//! Exit codes: see [`exit`] (one table).

pub mod args;
pub mod commands;
pub mod exit;
pub mod render;

pub use exit::{
    EXIT_CONFIG, EXIT_OK, EXIT_REFUSED, EXIT_TASK, EXIT_UNAVAILABLE, EXIT_USAGE, Exit, describe,
    exit, exit_code,
};
