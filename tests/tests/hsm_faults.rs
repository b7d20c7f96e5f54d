//! The server under HSM faults (issue 5, item 5), on SQLite and PostgreSQL,
//! with faults injected at runtime into hsm-sim through its CLI while the
//! real `certmint-server` keeps running:
//!
//! - a request that cannot be signed is a 503 `hsm.unavailable` with a
//!   positive integer `Retry-After`, never a 500;
//! - it leaves no half-recorded certificate: the attempt's row is `failed`
//!   (never `issued`, never left `pending`) and the token use is refunded, so
//!   the same single-use token enrolls once the HSM is back;
//! - after "device removed" `/readyz` reports the HSM down, and after
//!   "re-inserted" it reports it up and enrollment works again, with the
//!   same server process (no restart);
//! - latency slows signing down (seen in `certmint_hsm_sign_duration_seconds`)
//!   but does not break it;
//! - a session limit and random failures under parallel enrollment give only
//!   certificates and 503s, and every certificate handed out is `issued`.
//!
//! Every test starts its own server on hsm-sim (faults are per token
//! directory, so per server), whatever `CERTMINT_TEST_TOKEN` says.

use std::time::{Duration, Instant};

use certmint::wire::{CertificateBundle, CertificateInfo, CertificateStatus, TokenInfo};
use certmint_e2e::{
    backend_tests, identity, make_csr, policy_json, run_test_on, Backend, Response, TestServer,
    Token,
};

/// How long the server may take to see a re-inserted device (well above
/// any sane reconnection backoff cap).
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the device stays removed in the outage test.
const OUTAGE: Duration = Duration::from_secs(2);

/// Runs `body` on a fresh server of `backend` on hsm-sim (nothing when the
/// back end is skipped); prints the server's log if it fails and checks the
/// harness invariants after it.
fn on_hsm_sim(backend: Backend, name: &str, body: impl FnOnce(&TestServer)) {
    let server = TestServer::builder(backend).token(Token::HsmSim).start();
    run_test_on(server.as_ref(), name, body);
}

/// Runs `hsm-sim <args>` on the server's token directory; asserts it worked.
#[track_caller]
fn hsm_sim(server: &TestServer, args: &[&str]) {
    let output = server.hsm_sim(args);
    assert!(
        output.success(),
        "hsm-sim {} failed: {}",
        args.join(" "),
        output.text
    );
}

/// Asserts a 503 `hsm.unavailable` problem with a positive integer
/// `Retry-After` (delay-seconds, RFC 9110 §10.2.3).
#[track_caller]
fn assert_hsm_unavailable(response: &Response) {
    response.assert_problem(503, "hsm.unavailable");
    let retry_after = response.retry_after.as_deref().unwrap_or_else(|| {
        panic!(
            "{}: 503 without Retry-After: {}",
            response.request, response.text
        )
    });
    let seconds: u64 = retry_after.trim().parse().unwrap_or_else(|_| {
        panic!(
            "{}: Retry-After {retry_after:?} is not delay-seconds",
            response.request
        )
    });
    assert!(seconds > 0, "{}: Retry-After is 0", response.request);
    // The cause (PKCS#11 function, return value, token) is for the server
    // log; unauthenticated callers get a fixed detail with the request id.
    for internal in ["C_", "CKR_", "slot", "token"] {
        assert!(
            !response.text.contains(internal),
            "{}: the problem shows HSM internals ({internal}): {}",
            response.request,
            response.text
        );
    }
}

/// A policy allowing `*.<policy>.internal`; returns its name.
fn fault_policy(server: &TestServer, prefix: &str) -> String {
    let policy = server.unique(prefix);
    let pattern = format!("*.{policy}.internal");
    server.create_policy(&policy_json(&policy, &[&pattern], &[], &[]));
    policy
}

/// A token for `policy` allowing `max_uses` enrollments of its names.
fn token_for(server: &TestServer, policy: &str, max_uses: u32) -> certmint::wire::MintedToken {
    let pattern = format!("*.{policy}.internal");
    server.mint_token(policy, &identity(&[&pattern], &[], &[]), max_uses)
}

