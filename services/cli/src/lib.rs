//! The `zkmesh` command: every service's `serve`, the worker, the embedded mesh (`run`, `dev`)
//! and the client commands for submitters, operators and admins.
//!
//! Exit codes: 0 success (for `run`: the task completed and was verified); 1 the task ended
//! otherwise (trapped, ran out of fuel, failed, was rejected or cancelled), or an audit or
//! check failed; 2 bad input (arguments, a module the mesh refuses, a policy it cannot serve);
//! 3 the mesh could not be reached or failed; 64 bad configuration.

pub mod bundle;
pub mod client;
pub mod commands;
pub mod mesh;

/// An error with the exit code it should end the process with.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

pub const EXIT_TASK: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_UNAVAILABLE: i32 = 3;
pub const EXIT_CONFIG: i32 = 64;

pub fn exit(code: i32, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Exit {
        code,
        message: message.into(),
    })
}

/// The exit code for an error: its own if it carries one, else by its gRPC status.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    if let Some(x) = e.downcast_ref::<Exit>() {
        return x.code;
    }
    if let Some(status) = e.downcast_ref::<tonic::Status>() {
        return match status.code() {
            tonic::Code::InvalidArgument
            | tonic::Code::NotFound
            | tonic::Code::FailedPrecondition
            | tonic::Code::AlreadyExists
            | tonic::Code::OutOfRange => EXIT_USAGE,
            _ => EXIT_UNAVAILABLE,
        };
    }
    if e.downcast_ref::<zkmesh_kit::config::ConfigError>()
        .is_some()
    {
        return EXIT_CONFIG;
    }
    EXIT_UNAVAILABLE
}

/// The message for an error: a gRPC status shows its message, not its debug form.
pub fn describe(e: &anyhow::Error) -> String {
    if let Some(status) = e.downcast_ref::<tonic::Status>() {
        let code = format!("{:?}", status.code());
        let context: Vec<String> = e
            .chain()
            .take_while(|c| c.downcast_ref::<tonic::Status>().is_none())
            .map(|c| c.to_string())
            .collect();
        let mut msg = context.join(": ");
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        return format!("{msg}{} ({code})", status.message());
    }
    format!("{e:#}")
}
