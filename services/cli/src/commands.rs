//! The command line: argument definitions and what each command does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use zkmesh_kit::CancellationToken;
use zkmesh_kit::config::{load, process_env};
use zkmesh_kit::identity::{Identity, MeshCa, Role};
use zkmesh_proto::*;

use crate::client::{ClientConfig, MeshClient, audit, upload, wait};
use crate::mesh::{LocalMesh, MeshOptions};
use crate::{EXIT_CONFIG, EXIT_REFUSED, EXIT_TASK, EXIT_USAGE, exit};

#[derive(Parser, Debug)]
#[command(
    name = "zkmesh",
    version,
    about = "Run WebAssembly on a mesh of machines and get verified results"
)]
pub struct Cli {
    /// Client config of the mesh to talk to (default: $ZKMESH_CLIENT_CONFIG, then
    /// $ZKMESH_HOME/client.toml as written by `zkmesh dev`).
    #[arg(long, global = true, value_name = "FILE")]
    pub mesh: Option<PathBuf>,
    /// More logs on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum CircuitsCommand {
    /// The size classes, their capacities and the state of their keys.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Run a class's setup on the verifier now (admin); shows progress.
    Setup { class: String },
    /// Save a class's verifying key.
    Vk {
        class: String,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a module once and print its verified output. Starts an embedded mesh when none is
    /// configured.
    Run(RunArgs),
    /// Start a persistent local mesh (four services, workers) and write a client config that
    /// the other commands use.
    Dev(DevArgs),
    /// Upload a module and print what the mesh thinks of it.
    Upload {
        module: String,
        #[arg(long)]
        json: bool,
    },
    /// Submit a task and print its id without waiting.
    Submit(RunArgs),
    /// A task's current state.
    Status {
        task: String,
        #[arg(long)]
        json: bool,
    },
    /// Follow a task's events until it ends.
    Watch {
        task: String,
        #[arg(long)]
        json: bool,
    },
    /// A task's result (output, verdict, receipts, credits).
    Result {
        task: String,
        #[arg(long)]
        json: bool,
        /// Write the raw output bytes to this file.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Write a self-contained result bundle (module, input, output, receipt, proof and the
        /// verifying key's id) for `zkmesh verify` (proof policy only).
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
    },
    /// Check a result bundle offline: exit 0 when its proof is valid, 1 (with the reason) when
    /// it is not.
    Verify {
        bundle: PathBuf,
        /// The module, to check against the bundle's hash instead of the bundle's own copy.
        #[arg(long, value_name = "WASM")]
        module: Option<PathBuf>,
        /// The verifying key (`zkmesh circuits vk CLASS --out FILE`); without it, the configured
        /// mesh's verifier is asked for it.
        #[arg(long, value_name = "FILE")]
        vk: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// zkVM circuit classes: list them, set one up (admin), save a verifying key.
    #[command(subcommand)]
    Circuits(CircuitsCommand),
    /// Cancel a task; its held credits are released.
    Cancel { task: String },
    /// Your recent tasks.
    Tasks {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// List the built-in example guests.
    Guests,
    /// Nodes: list, approve, deny, revoke, join tokens (admin).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Credits: balance, history, audit, mint.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// The mesh certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Run the registry service.
    #[command(subcommand)]
    Registry(ServeCommand),
    /// Run the scheduler service.
    #[command(subcommand)]
    Scheduler(ServeCommand),
    /// Run the verifier service.
    #[command(subcommand)]
    Verifier(ServeCommand),
    /// Run a worker node.
    Worker {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ServeCommand {
    /// Serve until SIGINT or SIGTERM. Settings come from the file and `ZKMESH_<SERVICE>_*`.
    Serve {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// A .wasm or .wat file, or the name of a built-in guest (see `zkmesh guests`).
    pub module: String,
    /// The input, as text.
    #[arg(long, conflicts_with = "input_file")]
    pub input: Option<String>,
    /// The input, from a file (`-` for stdin).
    #[arg(long, value_name = "PATH")]
    pub input_file: Option<PathBuf>,
    /// receipt, replicate:K or proof.
    #[arg(long, default_value = "receipt")]
    pub policy: String,
    /// Fuel limit (0: the scheduler's default).
    #[arg(long, default_value_t = 0)]
    pub fuel: u64,
    /// Memory limit in MiB (0: the scheduler's default).
    #[arg(long, default_value_t = 0)]
    pub memory_mib: u32,
    /// Wall-clock limit in seconds (0: the scheduler's default).
    #[arg(long, default_value_t = 0)]
    pub timeout_secs: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Always start an embedded mesh, even when one is configured.
    #[arg(long)]
    pub embedded: bool,
    /// Workers in the embedded mesh (1 to 64).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// After the task, audit the embedded mesh's ledger (exit 1 if the audit fails).
    #[arg(long)]
    pub audit: bool,
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Data directory (default: $ZKMESH_HOME/dev).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// First of four consecutive ports for registry, scheduler, ledger, verifier (0: any).
    #[arg(long, default_value_t = 7001)]
    pub port_base: u16,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    List {
        #[arg(long)]
        json: bool,
    },
    Approve {
        node: String,
    },
    Deny {
        node: String,
    },
    Revoke {
        node: String,
    },
    /// Create a join token for new nodes.
    Token {
        #[arg(long)]
        pre_approved: bool,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        uses: u32,
        #[arg(long, default_value_t = 86400)]
        ttl_secs: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum LedgerCommand {
    /// An account's balance (default: yours).
    Balance { account: Option<String> },
    /// An account's journal entries (default: yours).
    History {
        account: Option<String>,
        #[arg(long)]
        task: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Re-check the whole journal: hashes, chain, signatures, balances and conservation.
    Audit {
        #[arg(long)]
        json: bool,
    },
    /// Mint micro-credits into an account (admin).
    Mint { account: String, amount: u64 },
    /// Run the ledger service.
    Serve {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Create a new mesh CA (ca.crt, ca.key) in DIR.
    Init {
        #[arg(long, default_value = "ca")]
        dir: PathBuf,
        /// The mesh's name, part of every identity it certifies.
        #[arg(long, default_value = "zkmesh")]
        mesh_name: String,
    },
    /// Issue a certificate from the CA in DIR.
    Issue {
        #[arg(long, default_value = "ca")]
        dir: PathBuf,
        /// admin, user, service or node.
        #[arg(long)]
        role: String,
        #[arg(long)]
        name: String,
        /// Extra server names (DNS names or IPs) for a service certificate.
        #[arg(long)]
        host: Vec<String>,
        /// Where to write NAME.crt and NAME.key.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
}

/// `$ZKMESH_HOME`, or `~/.zkmesh`.
pub fn zkmesh_home() -> PathBuf {
    std::env::var_os("ZKMESH_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".zkmesh")))
        .unwrap_or_else(|| PathBuf::from(".zkmesh"))
}

/// The configured mesh, if any.
fn configured(flag: &Option<PathBuf>) -> Option<PathBuf> {
    flag.clone()
        .or_else(|| std::env::var_os("ZKMESH_CLIENT_CONFIG").map(PathBuf::from))
        .or_else(|| Some(zkmesh_home().join("client.toml")).filter(|p| p.exists()))
}

fn client(flag: &Option<PathBuf>) -> anyhow::Result<MeshClient> {
    let path = configured(flag).ok_or_else(|| {
        exit(
            EXIT_CONFIG,
            format!(
                "no mesh configured: start one with `zkmesh dev`, pass --mesh FILE, or set ZKMESH_CLIENT_CONFIG (looked for {})",
                zkmesh_home().join("client.toml").display()
            ),
        )
    })?;
    let config = ClientConfig::load(&path).map_err(|e| exit(EXIT_CONFIG, format!("{e:#}")))?;
    MeshClient::connect(&config).map_err(|e| exit(EXIT_CONFIG, format!("{e:#}")))
}

/// Reads a module argument: a file (.wasm, or .wat text) or a built-in guest's name.
pub fn load_module(arg: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let path = Path::new(arg);
    if path.exists() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {arg}"))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let is_text = path.extension().is_some_and(|e| e == "wat" || e == "wast")
            || !bytes.starts_with(b"\0asm");
        if is_text {
            let wasm = wat::parse_bytes(&bytes).map_err(|e| {
                exit(
                    EXIT_REFUSED,
                    format!("invalid module: {arg} is neither a wasm binary nor valid WAT: {e}"),
                )
            })?;
            return Ok((name, wasm.into_owned()));
        }
        return Ok((name, bytes));
    }
    let name = arg.strip_prefix("guest:").unwrap_or(arg);
    if let Some(g) = zkmesh_guests::get(name) {
        return Ok((g.name.to_string(), g.wasm.to_vec()));
    }
    Err(exit(
        EXIT_USAGE,
        format!(
            "{arg}: no such file, and no built-in guest of that name (built-in: {})",
            zkmesh_guests::all()
                .iter()
                .map(|g| g.name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

/// Parses `receipt`, `proof` or `replicate:K`.
pub fn parse_policy(s: &str) -> anyhow::Result<VerificationPolicy> {
    s.parse()
        .map_err(|e: zkmesh_proto::UnknownName| exit(EXIT_USAGE, e.to_string()))
}

fn read_input(args: &RunArgs) -> anyhow::Result<Vec<u8>> {
    match (&args.input, &args.input_file) {
        (Some(text), _) => Ok(text.as_bytes().to_vec()),
        (None, Some(p)) if p.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            Ok(buf)
        }
        (None, Some(p)) => std::fs::read(p).map_err(|e| {
            exit(
                EXIT_USAGE,
                format!("cannot read input file {}: {e}", p.display()),
            )
        }),
        (None, None) => Ok(Vec::new()),
    }
}

/// A wire enum's short name, or `none` for a value not set.
fn name_or_none(value: i32, name: fn(i32) -> &'static str) -> &'static str {
    if value == 0 { "none" } else { name(value) }
}

/// The JSON form of a result.
pub fn result_json(task: &Task, result: &TaskResult) -> serde_json::Value {
    let text = std::str::from_utf8(&result.output).ok();
    json!({
        "task_id": result.task_id,
        "state": TaskState::short_name_of(result.state),
        "exit": (result.exit != 0).then(|| ExitKind::short_name_of(result.exit)),
        "exit_message": result.exit_message,
        "output_base64": base64::engine::general_purpose::STANDARD.encode(&result.output),
        "output_text": text,
        "output_hash": result.output_hash,
        "fuel_used": result.fuel_used,
        "fuel_limit": task.fuel_limit,
        "policy": result.policy.unwrap_or_default().to_string(),
        "verdict": (result.verdict != 0).then(|| Verdict::short_name_of(result.verdict)),
        "verdict_reason": result.verdict_reason,
        "credits_charged": result.credits_charged,
        "credits_held": task.credits_held,
        "module_hash": task.module_hash,
        "input_hash": task.input_hash,
        "attempts": task.attempts,
        "run_time_us": result.run_time_us,
        "cpu_time_us": result.cpu_time_us,
        "receipts": result.receipts.iter().map(|r| json!({
            "node_id": r.node_id,
            "output_hash": r.output_hash,
            "fuel_used": r.fuel_used,
            "exit": name_or_none(r.exit, ExitKind::short_name_of),
            "signature": hex::encode(&r.signature),
        })).collect::<Vec<_>>(),
        "message": task.message,
        "proof": result.proof.as_ref().map(|p| json!({
            "circuit_class": p.circuit_class,
            "steps": p.steps,
            "segments": p.links.len() + 1,
            "status": p.status,
            "prove_time_ms": p.prove_time_ms,
            "verifying_key_sha256": p.verifying_key_sha256,
            "proof_base64": base64::engine::general_purpose::STANDARD.encode(&p.proof),
        })),
    })
}

/// 0 only for a task that completed and was verified.
pub fn task_exit_code(result: &TaskResult) -> i32 {
    let ok = result.state() == TaskState::Settled
        && result.exit() == ExitKind::Ok
        && result.verdict() == Verdict::Verified;
    if ok { 0 } else { EXIT_TASK }
}

fn print_result(task: &Task, result: &TaskResult, elapsed: Option<Duration>, body: bool) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "task     {}  {}  verdict: {} ({})",
        result.task_id,
        TaskState::short_name_of(result.state),
        name_or_none(result.verdict, Verdict::short_name_of),
        result.verdict_reason
    );
    let _ = writeln!(
        out,
        "exit     {}: {}",
        name_or_none(result.exit, ExitKind::short_name_of),
        if result.exit_message.is_empty() {
            &task.message
        } else {
            &result.exit_message
        }
    );
    let _ = writeln!(
        out,
        "fuel     {} of {}  ({} µs on the node, {} µs of CPU)",
        result.fuel_used, task.fuel_limit, result.run_time_us, result.cpu_time_us
    );
    let _ = writeln!(
        out,
        "credits  {} micro-credits charged (held {}, the rest refunded)",
        result.credits_charged, task.credits_held
    );
    if let Some(e) = elapsed {
        let _ = writeln!(
            out,
            "time     {:.1} ms submit to result",
            e.as_secs_f64() * 1000.0
        );
    }
    let _ = writeln!(
        out,
        "output   ({} bytes, sha256 {})",
        result.output.len(),
        result.output_hash
    );
    if !body {
        return;
    }
    // Text as text; anything with control characters (or not UTF-8) as base64.
    match std::str::from_utf8(&result.output) {
        Ok(text)
            if !text
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) =>
        {
            let _ = writeln!(out, "{text}");
        }
        _ => {
            let _ = writeln!(
                out,
                "base64:{}",
                base64::engine::general_purpose::STANDARD.encode(&result.output)
            );
        }
    }
}

fn progress_printer(quiet: bool) -> impl FnMut(&TaskEvent) {
    let started = Instant::now();
    move |e: &TaskEvent| {
        if !quiet {
            eprintln!(
                "[{:>7.1} ms] {:<9} {}",
                started.elapsed().as_secs_f64() * 1000.0,
                TaskState::short_name_of(e.state),
                e.message
            );
            print_log(e, |line| eprintln!("{line}"));
        }
    }
}

/// A guest's log output carried by an event, one `[guest] ` line per line.
fn print_log(e: &TaskEvent, mut print: impl FnMut(String)) {
    for line in e.log.lines() {
        print(format!("[guest] {line}"));
    }
}

/// Uploads, submits and (unless `submit_only`) waits; returns the exit code.
/// A task as the command line describes it, read and checked once (stdin can be read only
/// once) before anything is started.
struct Prepared {
    name: String,
    wasm: Vec<u8>,
    input: Vec<u8>,
    policy: VerificationPolicy,
}

/// The circuit class an embedded mesh proves a run of `wasm` on `input` in, found by tracing
/// it: the smallest that holds the run whole, up to c12 (about a minute of setup and 2 GiB while
/// proving on two cores); else segments of c12; else, for a program or memory state too large
/// for c12 (the Rust guests' programs are), segments of [`EMBEDDED_MAX_CLASS`] (c14: about three
/// minutes of setup, a minute and 6 GiB per segment).
pub fn proof_class(wasm: &[u8], input: &[u8], memory_mib: u32) -> anyhow::Result<String> {
    use zkmesh_prover::zkvm;
    let memory_mib = match memory_mib {
        0 => zkmesh_scheduler::DEFAULT_MEMORY_MIB,
        m => m,
    };
    let program = zkvm::program(wasm, (memory_mib as u64) << 20)?;
    let largest = zkvm::class_named(EMBEDDED_MAX_CLASS).expect("a class");
    let trace = zkvm::trace(&program, input, &largest);
    let upto = |name: &str| {
        let last = zkvm::CLASSES
            .iter()
            .position(|c| c.name == name)
            .expect("a class");
        &zkvm::CLASSES[..=last]
    };
    let circuits = match zkvm::fit(&program, input, &trace, upto("c12")) {
        Ok(c) => c,
        Err(zkvm::ZkvmError::TooLong { .. }) => zkvm::fit(
            &program,
            input,
            &trace,
            &[*upto(EMBEDDED_MAX_CLASS).last().unwrap()],
        )?,
        Err(e) => return Err(e.into()),
    };
    Ok(circuits[0].class.name.to_string())
}

/// The largest circuit class an embedded mesh sets up for `zkmesh run --policy proof`.
pub const EMBEDDED_MAX_CLASS: &str = "c14";

fn prepare(args: &RunArgs) -> anyhow::Result<Prepared> {
    let (name, wasm) = load_module(&args.module)?;
    let policy = parse_policy(&args.policy)?;
    let input = read_input(args)?;
    Ok(Prepared {
        name,
        wasm,
        input,
        policy,
    })
}

async fn submit_and_wait(
    api: &MeshClient,
    args: &RunArgs,
    task: Prepared,
    submit_only: bool,
) -> anyhow::Result<i32> {
    let Prepared {
        name,
        wasm,
        input,
        policy,
    } = task;
    let mut scheduler = api.scheduler()?;
    let module = upload(&mut scheduler, &name, &wasm)
        .await
        .context("uploading the module")?;
    let started = Instant::now();
    let task = scheduler
        .submit_task(SubmitTaskRequest {
            module_hash: module.module_hash.clone(),
            input,
            fuel_limit: args.fuel,
            memory_limit_mib: args.memory_mib,
            timeout_secs: args.timeout_secs,
            policy: Some(policy),
        })
        .await
        .context("submitting the task")?
        .into_inner();
    if submit_only {
        if args.json {
            println!(
                "{}",
                json!({"task_id": task.task_id, "state": TaskState::short_name_of(task.state), "module_hash": module.module_hash, "credits_held": task.credits_held})
            );
        } else {
            println!("{}", task.task_id);
        }
        return Ok(0);
    }
    // A task nobody takes would otherwise wait silently (the timeout counts from the start).
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hint = tokio::spawn({
        let taken = taken.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            if !taken.load(std::sync::atomic::Ordering::Relaxed) {
                eprintln!(
                    "still queued after 10 s: no node has taken the task yet \
                     (see `zkmesh node list`: nodes may be busy, pending approval or offline)"
                );
            }
        }
    });
    let mut printer = progress_printer(args.json);
    let result = wait(&mut scheduler, &task.task_id, |e| {
        if e.state() != TaskState::Queued {
            taken.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        printer(e)
    })
    .await;
    hint.abort();
    let result = result?;
    let elapsed = started.elapsed();
    let task = scheduler
        .get_task(TaskRef {
            task_id: task.task_id.clone(),
        })
        .await?
        .into_inner();
    if args.json {
        let mut value = result_json(&task, &result);
        value["elapsed_ms"] = json!(elapsed.as_secs_f64() * 1000.0);
        value["module_name"] = json!(name);
        println!("{value}");
    } else {
        print_result(&task, &result, Some(elapsed), true);
    }
    Ok(task_exit_code(&result))
}

async fn run(cli_mesh: &Option<PathBuf>, args: RunArgs) -> anyhow::Result<i32> {
    // Check what we can before starting anything.
    let task = prepare(&args)?;
    if !args.embedded
        && let Some(path) = configured(cli_mesh)
    {
        let config = ClientConfig::load(&path).map_err(|e| exit(EXIT_CONFIG, format!("{e:#}")))?;
        let api = MeshClient::connect(&config)?;
        return submit_and_wait(&api, &args, task, false)
            .await
            .map_err(|e| {
                let unreachable = e
                    .downcast_ref::<tonic::Status>()
                    .is_some_and(|s| s.code() == tonic::Code::Unavailable);
                if !unreachable {
                    return e;
                }
                exit(
                    crate::EXIT_UNAVAILABLE,
                    format!(
                        "cannot reach the mesh configured in {} ({}); is `zkmesh dev` running? \
                     `zkmesh run --embedded` runs on a throwaway mesh instead",
                        path.display(),
                        crate::describe(&e)
                    ),
                )
            });
    }
    let dir = tempfile::Builder::new().prefix("zkmesh-run-").tempdir()?;
    let mut options = MeshOptions::new(dir.path());
    options.workers = args.workers as usize;
    options.metrics = true;
    // Under the proof policy, trace the run here first: it says at once whether the module can
    // be proved and which circuit class it needs, so only that class is set up (once; the keys
    // are kept in the keys directory).
    let class = if task.policy.kind() == PolicyKind::Proof {
        let class = proof_class(&task.wasm, &task.input, args.memory_mib).map_err(|e| {
            exit(
                EXIT_REFUSED,
                format!("cannot run this under --policy proof: {e}"),
            )
        })?;
        options.setup_classes = vec![class.clone()];
        if !args.json {
            eprintln!(
                "circuit class {class} (keys in {}; set up once, then reused)",
                options.keys_dir.display()
            );
        }
        Some(class)
    } else {
        None
    };
    if !args.json {
        eprintln!(
            "starting an embedded mesh (4 services over mTLS, {} workers)...",
            options.workers
        );
    }
    let mesh = LocalMesh::start(options).await?;
    mesh.wait_for_workers(args.workers as usize, Duration::from_secs(30))
        .await?;
    let api = MeshClient::connect(&mesh.client)?;
    if let Some(class) = &class {
        api.wait_for_circuit(class, args.json).await?;
    }
    let mut result = submit_and_wait(&api, &args, task, false).await;
    if args.audit
        && result.is_ok()
        && let Err(e) = audit(&api).await
    {
        eprintln!("ledger audit FAILED: {e:#}");
        result = Ok(EXIT_TASK);
    }
    mesh.stop().await;
    result
}

async fn verify(
    mesh: &Option<PathBuf>,
    path: &Path,
    module: Option<&Path>,
    vk: Option<&Path>,
    json: bool,
) -> anyhow::Result<i32> {
    let text = std::fs::read(path)
        .map_err(|e| exit(EXIT_USAGE, format!("cannot read {}: {e}", path.display())))?;
    let invalid = |why: String| -> anyhow::Result<i32> {
        if json {
            println!("{}", json!({"valid": false, "reason": why}));
        } else {
            println!("INVALID: {why}");
        }
        Ok(EXIT_TASK)
    };
    let bundle: crate::bundle::Bundle = match serde_json::from_slice(&text) {
        Ok(b) => b,
        Err(e) => return invalid(format!("not a result bundle: {e}")),
    };
    let module = match module {
        Some(p) => Some(
            std::fs::read(p)
                .map_err(|e| exit(EXIT_USAGE, format!("cannot read {}: {e}", p.display())))?,
        ),
        None => None,
    };
    let vk = match vk {
        Some(p) => std::fs::read(p)
            .map_err(|e| exit(EXIT_USAGE, format!("cannot read {}: {e}", p.display())))?,
        None => {
            let api = client(mesh).map_err(|e| {
                exit(
                    EXIT_CONFIG,
                    format!("no --vk given and no mesh to ask for it ({e:#}); save one with `zkmesh circuits vk CLASS --out FILE`"),
                )
            })?;
            api.verifier()?
                .get_verifying_key(CircuitRef {
                    circuit_class: bundle.proof.circuit_class.clone(),
                })
                .await?
                .into_inner()
                .verifying_key
        }
    };
    match crate::bundle::check(&bundle, &vk, module.as_deref()) {
        Ok(c) => {
            if json {
                println!(
                    "{}",
                    json!({"valid": true, "task_id": bundle.task_id, "circuit_class": c.class,
                           "memory_limit_mib": bundle.memory_limit_mib, "ending": c.ending,
                           "steps": c.steps, "segments": c.segments, "output_bytes": c.output_len, "verify_us": c.verify_us,
                           "module_hash": bundle.module_hash, "input_hash": bundle.input_hash,
                           "output_hash": bundle.output_hash})
                );
            } else {
                println!(
                    "VALID: task {} ran module {} on input {} under a memory limit of {} MiB for {} zkVM steps, ended {}, and wrote {} bytes (sha256 {}); Groth16 proof checked in {} µs (class {}{})",
                    bundle.task_id,
                    bundle.module_hash,
                    bundle.input_hash,
                    bundle.memory_limit_mib,
                    c.steps,
                    c.ending,
                    c.output_len,
                    bundle.output_hash,
                    c.verify_us,
                    c.class,
                    if c.segments > 1 {
                        format!(", {} chained segments", c.segments)
                    } else {
                        String::new()
                    }
                );
            }
            Ok(0)
        }
        Err(why) => invalid(why),
    }
}

async fn circuits(mesh: &Option<PathBuf>, c: CircuitsCommand) -> anyhow::Result<i32> {
    let api = client(mesh)?;
    match c {
        CircuitsCommand::List { json } => {
            let list = api
                .verifier()?
                .list_circuits(Empty {})
                .await?
                .into_inner()
                .circuits;
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|c| {
                        json!({"class": c.circuit_class, "steps": c.steps, "program": c.program,
                        "data_words": c.data_words, "input_words": c.input_words,
                        "output_words": c.output_words, "state": c.state,
                        "constraints": c.constraints, "proving_key_size": c.proving_key_size,
                        "proving_key_sha256": c.proving_key_sha256,
                        "verifying_key_sha256": c.verifying_key_sha256, "setup_ms": c.setup_ms})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!("class   steps   program  state");
                for c in list {
                    println!(
                        "{:<7} {:>6}  {:>7}  {}",
                        c.circuit_class, c.steps, c.program, c.state
                    );
                }
            }
            Ok(0)
        }
        CircuitsCommand::Setup { class } => {
            let mut stream = api
                .admin_verifier()?
                .setup_circuit(CircuitRef {
                    circuit_class: class.clone(),
                })
                .await?
                .into_inner();
            while let Some(p) = stream.message().await? {
                if p.done {
                    let info = p.info.unwrap_or_default();
                    println!(
                        "{class} ready: {} constraints, proving key {} bytes (sha256 {}), verifying key sha256 {}",
                        info.constraints,
                        info.proving_key_size,
                        info.proving_key_sha256,
                        info.verifying_key_sha256
                    );
                } else {
                    eprintln!("{class}: {} ({} s)", p.phase, p.elapsed_ms / 1000);
                }
            }
            Ok(0)
        }
        CircuitsCommand::Vk { class, out } => {
            let data = api
                .verifier()?
                .get_verifying_key(CircuitRef {
                    circuit_class: class.clone(),
                })
                .await?
                .into_inner();
            std::fs::write(&out, &data.verifying_key)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "verifying key of {class} written to {} (sha256 {})",
                out.display(),
                data.info
                    .map(|i| i.verifying_key_sha256)
                    .unwrap_or_default()
            );
            Ok(0)
        }
    }
}

async fn dev(args: DevArgs) -> anyhow::Result<i32> {
    let home = zkmesh_home();
    let dir = args.dir.unwrap_or_else(|| home.join("dev"));
    // One dev mesh per data directory: two would share its databases.
    let lock = dir.join("dev.pid");
    if let Ok(pid) = std::fs::read_to_string(&lock)
        && Path::new("/proc").join(pid.trim()).exists()
    {
        return Err(exit(
            EXIT_USAGE,
            format!(
                "another `zkmesh dev` (pid {}) is running on {}; stop it first, or use --dir",
                pid.trim(),
                dir.display()
            ),
        ));
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::write(&lock, std::process::id().to_string())?;
    let mut options = MeshOptions::new(&dir);
    options.workers = args.workers;
    if args.port_base != 0 {
        options.listen =
            std::array::from_fn(|i| format!("127.0.0.1:{}", args.port_base as usize + i));
    }
    let mesh = LocalMesh::start(options).await?;
    let config_path = home.join("client.toml");
    mesh.client.save(&config_path)?;
    println!("zkmesh dev mesh is up (data in {})", dir.display());
    println!("  registry   {}", mesh.client.registry);
    println!("  scheduler  {}", mesh.client.scheduler);
    println!("  ledger     {}", mesh.client.ledger);
    println!("  verifier   {}", mesh.client.verifier);
    for (name, s) in [
        ("registry", &mesh.registry),
        ("scheduler", &mesh.scheduler),
        ("ledger", &mesh.ledger),
        ("verifier", &mesh.verifier),
    ] {
        if let Some(m) = s.metrics_addr {
            println!("  metrics    http://{m}/metrics  ({name})");
        }
    }
    println!("  client config written to {}", config_path.display());
    println!("try: zkmesh run sha256 --input hello      (Ctrl-C stops the mesh)");
    zkmesh_kit::server::shutdown_signal().await;
    eprintln!("stopping...");
    let mesh_client = mesh.client.clone();
    mesh.stop().await;
    // Remove the client config only if it is still ours.
    if std::fs::read_to_string(&config_path).ok() == toml::to_string_pretty(&mesh_client).ok() {
        let _ = std::fs::remove_file(&config_path);
    }
    let _ = std::fs::remove_file(&lock);
    Ok(0)
}

async fn serve_until_signal(
    serving: zkmesh_kit::server::Serving,
    shutdown: CancellationToken,
) -> anyhow::Result<i32> {
    let mut task = serving.task;
    tokio::select! {
        r = &mut task => { r??; return Ok(0); }
        _ = zkmesh_kit::server::shutdown_signal() => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
    task.await??;
    Ok(0)
}

fn config<T: serde::de::DeserializeOwned>(
    file: &Option<PathBuf>,
    section: &str,
) -> anyhow::Result<T> {
    load(file.as_deref(), section, &process_env()).map_err(|e| exit(EXIT_CONFIG, e.to_string()))
}

/// Runs a parsed command line and returns the process exit code.
pub async fn execute(cli: Cli) -> anyhow::Result<i32> {
    let mesh = cli.mesh.clone();
    match cli.command {
        Command::Run(args) => run(&mesh, args).await,
        Command::Dev(args) => dev(args).await,
        Command::Submit(args) => {
            let task = prepare(&args)?;
            submit_and_wait(&client(&mesh)?, &args, task, true).await
        }
        Command::Upload { module, json } => {
            let (name, wasm) = load_module(&module)?;
            let api = client(&mesh)?;
            let info = upload(&mut api.scheduler()?, &name, &wasm).await?;
            if json {
                println!(
                    "{}",
                    json!({
                        "module_hash": info.module_hash, "size": info.size,
                        "abi": GuestAbi::short_name_of(info.abi),
                        "imports": info.imports, "provable": info.provable, "provable_reason": info.provable_reason,
                        "already_present": info.already_present,
                    })
                );
            } else {
                println!("{}", info.module_hash);
                eprintln!(
                    "{} bytes, {:?} ABI; provable: {} ({})",
                    info.size,
                    GuestAbi::try_from(info.abi).unwrap_or(GuestAbi::Unspecified),
                    info.provable,
                    info.provable_reason
                );
            }
            Ok(0)
        }
        Command::Status { task, json } => {
            let t = client(&mesh)?
                .scheduler()?
                .get_task(TaskRef { task_id: task })
                .await?
                .into_inner();
            if json {
                println!(
                    "{}",
                    json!({"task_id": t.task_id, "state": TaskState::short_name_of(t.state), "message": t.message, "attempts": t.attempts, "policy": t.policy.unwrap_or_default().to_string(), "module_hash": t.module_hash, "credits_held": t.credits_held})
                );
            } else {
                println!(
                    "{}  {}  {}",
                    t.task_id,
                    TaskState::short_name_of(t.state),
                    t.message
                );
            }
            Ok(0)
        }
        Command::Watch { task, json } => {
            let api = client(&mesh)?;
            let mut s = api.scheduler()?;
            let result = wait(&mut s, &task, |e| {
                if json {
                    println!("{}", json!({"seq": e.seq, "state": TaskState::short_name_of(e.state), "message": e.message, "node_id": e.node_id, "at_ms": e.at_ms, "log": e.log}));
                } else {
                    println!("{:>3}  {:<9} {}", e.seq, TaskState::short_name_of(e.state), e.message);
                    print_log(e, |line| println!("     {line}"));
                }
            })
            .await?;
            Ok(task_exit_code(&result))
        }
        Command::Result {
            task,
            json,
            output,
            bundle,
        } => {
            let api = client(&mesh)?;
            let mut s = api.scheduler()?;
            let t = s
                .get_task(TaskRef {
                    task_id: task.clone(),
                })
                .await?
                .into_inner();
            let r = s.get_result(TaskRef { task_id: task }).await?.into_inner();
            if let Some(path) = &bundle {
                if r.verdict() != Verdict::Verified {
                    return Err(exit(
                        EXIT_TASK,
                        format!("task {} is not verified; no bundle written", t.task_id),
                    ));
                }
                let module = api.module_bytes(&t.module_hash).await?;
                let b = crate::bundle::Bundle::new(&t, &r, &module)
                    .map_err(|e| exit(EXIT_TASK, e.to_string()))?;
                std::fs::write(path, serde_json::to_vec_pretty(&b)?)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("bundle written to {}", path.display());
            }
            if let Some(path) = &output {
                std::fs::write(path, &r.output)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if json {
                println!("{}", result_json(&t, &r));
            } else {
                print_result(&t, &r, None, output.is_none());
            }
            Ok(task_exit_code(&r))
        }
        Command::Verify {
            bundle,
            module,
            vk,
            json,
        } => verify(&mesh, &bundle, module.as_deref(), vk.as_deref(), json).await,
        Command::Circuits(c) => circuits(&mesh, c).await,
        Command::Cancel { task } => {
            let t = client(&mesh)?
                .scheduler()?
                .cancel_task(TaskRef { task_id: task })
                .await?
                .into_inner();
            println!(
                "{}  {}  {}",
                t.task_id,
                TaskState::short_name_of(t.state),
                t.message
            );
            Ok(0)
        }
        Command::Tasks { limit } => {
            let tasks = client(&mesh)?
                .scheduler()?
                .list_tasks(ListTasksRequest { limit })
                .await?
                .into_inner()
                .tasks;
            for t in tasks {
                println!(
                    "{}  {:<9} {:<12} {}",
                    t.task_id,
                    TaskState::short_name_of(t.state),
                    t.policy.unwrap_or_default().to_string(),
                    t.message
                );
            }
            Ok(0)
        }
        Command::Guests => {
            for g in zkmesh_guests::all() {
                println!(
                    "{:<10} {:<7} {}",
                    g.name,
                    format!("{:?}", g.abi).to_lowercase(),
                    g.about
                );
            }
            Ok(0)
        }
        Command::Node(cmd) => node(&mesh, cmd).await,
        Command::Ledger(LedgerCommand::Serve { config: file }) => {
            zkmesh_kit::telemetry::init_tracing("info");
            let shutdown = CancellationToken::new();
            let serving = zkmesh_ledger::start(config(&file, "ledger")?, shutdown.clone()).await?;
            serve_until_signal(serving, shutdown).await
        }
        Command::Ledger(cmd) => ledger(&mesh, cmd).await,
        Command::Ca(cmd) => ca(cmd),
        Command::Registry(ServeCommand::Serve { config: file }) => {
            zkmesh_kit::telemetry::init_tracing("info");
            let shutdown = CancellationToken::new();
            let serving =
                zkmesh_registry::start(config(&file, "registry")?, shutdown.clone()).await?;
            serve_until_signal(serving, shutdown).await
        }
        Command::Scheduler(ServeCommand::Serve { config: file }) => {
            zkmesh_kit::telemetry::init_tracing("info");
            let shutdown = CancellationToken::new();
            let serving =
                zkmesh_scheduler::start(config(&file, "scheduler")?, shutdown.clone()).await?;
            serve_until_signal(serving, shutdown).await
        }
        Command::Verifier(ServeCommand::Serve { config: file }) => {
            zkmesh_kit::telemetry::init_tracing("info");
            let shutdown = CancellationToken::new();
            let serving =
                zkmesh_verifier::start(config(&file, "verifier")?, shutdown.clone()).await?;
            serve_until_signal(serving, shutdown).await
        }
        Command::Worker { config: file } => {
            zkmesh_kit::telemetry::init_tracing("info");
            let shutdown = CancellationToken::new();
            let handle = zkmesh_worker::start(config(&file, "worker")?, shutdown.clone()).await?;
            let mut task = handle.task;
            tokio::select! {
                r = &mut task => { r??; return Ok(0); }
                _ = zkmesh_kit::server::shutdown_signal() => {}
            }
            shutdown.cancel();
            task.await??;
            Ok(0)
        }
    }
}

async fn node(mesh: &Option<PathBuf>, cmd: NodeCommand) -> anyhow::Result<i32> {
    let api = client(mesh)?;
    let mut registry = api.admin_registry()?;
    let show = |n: &Node| {
        println!(
            "{}  {:<8} {:<16} {:<16} slots={}",
            n.node_id,
            zkmesh_registry::describe_status(n.status),
            n.name,
            n.operator,
            n.slots
        )
    };
    match cmd {
        NodeCommand::List { json } => {
            let nodes = registry
                .list_nodes(ListNodesRequest { status: 0 })
                .await?
                .into_inner()
                .nodes;
            if json {
                let list: Vec<_> = nodes
                    .iter()
                    .map(|n| {
                        json!({
                            "node_id": n.node_id, "name": n.name, "operator": n.operator,
                            "status": zkmesh_registry::describe_status(n.status), "slots": n.slots,
                            "last_heartbeat_at_ms": n.last_heartbeat_at_ms,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                nodes.iter().for_each(show);
            }
        }
        NodeCommand::Approve { node } => show(
            &registry
                .approve_node(NodeRef { node_id: node })
                .await?
                .into_inner(),
        ),
        NodeCommand::Deny { node } => show(
            &registry
                .deny_node(NodeRef { node_id: node })
                .await?
                .into_inner(),
        ),
        NodeCommand::Revoke { node } => show(
            &registry
                .revoke_node(NodeRef { node_id: node })
                .await?
                .into_inner(),
        ),
        NodeCommand::Token {
            pre_approved,
            uses,
            ttl_secs,
        } => {
            let t = registry
                .create_join_token(CreateJoinTokenRequest {
                    pre_approved,
                    ttl_secs,
                    max_uses: uses,
                })
                .await?
                .into_inner();
            println!("{}", t.token);
        }
    }
    Ok(0)
}

async fn ledger(mesh: &Option<PathBuf>, cmd: LedgerCommand) -> anyhow::Result<i32> {
    let api = client(mesh)?;
    match cmd {
        LedgerCommand::Balance { account } => {
            let mut l = if account.is_some() {
                api.admin_ledger()?
            } else {
                api.ledger()?
            };
            let a = l
                .get_balance(AccountRef {
                    account: account.unwrap_or_default(),
                })
                .await?
                .into_inner();
            println!("{}  {} micro-credits", a.account, a.balance);
        }
        LedgerCommand::History {
            account,
            task,
            json,
        } => {
            let mut l = if account.is_some() || task.is_some() {
                api.admin_ledger()?
            } else {
                api.ledger()?
            };
            let entries = l
                .history(HistoryRequest {
                    account: account.unwrap_or_default(),
                    task_id: task.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .entries;
            for e in entries {
                if json {
                    println!(
                        "{}",
                        json!({"seq": e.seq, "at_ms": e.at_ms, "kind": e.kind, "account": e.account, "task_id": e.task_id, "amount": e.amount, "hash": e.hash})
                    );
                } else {
                    println!(
                        "{:>6}  {:<8} {:>14}  {:<24} {}",
                        e.seq, e.kind, e.amount, e.account, e.task_id
                    );
                }
            }
        }
        LedgerCommand::Audit { json } => match audit(&api).await {
            Ok(r) => {
                if json {
                    println!(
                        "{}",
                        json!({"ok": true, "entries": r.entries, "accounts": r.accounts, "open_holds": r.open_holds, "minted": r.minted})
                    );
                } else {
                    println!(
                        "audit passed: {} journal entries, {} accounts, {} open holds, {} micro-credits minted and conserved",
                        r.entries, r.accounts, r.open_holds, r.minted
                    );
                }
            }
            Err(e) => {
                if e.downcast_ref::<tonic::Status>().is_some() {
                    return Err(e);
                }
                if json {
                    println!("{}", json!({"ok": false, "reason": format!("{e:#}")}));
                } else {
                    println!("audit FAILED: {e:#}");
                }
                return Ok(EXIT_TASK);
            }
        },
        LedgerCommand::Mint { account, amount } => {
            let a = api
                .admin_ledger()?
                .mint(MintRequest { account, amount })
                .await?
                .into_inner();
            println!("{}  {} micro-credits", a.account, a.balance);
        }
        LedgerCommand::Serve { .. } => unreachable!("handled in execute"),
    }
    Ok(0)
}

fn ca(cmd: CaCommand) -> anyhow::Result<i32> {
    match cmd {
        CaCommand::Init { dir, mesh_name } => {
            let ca = MeshCa::generate(&mesh_name).map_err(|e| exit(EXIT_USAGE, e.to_string()))?;
            ca.save(&dir).map_err(|e| exit(EXIT_USAGE, e.to_string()))?;
            println!("created the CA of mesh {mesh_name:?} in {}", dir.display());
        }
        CaCommand::Issue {
            dir,
            role,
            name,
            host,
            out,
            days,
        } => {
            let ca = MeshCa::load(&dir)?;
            let role = Role::parse(&role).ok_or_else(|| {
                exit(
                    EXIT_USAGE,
                    format!("unknown role {role:?}: use admin, user, service or node"),
                )
            })?;
            let id = Identity::new(&ca.mesh, role, &name);
            ca.issue(&id, &host, Duration::from_secs(days * 86400))?
                .write(&out, &name)?;
            println!("issued {} -> {}/{name}.crt", id.uri(), out.display());
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn policies_parse_strictly() {
        assert_eq!(parse_policy("receipt").unwrap().kind(), PolicyKind::Receipt);
        assert_eq!(parse_policy("replicate:3").unwrap().replicas, 3);
        assert_eq!(parse_policy("proof").unwrap().kind(), PolicyKind::Proof);
        for bad in [
            "",
            "replicate",
            "replicate:1",
            "replicate:x",
            "Receipt",
            "proof:2",
        ] {
            assert!(parse_policy(bad).is_err(), "{bad}");
        }
    }
}
