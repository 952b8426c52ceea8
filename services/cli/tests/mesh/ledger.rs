//! `zkmesh ledger audit` passes on an honest journal, also while it is being written, and fails
//! when one byte is altered.

use std::process::Command;
use std::time::Duration;

use sqlx::Row;

use crate::support::*;

fn cli_audit(config: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_zkmesh"))
        .args(["--mesh", config.to_str().unwrap(), "ledger", "audit"])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_fails_on_one_altered_byte() {
    let sb = start(1).await;
    let sha = zkmesh_guests::get("sha256").unwrap();
    run(&sb.api, &Job::new(sha.wasm, b"audit me"))
        .await
        .unwrap();
    assert_audit_passes(&sb.api).await;
    let config = sb.mesh.dir.join("client.toml");
    sb.mesh.client.save(&config).unwrap();
    let (code, out) = cli_audit(&config, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("audit passed"), "{out}");
    // The head an audit reports is what a later audit can demand: the same entry, unchanged.
    let (code, out) = cli_audit(&config, &["--json"]);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (entries, head) = (
        report["entries"].as_u64().unwrap(),
        report["head_hash"].as_str().unwrap().to_string(),
    );
    let other = format!(
        "{}{}",
        if head.starts_with('0') { "1" } else { "0" },
        &head[1..]
    );
    for (expect, want) in [
        (format!("{entries}:{head}"), 0),
        (format!("{entries}:{other}"), 1),
        (format!("{}:{head}", entries + 5), 1),
        ("7:not-a-hash".to_string(), 64),
    ] {
        let (code, out) = cli_audit(&config, &["--expect", &expect]);
        assert_eq!(code, want, "--expect {expect}: {out}");
    }

    let url = format!("sqlite://{}", sb.mesh.dir.join("ledger.db").display());
    let db = zkmesh_kit::db::connect(&url).await.unwrap();
    let signature: Vec<u8> = sqlx::query("SELECT signature FROM journal WHERE seq = 2")
        .fetch_one(&db)
        .await
        .unwrap()
        .get(0);
    let mut flipped = signature.clone();
    flipped[7] ^= 0x01;
    let alterations: Vec<(&str, String, String)> = vec![
        (
            "a byte of an account name",
            "UPDATE journal SET account = 'v' || substr(account, 2) WHERE seq = 1".into(),
            "UPDATE journal SET account = 'u' || substr(account, 2) WHERE seq = 1".into(),
        ),
        (
            "the low byte of an amount",
            "UPDATE journal SET amount = amount + 1 WHERE seq = 2".into(),
            "UPDATE journal SET amount = amount - 1 WHERE seq = 2".into(),
        ),
        (
            "a byte of a signature",
            format!(
                "UPDATE journal SET signature = x'{}' WHERE seq = 2",
                hex::encode(&flipped)
            ),
            format!(
                "UPDATE journal SET signature = x'{}' WHERE seq = 2",
                hex::encode(&signature)
            ),
        ),
        (
            "a balance",
            "UPDATE accounts SET balance = balance + 1 WHERE account = 'user/alice'".into(),
            "UPDATE accounts SET balance = balance - 1 WHERE account = 'user/alice'".into(),
        ),
    ];
    for (what, alter, restore) in alterations {
        let changed = sqlx::raw_sql(sqlx::AssertSqlSafe(alter))
            .execute(&db)
            .await
            .unwrap();
        assert_eq!(changed.rows_affected(), 1, "{what}");
        let err = zkmesh_client::audit(&sb.api).await;
        assert!(err.is_err(), "audit passed with {what} altered");
        let (code, out) = cli_audit(&config, &[]);
        assert_eq!(code, 1, "{what}: {out}");
        assert!(out.contains("audit FAILED"), "{what}: {out}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(restore))
            .execute(&db)
            .await
            .unwrap();
        assert_audit_passes(&sb.api).await;
    }
    db.close().await;
    sb.mesh.stop().await;
}

/// The audit of a ledger that is being written to while it reads: the tables name the journal
/// entry they reflect, so the audit compares like with like instead of failing (or passing) by
/// timing. Mints run while the audit reads the journal, the tables and the rest of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_passes_while_the_ledger_is_being_written() {
    let sb = start(0).await;
    let before = zkmesh_client::audit(&sb.api).await.unwrap().minted;
    let mut ledger = sb.api.admin_ledger().unwrap();
    let writer = tokio::spawn(async move {
        let mut minted = 0u32;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while minted < 300 && std::time::Instant::now() < deadline {
            ledger
                .mint(zkmesh_proto::MintRequest {
                    request_id: String::new(),
                    account: format!("user/busy{}", minted % 7),
                    amount: 1 + u64::from(minted),
                })
                .await
                .unwrap();
            minted += 1;
        }
        minted
    });
    let mut audits = 0;
    while !writer.is_finished() {
        let report = zkmesh_client::audit(&sb.api).await.unwrap();
        assert!(report.entries > 0);
        audits += 1;
    }
    let minted = writer.await.unwrap();
    assert!(
        minted >= 50 && audits >= 3,
        "{minted} mints, {audits} audits"
    );
    let report = zkmesh_client::audit(&sb.api).await.unwrap();
    let sum: u64 = (1..=u64::from(minted)).sum();
    assert_eq!(report.minted, before + sum);
    sb.mesh.stop().await;
}

/// The CLI audit refuses to run without a pinned ledger key (a ledger could re-sign a rewritten
/// journal with any key it serves), and remembers the head each passed audit reached: a later
/// journal that no longer holds it fails, unless the admin says --forget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_demands_a_pinned_key_and_the_head_it_saw() {
    let sb = start(0).await;
    sb.api
        .admin_ledger()
        .unwrap()
        .mint(zkmesh_proto::MintRequest {
            request_id: String::new(),
            account: "user/bob".into(),
            amount: 5,
        })
        .await
        .unwrap();
    let config = sb.mesh.dir.join("client.toml");
    let unpinned = sb.mesh.dir.join("unpinned.toml");
    zkmesh_client::ClientConfig {
        ledger_public_key: None,
        ..sb.mesh.client.clone()
    }
    .save(&unpinned)
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zkmesh"))
        .args(["--mesh", unpinned.to_str().unwrap(), "ledger", "audit"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pinned ledger key"));
    assert!(
        zkmesh_client::audit(
            &zkmesh_client::MeshClient::connect(
                &zkmesh_client::ClientConfig::load(&unpinned).unwrap()
            )
            .unwrap()
        )
        .await
        .unwrap_err()
        .is::<zkmesh_client::audit::UnpinnedLedgerKey>()
    );

    sb.mesh.client.save(&config).unwrap();
    let (code, out) = cli_audit(&config, &[]);
    assert_eq!(code, 0, "{out}");
    let memory = zkmesh_client::audit::head_file(
        &sb.mesh.dir,
        sb.mesh.client.ledger_public_key.as_deref().unwrap(),
    );
    let remembered = std::fs::read_to_string(&memory).unwrap();
    let (seq, hash) = remembered.trim().split_once(':').unwrap();
    assert_eq!(seq, "2", "two mints: {remembered}");
    // As if the journal had changed under the head that audit saw: the next audit fails.
    let other = format!(
        "{}{}",
        if hash.starts_with('0') { "1" } else { "0" },
        &hash[1..]
    );
    std::fs::write(&memory, format!("{seq}:{other}\n")).unwrap();
    let (code, out) = cli_audit(&config, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no longer holds entry 2"), "{out}");
    // The admin who knows why may start over; the new head is remembered.
    let (code, out) = cli_audit(&config, &["--forget"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read_to_string(&memory).unwrap(), remembered);
    sb.mesh.stop().await;
}
