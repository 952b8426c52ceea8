//! zkVM figures: constraints per WebAssembly instruction on every guest, and per size class the
//! constraints, setup time, proving-key size, proving time, peak memory while proving, and
//! verification time for one proof and per proof in a batch.
//!
//! ```text
//! cargo run --release -p zkmesh-benches --bin zkvm -- --classes c9,c10 --keys-dir /tmp/zkkeys
//! ```
//!
//! Keys found in `--keys-dir` (as the verifier service writes them) are reused; missing ones
//! are set up here and written there.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use zkmesh_prover::circuit::{Class, ZkvmCircuit};
use zkmesh_prover::groth;
use zkmesh_prover::zkvm::{self, CLASSES, class_named};
use zkmesh_runtime::{Limits, Sandbox, SandboxConfig};

#[derive(Parser)]
struct Args {
    /// Classes to set up (or load), prove and verify in.
    #[arg(long, default_value = "c9,c10", value_delimiter = ',')]
    classes: Vec<String>,
    #[arg(long, default_value = "/tmp/zkmesh-bench-keys")]
    keys_dir: PathBuf,
    /// Proofs in the batch-verification figure.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Guests to prove whole, in segments of a class: `GUEST:CLASS`, e.g. `sha256:c12`.
    #[arg(long, value_delimiter = ',')]
    segments: Vec<String>,
}

