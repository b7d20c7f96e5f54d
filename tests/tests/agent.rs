//! The agent end to end, on SQLite and PostgreSQL, with the real binaries:
//! workloads enroll through `certmint agent` with their own tokens, hold a
//! real mutual-TLS connection to each other (rustls and OpenSSL), renew over
//! mTLS with a fresh key each time while a reader polls the files, ride out
//! a server outage, stop with the documented exit code once revoked,
//! finish an enrollment in flight when asked to stop (`certmint agent` and
//! `certmint enroll` alike), and refuse a CA whose root does not match the
//! pinned fingerprint.
//!
//! Exit codes are those of `client/src/bin/certmint/exit.rs` (documented in
//! `docs/AGENT.md`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certmint_e2e::cli::admin;
use certmint_e2e::workload::{
    certmint, certmint_as, echo_client, openssl_s_client, openssl_s_server, read_generation,
    spki_fingerprint, EchoRefusal, EchoServer, Workload,
};
use certmint_e2e::{
    backend_tests, identity, make_csr, pem_chain, policy_json, run_test_on, skip_unless_root,
    Backend, OfflineRoot, TestServer,
};
use serde_json::{json, Value};

const EXIT_OK: i32 = 0;
const EXIT_TRUST_FAILURE: i32 = 7;
const EXIT_TOKEN_REFUSED: i32 = 4;
const EXIT_CERTIFICATE_REVOKED: i32 = 5;

/// A policy for `*.<name>.test` with both TLS EKUs and the given lifetime;
/// returns its name (also the DNS label under `.test`).
fn workload_policy(server: &TestServer, prefix: &str, ttl: &str) -> String {
    let name = server.unique(prefix);
    let mut spec = policy_json(&name, &[&format!("*.{name}.test")], &[], &[]);
    spec["ttl"] = json!({ "default": ttl, "max": ttl });
    spec["extended_key_usage"] = json!(["client_auth", "server_auth"]);
    server.create_policy(&spec);
    name
}

/// A workload with its own single-use token for `dns`.
fn workload(server: &TestServer, policy: &str, dns: &str) -> Workload {
    let token = server.mint_token(policy, &identity(&[dns], &[], &[]), 1);
    Workload::new(server, &token.token, &[dns], "")
}

/// Runs `agent --once` and asserts it left a valid generation.
fn enroll_once(workload: &Workload) -> String {
    let run = workload.agent_once("30s");
    assert_eq!(
        run.code,
        Some(EXIT_OK),
        "agent --once failed:\n{}",
        run.stderr
    );
    let generation = workload.current().unwrap_or_else(|error| panic!("{error}"));
    generation.serial()
}

/// The agent under a CA whose issuing certificate hangs below an offline
/// root through an intermediate: it pins the root, installs leaf plus both
/// CA certificates, `certmint status` finds the files usable, and renewal
/// over mutual TLS works through the intermediate. SQLite only: the
/// database plays no part in path building.
#[test]
fn ok_agent_enrolls_and_renews_through_an_intermediate_ca() {
    let Some(pending) = TestServer::builder(Backend::Sqlite)
        .external_root(true)
        .init_external_root()
    else {
        return;
    };
    let hierarchy = OfflineRoot::with_intermediate();
    let server = pending.complete_with(&hierarchy);
    run_test_on(
        Some(&server),
        "ok_agent_enrolls_and_renews_through_an_intermediate_ca",
        |server| {
            let policy = workload_policy(server, "deep", "6s");
            let dns = format!("w.{policy}.test");
            let workload = workload(server, &policy, &dns);
            let first = enroll_once(&workload);
            let generation = workload.current().unwrap_or_else(|error| panic!("{error}"));
            assert_eq!(
                pem_chain(&generation.cert_pem).len(),
                3,
                "cert.pem is the leaf, the issuing CA and the intermediate:\n{}",
                generation.cert_pem
            );
            let status = certmint(
                &["status", "--dir", &workload.path("").display().to_string()],
                &[],
            );
            assert_eq!(
                status.code,
                Some(EXIT_OK),
                "status:\n{}{}",
                status.stdout,
                status.stderr
            );

            // Past renew_after: the restart renews over mutual TLS, presenting
            // the chain through the intermediate.
            std::thread::sleep(Duration::from_millis(4500));
            let second = enroll_once(&workload);
            assert_ne!(second, first, "a due certificate is renewed");
            assert_eq!(
                server.certificate(&second).predecessor.as_deref(),
                Some(first.as_str())
            );
        },
    );
}

/// A CA that is not certmint's, and a client certificate it issued, written
/// as `foreign-cert.pem` / `foreign-key.pem` in `dir`.
fn foreign_identity(dir: &Path, dns: &str) -> (PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed CA");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let mut leaf_params = rcgen::CertificateParams::new(vec![dns.to_owned()]).expect("params");
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("foreign leaf");
    let cert = dir.join("foreign-cert.pem");
    let key = dir.join("foreign-key.pem");
    std::fs::write(&cert, format!("{}{}", leaf.pem(), ca_cert.pem())).expect("write");
    std::fs::write(&key, leaf_key.serialize_pem()).expect("write");
    (cert, key)
}

