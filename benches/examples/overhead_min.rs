//! The sandbox against native code, as the fastest of N runs rather than criterion's mean: on a
//! shared machine whose neighbours steal time, the minimum is the steadier figure. Runs each
//! kernel of `guests/programs/kernels` natively and as the `kernels` guest in four sandboxes
//! (as workers run it, without the epoch checks, without fuel, without either), interleaved, and
//! prints the best time of each and its ratio to native.
//!
//! `cargo run --release -p zkmesh-benches --example overhead_min [-- RUNS]` (default 20)

use std::time::{Duration, Instant};

use zkmesh_runtime::{Exit, Limits, Sandbox, SandboxConfig};

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map_or(20, |n| n.parse().expect("RUNS is a number"));
    let variants: Vec<(&str, Sandbox)> = [
        ("sandbox", true, true),
        ("no epoch checks", true, false),
        ("no fuel", false, true),
        ("neither", false, false),
    ]
    .into_iter()
    .map(|(name, consume_fuel, wall_clock)| {
        let sb = Sandbox::new(SandboxConfig {
            consume_fuel,
            wall_clock,
            ..SandboxConfig::default()
        })
        .unwrap();
        (name, sb)
    })
    .collect();
    let limits = Limits {
        fuel: 1 << 40,
        timeout: Duration::from_secs(600),
        ..Limits::default()
    };
    let inputs = [
        (
            "sha256 of 1 MiB",
            [b"sha256 ".as_slice(), &[0x5a; 1 << 20]].concat(),
        ),
        ("sort of 10^6 i64", b"sort 1000000".to_vec()),
        ("sieve to 10^7", b"sieve 10000000".to_vec()),
    ];
    println!("best of {runs} runs; ratio to native in brackets");
    for (label, input) in &inputs {
        let expected = zkmesh_guests::kernels_output(input);
        let mut best = vec![Duration::MAX; variants.len() + 1];
        for _ in 0..runs {
            for (i, (_, sb)) in variants.iter().enumerate() {
                let t = Instant::now();
                let out = sb.run(zkmesh_guests::KERNELS_WASM, input, &limits, b"");
                best[i] = best[i].min(t.elapsed());
                assert_eq!(out.exit, Exit::Ok, "{}", out.message);
                assert_eq!(Some(out.output), expected);
            }
            let t = Instant::now();
            std::hint::black_box(zkmesh_guests::kernels_output(std::hint::black_box(input)));
            best[variants.len()] = best[variants.len()].min(t.elapsed());
        }
        let native = best[variants.len()].as_secs_f64();
        let cells: Vec<String> = variants
            .iter()
            .zip(&best)
            .map(|((name, _), t)| {
                format!(
                    "{name} {:.1} ms ({:.2}x)",
                    t.as_secs_f64() * 1e3,
                    t.as_secs_f64() / native
                )
            })
            .collect();
        println!(
            "{label}: native {:.1} ms; {}",
            native * 1e3,
            cells.join("; ")
        );
    }
}
