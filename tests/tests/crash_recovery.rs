//! Crash safety of enrollment for its clients: `kill -9` the server at
//! random instants while clients enroll with single-use tokens; every
//! client that retries with its same token and CSR gets a certificate
//! (redelivered when the crash ate only the response, issued after a
//! refund when it ate the request), each single-use token ends with exactly
//! one issued certificate, and no row stays `pending` beyond
//! `issuance.pending_timeout`.
//!
//! The server is this test's own (its config is edited and it is killed).
//! Requests go through a client local to this file, because the harness's
//! panics on transport errors, which are expected here while the server is
//! down.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use certmint::wire::CertificateStatus;
use certmint_e2e::{backend_tests, identity, make_csr, policy_json, TestServer};
use serde_json::{json, Value};

/// Short, so that rows a crash left pending are reconciled within the test.
const PENDING_TIMEOUT_SECONDS: u64 = 3;
/// Enrolling clients, each with its own tokens and keys.
const CLIENTS: usize = 8;
/// Single-use tokens (one CSR each) a client may get through.
const TOKENS_PER_CLIENT: usize = 12;
/// `kill -9` and restart rounds.
const KILL_ROUNDS: usize = 6;
/// How long one token's retries may take before the test fails.
const RETRY_DEADLINE: Duration = Duration::from_secs(40);
/// How many tries one token's enrollment may take before the test fails.
const MAX_ATTEMPTS: usize = 2_000;