/// Polls the output directory the documented way (one resolution of
/// `..data`) every few milliseconds; once a generation has appeared, every
/// later read must be a complete, matching key and certificate.
struct Poller {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<PollerState>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct PollerState {
    reads: u64,
    serials: Vec<String>,
    fingerprints: BTreeSet<String>,
    errors: Vec<String>,
}

impl Poller {
    fn start(out: PathBuf) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(PollerState::default()));
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut appeared = false;
                while !stop.load(Ordering::Relaxed) {
                    let result = read_generation(&out);
                    let mut state = seen.lock().expect("poller lock");
                    match result {
                        Ok(generation) => {
                            appeared = true;
                            state.reads += 1;
                            let serial = generation.serial();
                            if state.serials.last() != Some(&serial) {
                                state.serials.push(serial);
                                if let Ok(fingerprint) = spki_fingerprint(&generation.cert_pem) {
                                    state.fingerprints.insert(fingerprint);
                                }
                            }
                        }
                        Err(error) if appeared => state.errors.push(error),
                        Err(_) => {}
                    }
                    drop(state);
                    std::thread::sleep(Duration::from_millis(3));
                }
            })
        };
        Poller {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Distinct serials seen so far, in order.
    fn serials(&self) -> Vec<String> {
        self.seen.lock().expect("poller lock").serials.clone()
    }

    fn finish(mut self) -> PollerState {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("poller thread");
        }
        std::mem::take(&mut *self.seen.lock().expect("poller lock"))
    }
}

