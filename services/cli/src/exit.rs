//! The exit codes of `zkmesh`, in one table (the README repeats it):
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | success; for `run` and `task`, the task completed and was verified |
//! | 1    | the task ended otherwise (trapped, ran out of fuel or memory, timed out, failed, was rejected or cancelled), or an audit or check failed |
//! | 2    | the mesh refused the request: an invalid or unprovable module, a policy it cannot serve, a quota, a permission or authentication |
//! | 3    | the mesh could not be reached, or failed inside (an internal or unknown error) |
//! | 64   | a bad command line: clap's own errors, an unknown guest or file, an unreadable `--input-file` |
//! | 78   | bad configuration: a service or worker config, a client config, no mesh configured, TLS files that are missing or unusable |

/// The task completed and was verified (or the command succeeded).
pub const EXIT_OK: i32 = 0;
/// The task ended otherwise, or an audit or check failed.
pub const EXIT_TASK: i32 = 1;
/// The mesh refused the request.
pub const EXIT_REFUSED: i32 = 2;
/// The mesh could not be reached, or failed inside.
pub const EXIT_UNAVAILABLE: i32 = 3;
/// A bad command line (sysexits' `EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;
/// Bad configuration (sysexits' `EX_CONFIG`).
pub const EXIT_CONFIG: i32 = 78;

/// An error with the exit code it should end the process with.
#[derive(Debug)]
pub struct Exit {
    /// One of the `EXIT_*` codes.
    pub code: i32,
    /// What to tell the user.
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// An error that ends the process with `code`.
pub fn exit(code: i32, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Exit {
        code,
        message: message.into(),
    })
}

/// The exit code of a gRPC status: the mesh refused the request, or could not be reached.
pub fn status_exit_code(code: tonic::Code) -> i32 {
    use tonic::Code::*;
    match code {
        InvalidArgument | NotFound | FailedPrecondition | AlreadyExists | OutOfRange
        | PermissionDenied | Unauthenticated | ResourceExhausted | Unimplemented => EXIT_REFUSED,
        _ => EXIT_UNAVAILABLE,
    }
}

/// The exit code for an error: its own if it carries one, else by its gRPC status.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    if let Some(x) = e.downcast_ref::<Exit>() {
        return x.code;
    }
    if let Some(status) = e.downcast_ref::<tonic::Status>() {
        return status_exit_code(status.code());
    }
    // A config that does not parse, or TLS files it names that are missing or unusable.
    let configuration = e.chain().any(|cause| {
        cause.is::<zkmesh_kit::config::ConfigError>()
            || cause.is::<zkmesh_kit::tls::TlsError>()
            || matches!(
                cause.downcast_ref::<zkmesh_kit::server::ServeError>(),
                Some(zkmesh_kit::server::ServeError::Tls(_))
            )
            || matches!(
                cause.downcast_ref::<zkmesh_worker::WorkerError>(),
                Some(zkmesh_worker::WorkerError::Config(_))
            )
    });
    if configuration {
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
        let reason = zkmesh_kit::error::reason_of(status)
            .map(|r| format!(", {r}"))
            .unwrap_or_default();
        return crate::render::safe(&format!("{msg}{} ({code}{reason})", status.message()))
            .into_owned();
    }
    crate::render::safe(&format!("{e:#}")).into_owned()
}