/// Peak resident memory of this process so far, in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Loads the class's keys from `dir` (the verifier's layout) or sets the class up.
fn keys(dir: &std::path::Path, class: Class) -> anyhow::Result<(groth::Pk, groth::Vk, u64, f64)> {
    std::fs::create_dir_all(dir)?;
    let manifest = dir.join(format!("{}.json", class.name));
    let current =
        |m: &serde_json::Value| m["circuit_fingerprint"] == groth::fingerprint(&class).as_str();
    if let Some(m) = std::fs::read(&manifest)
        .ok()
        .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
        .filter(current)
    {
        let pk_hash = m["proving_key_sha256"].as_str().unwrap_or_default();
        let vk_hash = m["verifying_key_sha256"].as_str().unwrap_or_default();
        let pk_bytes = std::fs::read(dir.join(format!("{pk_hash}.pk")))?;
        let vk_bytes = std::fs::read(dir.join(format!("{vk_hash}.vk")))?;
        anyhow::ensure!(zkvm::sha256_hex(&pk_bytes) == pk_hash, "proving key hash");
        let setup_s = m["setup_ms"].as_f64().unwrap_or(0.0) / 1000.0;
        return Ok((
            zkvm::pk_from_checked(&pk_bytes)?,
            zkvm::vk_from(&vk_bytes)?,
            pk_bytes.len() as u64,
            setup_s,
        ));
    }
    let started = Instant::now();
    let (pk, vk, system) = groth::setup(class)?;
    let setup_s = started.elapsed().as_secs_f64();
    let pk_bytes = zkvm::pk_bytes(&pk);
    let vk_bytes = zkvm::vk_bytes(&vk);
    let (ph, vh) = (zkvm::sha256_hex(&pk_bytes), zkvm::sha256_hex(&vk_bytes));
    std::fs::write(dir.join(format!("{ph}.pk")), &pk_bytes)?;
    std::fs::write(dir.join(format!("{vh}.vk")), &vk_bytes)?;
    let constraints = groth::count_constraints(class)?;
    std::fs::write(
        &manifest,
        serde_json::to_vec_pretty(&serde_json::json!({
            "class": class.name, "proving_key_sha256": ph, "proving_key_size": pk_bytes.len(),
            "verifying_key_sha256": vh, "constraints": constraints,
            "setup_ms": (setup_s * 1000.0) as u64, "circuit_fingerprint": groth::fingerprint(&class),
            "constraint_system_sha256": system,
        }))?,
    )?;
    Ok((pk, vk, pk_bytes.len() as u64, setup_s))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();

    // Constraints per step, from the smallest class (the networks grow as n log n, so larger
    // classes pay a little more per step; the per-class figures below are exact).
    let c10 = class_named("c10").expect("c10");
    let per_step = groth::count_constraints(c10)? as f64 / c10.steps as f64;

    println!("## Guests\n");
    println!(
        "| guest | input | wasm instructions | zkVM steps | steps per instruction | constraints per wasm instruction | smallest class |"
    );
    println!("|---|---|---|---|---|---|---|");
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let mut ratios = vec![];
    for guest in zkmesh_guests::all() {
        let Ok(program) = zkvm::program(guest.wasm, zkvm::ZKVM_MEMORY_BYTES) else {
            continue;
        };
        // collatz's sample input runs for 4e8 instructions; a small one shows the same code.
        let input: &[u8] = if guest.name == "collatz" {
            b"17"
        } else {
            guest.sample_input
        };
        let trace = zkmesh_prover::trace::run(&program, input, Default::default());
        let fuel = sandbox
            .run(guest.wasm, input, &Limits::default(), b"bench")
            .fuel_used;
        let steps = trace.steps.len();
        let traced = zkvm::trace(&program, input, &CLASSES[CLASSES.len() - 1]);
        let c12 = CLASSES.iter().position(|c| c.name == "c12").expect("c12");
        let in_c12 = match zkvm::fit(&program, input, &traced, &CLASSES[..=c12]) {
            Ok(all) if all.len() > 1 => format!(", or {} segments of c12", all.len()),
            _ => String::new(),
        };
        let class = zkvm::fit(&program, input, &traced, &CLASSES)
            .map(|c| format!("{}{in_c12}", c[0].class.name))
            .unwrap_or_else(|e| {
                format!(
                    "none ({})",
                    e.to_string().chars().take(60).collect::<String>()
                )
            });
        let ratio = steps as f64 / fuel as f64;
        ratios.push(ratio * per_step);
        println!(
            "| {} | {:?} | {} | {} | {:.2} | {:.0} | {} |",
            guest.name,
            String::from_utf8_lossy(input),
            fuel,
            steps,
            ratio,
            ratio * per_step,
            class
        );
    }
    println!(
        "\nconstraints per zkVM step (c10): {per_step:.0}; mean constraints per wasm instruction over the guests: {:.0}\n",
        ratios.iter().sum::<f64>() / ratios.len() as f64
    );

    println!("## Classes\n");
    println!(
        "| class | steps | constraints | constraints per step | setup | proving key | prove (bytesum) | prove per step | peak RSS | verify one | verify one, program term cached | verify in a batch of {} |",
        args.batch
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let bytesum = zkmesh_guests::get("bytesum").expect("bytesum");
    let program = zkvm::program(bytesum.wasm, zkvm::ZKVM_MEMORY_BYTES)?;
    for name in &args.classes {
        let class = class_named(name).ok_or_else(|| anyhow::anyhow!("unknown class {name}"))?;
        let constraints = groth::count_constraints(class)?;
        let (pk, vk, pk_size, setup_s) = keys(&args.keys_dir, class)?;
        let pvk = groth::prepare(&vk);
        // The longest input of bytesum whose run fits this class.
        let fits = |inp: &[u8]| {
            ZkvmCircuit::new(class, &program, inp, &zkvm::trace(&program, inp, &class)).is_ok()
        };
        let mut input = Vec::new();
        while fits(&[&input[..], b"x"].concat()) {
            input.push(b'x');
        }
        let trace = zkvm::trace(&program, &input, &class);
        let circuit = ZkvmCircuit::new(class, &program, &input, &trace)?;
        let binding = zkvm::Binding::new("bench", "bench");
        let mut statement = circuit.statement.clone();
        statement.binding = binding.segment(0);
        let steps = trace.steps.len();
        let started = Instant::now();
        let (proof_bytes, _) = zkvm::prove(&pk, vec![circuit], &binding, |_, _| {})?;
        let prove_s = started.elapsed().as_secs_f64();
        let rss = peak_rss_mib();
        let proof = zkvm::proof_from(&proof_bytes[0])?;
        let n = 50;
        let started = Instant::now();
        for _ in 0..n {
            assert!(groth::verify(&pvk, &statement, &proof));
        }
        let one_ms = started.elapsed().as_secs_f64() * 1000.0 / n as f64;
        // As the verifier service does: the program's share of the inputs computed once per
        // module.
        let term = zkvm::program_term(&pvk, &class, &program).map_err(|e| anyhow::anyhow!(e))?;
        let started = Instant::now();
        for _ in 0..n {
            assert!(groth::verify_with(&pvk, &statement, Some(&term), &proof));
        }
        let cached_ms = started.elapsed().as_secs_f64() * 1000.0 / n as f64;
        let inputs = statement.to_field();
        let started = Instant::now();
        for _ in 0..n {
            assert!(groth::prepare_inputs(&pvk, &inputs).is_some());
        }
        let msm_ms = started.elapsed().as_secs_f64() * 1000.0 / n as f64;
        let nonzero = inputs.iter().filter(|x| **x != Default::default()).count();
        eprintln!(
            "{}: public inputs {} ({nonzero} non-zero), their multi-scalar product {msm_ms:.2} ms of {one_ms:.2} ms",
            class.name,
            inputs.len()
        );
        let items: Vec<_> = (0..args.batch).map(|_| (&statement, &proof)).collect();
        let started = Instant::now();
        assert!(groth::verify_batch_with(&pvk, &items, Some(&term)));
        let batch_ms = started.elapsed().as_secs_f64() * 1000.0 / args.batch as f64;
        println!(
            "| {} | {} | {} | {:.0} | {:.1} s | {:.0} MiB | {:.1} s ({} steps) | {:.1} ms | {:.0} MiB | {:.2} ms | {:.2} ms | {:.2} ms |",
            class.name,
            class.steps,
            constraints,
            constraints as f64 / class.steps as f64,
            setup_s,
            pk_size as f64 / (1 << 20) as f64,
            prove_s,
            steps,
            prove_s * 1000.0 / steps as f64,
            rss,
            one_ms,
            cached_ms,
            batch_ms
        );
    }

    if !args.segments.is_empty() {
        println!("\n## Runs proved in segments\n");
        println!(
            "| guest | input | class | zkVM steps | segments | largest memory state | prove | prove per step | peak RSS | verify the chain (batched, program term cached) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
    }
    for spec in &args.segments {
        let (guest, class) = spec
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--segments takes GUEST:CLASS, not {spec}"))?;
        let class = class_named(class).ok_or_else(|| anyhow::anyhow!("unknown class {class}"))?;
        let guest = zkmesh_guests::get(guest).ok_or_else(|| anyhow::anyhow!("no guest {guest}"))?;
        let input: &[u8] = if guest.name == "collatz" {
            b"17"
        } else {
            guest.sample_input
        };
        let program = zkvm::program(guest.wasm, zkvm::ZKVM_MEMORY_BYTES)?;
        let trace = zkvm::trace(&program, input, &class);
        let circuits = ZkvmCircuit::segments(class, &program, input, &trace)?;
        let state = circuits
            .iter()
            .map(|c| c.memory_out.len())
            .max()
            .unwrap_or(0);
        let (pk, vk, _, _) = keys(&args.keys_dir, class)?;
        let pvk = groth::prepare(&vk);
        let n = circuits.len();
        let started = Instant::now();
        let binding = zkvm::Binding::new("bench", "bench");
        let (proofs, claim) = zkvm::prove(&pk, circuits, &binding, |done, of| {
            eprintln!(
                "{}: segment {done} of {of} proved ({:.0} s)",
                guest.name,
                started.elapsed().as_secs_f64()
            )
        })?;
        let prove_s = started.elapsed().as_secs_f64();
        let rss = peak_rss_mib();
        let term = zkvm::program_term(&pvk, &class, &program).map_err(|e| anyhow::anyhow!(e))?;
        let started = Instant::now();
        zkvm::verify_in(
            &class,
            &pvk,
            Some(&term),
            &program,
            input,
            &trace.output,
            &claim,
            &proofs,
            &binding,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        let verify_ms = started.elapsed().as_secs_f64() * 1000.0;
        println!(
            "| {} | {:?} | {} | {} | {n} | {state} words | {:.0} s | {:.1} ms | {:.0} MiB | {:.1} ms |",
            guest.name,
            String::from_utf8_lossy(input),
            class.name,
            claim.steps,
            prove_s,
            prove_s * 1000.0 / trace.steps.len() as f64,
            rss,
            verify_ms
        );
    }
    Ok(())
}