backend_tests! {
    fn ok_two_workloads_enroll_through_the_agent_and_hold_mutual_tls(server: &TestServer) {
        let policy = workload_policy(server, "mesh", "1h");
        let (dns_a, dns_b) = (format!("a.{policy}.test"), format!("b.{policy}.test"));
        let a = workload(server, &policy, &dns_a);
        let b = workload(server, &policy, &dns_b);
        let serial_a = enroll_once(&a);
        let serial_b = enroll_once(&b);
        assert_ne!(serial_a, serial_b);
        assert_eq!(a.hook_serials(), vec![serial_a.clone()], "the reload hook ran once");

        // rustls: A serves, B connects; then a foreign CA's client, no
        // client certificate, and an expired certificate of this CA.
        let scratch = tempfile::tempdir().unwrap();
        let (foreign_cert, foreign_key) = foreign_identity(scratch.path(), &dns_b);
        let expired = expired_identity(server, scratch.path());
        let echo = EchoServer::start(&a.path("cert.pem"), &a.path("key.pem"), &a.path("ca.pem"), 4);

        let answer = echo_client(echo.port, &dns_a, &b.path("ca.pem"), Some((&b.path("cert.pem"), &b.path("key.pem"))));
        assert_eq!(answer.as_deref(), Ok("ping\n"));
        let (peer_serial, line) = echo.next_result().expect("the server accepted B");
        assert_eq!((peer_serial.as_str(), line.as_str()), (serial_b.as_str(), "ping\n"));

        let refused = echo_client(echo.port, &dns_a, &b.path("ca.pem"), Some((&foreign_cert, &foreign_key)));
        assert!(refused.is_err(), "a foreign CA's certificate was accepted");
        let server_side = echo.next_result().expect_err("server accepted a foreign CA");
        assert!(
            matches!(server_side, EchoRefusal::Tls(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))),
            "{server_side}"
        );

        let refused = echo_client(echo.port, &dns_a, &b.path("ca.pem"), None);
        assert!(refused.is_err(), "a client without a certificate was accepted");
        let server_side = echo.next_result().expect_err("server accepted no certificate");
        assert!(matches!(server_side, EchoRefusal::Tls(rustls::Error::NoCertificatesPresented)), "{server_side}");

        let refused = echo_client(echo.port, &dns_a, &b.path("ca.pem"), Some((&expired.0, &expired.1)));
        assert!(refused.is_err(), "an expired certificate was accepted");
        let server_side = echo.next_result().expect_err("server accepted an expired certificate");
        assert!(
            matches!(
                server_side,
                EchoRefusal::Tls(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
                ))
            ),
            "{server_side}"
        );

        // OpenSSL on both ends, with the same files: B serves, A connects.
        let s_server = openssl_s_server(&b.path("cert.pem"), &b.path("key.pem"), &b.path("ca.pem"));
        let (ok, output) = openssl_s_client(s_server.port, &dns_b, &a.path("cert.pem"), &a.path("key.pem"), &a.path("ca.pem"));
        let served = s_server.finish();
        assert!(ok, "openssl s_client failed:\n{output}\nserver:\n{served}");
        assert!(output.contains("gnip"), "s_server -rev did not answer:\n{output}");

        let s_server = openssl_s_server(&b.path("cert.pem"), &b.path("key.pem"), &b.path("ca.pem"));
        let (ok, output) = openssl_s_client(s_server.port, &dns_b, &foreign_cert, &foreign_key, &a.path("ca.pem"));
        drop(s_server);
        assert!(!ok && !output.contains("gnip"), "openssl s_server accepted a foreign CA:\n{output}");
    }

    fn ok_agent_renews_repeatedly_rotating_the_key_while_files_stay_consistent(server: &TestServer) {
        let policy = workload_policy(server, "rotate", "6s");
        let dns = format!("w.{policy}.test");
        let workload = workload(server, &policy, &dns);
        let poller = Poller::start(workload.out.clone());
        let mut agent = workload.spawn_agent();
        agent.wait_for("an enrollment and three renewals", Duration::from_secs(60), || {
            poller.serials().len() >= 4
        });
        assert_eq!(agent.stop(), Some(EXIT_OK), "SIGTERM is a clean stop");
        let state = poller.finish();
        assert!(state.errors.is_empty(), "a reader saw a broken generation: {:?}", state.errors);
        assert!(state.reads > 100, "the poller hardly ran ({} reads)", state.reads);
        assert_eq!(state.fingerprints.len(), state.serials.len(), "every certificate has a new key");

        // The server recorded each renewal with its predecessor.
        for pair in state.serials.windows(2) {
            let info = server.certificate(&pair[1]);
            assert_eq!(info.predecessor.as_deref(), Some(pair[0].as_str()), "{info:?}");
        }
        // The hook ran for every generation, in order.
        let hooked = workload.hook_serials();
        assert!(hooked.starts_with(&state.serials[..4]), "hook saw {hooked:?}, poller {:?}", state.serials);
        let log = agent.log();
        assert!(log.matches("renewed").count() >= 3, "{log}");
    }

    fn fail_revoked_certificate_stops_the_agent_with_its_exit_code(server: &TestServer) {
        let policy = workload_policy(server, "revoked", "1h");
        let dns = format!("w.{policy}.test");
        let workload = workload(server, &policy, &dns);
        let mut agent = workload.spawn_agent();
        // Asleep until its renewal time: a SIGHUP that arrives while the
        // first install (hooks, reload record) is still finishing asks for
        // what just happened and is rightly absorbed.
        agent.wait_for("the first certificate", Duration::from_secs(30), || {
            workload.agent_log().contains("certificate valid; renewal at")
        });
        let serial = workload.serial().unwrap_or_default();

        admin(server, &["certificates", "revoke", &serial, "--reason", "key_compromise"]).assert_exit(0);
        // SIGHUP: renew now, instead of waiting 40 minutes.
        agent.signal("HUP");
        let code = agent.wait_exit(Duration::from_secs(30));
        let log = agent.log();
        assert_eq!(code, Some(EXIT_CERTIFICATE_REVOKED), "{log}");
        assert!(log.contains("certificate.revoked"), "the reason is logged:\n{log}");
        // It stops without touching the files: an operator decides what next.
        assert_eq!(workload.serial().as_deref(), Some(serial.as_str()));
    }

    fn ok_agent_once_keeps_a_valid_certificate_and_renews_a_due_one_on_restart(server: &TestServer) {
        let policy = workload_policy(server, "once", "6s");
        let dns = format!("w.{policy}.test");
        let workload = workload(server, &policy, &dns);
        let first = enroll_once(&workload);
        // The token is used up: a second run must not need it.
        assert_eq!(enroll_once(&workload), first, "a valid certificate is kept");
        // Past renew_after (two thirds of 6 s), a restart renews at once
        // instead of waiting for a schedule it missed.
        std::thread::sleep(Duration::from_millis(4500));
        let second = enroll_once(&workload);
        assert_ne!(second, first, "a due certificate is renewed on start");
        assert_eq!(server.certificate(&second).predecessor.as_deref(), Some(first.as_str()));
    }

    fn ok_agent_once_exits_0_when_a_due_renewal_cannot_reach_the_server(server: &TestServer) {
        let policy = workload_policy(server, "once-down", "30s");
        let dns = format!("w.{policy}.test");
        let workload = Workload::new(
            server,
            &server.mint_token(&policy, &identity(&[&dns], &[], &[]), 1).token,
            &[&dns],
            "",
        );
        let first = enroll_once(&workload);
        // The server moves away: the agent knows the CA from its ca.pem,
        // finds its certificate due (renew_after is two thirds of the 27 s
        // ahead of it) but still valid, and cannot reach anyone.
        let config = std::fs::read_to_string(&workload.config).expect("read agent.toml");
        let moved = config.replace(
            server.base_url(),
            &format!("https://127.0.0.1:{}", certmint_e2e::workload::free_port()),
        );
        std::fs::write(&workload.config, moved).expect("write agent.toml");
        std::thread::sleep(Duration::from_secs(19));
        let run = workload.agent_once("3s");
        assert_eq!(
            run.code,
            Some(EXIT_OK),
            "a valid certificate is in place, so --once succeeds:\n{}",
            run.stderr
        );
        assert!(run.stderr.contains("stays in place"), "{}", run.stderr);
        assert_eq!(workload.current().expect("in place").serial(), first);
    }

    fn ok_agent_runs_a_failed_reload_hook_again(server: &TestServer) {
        let policy = workload_policy(server, "hook", "1h");
        let dns = format!("w.{policy}.test");
        let workload = workload(server, &policy, &dns);
        // The first run fails (the workload cannot reload yet); later
        // runs record the serial as the standard hook does.
        let flag = workload.dir.path().join("first-run-done");
        let script = format!(
            "if [ -e {flag} ]; then echo \"$CERTMINT_SERIAL\" >> {log}; else touch {flag}; exit 1; fi",
            flag = flag.display(),
            log = workload.hook_log.display()
        );
        workload.set_reload_command(&["sh", "-c", &script]);
        let mut process = workload.spawn_agent();
        process.wait_for("the hook to succeed on a retry", Duration::from_secs(30), || {
            !workload.hook_serials().is_empty()
        });
        let serial = workload.current().expect("in place").serial();
        assert_eq!(workload.hook_serials(), vec![serial], "the retry ran for the installed certificate");
        let log = workload.agent_log();
        assert!(log.contains("running the reload hook again"), "{log}");
        assert_eq!(server.certificates(&format!("policy={policy}")).len(), 1, "no renewal: {log}");
        assert_eq!(process.stop(), Some(EXIT_OK), "{log}");
    }

    fn ok_reload_hooks_that_did_not_succeed_run_at_the_next_start(server: &TestServer) {
        let policy = workload_policy(server, "rehook", "1h");
        let dns = format!("w.{policy}.test");
        let workload = workload(server, &policy, &dns);
        // A boot-time enroll whose hook fails (the workload was not up yet).
        let run = certmint(
            &[
                "enroll", "--server", server.base_url(), "--root-fingerprint", server.root_fingerprint(),
                "--token-file", &workload.token_file.display().to_string(), "--dns", &dns,
                "--out", &workload.out.display().to_string(), "--", "sh", "-c", "exit 1",
            ],
            &[],
        );
        assert_eq!(run.code, Some(EXIT_OK), "{}", run.stderr);
        assert!(run.stderr.contains("reload hook failed"), "{}", run.stderr);
        let serial = workload.current().expect("in place").serial();
        // `agent --once` (a boot unit the workload starts after) tries the
        // hook once and exits 0 even when it fails again: it never waits
        // on a workload that is not up yet.
        let config = std::fs::read_to_string(&workload.config).expect("read agent.toml");
        workload.set_reload_command(&["false"]);
        let failing = workload.agent_once("30s");
        assert_eq!(failing.code, Some(EXIT_OK), "{}", failing.stderr);
        assert!(failing.stderr.contains("reload hook failed"), "{}", failing.stderr);
        std::fs::write(&workload.config, config).expect("write agent.toml");
        // The agent started afterwards runs its hook for that certificate
        // without renewing it, once.
        let first = workload.agent_once("30s");
        assert_eq!(first.code, Some(EXIT_OK), "{}", first.stderr);
        assert!(first.stderr.contains("not recorded as having run"), "{}", first.stderr);
        assert_eq!(workload.hook_serials(), vec![serial.clone()]);
        let second = workload.agent_once("30s");
        assert_eq!(second.code, Some(EXIT_OK), "{}", second.stderr);
        assert_eq!(workload.hook_serials(), vec![serial], "a recorded hook does not run again");
        assert_eq!(server.certificates(&format!("policy={policy}")).len(), 1, "no renewal");
    }

    fn ok_a_workload_running_as_another_user_reads_its_files_through_a_group(server: &TestServer) {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        use std::os::unix::process::CommandExt as _;
        const NOBODY: u32 = 65_534;
        const WORKLOAD_GROUP: u32 = 4_343;
        // Reading as another user needs root; CI runs as root and sets
        // CERTMINT_REQUIRE_ROOT=1, so there this cannot pass unrun.
        if skip_unless_root("the group test") {
            return;
        }
        let policy = workload_policy(server, "grp", "1h");
        let dns = format!("w.{policy}.test");
        let workload = workload(server, &policy, &dns);
        // The temporary directory is 0700; the workload user must pass it.
        std::fs::set_permissions(workload.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let text = std::fs::read_to_string(&workload.config).unwrap()
            .replace("output_dir = \"out\"\n", &format!("output_dir = \"out\"\ngroup = \"{WORKLOAD_GROUP}\"\n"));
        std::fs::write(&workload.config, text).unwrap();
        enroll_once(&workload);

        let generation = workload.current().unwrap_or_else(|error| panic!("{error}"));
        let key = generation.dir.join("key.pem");
        let owned = |path: &Path| {
            let meta = std::fs::metadata(path).unwrap();
            (meta.gid(), meta.mode() & 0o777)
        };
        assert_eq!(owned(&workload.out), (WORKLOAD_GROUP, 0o750));
        assert_eq!(owned(&generation.dir), (WORKLOAD_GROUP, 0o750));
        assert_eq!(owned(&key), (WORKLOAD_GROUP, 0o640));
        let read_as = |gid: u32, path: &Path| {
            std::process::Command::new("cat").arg(path).uid(NOBODY).gid(gid).output().unwrap()
        };
        // A member of the group reads the key through the stable name; anyone
        // else is refused.
        let member = read_as(WORKLOAD_GROUP, &workload.path("key.pem"));
        assert!(member.status.success(), "{}", String::from_utf8_lossy(&member.stderr));
        assert_eq!(String::from_utf8_lossy(&member.stdout), generation.key_pem);
        assert!(!read_as(NOBODY, &workload.path("key.pem")).status.success(), "others must not read the key");
        assert!(!read_as(NOBODY, &workload.path("cert.pem")).status.success(), "others must not enter the directory");
        let status = certmint(&["status", "--dir", &workload.out.display().to_string()], &[]);
        assert_eq!(status.code, Some(EXIT_OK), "{}{}", status.stdout, status.stderr);
        assert!(!status.stdout.contains("warn"), "a group-readable key is fine:\n{}", status.stdout);

        // `certmint enroll` run by a user who may not give files to the group
        // fails before it sends the token, saying why.
        let token = server.mint_token(&policy, &identity(&[&dns], &[], &[]), 1);
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, &token.token).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        for path in [&token_file, &out] {
            std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        let args = [
            "enroll", "--server", server.base_url(), "--root-fingerprint", server.root_fingerprint(),
            "--token-file", &token_file.display().to_string(), "--dns", &dns,
            "--out", &out.display().to_string(), "--group", &WORKLOAD_GROUP.to_string(),
        ];
        let refused = certmint_as(NOBODY, NOBODY, &args);
        assert_eq!(refused.code, Some(1), "{}", refused.stderr);
        assert!(refused.stderr.contains("gid 4343") && refused.stderr.contains("member"), "{}", refused.stderr);
        assert!(read_generation(&out).is_err(), "nothing may be written");
        // The token was not spent: root, who may, enrolls with it.
        let run = certmint(&args, &[]);
        assert_eq!(run.code, Some(EXIT_OK), "{}", run.stderr);
        assert_eq!(owned(&read_generation(&out).unwrap().dir.join("key.pem")), (WORKLOAD_GROUP, 0o640));
    }

    fn fail_wrong_root_fingerprint_refuses_first_contact(server: &TestServer) {
        let policy = workload_policy(server, "pin", "1h");
        let dns = format!("w.{policy}.test");
        let token = server.mint_token(&policy, &identity(&[&dns], &[], &[]), 1);
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, &token.token).unwrap();
        let out = dir.path().join("out");
        let wrong = format!("sha256:{}", "ab".repeat(32));
        let run = certmint(
            &[
                "enroll", "--server", server.base_url(), "--root-fingerprint", &wrong,
                "--token-file", &token_file.display().to_string(), "--dns", &dns,
                "--out", &out.display().to_string(),
            ],
            &[],
        );
        assert_eq!(run.code, Some(EXIT_TRUST_FAILURE), "{}", run.stderr);
        assert!(!run.stderr.contains(&token.token), "the token leaked into the log");
        // One plain `error:` line naming both fingerprints, as `admin` reports.
        let last = run.stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("error: root fingerprint mismatch: expected "), "{}", run.stderr);
        assert!(last.contains(&wrong) && last.contains(server.root_fingerprint()), "{}", run.stderr);
        assert!(!run.stderr.contains("problem.code="), "{}", run.stderr);
        assert!(!out.exists(), "the directory the failed enroll created is left behind");
        // The token was never sent: it still enrolls.
        let (csr, _) = make_csr("ec-p256", &[&dns], &[], &[]);
        server.enroll(&csr, &token.token).assert_status(201);

        // The right fingerprint works, through `certmint enroll`.
        let token = server.mint_token(&policy, &identity(&[&dns], &[], &[]), 1);
        std::fs::write(&token_file, &token.token).unwrap();
        let run = certmint(
            &[
                "enroll", "--server", server.base_url(), "--root-fingerprint", server.root_fingerprint(),
                "--token-file", &token_file.display().to_string(), "--dns", &dns,
                "--out", &out.display().to_string(),
            ],
            &[],
        );
        assert_eq!(run.code, Some(EXIT_OK), "{}", run.stderr);
        assert!(!run.stderr.contains('\u{1b}'), "colour codes in a log that is no terminal: {:?}", run.stderr);
        let generation = read_generation(&out).unwrap_or_else(|error| panic!("{error}"));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(generation.dir.join("key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is owner-only");

        // A refusal ends with the same `error: <code>: <detail>` line as `admin`.
        let spent = dir.path().join("spent");
        let run = certmint(
            &[
                "enroll", "--server", server.base_url(), "--root-fingerprint", server.root_fingerprint(),
                "--token-file", &token_file.display().to_string(), "--dns", &dns,
                "--out", &spent.display().to_string(),
            ],
            &[],
        );
        assert_eq!(run.code, Some(EXIT_TOKEN_REFUSED), "{}", run.stderr);
        assert!(run.stderr.lines().any(|line| line.starts_with("error: token.used: ")), "{}", run.stderr);
        assert!(!spent.exists(), "the directory the failed enroll created is left behind");
    }
}

