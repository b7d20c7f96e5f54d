//! A PostgreSQL restart under load. While clients enroll in parallel, the
//! database server is restarted (connections cut mid-transaction). Every
//! enrollment must answer 201 or a retryable 503 `store.unavailable` with
//! `Retry-After`, never a 500 (a transaction whose rollback also failed on
//! the dead connection once became `internal`), and the same server process
//! must enroll again once the database is back, without a restart.
//!
//! The test restarts the PostgreSQL server the suite uses, so this file
//! holds exactly one test (test binaries run one after the other; tests in
//! one binary run in parallel). How to restart it:
//! - `CERTMINT_TEST_POSTGRES_RESTART`: a shell command, e.g.
//!   `pg_ctlcluster --skip-systemctl-redirect 15 main restart -m fast`;
//! - otherwise the only cluster under `/etc/postgresql` is restarted with
//!   `pg_ctlcluster` (Debian's layout, as in CI);
//! - otherwise the test is skipped with a note, or fails when
//!   `CERTMINT_REQUIRE_POSTGRES=1`.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use certmint_e2e::{identity, make_csr, policy_json, run_test_on, Backend, Response, TestServer};

/// Enrolling clients: enough that some are always mid-transaction when
/// the connections are cut.
const CLIENTS: usize = 8;
/// Restarts, one after the other, each followed by [`BETWEEN_RESTARTS`].
const RESTARTS: usize = 3;
/// Load between two restarts.
const BETWEEN_RESTARTS: Duration = Duration::from_secs(3);
/// Load before the restart, so connections are pooled and busy.
const WARM_UP: Duration = Duration::from_millis(1500);
/// Load after the last restart: long enough for the pool to reconnect and
/// for enrollments to succeed again.
const AFTER_RESTART: Duration = Duration::from_secs(4);
/// Upper bound for the whole load, whatever the restart takes.
const LOAD_LIMIT: Duration = Duration::from_secs(60);

#[test]
fn ok_postgres_restart_under_load_answers_only_201_or_503() {
    let Some(restart) = restart_command() else {
        return;
    };
    let server = TestServer::start(Backend::Postgres);
    run_test_on(
        server.as_ref(),
        "ok_postgres_restart_under_load_answers_only_201_or_503",
        |server| restart_under_load(server, &restart),
    );
}

fn restart_under_load(server: &TestServer, restart: &str) {
    server.create_policy(&policy_json("restart", &["*.restart.test"], &[], &[]));
    let minted = server.mint_token("restart", &identity(&["*.restart.test"], &[], &[]), 10_000);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (responses, restarted_at) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (stop, token) = (&stop, &minted.token);
                scope.spawn(move || {
                    let mut seen: Vec<(Instant, Response)> = Vec::new();
                    let mut request = 0;
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_LIMIT {
                        let name = format!("c{client}-{request}.restart.test");
                        let (csr, _key) = make_csr("ec-p256", &[&name], &[], &[]);
                        seen.push((Instant::now(), server.enroll(&csr, token)));
                        request += 1;
                    }
                    seen
                })
            })
            .collect();
        std::thread::sleep(WARM_UP);
        let mut outcomes = Vec::new();
        for _ in 0..RESTARTS {
            outcomes.push(Command::new("sh").arg("-c").arg(restart).output());
            std::thread::sleep(BETWEEN_RESTARTS);
        }
        let restarted_at = Instant::now();
        std::thread::sleep(AFTER_RESTART);
        stop.store(true, Ordering::Relaxed);
        let responses: Vec<(Instant, Response)> = workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("an enrolling client panicked"))
            .collect();
        for outcome in outcomes {
            let outcome = outcome.expect("the restart command runs");
            assert!(
                outcome.status.success(),
                "{restart} failed: {}{}",
                String::from_utf8_lossy(&outcome.stdout),
                String::from_utf8_lossy(&outcome.stderr)
            );
        }
        (responses, restarted_at)
    });

    let mut unavailable = 0;
    for (_, response) in &responses {
        match response.status {
            201 => {}
            503 => {
                response.assert_problem(503, "store.unavailable");
                let retry_after = response
                    .retry_after
                    .as_deref()
                    .unwrap_or_else(|| panic!("{}: 503 without Retry-After", response.request));
                assert!(
                    retry_after
                        .trim()
                        .parse::<u64>()
                        .is_ok_and(|seconds| seconds > 0),
                    "{}: Retry-After {retry_after:?}",
                    response.request
                );
                unavailable += 1;
            }
            _ => panic!(
                "{}: expected 201 or 503 during a database restart, got {} {}",
                response.request, response.status, response.text
            ),
        }
    }
    let recovered = responses
        .iter()
        .filter(|(at, response)| *at > restarted_at && response.status == 201)
        .count();
    eprintln!(
        "database restarts: {} enrollments, {unavailable} answered 503, {recovered} issued after the last restart",
        responses.len()
    );
    assert!(
        recovered > 0,
        "no enrollment succeeded in the {AFTER_RESTART:?} after the last restart: the server did not recover"
    );
}

/// The command that restarts the suite's PostgreSQL, or `None` (skipped)
/// when there is none and PostgreSQL is not required.
fn restart_command() -> Option<String> {
    if let Ok(command) = std::env::var("CERTMINT_TEST_POSTGRES_RESTART") {
        return Some(command);
    }
    let clusters: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.path().join("main").is_dir())
                .filter_map(|entry| entry.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    let has_pg_ctlcluster = Command::new("sh")
        .args(["-c", "command -v pg_ctlcluster"])
        .output()
        .is_ok_and(|output| output.status.success());
    match clusters.as_slice() {
        [version] if has_pg_ctlcluster => Some(format!(
            "pg_ctlcluster --skip-systemctl-redirect {version} main restart -m fast"
        )),
        _ => {
            let reason = format!(
                "no way to restart PostgreSQL: set CERTMINT_TEST_POSTGRES_RESTART \
                 (found clusters {clusters:?}, pg_ctlcluster: {has_pg_ctlcluster})"
            );
            assert!(
                std::env::var("CERTMINT_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "{reason} (CERTMINT_REQUIRE_POSTGRES=1)"
            );
            eprintln!("skipping the database restart test: {reason}");
            None
        }
    }
}
