//! Spot checks, step by step: a receipt-policy result held back until a node of another
//! operator has run the task again, a disagreement sent to a third operator, and every verdict
//! counted in the nodes' records once.

use std::collections::HashMap;

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
    let mut inboxes = HashMap::from([
        ("n3", b.connect("n3", "zeta", 1).await),
        ("n4", b.connect("n4", "omni", 1).await),
    ]);

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
    let (checker, check) = take_one(&mut inboxes);
    assert_eq!(check.task_id, "t");
    assert_eq!(
        check.policy,
        Some(receipt()),
        "a check looks like any assignment"
    );

    // The check disagrees: nothing is rejected, a third operator decides.
    *b.judge.undecided.lock().unwrap() = true;
    b.core
        .on_report(checker, report(&check.attempt_id, 10, 10))
        .await
        .unwrap();
    let asked = b.judge.last.lock().unwrap().clone().unwrap();
    assert_eq!(asked.spot_checks, 1);
    let flags: Vec<(String, bool)> = asked
        .reports
        .iter()
        .map(|r| (r.node_id.clone(), r.spot_check))
        .collect();
    assert_eq!(flags, vec![("n1".into(), false), (checker.into(), true)]);
    assert_eq!(b.state("t").await, TaskState::Queued);
    let task = b.core.store.task("t").await.unwrap().unwrap();
    assert!(
        task.task.message.contains("third operator"),
        "{}",
        task.task.message
    );
    b.core.dispatch_once().await.unwrap();
    assert!(
        assignments(&mut n2).is_empty(),
        "still not the checked operator"
    );
    let (decider, third) = take_one(&mut inboxes);
    assert_ne!(decider, checker);

    *b.judge.undecided.lock().unwrap() = false;
    b.core
        .on_report(decider, report(&third.attempt_id, 10, 10))
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

/// The one assignment waiting in one of `inboxes`, and whose inbox it was.
fn take_one(inboxes: &mut HashMap<&'static str, Inbox>) -> (&'static str, Assignment) {
    let mut got: Vec<(&'static str, Assignment)> = inboxes
        .iter_mut()
        .flat_map(|(node, inbox)| assignments(inbox).into_iter().map(|a| (*node, a)))
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    got.remove(0)
}

/// With one other operator online nobody could settle a disagreement: no check is drawn.
#[tokio::test]
async fn no_check_without_two_other_operators() {
    let b = bench(
        &[("n1", "acme"), ("n2", "zeta")],
        &[("SPOT_CHECK_RATE", "1.0")],
    )
    .await;
    let mut n1 = b.connect("n1", "acme", 1).await;
    b.submit("t", receipt()).await;
    b.core.dispatch_once().await.unwrap();
    let first = assignments(&mut n1).remove(0);
    let _n2 = b.connect("n2", "zeta", 1).await;
    b.core
        .on_report("n1", report(&first.attempt_id, 10, 10))
        .await
        .unwrap();
    assert_eq!(b.state("t").await, TaskState::Settled);
    assert_eq!(b.judge.last.lock().unwrap().clone().unwrap().spot_checks, 0);
}

/// Checkers that keep lapsing use their own budget, never the task's: once it is spent the
/// check is given up and the result in hand is judged unchecked (and paid), not failed.
#[tokio::test]
async fn checkers_that_lapse_cannot_fail_a_result_in_hand() {
    let nodes = [("n1", "acme"), ("n2", "zeta"), ("n3", "omni")];
    let b = bench(&nodes, &[("SPOT_CHECK_RATE", "1.0"), ("MAX_ATTEMPTS", "2")]).await;
    let mut n1 = b.connect("n1", "acme", 1).await;
    b.submit("t", receipt()).await;
    b.core.dispatch_once().await.unwrap();
    let first = assignments(&mut n1).remove(0);
    let mut inboxes = HashMap::from([
        ("n2", b.connect("n2", "zeta", 1).await),
        ("n3", b.connect("n3", "omni", 1).await),
    ]);
    b.core
        .on_report("n1", report(&first.attempt_id, 10, 10))
        .await
        .unwrap();
    // Two attempts per round, two rounds of checks: four lapsed checks give it up.
    for lapsed in 1..=4 {
        b.core.dispatch_once().await.unwrap();
        let (node, _) = take_one(&mut inboxes);
        b.lapse("t").await;
        b.core.sweep().await.unwrap();
        let state = b.state("t").await;
        if lapsed < 4 {
            assert_eq!(state, TaskState::Queued, "check {lapsed} on {node} lapsed");
        }
    }
    // Judged unchecked by the sweep (the report is older than the sweep's grace by then).
    sqlx::query("UPDATE tasks SET updated_at_ms = 0 WHERE task_id = 't'")
        .execute(&b.pool)
        .await
        .unwrap();
    b.core.sweep().await.unwrap();
    assert_eq!(b.state("t").await, TaskState::Settled);
    let asked = b.judge.last.lock().unwrap().clone().unwrap();
    assert_eq!((asked.spot_checks, asked.reports.len()), (0, 1));
    let events = b.core.store.events("t").await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("spot check given up")),
        "{events:?}"
    );
}

