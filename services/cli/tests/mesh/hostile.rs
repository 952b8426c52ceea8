//! Hostile guests end in a clear terminal state with a clear message, and the same worker then
//! runs a normal task correctly.

use std::time::Duration;

use crate::support::*;
use zkmesh_proto::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_end_cleanly_and_the_worker_keeps_serving() {
    // A compile timeout of a second, so that upload refuses `slow_compile` (seconds to compile).
    let sb = start_with(1, |o| o.compile_timeout_secs = 1).await;
    let sha = zkmesh_guests::get("sha256").unwrap();
    for h in zkmesh_guests::hostile() {
        let (memory_mib, fuel) = zkmesh_guests::HOSTILE_LIMITS;
        let job = Job {
            fuel,
            memory_mib,
            timeout_secs: 5,
            ..Job::new(h.wasm, b"")
        };
        match h.expect {
            "invalid_module" | "forbidden_import" => {
                let err = run(&sb.api, &job).await.unwrap_err();
                assert_eq!(err.code(), tonic::Code::InvalidArgument, "{}", h.name);
                let wanted = h.expect.replace('_', " ");
                assert!(
                    err.message().contains(&wanted),
                    "{}: {}",
                    h.name,
                    err.message()
                );
            }
            expect => {
                let (task, result) = run(&sb.api, &job).await.unwrap();
                assert_eq!(result.state(), TaskState::Settled, "{}", h.name);
                assert_eq!(result.verdict(), Verdict::Verified, "{}", h.name);
                let exit = zkmesh_proto::ExitKind::short_name_of(result.exit);
                let ok = match expect {
                    "timeout_or_out_of_fuel" => exit == "timeout" || exit == "out_of_fuel",
                    other => exit == other,
                };
                assert!(
                    ok,
                    "{}: expected {expect}, got {exit}: {}",
                    h.name, result.exit_message
                );
                assert!(!result.exit_message.is_empty());
                // Billed for the fuel it used, never more than was held. (At an implicit trap
                // the count can be low by one fuel slice: see zkmesh_runtime::FUEL_SYNC.)
                assert!(result.fuel_used <= task.fuel_limit, "{}", h.name);
                assert!(result.credits_charged <= task.credits_held);
            }
        }
        // The same (only) worker still serves normal work.
        let (_, ok) = run(&sb.api, &Job::new(sha.wasm, b"still here"))
            .await
            .unwrap();
        assert_verified(
            &ok,
            &zkmesh_guests::reference_output("sha256", b"still here").unwrap(),
        );
    }

    // Only the wall clock stops a loop with all the fuel in the world.
    let spin = zkmesh_guests::hostile_by_name("infinite_loop").unwrap();
    let job = Job {
        fuel: 1_000_000_000_000,
        timeout_secs: 1,
        ..Job::new(spin.wasm, b"")
    };
    let (_, result) = run(&sb.api, &job).await.unwrap();
    assert_eq!(result.exit(), ExitKind::Timeout, "{}", result.exit_message);
    // The node cannot count fuel exactly at an interrupt: a timeout is billed its whole limit.
    assert_eq!(result.fuel_used, job.fuel);

    // A WASI guest's stderr reaches the submitter as a log event on WatchTask; the node reports
    // the guest's CPU time with its fuel.
    let primes = zkmesh_guests::get("primes").unwrap();
    let (task, result) = run(&sb.api, &Job::new(primes.wasm, b"not a number"))
        .await
        .unwrap();
    assert_eq!(result.exit(), ExitKind::ExitCode, "{}", result.exit_message);
    assert!(result.fuel_used > 0 && result.cpu_time_us > 0, "{result:?}");
    let mut s = sb.api.scheduler().unwrap();
    let mut events = watch(&mut s, &task.task_id, 0).await;
    let logged = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let e = events
                .message()
                .await
                .unwrap()
                .expect("a log event")
                .event
                .unwrap();
            if !e.log.is_empty() {
                return e;
            }
        }
    })
    .await
    .expect("a log event within 10 s");
    assert!(
        logged.log.contains("primes: expected a decimal number"),
        "{logged:?}"
    );
    assert_eq!(logged.state(), TaskState::Running);
    assert_audit_passes(&sb.api).await;
    sb.mesh.stop().await;
}

