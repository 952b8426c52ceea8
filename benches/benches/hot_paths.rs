//! Criterion benches of the per-task hot paths outside the network: running a trivial guest
//! in the sandbox (module cached), and signing and checking a receipt.

use criterion::{Criterion, criterion_group, criterion_main};
use zkmesh_runtime::{Limits, Sandbox, SandboxConfig};

fn sandbox(c: &mut Criterion) {
    let sb = Sandbox::new(SandboxConfig::default()).unwrap();
    let trivial = wat::parse_str(zkmesh_benches::TRIVIAL_WAT).unwrap();
    let limits = Limits::default();
    sb.run(&trivial, b"", &limits, b"warm");
    c.bench_function("sandbox/trivial_task_cached", |b| {
        b.iter(|| sb.run(&trivial, b"", &limits, b"seed"))
    });
    let sha = zkmesh_guests::get("sha256").unwrap();
    let input = vec![7u8; 64 << 10];
    sb.run(sha.wasm, &input, &limits, b"warm");
    c.bench_function("sandbox/sha256_guest_64KiB", |b| {
        b.iter(|| sb.run(sha.wasm, &input, &limits, b"seed"))
    });
}

fn receipts(c: &mut Criterion) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
    let public = key.verifying_key().to_bytes();
    let mut r = zkmesh_proto::Receipt {
        task_id: "t-0123456789abcdef".into(),
        module_hash: "11".repeat(32),
        input_hash: "22".repeat(32),
        output_hash: "33".repeat(32),
        fuel_used: 12345,
        exit: 1,
        node_id: "n-0123456789abcdef".into(),
        signature: vec![],
    };
    c.bench_function("receipt/sign", |b| {
        b.iter(|| zkmesh_kit::receipt::sign(&mut r, &key).unwrap())
    });
    c.bench_function("receipt/verify", |b| {
        b.iter(|| zkmesh_kit::receipt::verify(&r, &public).unwrap())
    });
}

criterion_group!(benches, sandbox, receipts);
criterion_main!(benches);