/// A round of checks that outlives the task's timeout plus the lease slack is given up: before
/// any check disagreed, the result is judged unchecked; after one did, the task fails and its
/// hold goes back (nobody can say which run was right).
#[tokio::test]
async fn an_overdue_round_of_checks_is_given_up() {
    let nodes = [("n1", "acme"), ("n2", "zeta"), ("n3", "omni")];
    let b = bench(&nodes, &[("SPOT_CHECK_RATE", "1.0")]).await;
    let mut n1 = b.connect("n1", "acme", 2).await;
    let mut inboxes = HashMap::from([
        ("n2", b.connect("n2", "zeta", 1).await),
        ("n3", b.connect("n3", "omni", 1).await),
    ]);
    for task in ["t1", "t2"] {
        b.submit(task, receipt()).await;
    }
    b.core.dispatch_once().await.unwrap();
    let firsts = assignments(&mut n1);
    assert_eq!(firsts.len(), 2);
    for a in &firsts {
        b.core
            .on_report("n1", report(&a.attempt_id, 10, 10))
            .await
            .unwrap();
    }
    b.core.dispatch_once().await.unwrap();
    // t1: its checks never report.
    overdue(&b, "t1").await;
    b.core.sweep().await.unwrap();
    assert_eq!(b.state("t1").await, TaskState::Reported);
    // Judged by a later sweep, once the report is older than the sweep's grace.
    overdue(&b, "t1").await;
    b.core.sweep().await.unwrap();
    assert_eq!(b.state("t1").await, TaskState::Settled);
    // t2: its check disagrees, and no third operator reports in time.
    let mut checks: Vec<(&str, Assignment)> = inboxes
        .iter_mut()
        .flat_map(|(node, inbox)| assignments(inbox).into_iter().map(|a| (*node, a)))
        .filter(|(_, a)| a.task_id == "t2")
        .collect();
    let (checker, check) = checks.remove(0);
    *b.judge.undecided.lock().unwrap() = true;
    b.core
        .on_report(checker, report(&check.attempt_id, 10, 10))
        .await
        .unwrap();
    assert_eq!(b.state("t2").await, TaskState::Queued);
    overdue(&b, "t2").await;
    b.core.sweep().await.unwrap();
    assert_eq!(b.state("t2").await, TaskState::Failed);
    let task = b.core.store.task("t2").await.unwrap().unwrap();
    assert!(
        task.task.message.contains("no third operator decided"),
        "{}",
        task.task.message
    );
    b.core.sweep().await.unwrap();
    assert!(b.books.releases.lock().unwrap().contains(&"t2".to_string()));
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

/// A verdict that did not apply the checks asked for (a verifier of an older build, which would
/// take one operator's word and pay every agreeing run) is dropped; the task waits for one that
/// did.
#[tokio::test]
async fn a_verdict_that_ignored_the_checks_is_not_applied() {
    let nodes = [("n1", "acme"), ("n2", "zeta"), ("n3", "omni")];
    let b = bench(&nodes, &[("SPOT_CHECK_RATE", "1.0")]).await;
    let mut n1 = b.connect("n1", "acme", 1).await;
    b.submit("t", receipt()).await;
    b.core.dispatch_once().await.unwrap();
    let first = assignments(&mut n1).remove(0);
    let mut inboxes = HashMap::from([
        ("n2", b.connect("n2", "zeta", 1).await),
        ("n3", b.connect("n3", "omni", 1).await),
    ]);
    b.core
        .on_report("n1", report(&first.attempt_id, 10, 10))
        .await
        .unwrap();
    b.core.dispatch_once().await.unwrap();
    let (checker, check) = take_one(&mut inboxes);
    *b.judge.forget_checks.lock().unwrap() = true;
    b.core
        .on_report(checker, report(&check.attempt_id, 10, 10))
        .await
        .unwrap();
    assert_eq!(*b.judge.asked.lock().unwrap(), 1);
    assert_eq!(b.state("t").await, TaskState::Reported);
    assert!(b.books.captures.lock().unwrap().is_empty());
    *b.judge.forget_checks.lock().unwrap() = false;
    overdue(&b, "t").await;
    b.core.sweep().await.unwrap();
    assert_eq!(b.state("t").await, TaskState::Settled);
}

/// Dates the task's round of checks (and its last event) back to the start of time.
async fn overdue(b: &Bench, task: &str) {
    sqlx::query("UPDATE tasks SET spot_checks_at_ms = 1, updated_at_ms = 0 WHERE task_id = $1")
        .bind(task)
        .execute(&b.pool)
        .await
        .unwrap();
}
