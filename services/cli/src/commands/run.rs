//! `zkmesh run`: one task, on the configured mesh or an embedded one, and what `submit`
//! shares with it (reading the module and input, choosing a proof class, following the task).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use zkmesh_proto::*;

use crate::args::{RunArgs, parse_policy};
use crate::commands::configured;
use crate::render::{print_result, progress_printer, result_json, task_exit_code};
use crate::{EXIT_CONFIG, EXIT_REFUSED, EXIT_TASK, EXIT_USAGE, exit};
use zkmesh_client::mesh::{LocalMesh, MeshOptions};
use zkmesh_client::{ClientConfig, MeshClient, audit, upload, wait};

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

/// The task input from `--input`, `--input-file` (`-` for stdin), or empty.
pub(crate) fn read_input(args: &RunArgs) -> anyhow::Result<Vec<u8>> {
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

/// Uploads, submits and (unless `submit_only`) waits; returns the exit code.
/// A task as the command line describes it, read and checked once (stdin can be read only
/// once) before anything is started.
pub(crate) struct Prepared {
    pub(crate) name: String,
    pub(crate) wasm: Vec<u8>,
    pub(crate) input: Vec<u8>,
    pub(crate) policy: VerificationPolicy,
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

/// Reads the module and input and parses the policy of a `run` or `submit`.
pub(crate) fn prepare(args: &RunArgs) -> anyhow::Result<Prepared> {
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

/// Uploads, submits and follows a task, then prints its result; returns the exit code.
pub(crate) async fn submit_and_wait(
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
    let task = zkmesh_client::submit(
        &mut scheduler,
        SubmitTaskRequest {
            module_hash: module.module_hash.clone(),
            input,
            fuel_limit: args.fuel,
            memory_limit_mib: args.memory_mib,
            timeout_secs: args.timeout_secs,
            policy: Some(policy),
            request_id: String::new(),
        },
    )
    .await
    .context("submitting the task")?;
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
    let task = zkmesh_client::task(&mut scheduler, &task.task_id).await?;
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

/// `zkmesh run`: on the configured mesh if it answers, else on an embedded one.
pub(crate) async fn run(cli_mesh: &Option<PathBuf>, args: RunArgs) -> anyhow::Result<i32> {
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
        eprintln!(
            "ledger audit FAILED: {}",
            crate::render::safe(&format!("{e:#}"))
        );
        result = Ok(EXIT_TASK);
    }
    mesh.stop().await;
    result
}