/// A CSR for `w<index>.<policy>.internal`.
fn csr_for(policy: &str, index: usize) -> String {
    make_csr(
        "ec-p256",
        &[&format!("w{index}.{policy}.internal")],
        &[],
        &[],
    )
    .0
}

/// Enrolls `w<index>.<policy>.internal` with a fresh single-use token.
#[track_caller]
fn enroll_new(server: &TestServer, policy: &str, index: usize) -> Response {
    server.enroll(&csr_for(policy, index), &token_for(server, policy, 1).token)
}

/// How many enrollments the token has been used for.
#[track_caller]
fn token_uses(server: &TestServer, token_id: &str) -> u32 {
    let response = server.admin_get(&format!("/v1/admin/tokens/{token_id}"));
    response.assert_status(200);
    response.json::<TokenInfo>().uses
}

/// The inventory entries of `policy` with `status`.
#[track_caller]
fn with_status(server: &TestServer, policy: &str, status: &str) -> Vec<CertificateInfo> {
    server.certificates(&format!("policy={policy}&status={status}"))
}

/// No certificate of the whole server is left `pending`.
#[track_caller]
fn assert_nothing_pending(server: &TestServer) {
    let pending = server.certificates("status=pending");
    assert!(
        pending.is_empty(),
        "half-recorded certificates left pending: {:?}",
        pending.iter().map(|info| &info.serial).collect::<Vec<_>>()
    );
}

/// A 201 whose serial is `issued` in the inventory with the same certificate.
#[track_caller]
fn assert_issued(server: &TestServer, response: &Response) -> String {
    response.assert_status(201);
    let bundle: CertificateBundle = response.json();
    let info = server.certificate(&bundle.serial);
    assert_eq!(
        info.status,
        CertificateStatus::Issued,
        "certificate {} was handed out but is {:?}",
        bundle.serial,
        info.status
    );
    assert_eq!(
        info.certificate_pem.as_deref().map(str::trim),
        Some(bundle.certificate_pem.trim()),
        "the inventory holds another certificate for serial {}",
        bundle.serial
    );
    bundle.serial
}

