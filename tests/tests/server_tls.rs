//! The server's own HTTPS certificate: issued from its CA, recorded like
//! any other certificate, and replaced in-process before it expires.

use std::process::Command;
use std::time::{Duration, Instant};

use certmint_e2e::{Backend, ServerOptions, TestServer, Token};

/// Serial (lower-case hex) and notAfter of the certificate the server
/// presents in a fresh TLS handshake, read with OpenSSL.
fn presented_certificate(server: &TestServer) -> (String, String) {
    let address = server
        .base_url()
        .trim_start_matches("https://")
        .replace("localhost", "127.0.0.1");
    let script = format!(
        "openssl s_client -connect {address} -servername localhost </dev/null 2>/dev/null \
         | openssl x509 -noout -serial -enddate"
    );
    let output = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("run openssl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap_or_else(|| panic!("openssl printed no {name}: {text}"))
            .trim()
            .to_owned()
    };
    (field("serial=").to_ascii_lowercase(), field("notAfter="))
}

#[test]
fn ok_server_certificate_is_renewed_in_process_and_recorded() {
    let Some(server) = TestServer::builder(Backend::Sqlite)
        .options(ServerOptions::default().tls_certificate_ttl("12s"))
        .start()
    else {
        return;
    };
    let (first_serial, first_not_after) = presented_certificate(&server);
    let first_seen = Instant::now();

    // Renewal is due at about two thirds of 12 s; wait up to 30 s for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (renewed_serial, renewed_not_after) = loop {
        std::thread::sleep(Duration::from_millis(500));
        let (serial, not_after) = presented_certificate(&server);
        if serial != first_serial {
            break (serial, not_after);
        }
        assert!(
            Instant::now() < deadline,
            "the server still presents {first_serial} (notAfter {first_not_after}) after 30 s"
        );
    };
    assert_ne!(renewed_not_after, first_not_after);
    // Due at ~8 s after issuance (two thirds of the lifetime from issuance,
    // not from the backdated notBefore), so not within the first seconds.
    assert!(
        first_seen.elapsed() >= Duration::from_secs(3),
        "renewed after only {:?}: renew_after ignores the lifetime",
        first_seen.elapsed()
    );

    // Requests keep working over new connections, and both certificates are
    // in the inventory under the server's built-in profile.
    server.get("/healthz").assert_status(200);
    let recorded = server.certificates("policy=certmint-server-tls");
    assert!(
        recorded.len() <= 3,
        "{} server certificates in ~10 s: the server renews too eagerly",
        recorded.len()
    );
    for serial in [&first_serial, &renewed_serial] {
        assert!(
            recorded
                .iter()
                .any(|certificate| &certificate.serial == serial),
            "server certificate {serial} is not in the inventory"
        );
    }
}

/// `GET /readyz` without verifying the server's certificate (as a probe that
/// must still get an answer once that certificate has expired): status and
/// body, read with curl.
fn readyz_unverified(server: &TestServer) -> (u16, String) {
    let url = format!(
        "{}/readyz",
        server.base_url().replace("localhost", "127.0.0.1")
    );
    let output = Command::new("curl")
        .args(["-sk", "-o", "-", "-w", "\n%{http_code}", &url])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// The `code` of a problem document, `None` when `body` is not one.
fn problem_code(body: &str) -> Option<String> {
    let problem: serde_json::Value = serde_json::from_str(body).ok()?;
    problem.get("code")?.as_str().map(str::to_owned)
}

#[test]
fn fail_readyz_once_the_server_certificate_expired_unrenewed() {
    // hsm-sim whatever CERTMINT_TEST_TOKEN says: the test removes its device.
    let Some(server) = TestServer::builder(Backend::Sqlite)
        .options(
            ServerOptions::default()
                .token(Token::HsmSim)
                .tls_certificate_ttl("6s"),
        )
        .start()
    else {
        return;
    };
    let (_, not_after) = presented_certificate(&server);
    // Every PKCS#11 call fails from now on: renewal cannot sign.
    let fault = server.hsm_sim(&["fault", "remove-device"]);
    assert!(fault.success(), "hsm-sim fault failed: {}", fault.text);
    // The 6 s certificate expires unrenewed; readiness must then say so
    // (before it would report the HSM, which is down too).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        std::thread::sleep(Duration::from_millis(500));
        let (status, body) = readyz_unverified(&server);
        if problem_code(&body).as_deref() == Some("server.certificate_expired") {
            break (status, body);
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never reported the expired certificate (notAfter {not_after}): {status} {body}"
        );
    };
    assert_eq!(status, 503, "{body}");
    let inserted = server.hsm_sim(&["fault", "insert-device"]);
    assert!(
        inserted.success(),
        "hsm-sim fault failed: {}",
        inserted.text
    );
}