/// An expired certificate of this CA (policy lifetime 2 s), written to
/// `dir`; returns (cert.pem with chain, key.pem).
fn expired_identity(server: &TestServer, dir: &Path) -> (PathBuf, PathBuf) {
    let policy = workload_policy(server, "expired", "2s");
    let dns = format!("x.{policy}.test");
    let token = server.mint_token(&policy, &identity(&[&dns], &[], &[]), 1);
    let (csr, key_pem) = make_csr("ec-p256", &[&dns], &[], &[]);
    let response = server.enroll(&csr, &token.token);
    response.assert_status(201);
    let body: Value = response.body.clone();
    let pem = format!(
        "{}{}",
        body["certificate_pem"].as_str().unwrap_or_default(),
        body["chain_pem"].as_str().unwrap_or_default()
    );
    let not_after = body["not_after"].as_str().unwrap_or_default().to_owned();
    let cert = dir.join("expired-cert.pem");
    let key = dir.join("expired-key.pem");
    std::fs::write(&cert, pem).expect("write");
    std::fs::write(&key, key_pem).expect("write");
    // Wait out the lifetime (and a margin for second-granular dates).
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let expired =
            time::OffsetDateTime::parse(&not_after, &time::format_description::well_known::Rfc3339)
                .map(|at| time::OffsetDateTime::now_utc() > at + time::Duration::seconds(1))
                .unwrap_or(true);
        if expired {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (cert, key)
}

/// Own server per backend: stopping a shared one would disturb the rest.
mod outage {
    use super::*;

    backend_tests! {
        fn ok_agent_backs_off_while_the_server_is_down_and_renews_when_it_returns(backend: Backend) {
            let Some(server) = TestServer::start(backend) else { return };
            // renew_after comes at two thirds of 30 s: the outage starts right
            // after enrollment and ends after the renewal was first due, well
            // before expiry.
            let policy = workload_policy(&server, "outage", "30s");
            let dns = format!("w.{policy}.test");
            let workload = workload(&server, &policy, &dns);
            let poller = Poller::start(workload.out.clone());
            let mut agent = workload.spawn_agent();
            agent.wait_for("the first certificate", Duration::from_secs(30), || workload.serial().is_some());
            let first = workload.serial().unwrap_or_default();

            server.stop_serving();
            agent.wait_for("two failed renewal attempts", Duration::from_secs(40), || {
                workload.agent_log().matches("server unreachable, retrying").count() >= 2
            });
            assert_eq!(workload.serial().as_deref(), Some(first.as_str()), "still the first certificate");
            server.start_serving();
            agent.wait_for("a renewal after the outage", Duration::from_secs(30), || {
                workload.serial().is_some_and(|serial| serial != first)
            });
            assert_eq!(agent.stop(), Some(EXIT_OK));
            let state = poller.finish();
            assert!(state.errors.is_empty(), "a reader saw a broken generation: {:?}", state.errors);
            server.check_invariants();
        }
    }
}

/// Own server per backend and per test, on hsm-sim whatever
/// `CERTMINT_TEST_TOKEN` says: the injected HSM latency applies to the
/// whole server. The same rule for `certmint agent` and the one-shot
/// `certmint enroll`.
mod stop_during_enrollment {
    use certmint::wire::{CertificateStatus, TokenInfo};
    use certmint_e2e::workload::AgentProcess;
    use certmint_e2e::{run_test_on, Backend, ServerOptions, Token};

    use super::*;

    /// Delay before every PKCS#11 call: the enrollment is still being
    /// signed when SIGTERM lands, and it still finishes well inside the
    /// 30 s request timeout.
    const HSM_LATENCY: &str = "2s";

    backend_tests! {
        fn ok_sigterm_during_enrollment_finishes_it_and_installs_the_certificate(backend: Backend) {
            sigterm_while_enrolling(
                backend,
                "ok_sigterm_during_enrollment_finishes_it_and_installs_the_certificate",
                Workload::spawn_agent,
            );
        }

        fn ok_sigterm_during_one_shot_enroll_finishes_it_and_installs_the_certificate(backend: Backend) {
            sigterm_while_enrolling(
                backend,
                "ok_sigterm_during_one_shot_enroll_finishes_it_and_installs_the_certificate",
                Workload::spawn_enroll,
            );
        }

        fn ok_agent_keeps_an_issued_certificate_until_it_can_write_it(backend: Backend) {
            keeps_an_issued_certificate_until_it_can_write_it(backend);
        }

        fn ok_sighup_during_a_renewal_does_not_renew_twice(backend: Backend) {
            sighup_during_a_renewal(backend);
        }

        fn ok_agent_whose_answer_was_lost_gets_its_certificate_on_retry(backend: Backend) {
            answer_lost_then_retried(backend);
        }

        fn ok_agent_restarted_after_a_lost_answer_gets_its_certificate(backend: Backend) {
            answer_lost_then_restarted(backend);
        }
    }

    /// A workload with a single-use token whose requests time out (1 s)
    /// before the HSM, slowed down to 3 s a signature, has signed: the
    /// server issues what the agent no longer waits for. Returns the
    /// policy, the token and the workload; clear the fault with
    /// `hsm_faults(server, &["clear"])`.
    fn slow_signing_workload(
        server: &TestServer,
        prefix: &str,
    ) -> (String, certmint::wire::MintedToken, Workload) {
        let policy = workload_policy(server, prefix, "1h");
        let dns = format!("w.{policy}.test");
        let token = server.mint_token(&policy, &identity(&[&dns], &[], &[]), 1);
        let workload = Workload::new(server, &token.token, &[&dns], "request_timeout = \"1s\"");
        hsm_faults(server, &["set", "--latency", "3s"]);
        (policy, token, workload)
    }

    /// `hsm-sim fault <args>` on the server's token; asserts it worked.
    fn hsm_faults(server: &TestServer, args: &[&str]) {
        let fault = server.hsm_sim(&[&["fault"], args].concat());
        assert!(fault.success(), "{}", fault.text);
    }

    /// The policy's inventory is one issued certificate: the one `run`
    /// installed in `workload`.
    fn assert_only_certificate_is_installed(
        server: &TestServer,
        policy: &str,
        workload: &Workload,
        run: &certmint_e2e::CommandOutput,
    ) {
        let generation = workload
            .current()
            .unwrap_or_else(|error| panic!("no certificate in place: {error}\n{}", run.text));
        let inventory: Vec<(String, CertificateStatus)> = server
            .certificates(&format!("policy={policy}"))
            .into_iter()
            .map(|info| (info.serial, info.status))
            .collect();
        assert_eq!(
            inventory,
            vec![(generation.serial(), CertificateStatus::Issued)],
            "one certificate, the one the first try issued, is installed"
        );
    }

    /// Like [`answer_lost_then_retried`], but the agent gives up (its retry
    /// budget is shorter than the signing) and exits before the server has
    /// issued. The next start reads the unanswered enrollment's key from the
    /// output directory and gets the certificate the first run's request
    /// made; a new key would get `token.used`.
    fn answer_lost_then_restarted(backend: Backend) {
        let server = TestServer::builder(backend)
            .options(ServerOptions::default().token(Token::HsmSim))
            .start();
        run_test_on(
            server.as_ref(),
            "ok_agent_restarted_after_a_lost_answer_gets_its_certificate",
            |server| {
                let (policy, _token, workload) = slow_signing_workload(server, "restarted");
                let first = workload.agent_once("1s");
                hsm_faults(server, &["clear"]);
                assert_ne!(first.code, Some(EXIT_OK), "{}", first.text);
                let issued = format!("policy={policy}&status=issued");
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while server.certificates(&issued).is_empty() {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the first run's request never issued"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }

                let second = workload.agent_once("30s");
                assert_eq!(second.code, Some(EXIT_OK), "{}", second.text);
                assert_only_certificate_is_installed(server, &policy, &workload, &second);
                assert!(
                    !workload.out.join("..pending-enrollment").exists(),
                    "the answered enrollment's record is removed"
                );
            },
        );
    }

    /// The agent gives up on its first enrollment request (its request
    /// timeout is shorter than the HSM's latency) while the server goes on
    /// and issues, spending the single-use token. The retry sends the same
    /// key and CSR, so the server knows it for the same client: it answers
    /// `issuance.in_flight` while the first try is signing, then the
    /// certificate it issued. A retry with a new key would get
    /// `token.used`, and the workload could never enroll.
    fn answer_lost_then_retried(backend: Backend) {
        let server = TestServer::builder(backend)
            .options(ServerOptions::default().token(Token::HsmSim))
            .start();
        run_test_on(
            server.as_ref(),
            "ok_agent_whose_answer_was_lost_gets_its_certificate_on_retry",
            |server| {
                let (policy, token, workload) = slow_signing_workload(server, "lost");
                let run = workload.agent_once("60s");
                hsm_faults(server, &["clear"]);
                assert_eq!(run.code, Some(EXIT_OK), "{}", run.text);
                assert!(
                    run.text.contains("retrying"),
                    "the first request was meant to time out:\n{}",
                    run.text
                );
                assert_only_certificate_is_installed(server, &policy, &workload, &run);
                let response = server.admin_get(&format!("/v1/admin/tokens/{}", token.id));
                assert_eq!(response.json::<TokenInfo>().uses, 1);
            },
        );
    }

    /// Starts a workload with a single-use token through `start`, sends
    /// SIGTERM while its enrollment is being signed, and checks that the
    /// request was let finish: exit 0, the new key and certificate in place
    /// and matching, the hook run for it, the token used once, one
    /// certificate in the inventory.
    fn sigterm_while_enrolling(backend: Backend, test: &str, start: fn(&Workload) -> AgentProcess) {
        let server = TestServer::builder(backend)
            .options(ServerOptions::default().token(Token::HsmSim))
            .start();
        run_test_on(server.as_ref(), test, |server| {
            let policy = workload_policy(server, "stop", "1h");
            let dns = format!("w.{policy}.test");
            let token = server.mint_token(&policy, &identity(&[&dns], &[], &[]), 1);
            let workload = Workload::new(server, &token.token, &[&dns], "");
            let fault = server.hsm_sim(&["fault", "set", "--latency", HSM_LATENCY]);
            assert!(fault.success(), "{}", fault.text);

            let mut process = start(&workload);
            // A pending record means the server has consumed the token
            // in the same transaction and is now signing: from here on,
            // dropping the request loses the token and the certificate.
            let pending = format!("policy={policy}&status=pending");
            process.wait_for(
                "the enrollment to reach the HSM",
                Duration::from_secs(30),
                || !server.certificates(&pending).is_empty(),
            );
            process.signal("TERM");
            let code = process.wait_exit(Duration::from_secs(30));
            let log = process.log();
            assert_eq!(
                code,
                Some(EXIT_OK),
                "SIGTERM in flight lets the enrollment succeed:\n{log}"
            );

            let generation = workload.current().unwrap_or_else(|error| {
                panic!("no certificate in place after the stop: {error}\n{log}")
            });
            let serial = generation.serial();
            for (name, written) in [
                ("key.pem", &generation.key_pem),
                ("cert.pem", &generation.cert_pem),
            ] {
                let stable = std::fs::read_to_string(workload.path(name)).unwrap_or_default();
                assert_eq!(&stable, written, "{name} is not the new generation's");
            }
            assert_eq!(
                workload.hook_serials(),
                vec![serial.clone()],
                "the reload hook ran for it"
            );

            // The single-use token enrolled exactly once, for the
            // certificate now on disk.
            let inventory: Vec<(String, CertificateStatus)> = server
                .certificates(&format!("policy={policy}"))
                .into_iter()
                .map(|info| (info.serial, info.status))
                .collect();
            assert_eq!(inventory, vec![(serial, CertificateStatus::Issued)]);
            let response = server.admin_get(&format!("/v1/admin/tokens/{}", token.id));
            response.assert_status(200);
            assert_eq!(response.json::<TokenInfo>().uses, 1);
            assert!(log.contains("finishing the in-flight enrollment"), "{log}");
            assert!(
                log.contains("stopping after the in-flight enrollment"),
                "{log}"
            );

            let fault = server.hsm_sim(&["fault", "clear"]);
            assert!(fault.success(), "{}", fault.text);
        });
    }

    /// The output directory vanishes while a single-use token's enrollment
    /// is being signed: the agent cannot write what the server issued. It
    /// keeps the key and certificate and writes them once the directory is
    /// back, instead of exiting (the token is spent and the key existed only
    /// in memory) or enrolling again.
    fn keeps_an_issued_certificate_until_it_can_write_it(backend: Backend) {
        let server = TestServer::builder(backend)
            .options(ServerOptions::default().token(Token::HsmSim))
            .start();
        let test = "ok_agent_keeps_an_issued_certificate_until_it_can_write_it";
        run_test_on(server.as_ref(), test, |server| {
            let policy = workload_policy(server, "unwritable", "1h");
            let dns = format!("w.{policy}.test");
            let token = server.mint_token(&policy, &identity(&[&dns], &[], &[]), 1);
            let workload = Workload::new(server, &token.token, &[&dns], "");
            let fault = server.hsm_sim(&["fault", "set", "--latency", HSM_LATENCY]);
            assert!(fault.success(), "{}", fault.text);

            let mut process = workload.spawn_agent();
            let pending = format!("policy={policy}&status=pending");
            process.wait_for(
                "the enrollment to reach the HSM",
                Duration::from_secs(30),
                || !server.certificates(&pending).is_empty(),
            );
            let out = workload.path("");
            std::fs::remove_dir_all(&out).expect("remove the output directory");
            process.wait_for("the failed write", Duration::from_secs(30), || {
                process_log_contains(&workload, "could not be written")
            });
            let fault = server.hsm_sim(&["fault", "clear"]);
            assert!(fault.success(), "{}", fault.text);
            std::fs::create_dir(&out).expect("recreate the output directory");
            process.wait_for("the certificate in place", Duration::from_secs(30), || {
                workload.current().is_ok()
            });

            let serial = workload.current().expect("in place").serial();
            let inventory: Vec<(String, CertificateStatus)> = server
                .certificates(&format!("policy={policy}"))
                .into_iter()
                .map(|info| (info.serial, info.status))
                .collect();
            assert_eq!(
                inventory,
                vec![(serial.clone(), CertificateStatus::Issued)],
                "one enrollment"
            );
            let response = server.admin_get(&format!("/v1/admin/tokens/{}", token.id));
            assert_eq!(response.json::<TokenInfo>().uses, 1);
            // The hook runs once crl.pem is brought up to date too, a moment
            // after the certificate is in place.
            process.wait_for("the reload hook", Duration::from_secs(30), || {
                !workload.hook_serials().is_empty()
            });
            assert_eq!(
                workload.hook_serials(),
                vec![serial],
                "the reload hook ran for it"
            );
            let log = workload.agent_log();
            assert!(log.contains("installed after retrying"), "{log}");
            let partial = || -> Vec<_> {
                std::fs::read_dir(&out)
                    .expect("list the output directory")
                    .filter_map(Result::ok)
                    .filter(|entry| entry.file_name().to_string_lossy().starts_with(".."))
                    .filter(|entry| entry.file_name() != "..reloaded")
                    .collect()
            };
            // The hook's record (`..reloaded`, written through a temporary
            // file) lands a moment after the hook itself.
            process.wait_for("the hook's record", Duration::from_secs(10), || {
                workload.path("..reloaded").exists() && partial().len() == 2
            });
            let partial = partial();
            assert_eq!(partial.len(), 2, "..data and one generation: {partial:?}");
            assert_eq!(process.stop(), Some(EXIT_OK), "{log}");
        });
    }

    /// SIGHUP asks for a renewal; a second SIGHUP while that renewal is
    /// being signed asks for the same thing and must not cause another.
    fn sighup_during_a_renewal(backend: Backend) {
        let server = TestServer::builder(backend)
            .options(ServerOptions::default().token(Token::HsmSim))
            .start();
        let test = "ok_sighup_during_a_renewal_does_not_renew_twice";
        run_test_on(server.as_ref(), test, |server| {
            let policy = workload_policy(server, "hup", "1h");
            let dns = format!("w.{policy}.test");
            let token = server.mint_token(&policy, &identity(&[&dns], &[], &[]), 1);
            let workload = Workload::new(server, &token.token, &[&dns], "");
            let mut process = workload.spawn_agent();
            // Asleep until its renewal time: the first install (and its
            // hook) is over, so the SIGHUP below is not one that arrived
            // during it, which would rightly be absorbed.
            process.wait_for("the first certificate", Duration::from_secs(30), || {
                process_log_contains(&workload, "certificate valid; renewal at")
            });
            let fault = server.hsm_sim(&["fault", "set", "--latency", HSM_LATENCY]);
            assert!(fault.success(), "{}", fault.text);
            process.signal("HUP");
            let pending = format!("policy={policy}&status=pending");
            process.wait_for(
                "the renewal to reach the HSM",
                Duration::from_secs(30),
                || !server.certificates(&pending).is_empty(),
            );
            process.signal("HUP");
            let issued = format!("policy={policy}&status=issued");
            process.wait_for("the renewal", Duration::from_secs(30), || {
                server.certificates(&issued).len() >= 2
            });
            let fault = server.hsm_sim(&["fault", "clear"]);
            assert!(fault.success(), "{}", fault.text);
            // Time for a second renewal, if one were coming.
            std::thread::sleep(Duration::from_secs(3));
            let log = workload.agent_log();
            assert_eq!(
                server.certificates(&format!("policy={policy}")).len(),
                2,
                "{log}"
            );
            assert!(log.contains("SIGHUP during the renewal"), "{log}");
            assert_eq!(process.stop(), Some(EXIT_OK), "{log}");
        });
    }

    fn process_log_contains(workload: &Workload, text: &str) -> bool {
        workload.agent_log().contains(text)
    }
}
