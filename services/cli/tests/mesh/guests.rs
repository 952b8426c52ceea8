//! Every guest, on every policy it supports, gives the right output through the whole mesh.

use crate::support::*;
use zkmesh_proto::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_guest_on_every_policy() {
    let sb = start(2).await;
    let mut charged = 0;
    for guest in zkmesh_guests::all() {
        let extra: &[u8] = match guest.name {
            "sha256" => b"",
            "sort" => b"10 -3 7 7 0",
            "collatz" => b"27",
            "primes" => b"2",
            _ => b"one two  three\n",
        };
        for input in [guest.sample_input, extra] {
            let expected = zkmesh_guests::reference_output(guest.name, input).unwrap();
            for policy in ["receipt", "replicate:2"] {
                let job = Job {
                    policy,
                    ..Job::new(guest.wasm, input)
                };
                let (task, result) = run(&sb.api, &job).await.unwrap();
                assert_verified(&result, &expected);
                let receipts = if policy == "receipt" { 1 } else { 2 };
                assert_eq!(result.receipts.len(), receipts, "{} {policy}", guest.name);
                assert!(result.credits_charged > 0 && result.credits_charged <= task.credits_held);
                charged += result.credits_charged;
            }
        }
    }
    // proof is refused, clearly, by a verifier with no circuit keys set up; never silently
    // downgraded.
    let err = run(
        &sb.api,
        &Job {
            policy: "proof",
            ..Job::new(zkmesh_guests::get("sha256").unwrap().wasm, b"x")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("proof"), "{}", err.message());
    // The verifier's machine-readable reason reaches the client through the scheduler.
    assert_eq!(
        zkmesh_kit::error::reason_of(&err).as_deref(),
        Some("POLICY_UNAVAILABLE")
    );
    // replicate:3 cannot be placed on two operators: refused rather than left waiting.
    let err = run(
        &sb.api,
        &Job {
            policy: "replicate:3",
            ..Job::new(zkmesh_guests::get("sha256").unwrap().wasm, b"x")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "{}",
        err.message()
    );
    assert_eq!(
        zkmesh_kit::error::reason_of(&err).as_deref(),
        Some("NOT_ENOUGH_OPERATORS")
    );

    // The submitter paid exactly what the results say; the nodes got it.
    let balance = sb
        .api
        .ledger()
        .unwrap()
        .get_balance(GetBalanceRequest::default())
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(balance.balance, sb.mesh.options.mint - charged);
    assert_audit_passes(&sb.api).await;
    sb.mesh.stop().await;
}