/// `GET /readyz` until it answers `status` or `timeout` passes; returns the
/// last response.
#[track_caller]
fn poll_readyz(server: &TestServer, status: u16, timeout: Duration) -> Response {
    let deadline = Instant::now() + timeout;
    loop {
        let response = server.get("/readyz");
        if response.status == status || Instant::now() >= deadline {
            return response;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `(sum, count)` of `certmint_hsm_sign_duration_seconds`.
#[track_caller]
fn sign_duration(server: &TestServer) -> (f64, f64) {
    let response = server.get("/metrics");
    response.assert_status(200);
    let sample = |name: &str| -> f64 {
        response
            .text
            .lines()
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                (series == name)
                    .then(|| value.parse::<f64>().ok())
                    .flatten()
            })
            .unwrap_or_else(|| panic!("/metrics has no sample {name}:\n{}", response.text))
    };
    (
        sample("certmint_hsm_sign_duration_seconds_sum"),
        sample("certmint_hsm_sign_duration_seconds_count"),
    )
}

backend_tests! {
    fn fail_token_mint_while_the_token_key_cannot_sign_is_503_and_stores_nothing(backend: Backend) {
        on_hsm_sim(backend, "fail_token_mint_while_the_token_key_cannot_sign_is_503_and_stores_nothing", |server| {
            let policy = fault_policy(server, "mint-fault");
            let pattern = format!("*.{policy}.internal");
            let mint = serde_json::json!({
                "policy": policy,
                "identity": identity(&[&pattern], &[], &[]),
                "ttl": "10m",
                "max_uses": 1,
            });
            let tokens_of_policy = || {
                let page: serde_json::Value = server.admin_get("/v1/admin/tokens?limit=500").json();
                page["items"]
                    .as_array()
                    .map(|items| items.iter().filter(|item| item["policy"] == policy.as_str()).count())
                    .unwrap_or_default()
            };

            // The token-signing key is on the HSM: a token that cannot sign
            // means no bootstrap token, a 503, and no row for a JWT nobody got.
            hsm_sim(server, &[
                "fault", "set", "--failure-rate", "1", "--failure-code", "CKR_DEVICE_ERROR",
                "--fail-function", "C_Sign",
            ]);
            assert_hsm_unavailable(&server.admin_post("/v1/admin/tokens", &mint));
            assert_eq!(tokens_of_policy(), 0, "a refused mint stores no token");

            hsm_sim(server, &["fault", "clear"]);
            server.admin_post("/v1/admin/tokens", &mint).assert_status(201);
            assert_eq!(tokens_of_policy(), 1);
        });
    }

    fn fail_sign_fault_is_503_with_retry_after_and_refunds_the_token_use(backend: Backend) {
        on_hsm_sim(backend, "fail_sign_fault_is_503_with_retry_after_and_refunds_the_token_use", |server| {
            let policy = fault_policy(server, "sign-fault");
            let minted = token_for(server, &policy, 1);
            let csr = csr_for(&policy, 1);

            hsm_sim(server, &[
                "fault", "set", "--failure-rate", "1", "--failure-code", "CKR_DEVICE_ERROR",
                "--fail-function", "C_Sign",
            ]);
            // Twice: a refused attempt does not use the single use up.
            for attempt in 1..=2 {
                let response = server.enroll(&csr, &minted.token);
                assert_hsm_unavailable(&response);
                let failed = with_status(server, &policy, "failed");
                assert_eq!(failed.len(), attempt, "one failed row per refused attempt");
                assert!(
                    failed.iter().all(|info| info.token_id.as_deref() == Some(minted.id.as_str())),
                    "failed rows name the token: {failed:?}"
                );
                assert!(with_status(server, &policy, "issued").is_empty(), "nothing issued");
                assert_nothing_pending(server);
                assert_eq!(token_uses(server, &minted.id), 0, "the token use was refunded");
            }
            // Only C_Sign fails: the rest of the token works, the server is up.
            server.get("/readyz").assert_status(200);

            hsm_sim(server, &["fault", "clear"]);
            let serial = assert_issued(server, &server.enroll(&csr, &minted.token));
            assert_eq!(token_uses(server, &minted.id), 1);
            assert_eq!(with_status(server, &policy, "failed").len(), 2);
            let issued = with_status(server, &policy, "issued");
            assert_eq!(issued.len(), 1);
            assert_eq!(issued[0].serial, serial);
            assert_nothing_pending(server);
            // Still single-use: the refunds did not add uses.
            server.enroll(&csr_for(&policy, 2), &minted.token).assert_problem(401, "token.used");
        });
    }

    fn ok_device_removed_then_reinserted_recovers_without_restart(backend: Backend) {
        on_hsm_sim(backend, "ok_device_removed_then_reinserted_recovers_without_restart", |server| {
            let policy = fault_policy(server, "removed");
            let pid = server.server_pid();
            // A working server with pooled sessions first.
            server.get("/readyz").assert_status(200);
            assert_issued(server, &enroll_new(server, &policy, 0));

            hsm_sim(server, &["fault", "remove-device"]);
            // Down at once, and it stays down for an outage long enough for
            // several reconnection attempts (the server's reopening of
            // sessions and of the module does not hide the removal).
            let outage = Instant::now();
            while outage.elapsed() < OUTAGE {
                assert_hsm_unavailable(&server.get("/readyz"));
                std::thread::sleep(Duration::from_millis(100));
            }

            hsm_sim(server, &["fault", "insert-device"]);
            let started = Instant::now();
            let ready = poll_readyz(server, 200, RECOVERY_TIMEOUT);
            assert_eq!(
                ready.status, 200,
                "/readyz still not ready {RECOVERY_TIMEOUT:?} after re-insertion: {}",
                ready.text
            );
            eprintln!("readyz recovered {:?} after re-insertion", started.elapsed());
            // Twice: whatever sessions the pool now holds all work.
            for index in 1..=2 {
                assert_issued(server, &enroll_new(server, &policy, index));
            }
            assert_eq!(server.server_pid(), pid, "the server was restarted");
            assert_nothing_pending(server);
        });
    }

    fn fail_enroll_while_device_removed_is_503_and_the_token_enrolls_after_reinsertion(backend: Backend) {
        on_hsm_sim(backend, "fail_enroll_while_device_removed_is_503_and_the_token_enrolls_after_reinsertion", |server| {
            let policy = fault_policy(server, "removed-enroll");
            let pid = server.server_pid();
            assert_issued(server, &enroll_new(server, &policy, 0));

            let minted = token_for(server, &policy, 1);
            let csr = csr_for(&policy, 1);
            hsm_sim(server, &["fault", "remove-device"]);
            // Several attempts: the first meets dead pooled sessions, later ones
            // a module the server already reinitialized without the token.
            for _ in 0..3 {
                assert_hsm_unavailable(&server.enroll(&csr, &minted.token));
            }
            assert_hsm_unavailable(&server.get("/readyz"));
            assert_eq!(token_uses(server, &minted.id), 0, "refused attempts used the token");
            assert_eq!(with_status(server, &policy, "issued").len(), 1, "only the first certificate");
            assert_nothing_pending(server);

            hsm_sim(server, &["fault", "insert-device"]);
            let ready = poll_readyz(server, 200, RECOVERY_TIMEOUT);
            assert_eq!(ready.status, 200, "/readyz after re-insertion: {}", ready.text);
            assert_issued(server, &server.enroll(&csr, &minted.token));
            assert_eq!(token_uses(server, &minted.id), 1);
            assert_eq!(server.server_pid(), pid, "the server was restarted");
            assert_nothing_pending(server);
        });
    }

    fn ok_latency_slows_signing_but_enrollment_succeeds(backend: Backend) {
        on_hsm_sim(backend, "ok_latency_slows_signing_but_enrollment_succeeds", |server| {
            const LATENCY: Duration = Duration::from_millis(300);
            let policy = fault_policy(server, "latency");
            assert_issued(server, &enroll_new(server, &policy, 0));
            let minted = token_for(server, &policy, 3);
            let csrs: Vec<String> = (1..=3).map(|index| csr_for(&policy, index)).collect();
            let (sum_before, count_before) = sign_duration(server);

            hsm_sim(server, &["fault", "set", "--latency", "300ms"]);
            for csr in &csrs {
                let started = Instant::now();
                let response = server.enroll(csr, &minted.token);
                let elapsed = started.elapsed();
                assert_issued(server, &response);
                assert!(elapsed >= LATENCY, "an enrollment took {elapsed:?} under {LATENCY:?} HSM latency");
            }
            let (sum_after, count_after) = sign_duration(server);
            let signed = count_after - count_before;
            assert!(signed >= 3.0, "3 more signatures counted, got {signed}");
            let mean = (sum_after - sum_before) / signed;
            assert!(
                mean >= LATENCY.as_secs_f64(),
                "mean C_Sign duration {mean:.3} s under {LATENCY:?} injected latency"
            );

            hsm_sim(server, &["fault", "clear"]);
            assert_issued(server, &enroll_new(server, &policy, 4));
            assert_nothing_pending(server);
        });
    }

    fn ok_session_limit_gives_certificates_or_503s_never_500(backend: Backend) {
        on_hsm_sim(backend, "ok_session_limit_gives_certificates_or_503s_never_500", |server| {
            const REQUESTS: usize = 8;
            let policy = fault_policy(server, "sessions");
            assert_issued(server, &enroll_new(server, &policy, 100));
            let tokens: Vec<_> = (0..REQUESTS).map(|_| token_for(server, &policy, 1)).collect();
            let requests: Vec<(String, String)> = tokens
                .iter()
                .enumerate()
                .map(|(index, minted)| (csr_for(&policy, index), minted.token.clone()))
                .collect();

            // Latency makes the signatures overlap, so the pool needs more
            // sessions than the token allows.
            hsm_sim(server, &["fault", "set", "--session-limit", "1", "--latency", "200ms"]);
            let responses = server.enroll_in_parallel(&requests);
            let mut refused = Vec::new();
            let mut issued = 0;
            for (index, response) in responses.iter().enumerate() {
                if response.status == 201 {
                    assert_issued(server, response);
                    assert_eq!(token_uses(server, &tokens[index].id), 1);
                    issued += 1;
                } else {
                    assert_hsm_unavailable(response);
                    assert_eq!(token_uses(server, &tokens[index].id), 0, "a refused request used its token");
                    refused.push(index);
                }
            }
            eprintln!("session limit 1: {issued} issued, {} refused", refused.len());
            assert!(issued >= 1, "no enrollment succeeded with one session allowed");
            assert_nothing_pending(server);

            hsm_sim(server, &["fault", "clear"]);
            for index in refused {
                let (csr, token) = &requests[index];
                assert_issued(server, &server.enroll(csr, token));
                assert_eq!(token_uses(server, &tokens[index].id), 1);
            }
            assert_eq!(with_status(server, &policy, "issued").len(), REQUESTS + 1);
            assert_nothing_pending(server);
        });
    }

    fn ok_random_failures_give_certificates_or_503s_and_a_consistent_inventory(backend: Backend) {
        on_hsm_sim(backend, "ok_random_failures_give_certificates_or_503s_and_a_consistent_inventory", |server| {
            const THREADS: usize = 4;
            // Phase 1: only C_Sign fails, 30% of calls (every failure comes
            // after the row is recorded; cryptoki calls C_Sign twice, length
            // then signature, so about half the requests succeed). Phase 2:
            // any call may fail, half of them, with another code.
            let phases: [(&str, usize, &[&str]); 2] = [
                ("sign", 24, &["--failure-rate", "0.3", "--failure-code", "CKR_DEVICE_ERROR", "--fail-function", "C_Sign"]),
                ("any", 16, &["--failure-rate", "0.5", "--failure-code", "CKR_FUNCTION_FAILED", "--all-functions"]),
            ];
            for (name, requests, knobs) in phases {
                let policy = fault_policy(server, &format!("random-{name}"));
                let uses = u32::try_from(requests).expect("small");
                let minted = token_for(server, &policy, uses);
                let csrs: Vec<String> = (0..requests).map(|index| csr_for(&policy, index)).collect();

                let mut args = vec!["fault", "set"];
                args.extend_from_slice(knobs);
                hsm_sim(server, &args);
                let mut responses = Vec::new();
                for batch in csrs.chunks(THREADS) {
                    let requests: Vec<(String, String)> =
                        batch.iter().map(|csr| (csr.clone(), minted.token.clone())).collect();
                    responses.extend(server.enroll_in_parallel(&requests));
                }
                hsm_sim(server, &["fault", "clear"]);

                let mut serials = Vec::new();
                for response in &responses {
                    if response.status == 201 {
                        serials.push(assert_issued(server, response));
                    } else {
                        assert_hsm_unavailable(response);
                    }
                }
                let refused = requests - serials.len();
                eprintln!("random failures ({name}): {} issued, {refused} refused", serials.len());
                assert_eq!(
                    usize::try_from(token_uses(server, &minted.id)).expect("small"),
                    serials.len(),
                    "token uses = certificates handed out (refused attempts refunded)"
                );
                let mut issued: Vec<String> =
                    with_status(server, &policy, "issued").into_iter().map(|info| info.serial).collect();
                issued.sort();
                serials.sort();
                assert_eq!(issued, serials, "the inventory's issued certificates are the ones handed out");
                let failed = with_status(server, &policy, "failed").len();
                assert!(failed <= refused, "{failed} failed rows for {refused} refusals");
                assert!(refused > 0, "no fault hit {requests} requests ({name})");
                if name == "sign" {
                    assert_eq!(failed, refused, "every C_Sign failure leaves one failed row");
                    assert!(!serials.is_empty(), "no request survived a 30% C_Sign failure rate");
                }
                assert_nothing_pending(server);
            }
            // The HSM is healthy again.
            server.get("/readyz").assert_status(200);
            let policy = fault_policy(server, "random-after");
            assert_issued(server, &enroll_new(server, &policy, 0));
            server.check_invariants();
        });
    }
}