/// A guest's stderr reaches the submitter while the guest runs, not when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_logs_stream_while_the_task_runs() {
    let sb = start(1).await;
    // Writes "started", spins for a second or more, writes "finished", outputs "ok".
    let wasm = wat::parse_str(
        r#"(module
        (import "wasi_snapshot_preview1" "fd_write"
          (func $fd_write (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 100) "started\0a")
        (data (i32.const 200) "finished\0a")
        (data (i32.const 300) "ok")
        (func $say (param $fd i32) (param $at i32) (param $len i32)
          (i32.store (i32.const 0) (local.get $at))
          (i32.store (i32.const 4) (local.get $len))
          (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 16))))
        (func (export "_start") (local $i i32)
          (call $say (i32.const 2) (i32.const 100) (i32.const 8))
          (loop $spin
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $spin (i32.lt_u (local.get $i) (i32.const 1500000000))))
          (call $say (i32.const 2) (i32.const 200) (i32.const 9))
          (call $say (i32.const 1) (i32.const 300) (i32.const 2))))"#,
    )
    .unwrap();
    let job = Job {
        fuel: 20_000_000_000,
        timeout_secs: 60,
        ..Job::new(&wasm, b"")
    };
    let (task, result) = run(&sb.api, &job).await.unwrap();
    assert_verified(&result, b"ok");
    let mut s = sb.api.scheduler().unwrap();
    let mut events = watch(&mut s, &task.task_id, 0).await;
    let (mut started, mut finished) = (None, None);
    while let Some(e) = events.message().await.unwrap() {
        let e = e.event.unwrap();
        if e.log.contains("started") {
            started = Some(e.at_ms);
        }
        if e.log.contains("finished") {
            finished = Some(e.at_ms);
        }
        if e.state() == TaskState::Settled {
            break;
        }
    }
    let (started, finished) = (started.expect("started"), finished.expect("finished"));
    // Delivered at the end, both lines would arrive together.
    assert!(
        finished - started >= 500,
        "\"started\" at {started} ms, \"finished\" at {finished} ms"
    );
    sb.mesh.stop().await;
}

/// A node that floods progress (each event within the per-event size, many of them) cannot
/// put more than its budget of guest log (192 KiB) into a task's events, even with logs that
/// start with a NUL (which SQLite's `LENGTH` of a text would count as empty); its plain
/// progress still goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_flooding_logs_is_held_to_the_task_budget() {
    let sb = start(0).await;
    let fake = crate::fake_node::enroll(&sb, "operator-chatty", 1).await;
    let (up, mut down, receipt_key) = (fake.up, fake.down, fake.receipt_key);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let sha = zkmesh_guests::get("sha256").unwrap();
    let mut s = sb.api.scheduler().unwrap();
    let task = submit(&mut s, &Job::new(sha.wasm, b"chatty"))
        .await
        .unwrap();
    let a = loop {
        let msg = down.message().await.unwrap().expect("an assignment");
        if let Some(work_response::Kind::Assignment(a)) = msg.kind {
            break a;
        }
    };
    let send = |kind| {
        let up = up.clone();
        async move { up.send(WorkRequest { kind: Some(kind) }).await.unwrap() }
    };
    send(work_request::Kind::Started(TaskStarted {
        attempt_id: a.attempt_id.clone(),
    }))
    .await;
    // 40 events of 8,001 bytes each (1.6 times the budget): a NUL, then two-byte characters,
    // so that the cut must fall between characters. Then plain progress.
    for i in 0..40 {
        send(work_request::Kind::Progress(TaskProgress {
            attempt_id: a.attempt_id.clone(),
            message: format!("flood {i}"),
            log: format!("\0{}", "é".repeat(4000)),
        }))
        .await;
    }
    for i in 0..3 {
        send(work_request::Kind::Progress(TaskProgress {
            attempt_id: a.attempt_id.clone(),
            message: format!("still working {i}"),
            log: String::new(),
        }))
        .await;
    }
    let output = zkmesh_guests::reference_output("sha256", b"chatty").unwrap();
    let report = crate::fake_node::signed_report(&a, &fake.node_id, &receipt_key, output);
    send(work_request::Kind::Report(report)).await;
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        zkmesh_client::wait(&mut s, &task.task_id, |_| {}),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(result.state(), TaskState::Settled);
    let (mut log_bytes, mut cut_notes, mut floods, mut plain) = (0, 0, 0, 0);
    for e in history(&mut s, &task.task_id).await {
        log_bytes += e.log.len();
        cut_notes += e.message.contains("guest log reached 192 KiB") as usize;
        floods += e.message.starts_with("flood") as usize;
        plain += e.message.starts_with("still working") as usize;
    }
    // 24 whole events (192,024 bytes), then the 25th cut to the last character that fits.
    assert_eq!(
        log_bytes,
        192_024 + 4_583,
        "the budget is filled, not exceeded"
    );
    assert_eq!(cut_notes, 1, "the cut is announced once");
    assert_eq!(floods, 24, "24 whole events fit in 196,608 bytes");
    assert_eq!(plain, 3, "progress without a log is not held back");
    sb.mesh.stop().await;
}

