//! Spot checks, step by step: a receipt-policy result held back until a node of another
//! operator has run the task again, a disagreement sent to a third operator, and every verdict
//! counted in the nodes' records once.

use super::*;

/// The rate is 1: every receipt-policy result is checked. The node of the checked operator
/// never checks (even with the most free slots), nor does it decide a disagreement.
#[tokio::test]
async fn a_held_result_is_checked_by_another_operator_and_a_disagreement_by_a_third() {
    let nodes = [
        ("n1", "acme"),
        ("n2", "acme"),
        ("n3", "zeta"),
        ("n4", "omni"),
    ];
    let b = bench(&nodes, &[("SPOT_CHECK_RATE", "1.0")]).await;
    let mut n1 = b.connect("n1", "acme", 1).await;
    b.submit("t", receipt()).await;
    b.core.dispatch_once().await.unwrap();
    let first = assignments(&mut n1).remove(0);
    let mut n2 = b.connect("n2", "acme", 8).await;
    let mut n3 = b.connect("n3", "zeta", 1).await;

    b.core
        .on_report("n1", report(&first.attempt_id, 10, 10))
        .await
        .unwrap();
    assert_eq!(b.state("t").await, TaskState::Queued, "held for the check");
    assert_eq!(
        *b.judge.asked.lock().unwrap(),
        0,
        "no verdict before the check"
    );
    b.core.dispatch_once().await.unwrap();
    assert!(
        assignments(&mut n2).is_empty(),
        "the checked operator never checks"
    );
    let check = assignments(&mut n3).remove(0);
    assert_eq!(check.task_id, "t");
    assert_eq!(
        check.policy,
        Some(receipt()),
        "a check looks like any assignment"
    );

    // The check disagrees: nothing is rejected, a third operator decides.
    *b.judge.undecided.lock().unwrap() = true;
    b.core
        .on_report("n3", report(&check.attempt_id, 10, 10))
        .await
        .unwrap();
    let asked = b.judge.last.lock().unwrap().clone().unwrap();
    assert_eq!(asked.spot_checks, 1);
    let flags: Vec<(String, bool)> = asked
        .reports
        .iter()
        .map(|r| (r.node_id.clone(), r.spot_check))
        .collect();
    assert_eq!(flags, vec![("n1".into(), false), ("n3".into(), true)]);
    assert_eq!(b.state("t").await, TaskState::Queued);
    let task = b.core.store.task("t").await.unwrap().unwrap();
    assert!(
        task.task.message.contains("third operator"),
        "{}",
        task.task.message
    );
    assert_eq!(
        b.attempt_states("t").await,
        vec![
            ("n1".to_string(), attempt_state::REPORTED.to_string()),
            ("n3".to_string(), attempt_state::REPORTED.to_string()),
        ]
    );
    let mut n4 = b.connect("n4", "omni", 1).await;
    b.core.dispatch_once().await.unwrap();
    assert!(
        assignments(&mut n2).is_empty(),
        "still not the checked operator"
    );
    let third = assignments(&mut n4).remove(0);

    *b.judge.undecided.lock().unwrap() = false;
    b.core
        .on_report("n4", report(&third.attempt_id, 10, 10))
        .await
        .unwrap();
    let asked = b.judge.last.lock().unwrap().clone().unwrap();
    assert_eq!(asked.spot_checks, 2);
    assert_eq!(asked.reports.len(), 3);
    assert_eq!(b.state("t").await, TaskState::Settled);
    // The stand-in accepted all three: each node's record counts one verified, checked result,
    // once, however often the records are read.
    for node in ["n1", "n3", "n4"] {
        let r = b.core.store.node_record(node).await.unwrap();
        assert_eq!(
            (r.verified, r.rejected, r.spot_checks, r.spot_failures),
            (1, 0, 1, 0),
            "{node}"
        );
    }
    let r = b.core.store.node_record("n2").await.unwrap();
    assert_eq!((r.verified, r.spot_checks), (0, 0));
}

/// A rejected result counts against its node; rejected nodes are placed after clean ones.
#[tokio::test]
async fn rejections_are_recorded_and_clean_nodes_are_preferred() {
    let b = bench(&[("n1", "acme"), ("n2", "zeta")], &[]).await;
    let mut n1 = b.connect("n1", "acme", 4).await;
    let mut n2 = b.connect("n2", "zeta", 1).await;
    b.submit("t1", receipt()).await;
    b.core.dispatch_once().await.unwrap();
    // The freest node gets it.
    let a = assignments(&mut n1).remove(0);
    assert!(assignments(&mut n2).is_empty());
    *b.judge.reject.lock().unwrap() = true;
    b.core
        .on_report("n1", report(&a.attempt_id, 10, 10))
        .await
        .unwrap();
    let r = b.core.store.node_record("n1").await.unwrap();
    assert_eq!((r.verified, r.rejected, r.spot_checks), (0, 1, 0));
    // t1 goes to n2 (n1 was rejected for it); then a new task goes to n2 as well, although n1
    // has more free slots: n2's record is clean, n1's is not.
    *b.judge.reject.lock().unwrap() = false;
    b.core.dispatch_once().await.unwrap();
    let retry = assignments(&mut n2).remove(0);
    b.core
        .on_report("n2", report(&retry.attempt_id, 10, 10))
        .await
        .unwrap();
    assert_eq!(b.state("t1").await, TaskState::Settled);
    b.submit("t2", receipt()).await;
    b.core.dispatch_once().await.unwrap();
    assert!(assignments(&mut n1).is_empty());
    assert_eq!(assignments(&mut n2).remove(0).task_id, "t2");
    let listed = b
        .core
        .node_records(&zkmesh_kit::paging::Page::of(0, "", 100, 1000).unwrap())
        .await
        .unwrap()
        .0;
    let listed: Vec<(String, u64, u64)> = listed
        .into_iter()
        .map(|r| (r.node_id, r.verified, r.rejected))
        .collect();
    assert_eq!(listed, vec![("n1".into(), 0, 1), ("n2".into(), 1, 0)]);
}