backend_tests! {
    fn ok_kill_9_under_enrolling_clients_strands_no_token(backend: Backend) {
        let Some(server) = TestServer::start(backend) else {
            return;
        };
        set_pending_timeout(&server, PENDING_TIMEOUT_SECONDS);
        server.stop_serving();
        server.start_serving();

        let policy = server.unique("crash");
        server.create_policy(&policy_json(&policy, &["*.crash.test"], &[], &[]));
        // Every client's work, minted up front (the admin API is down half
        // of the time later): (token id, JWT, CSR).
        let work: Vec<Vec<(String, String, String)>> = (0..CLIENTS)
            .map(|client| {
                (0..TOKENS_PER_CLIENT)
                    .map(|n| {
                        let name = format!("c{client}-{n}.crash.test");
                        let minted = server.mint_token(&policy, &identity(&[&name], &[], &[]), 1);
                        let (csr, _key) = make_csr("ec-p256", &[&name], &[], &[]);
                        (minted.id, minted.token, csr)
                    })
                    .collect()
            })
            .collect();

        let http = local_client(&server);
        let url = format!("{}/v1/enroll", server.base_url());
        let killing = AtomicBool::new(true);
        let outcomes: Vec<Vec<Enrolled>> = std::thread::scope(|scope| {
            let clients: Vec<_> = work
                .iter()
                .map(|tokens| {
                    let (http, url, killing) = (&http, &url, &killing);
                    scope.spawn(move || {
                        let mut enrolled = Vec::new();
                        for (token_id, token, csr) in tokens {
                            enrolled.push(enroll_until_issued(http, url, token_id, token, csr));
                            if !killing.load(Ordering::SeqCst) {
                                break;
                            }
                        }
                        enrolled
                    })
                })
                .collect();
            for _ in 0..KILL_ROUNDS {
                std::thread::sleep(Duration::from_millis(100 + random_below(500)));
                let pid = server.server_pid();
                let killed = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status()
                    .expect("run kill");
                assert!(killed.success(), "kill -9 {pid} failed");
                server.stop_serving();
                server.start_serving();
            }
            killing.store(false, Ordering::SeqCst);
            clients
                .into_iter()
                .map(|client| client.join().expect("client thread"))
                .collect()
        });

        let enrolled: Vec<&Enrolled> = outcomes.iter().flatten().collect();
        assert!(enrolled.len() >= CLIENTS, "every client enrolled at least once");
        let waited = enrolled.iter().filter(|e| e.saw_in_flight).count();
        eprintln!(
            "{} enrollments across {KILL_ROUNDS} kills; {waited} waited on an issuance in flight",
            enrolled.len()
        );
        // Every certificate a client holds is recorded as issued, and each
        // single-use token has exactly that one issued certificate.
        let issued = server.certificates(&format!("policy={policy}&status=issued"));
        let mut by_token: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for info in &issued {
            if let Some(token_id) = &info.token_id {
                by_token.entry(token_id.clone()).or_default().push(info.serial.clone());
            }
        }
        for enrollment in &enrolled {
            let info = server.certificate(&enrollment.serial);
            assert_eq!(info.status, CertificateStatus::Issued, "{}", enrollment.serial);
            assert_eq!(info.token_id.as_deref(), Some(enrollment.token_id.as_str()));
            assert_eq!(
                by_token.get(&enrollment.token_id),
                Some(&vec![enrollment.serial.clone()]),
                "token {} must have exactly the one certificate its client holds",
                enrollment.token_id
            );
        }
        // After the bound (plus a sweep interval), nothing is left pending.
        let deadline = Instant::now()
            + Duration::from_secs(PENDING_TIMEOUT_SECONDS * 3 + 5);
        loop {
            let pending = server.certificates("status=pending");
            if pending.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "still pending after the bound: {:?}",
                pending.iter().map(|info| &info.serial).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        // Reconciled rows gave their uses back: no token is left used up by
        // a certificate nobody holds.
        for enrollment in &enrolled {
            let response = server.admin_get(&format!("/v1/admin/tokens/{}", enrollment.token_id));
            response.assert_status(200);
            assert_eq!(response.body["uses"], json!(1), "{}", enrollment.token_id);
        }
    }
}

/// One client's successful enrollment.
struct Enrolled {
    token_id: String,
    serial: String,
    /// Some retry was told that an issuance of this token was in flight.
    saw_in_flight: bool,
}

/// Posts `{csr, token}` until 201, through outages: transport errors and
/// 503s are retried, anything else fails the test (`token.used` is the
/// stranded-token defect).
fn enroll_until_issued(
    http: &reqwest::blocking::Client,
    url: &str,
    token_id: &str,
    token: &str,
    csr: &str,
) -> Enrolled {
    let started = Instant::now();
    let mut saw_in_flight = false;
    for _ in 0..MAX_ATTEMPTS {
        assert!(
            started.elapsed() < RETRY_DEADLINE,
            "token {token_id}: no certificate after {RETRY_DEADLINE:?}"
        );
        let sent = http
            .post(url)
            .json(&json!({"csr": csr, "token": token}))
            .send();
        let response = match sent {
            Ok(response) => response,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let status = response.status().as_u16();
        let has_retry_after = response.headers().contains_key("retry-after");
        let Ok(body) = response.json::<Value>() else {
            // The connection died mid-body: the server was killed.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        match status {
            201 => {
                let serial = body["serial"].as_str().expect("a serial").to_owned();
                return Enrolled {
                    token_id: token_id.to_owned(),
                    serial,
                    saw_in_flight,
                };
            }
            503 => {
                assert!(has_retry_after, "503 without Retry-After: {body}");
                saw_in_flight |= body["code"] == "issuance.in_flight";
                std::thread::sleep(Duration::from_millis(200));
            }
            _ => panic!("token {token_id}: {status} {body}"),
        }
    }
    panic!("token {token_id}: no certificate after {MAX_ATTEMPTS} attempts");
}

/// Sets `issuance.pending_timeout` in the server's config file (read at the
/// next start).
fn set_pending_timeout(server: &TestServer, seconds: u64) {
    let path = server.dir().join("certmint.toml");
    let config = std::fs::read_to_string(&path).expect("read the config");
    assert!(config.contains("\n[issuance]\n"), "no [issuance] table");
    let edited = config.replacen(
        "\n[issuance]\n",
        &format!("\n[issuance]\npending_timeout = \"{seconds}s\"\n"),
        1,
    );
    std::fs::write(&path, edited).expect("write the config");
}

/// A client trusting the test CA's root, with short timeouts so that a
/// request to a killed server fails fast.
fn local_client(server: &TestServer) -> reqwest::blocking::Client {
    let root = reqwest::Certificate::from_pem(server.root_pem().as_bytes()).expect("root PEM");
    reqwest::blocking::Client::builder()
        .add_root_certificate(root)
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

/// A random number below `bound`.
fn random_below(bound: u64) -> u64 {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("system randomness");
    u64::from_le_bytes(bytes) % bound
}
