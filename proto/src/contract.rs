//! The public contract's own checks, run with the tests: `buf lint` (STANDARD rules) over
//! `zkmesh/v1`, and `buf breaking` (wire and JSON rules) against the committed baseline
//! `baseline/zkmesh.v1.binpb`, which changes only deliberately (`scripts/proto-baseline`).
//!
//! buf comes from the npm registry: `scripts/test` installs the pinned version and names it in
//! `ZKMESH_BUF`; without it these tests fail and say how to get it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn buf() -> PathBuf {
    match std::env::var_os("ZKMESH_BUF") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "these tests need buf: run them through scripts/test, or set ZKMESH_BUF=$(scripts/buf)"
        ),
    }
}

fn proto_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs buf in `dir`; its exit status and everything it printed.
fn run_buf(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(buf())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("buf runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn baseline() -> String {
    proto_dir()
        .join("baseline/zkmesh.v1.binpb")
        .display()
        .to_string()
}

#[test]
fn the_contract_passes_buf_lint() {
    let (ok, out) = run_buf(proto_dir(), &["lint"]);
    assert!(ok, "buf lint:\n{out}");
}

#[test]
fn the_contract_keeps_the_wire_and_json_of_its_baseline() {
    let (ok, out) = run_buf(proto_dir(), &["breaking", "--against", &baseline()]);
    assert!(
        ok,
        "buf breaking against the baseline (if the break is meant, run scripts/proto-baseline and say so):\n{out}"
    );
}

/// The breaking check bites: a copy of the contract with a field renumbered and a renamed
/// field's old name reused is refused against the same baseline.
#[test]
fn a_break_of_the_wire_or_json_fails_the_check() {
    let copy = tempfile::tempdir().unwrap();
    let v1 = copy.path().join("zkmesh/v1");
    std::fs::create_dir_all(&v1).unwrap();
    for entry in std::fs::read_dir(proto_dir().join("zkmesh/v1")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), v1.join(entry.file_name())).unwrap();
    }
    std::fs::copy(proto_dir().join("buf.yaml"), copy.path().join("buf.yaml")).unwrap();
    let (ok, out) = run_buf(copy.path(), &["breaking", "--against", &baseline()]);
    assert!(ok, "the unchanged copy passes:\n{out}");
    let scheduler = v1.join("scheduler.proto");
    let text = std::fs::read_to_string(&scheduler).unwrap();
    let broken = text.replace("uint64 run_time_us = 12;", "uint64 run_time_us = 17;");
    assert_ne!(broken, text, "the field to break exists");
    std::fs::write(&scheduler, broken).unwrap();
    let (ok, out) = run_buf(copy.path(), &["breaking", "--against", &baseline()]);
    assert!(!ok, "a renumbered field must fail the check:\n{out}");
    assert!(out.contains("run_time_us") || out.contains("12"), "{out}");
}
