//! The `zkmesh` binary's contract: `zkmesh run` flags, its JSON fields and its exit codes.

use std::process::{Command, Output};

/// Runs the binary; every `run` also audits its embedded ledger.
fn zkmesh(home: &std::path::Path, args: &[&str]) -> Output {
    let audit = if args.first() == Some(&"run") {
        vec!["--audit"]
    } else {
        vec![]
    };
    Command::new(env!("CARGO_BIN_EXE_zkmesh"))
        .args(args)
        .args(audit)
        .env("ZKMESH_HOME", home)
        // Circuit keys stay with the test (a proof run sets its class up there), never in the
        // user's cache, where every later embedded mesh would load them.
        .env("ZKMESH_KEYS_DIR", home.join("keys"))
        .env_remove("ZKMESH_CLIENT_CONFIG")
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn run_prints_a_verified_result_as_json() {
    let home = tempfile::tempdir().unwrap();
    let out = zkmesh(
        home.path(),
        &["run", "sha256", "--input", "hello", "--json"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    let expected =
        String::from_utf8(zkmesh_guests::reference_output("sha256", b"hello").unwrap()).unwrap();
    assert_eq!(v["output_text"], expected);
    assert_eq!(v["state"], "settled");
    assert_eq!(v["exit"], "ok");
    assert_eq!(v["verdict"], "verified");
    assert_eq!(v["policy"], "receipt");
    assert!(v["task_id"].as_str().unwrap().starts_with("t-"));
    assert!(v["fuel_used"].as_u64().unwrap() > 0);
    assert!(v["credits_charged"].as_u64().unwrap() > 0);
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v["output_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw, expected.as_bytes());
}

#[test]
fn run_reads_files_and_replicates() {
    let home = tempfile::tempdir().unwrap();
    let input = home.path().join("numbers.txt");
    std::fs::write(&input, "5 3 -8 1").unwrap();
    let out = zkmesh(
        home.path(),
        &[
            "run",
            "sort",
            "--input-file",
            input.to_str().unwrap(),
            "--policy",
            "replicate:2",
            "--json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    assert_eq!(v["output_text"], "-8 1 3 5");
    assert_eq!(v["policy"], "replicate:2");
    assert_eq!(v["receipts"].as_array().unwrap().len(), 2);
}

#[test]
fn run_reads_the_input_from_stdin() {
    use std::io::Write;
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_zkmesh"))
        .args(["run", "wordcount", "--input-file", "-", "--json"])
        .env("ZKMESH_HOME", home.path())
        .env("ZKMESH_KEYS_DIR", home.path().join("keys"))
        .env_remove("ZKMESH_CLIENT_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"one two\nthree\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["output_text"], "2 3 14\n");
}

#[test]
fn exit_codes_distinguish_task_failure_from_bad_input() {
    let home = tempfile::tempdir().unwrap();
    let trap = concat!(env!("CARGO_MANIFEST_DIR"), "/../../guests/hostile/trap.wat");
    let out = zkmesh(home.path(), &["run", trap, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    assert_eq!(v["exit"], "trap");
    assert_eq!(v["verdict"], "verified");

    // A run longer than 64 segments of the largest class an embedded mesh sets up (sha256 over
    // 16 KiB) is refused before anything starts (2); a bad command line exits 64.
    let long = "x".repeat(16 << 10);
    for (args, code, needle) in [
        (
            vec!["run", "sha256", "--input", &long, "--policy", "proof"],
            2,
            "replicate",
        ),
        (
            vec!["run", "sha256", "--policy", "replicate:1"],
            64,
            "invalid policy",
        ),
        (vec!["run", "no-such-guest"], 64, "no such file"),
        (
            vec!["run", "sha256", "--no-such-flag"],
            64,
            "--no-such-flag",
        ),
        (
            vec!["run", "sha256", "--input-file", "/no/such/input"],
            64,
            "/no/such/input",
        ),
        (vec!["no-such-command"], 64, "no-such-command"),
    ] {
        let out = zkmesh(home.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let help = zkmesh(home.path(), &["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let bad = home.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0\x01\xff\xff").unwrap();
    let out = zkmesh(home.path(), &["run", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid module"));
}

/// A service config that does not parse exits 78 with one line naming the key.
#[test]
fn bad_configuration_exits_78() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("ledger.toml");
    std::fs::write(&config, "database_url = \"sqlite://x.db\"\n").unwrap();
    let out = zkmesh(
        home.path(),
        &["ledger", "serve", "--config", config.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("database_url"), "{stderr}");

    // A config that parses but names TLS files that are not there: configuration too.
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/config/ledger.toml"),
    )
    .unwrap();
    std::fs::write(&config, example.replace("mesh/", "nowhere/")).unwrap();
    let out = zkmesh(
        home.path(),
        &["ledger", "serve", "--config", config.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("nowhere/ca/ca.crt"), "{stderr}");
}

/// A worker config that still names its operator is refused before it enrolls (the operator is
/// the admin's word, in the join token), as bad configuration.
#[test]
fn a_worker_that_names_its_own_operator_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("worker.toml");
    std::fs::write(
        &config,
        "data_dir = \"w\"\nregistry_endpoint = \"https://127.0.0.1:1\"\n\
         scheduler_endpoint = \"https://127.0.0.1:2\"\nca_cert = \"ca.crt\"\n\
         join_token = \"zkj_x\"\noperator = \"operator-1\"\n",
    )
    .unwrap();
    let out = zkmesh(
        home.path(),
        &["worker", "--config", config.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("--operator"), "{stderr}");
    assert!(
        !home.path().join("w").exists(),
        "nothing was made before the refusal"
    );
}