/// A module no worker's instance pool could take (here, a table of 300,000 elements, past the
/// pool's 2^18) is refused at upload, not accepted and then failed on every worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_past_the_pools_limits_is_refused_at_upload() {
    let sb = start(0).await;
    let wasm = wat::parse_str(
        r#"(module
          (import "zkmesh" "write_output" (func $out (param i32 i32)))
          (memory (export "memory") 1)
          (table 300000 funcref)
          (func (export "run") (call $out (i32.const 0) (i32.const 0))))"#,
    )
    .unwrap();
    let err = run(&sb.api, &Job::new(&wasm, b"")).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("invalid module"),
        "{}",
        err.message()
    );
    sb.mesh.stop().await;
}

/// A task whose memory limit is more than a node's guest memory budget is given back for other
/// nodes at once (here there are none, so it fails after its attempts, without waiting for
/// leases to lapse), saying why; smaller ones run there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_leaves_a_task_larger_than_its_memory_budget_to_others() {
    let sb = start_with(1, |o| o.worker_memory_budget_mib = 64).await;
    let sha = zkmesh_guests::get("sha256").unwrap();
    let small = Job {
        memory_mib: 32,
        ..Job::new(sha.wasm, b"fits")
    };
    let (_, result) = run(&sb.api, &small).await.unwrap();
    assert_verified(
        &result,
        &zkmesh_guests::reference_output("sha256", b"fits").unwrap(),
    );
    let large = Job {
        memory_mib: 128,
        ..Job::new(sha.wasm, b"too big for this node")
    };
    let given_back = std::time::Instant::now();
    let (task, result) = run(&sb.api, &large).await.unwrap();
    assert_eq!(result.state(), TaskState::Failed, "{result:?}");
    // Three leases of 3 s would have lapsed in 9 s.
    assert!(
        given_back.elapsed() < std::time::Duration::from_secs(6),
        "failed after {:?}",
        given_back.elapsed()
    );
    let said_why = history(&mut sb.api.scheduler().unwrap(), &task.task_id)
        .await
        .iter()
        .any(|e| {
            e.message.contains("gave the task back")
                && e.message.contains("guest memory budget is 64 MiB")
        });
    assert!(said_why, "the node says why it leaves the task");
    sb.mesh.stop().await;
}

/// A node cannot hoard tasks by reconnecting: a second Work stream replaces the first and keeps
/// its leases, so the slot a live lease holds stays taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_does_not_free_a_leased_slot() {
    let sb = start(0).await;
    let mut hoarder = crate::fake_node::enroll(&sb, "operator-hoarder", 1).await;
    let sha = zkmesh_guests::get("sha256").unwrap();
    let mut s = sb.api.scheduler().unwrap();
    submit(&mut s, &Job::new(sha.wasm, b"first")).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), hoarder.down.message())
        .await
        .expect("the first task is leased")
        .unwrap()
        .unwrap();
    assert!(matches!(
        first.kind,
        Some(work_response::Kind::Assignment(_))
    ));
    // Keep the lease alive, then come back on a new stream asking for more.
    let (up, mut down) = hoarder.open_stream(1).await;
    let old_ended = tokio::time::timeout(Duration::from_secs(5), hoarder.down.message()).await;
    assert!(
        matches!(old_ended, Ok(Ok(None)) | Ok(Err(_))),
        "the first stream is closed: {old_ended:?}"
    );
    let task = submit(&mut s, &Job::new(sha.wasm, b"second"))
        .await
        .unwrap();
    let more = tokio::time::timeout(Duration::from_millis(1500), down.message()).await;
    assert!(
        more.is_err(),
        "a second task reached a node whose one slot is taken: {more:?}"
    );
    let workers = zkmesh_kit::lists::all_workers(&sb.api.admin_scheduler().unwrap())
        .await
        .unwrap();
    assert_eq!((workers.len(), workers[0].running), (1, 1), "{workers:?}");
    let task = zkmesh_client::task(&mut s, &task.task_id).await.unwrap();
    assert_eq!(task.state(), TaskState::Queued);
    drop(up);
    sb.mesh.stop().await;
}

