//! A Python grpcio client generated from proto/ (clients/python) works against the services:
//! health, reflection, and a task from upload to verified result.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_runs_a_task() {
    let sb = start(2).await;
    let config = sb.mesh.dir.join("client.toml");
    sb.mesh.client.save(&config).unwrap();
    let module = sb.mesh.dir.join("sha256.wasm");
    std::fs::write(&module, zkmesh_guests::get("sha256").unwrap().wasm).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../clients/python/zkmesh_client.py"
    );
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args([
            "--config",
            config.to_str().unwrap(),
            "--module",
            module.to_str().unwrap(),
        ])
        .args(["--input", "from python", "--policy", "replicate:2"])
        .output()
        .await
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed (pip install -r clients/python/requirements.txt?): {stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for service in ["Registry", "Scheduler", "Ledger", "Verifier"] {
        assert_eq!(
            v["health"][format!("zkmesh.v1.{service}Service")],
            "SERVING",
            "{v}"
        );
    }
    let reflected: Vec<&str> = v["reflection"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(reflected.contains(&"zkmesh.v1.SchedulerService"), "{v}");
    assert!(reflected.contains(&"grpc.health.v1.Health"), "{v}");
    assert!(
        v["reflected_methods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "SubmitTask"),
        "{v}"
    );
    let expected =
        String::from_utf8(zkmesh_guests::reference_output("sha256", b"from python").unwrap())
            .unwrap();
    assert_eq!(v["output_text"], expected.as_str());
    assert_eq!(v["state"], "TASK_STATE_SETTLED");
    assert_eq!(v["verdict"], "VERDICT_VERIFIED");
    assert_eq!(v["refusal"]["code"], "FAILED_PRECONDITION", "{v}");
    assert_eq!(v["refusal"]["reason"], "NOT_ENOUGH_OPERATORS", "{v}");
    assert_audit_passes(&sb.api).await;
    sb.mesh.stop().await;
}
