//! Load generator: trivial tasks through a whole mesh (an embedded one by default: four
//! services over mutual TLS with SQLite, and workers), reporting throughput, submit-to-result
//! latency percentiles and where a task's time goes, stage by stage.
//!
//!     cargo run --release -p zkmesh-benches --bin loadgen -- --tasks 2000 --concurrency 64
//!
//! Bounded: it submits exactly `--tasks` tasks and gives up after `--max-secs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use zkmesh_client::mesh::{LocalMesh, MeshOptions};
use zkmesh_client::{ClientConfig, MeshClient, upload, wait};
use zkmesh_proto::*;

#[derive(Parser, Debug)]
struct Args {
    /// Tasks to run.
    #[arg(long, default_value_t = 2000)]
    tasks: usize,
    /// Tasks in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Workers in the embedded mesh.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Slots per worker in the embedded mesh.
    #[arg(long, default_value_t = 8)]
    slots: u32,
    /// Drive an existing mesh (a client config) instead of an embedded one.
    #[arg(long)]
    mesh: Option<std::path::PathBuf>,
    /// receipt or replicate:K.
    #[arg(long, default_value = "receipt")]
    policy: String,
    /// Stop after this long whatever happens.
    #[arg(long, default_value_t = 600)]
    max_secs: u64,
    #[arg(long)]
    json: bool,
    /// Beside the load, a hostile client: 1,000 idle TLS connections without a certificate from
    /// 127.0.0.2 and 10,000 calls to made-up methods, both at the scheduler (embedded mesh only).
    #[arg(long)]
    hostile: bool,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    zkmesh_kit::telemetry::init_tracing("warn");
    let dir = tempfile::tempdir()?;
    let (mesh, config) = match &args.mesh {
        Some(path) => (None, ClientConfig::load(path)?),
        None => {
            let mut options = MeshOptions::new(dir.path());
            options.workers = args.workers;
            options.worker_slots = args.slots;
            let mesh = LocalMesh::start(options).await?;
            mesh.wait_for_workers(args.workers, Duration::from_secs(30))
                .await?;
            let config = mesh.client.clone();
            (Some(mesh), config)
        }
    };
    let api = Arc::new(MeshClient::connect(&config)?);
    let wasm = wat::parse_str(zkmesh_benches::TRIVIAL_WAT)?;
    let module = upload(&mut api.scheduler()?, "trivial", &wasm).await?;
    let policy: VerificationPolicy = args.policy.parse()?;

    let flood = match (&mesh, args.hostile) {
        (Some(mesh), true) => {
            let ca = std::fs::read_to_string(&config.ca)?;
            let (addr, endpoint) = (mesh.scheduler.addr, config.scheduler.clone());
            Some(tokio::spawn(async move {
                use zkmesh_benches::hostile::{idle_connections, made_up_calls};
                let from = "127.0.0.2".parse().expect("an address");
                let idle = idle_connections(&ca, from, addr, 1000, 64).await?;
                let anonymous = zkmesh_kit::client::ClientTls { ca, identity: None };
                let ch = zkmesh_kit::client::channel(&endpoint, &anonymous, "scheduler")?;
                let answered = made_up_calls(ch, "zkmesh.v1.SchedulerService", 10_000, 64).await;
                anyhow::Ok((idle, answered))
            }))
        }
        (None, true) => anyhow::bail!("--hostile drives an embedded mesh only"),
        _ => None,
    };
    // One channel (HTTP/2 connection) shared by every task, as a real client would.
    let scheduler = api.scheduler()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_secs);
    let results = futures::stream::iter(0..args.tasks)
        .map(|i| {
            let (mut s, hash) = (scheduler.clone(), module.module_hash.clone());
            async move {
                if Instant::now() > deadline {
                    return None;
                }
                let t0 = Instant::now();
                let task = s
                    .submit_task(SubmitTaskRequest {
                        module_hash: hash,
                        input: i.to_string().into_bytes(),
                        fuel_limit: 1_000_000,
                        policy: Some(policy),
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .task?;
                let mut events = Vec::new();
                let waiting = wait(&mut s, &task.task_id, |e| events.push(e.clone()));
                let result = tokio::time::timeout(Duration::from_secs(60), waiting)
                    .await
                    .ok()?
                    .ok()?;
                let ok = result.state() == TaskState::Settled && result.output == b"ok";
                Some((ok, t0.elapsed().as_secs_f64() * 1000.0, events))
            }
        })
        .buffer_unordered(args.concurrency)
        .collect::<Vec<_>>()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let hostile = match flood {
        Some(flood) => {
            let (idle, answered) = flood.await??;
            serde_json::json!({
                "idle_connections_kept": idle.kept.len(),
                "idle_connections_refused": idle.refused,
                "made_up_calls": answered,
            })
        }
        None => serde_json::Value::Null,
    };

    let done: Vec<_> = results.into_iter().flatten().collect();
    let ok = done.iter().filter(|(ok, _, _)| *ok).count();
    let mut latencies: Vec<f64> = done.iter().map(|(_, l, _)| *l).collect();
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // Mean time from each state to the next, from the scheduler's event timestamps (ms).
    let stages = [
        TaskState::Queued,
        TaskState::Assigned,
        TaskState::Running,
        TaskState::Reported,
        TaskState::Verified,
        TaskState::Settled,
    ];
    let mut stage_ms = vec![0.0; stages.len() - 1];
    for (_, _, events) in &done {
        let at = |state: TaskState| {
            events
                .iter()
                .find(|e| e.state == state as i32)
                .map(|e| e.at_ms)
        };
        for (i, w) in stages.windows(2).enumerate() {
            if let (Some(a), Some(b)) = (at(w[0]), at(w[1])) {
                stage_ms[i] += (b - a) as f64 / done.len().max(1) as f64;
            }
        }
    }
    let report = serde_json::json!({
        "tasks": args.tasks,
        "completed_ok": ok,
        "concurrency": args.concurrency,
        "workers": args.workers,
        "slots_per_worker": args.slots,
        "policy": args.policy,
        "seconds": elapsed,
        "tasks_per_second": ok as f64 / elapsed,
        "latency_ms": {
            "p50": percentile(&latencies, 0.50),
            "p90": percentile(&latencies, 0.90),
            "p99": percentile(&latencies, 0.99),
            "max": latencies.last().copied().unwrap_or(f64::NAN),
        },
        "hostile": hostile,
        "mean_stage_ms": stages.windows(2).zip(&stage_ms)
            .map(|(w, ms)| (format!("{}->{}", w[0], w[1]), serde_json::json!(ms)))
            .collect::<serde_json::Map<_, _>>(),
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if let Some(mesh) = mesh {
        mesh.stop().await;
    }
    anyhow::ensure!(
        ok == args.tasks,
        "{} of {} tasks did not complete",
        args.tasks - ok,
        args.tasks
    );
    Ok(())
}