/// Connections without a certificate are capped per address (and share the room not kept for
/// the mesh's callers): from 127.0.0.2 the first few are served and the rest closed at once,
/// while a user's calls and another address's health check still go through. And no
/// connection outlives its age limit, so a certificate's expiry is checked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_connections_are_capped_and_connections_age_out() {
    let limits = zkmesh_kit::admission::Limits {
        max_anonymous_connections_per_address: 6,
        max_connection_age_secs: 4,
        ..Default::default()
    };
    let sb = start_with(0, |o| o.limits = limits).await;
    let ca = std::fs::read_to_string(&sb.mesh.client.ca).unwrap();
    let (flood, honest): (std::net::IpAddr, std::net::IpAddr) =
        ("127.0.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap());
    let scheduler = sb.mesh.scheduler.addr;
    let idle = zkmesh_benches::hostile::idle_connections(&ca, flood, scheduler, 20, 1)
        .await
        .unwrap();
    assert_eq!(
        idle.kept.len(),
        6,
        "six anonymous connections from one address are served"
    );
    assert_eq!(idle.refused, 14);
    let mut held = idle.kept;
    // Others are served meanwhile: a user (its own place), another address without a
    // certificate (its health check).
    let mut s = sb.api.scheduler().unwrap();
    s.list_tasks(ListTasksRequest::default()).await.unwrap();
    let other = zkmesh_benches::hostile::idle_connections(&ca, honest, scheduler, 1, 1)
        .await
        .unwrap();
    assert_eq!(
        other.kept.len(),
        1,
        "another address is not held to the flood's cap"
    );
    let metrics = http_get(sb.mesh.scheduler.metrics_addr.unwrap(), "/metrics")
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("connections_refused") && l.contains("anonymous_from_address")),
        "{metrics}"
    );
    // Past the age limit the served ones are closed too, and their places come back.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for conn in &mut held {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(_)) => continue,
                Err(_) => break false,
            }
        };
        assert!(closed, "a connection outlived its age limit");
    }
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = zkmesh_benches::hostile::idle_connections(&ca, flood, scheduler, 1, 1)
        .await
        .unwrap();
    assert_eq!(
        again.kept.len(),
        1,
        "places come back when connections close"
    );
    // A client reconnects after the cut: the user's channel works again (a call racing the
    // close may see it; the next one reconnects).
    let mut answered = false;
    for _ in 0..3 {
        if s.list_tasks(ListTasksRequest::default()).await.is_ok() {
            answered = true;
            break;
        }
    }
    assert!(
        answered,
        "the user's channel reconnects after its connection aged out"
    );
    sb.mesh.stop().await;
}

/// Each method holds its request messages to its own cap, read from the message's length
/// before it is gathered: a `GetTask` of a megabyte is refused (RESOURCE_EXHAUSTED, naming the
/// cap) though a `SubmitTask` of that size is served, and a worker's report over the output cap
/// ends its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_method_holds_messages_to_its_cap() {
    let sb = start(0).await;
    let mut s = sb.api.scheduler().unwrap();
    let refused = s
        .get_task(GetTaskRequest {
            task_id: "t".repeat(1 << 20),
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains("GetTask"), "{refused:?}");
    assert!(refused.message().contains("cap of 65536"), "{refused:?}");
    let sha = zkmesh_guests::get("sha256").unwrap();
    let big = vec![b'x'; 1 << 20];
    let task = submit(&mut s, &Job::new(sha.wasm, &big)).await.unwrap();
    assert!(task.task_id.starts_with("t-"));
    // A node's report of 17 MiB of output: the stream is cut, nothing is stored.
    let fake = crate::fake_node::enroll(&sb, "op-big", 1).await;
    let report = TaskReport {
        attempt_id: "a-none".into(),
        output: vec![0; 17 << 20],
        ..Default::default()
    };
    fake.up
        .send(WorkRequest {
            kind: Some(work_request::Kind::Report(report)),
        })
        .await
        .unwrap();
    let mut down = fake.down;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), down.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(other) => break other,
            Err(_) => panic!("the stream was not cut"),
        }
    };
    let status = ended.expect_err("the stream ends with an error");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    // Still serving.
    s.list_tasks(ListTasksRequest::default()).await.unwrap();
}
