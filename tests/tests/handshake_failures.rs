//! The server's own view of refused mTLS handshakes: a client certificate
//! the HTTPS listener refuses (another CA's, garbage, a changed signature,
//! a genuine certificate without its key) fails the handshake, leaves one
//! WARN line describing the certificate (never a key), and counts in
//! `certmint_tls_handshake_failures_total{reason}`.
//!
//! The handshake does not depend on the database, so the tests share one
//! SQLite server with JSON logs. Each test provokes a different reason, so
//! each can expect its own reason's count to grow by exactly one although
//! they run in parallel.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use certmint::wire::CertificateBundle;
use certmint_e2e::{
    identity, make_csr, parse_certificate, pem_chain, policy_json, run_test_on,
    shared_with_options, Backend, ServerOptions, Skip, TestServer,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

fn server() -> Option<&'static TestServer> {
    static SERVER: OnceLock<Result<TestServer, Skip>> = OnceLock::new();
    shared_with_options(&SERVER, Backend::Sqlite, || {
        ServerOptions::default().log_format_json()
    })
}

// ---- a TLS client that presents whatever it is given --------------------------

/// Presents one fixed chain and key, whatever the server asks for; rustls'
/// own `with_client_auth_cert` would refuse a chain that does not parse or
/// does not match the key, which is what these tests send.
#[derive(Debug)]
struct Presenting(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Presenting {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// What came of a request over a fresh mTLS connection.
#[derive(Debug)]
enum Outcome {
    /// The server answered: the response's status line.
    Answered(String),
    /// The connection failed with this TLS error.
    Refused(rustls::Error),
}

/// `GET /healthz` over a new connection that presents `chain` (DER, leaf
/// first) signed for with `key_pem`, trusting only the server's root.
fn get_healthz_presenting(server: &TestServer, chain: &[Vec<u8>], key_pem: &str) -> Outcome {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in pem_chain(server.root_pem()) {
        roots
            .add(CertificateDer::from(der))
            .expect("root.pem is a trust anchor");
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("a PEM key");
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .expect("a key rustls signs with");
    let certified = rustls::sign::CertifiedKey::new(
        chain.iter().cloned().map(CertificateDer::from).collect(),
        signing_key,
    );
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(Presenting(Arc::new(certified))));
    let port = server
        .base_url()
        .rsplit(':')
        .next()
        .and_then(|port| port.parse::<u16>().ok())
        .expect("a port in the base URL");
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect to the server");
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let name = ServerName::try_from("localhost").expect("a server name");
    let connection =
        rustls::ClientConnection::new(Arc::new(config), name).expect("a client connection");
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let mut response = Vec::new();
    // With TLS 1.3 the client's side of the handshake ends before the
    // server has checked its certificate: the refusal arrives as an alert
    // on the first read.
    let result = tls
        .write_all(request)
        .and_then(|()| tls.read_to_end(&mut response));
    match result {
        Ok(_) => Outcome::Answered(
            String::from_utf8_lossy(&response)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned(),
        ),
        Err(error) => match error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls_error) => Outcome::Refused(tls_error.clone()),
            None => panic!("the connection failed without a TLS error: {error:?}"),
        },
    }
}

/// Asserts the server refused the handshake with an alert.
#[track_caller]
fn assert_refused(outcome: &Outcome) {
    match outcome {
        Outcome::Refused(rustls::Error::AlertReceived(_)) => {}
        other => panic!("expected the server to refuse the handshake with an alert: {other:?}"),
    }
}

// ---- what the server says about it ---------------------------------------------

/// `certmint_tls_handshake_failures_total{reason=…}` now.
fn failures(server: &TestServer, reason: &str) -> u64 {
    let text = server.get("/metrics").assert_status(200).text.clone();
    let prefix = format!("certmint_tls_handshake_failures_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("/metrics has no {prefix:?}:\n{text}"))
}

/// The message of the server's refusal log line.
const REFUSAL: &str = "client certificate refused in the TLS handshake";

/// The refusal log lines (JSON) written since `offset` whose `field` is
/// `value`.
fn refusal_lines(server: &TestServer, offset: u64, field: &str, value: &str) -> Vec<Value> {
    server
        .log_since(offset)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == REFUSAL && line[field] == value)
        .collect()
}

/// The one refusal log line since `offset` whose `field` is `value`; waits
/// a little, as another process writes the log.
#[track_caller]
fn refusal_line(server: &TestServer, offset: u64, field: &str, value: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut lines = refusal_lines(server, offset, field, value);
        if !lines.is_empty() {
            assert_eq!(lines.len(), 1, "one line per refusal: {lines:?}");
            return lines.remove(0);
        }
        assert!(
            Instant::now() < deadline,
            "no refusal logged with {field} = {value}; log since the request:\n{}",
            server.log_since(offset)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts that the log since `offset` holds nothing of `key_pem`.
#[track_caller]
fn assert_no_key_material(server: &TestServer, offset: u64, key_pem: &str) {
    let log = server.log_since(offset);
    assert!(!log.contains("PRIVATE KEY"), "{log}");
    for line in key_pem.lines().filter(|line| !line.starts_with("-----")) {
        assert!(
            !log.contains(line),
            "a line of the client's key is in the log:\n{log}"
        );
    }
}

/// `sha256:<hex>` of `der`, as the log line names a certificate.
fn sha256(der: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
    )
}

/// Enrolls a fresh ec-p256 key for `name` under a new policy: the bundle,
/// its DER chain (leaf first) and the key.
fn enroll(server: &TestServer, name: &str) -> (CertificateBundle, Vec<Vec<u8>>, String) {
    let policy = server.unique("tlsfail");
    server.create_policy(&policy_json(&policy, &[name], &[], &[]));
    let token = server.mint_token(&policy, &identity(&[name], &[], &[]), 1);
    let (csr, key_pem) = make_csr("ec-p256", &[name], &[], &[]);
    let response = server.enroll(&csr, &token.token);
    response.assert_status(201);
    let bundle: CertificateBundle = response.json();
    let chain = pem_chain(&format!("{}{}", bundle.certificate_pem, bundle.chain_pem));
    (bundle, chain, key_pem)
}

// ---- tests ----------------------------------------------------------------------

#[test]
fn ok_a_genuine_certificate_with_its_key_is_answered_and_not_counted() {
    run_test_on(server(), "ok_genuine", |server| {
        let name = format!("{}.tlsfail.internal", server.unique("ok"));
        let (bundle, chain, key_pem) = enroll(server, &name);
        let offset = server.log_len();
        match get_healthz_presenting(server, &chain, &key_pem) {
            Outcome::Answered(status) => assert!(status.contains(" 200 "), "{status}"),
            refused => {
                panic!("the test client cannot even present a good certificate: {refused:?}")
            }
        }
        // The verifier ran before the answer: a refusal would be logged.
        assert_eq!(
            refusal_lines(server, offset, "cert.serial", &bundle.serial),
            Vec::<Value>::new()
        );
    });
}

#[test]
fn fail_a_certificate_from_an_untrusted_ca_is_refused_logged_and_counted() {
    run_test_on(server(), "fail_untrusted_ca", |server| {
        let unique = server.unique("stranger");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{unique} root"));
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut params =
            rcgen::CertificateParams::new(vec![format!("{unique}.example")]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, unique.as_str());
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(vec![0x01, 0x23, 0x45, 0x67].into());
        let leaf = params.signed_by(&key, &issuer).expect("leaf");
        let key_pem = key.serialize_pem();

        let before = failures(server, "unknown_issuer");
        let offset = server.log_len();
        assert_refused(&get_healthz_presenting(
            server,
            &[leaf.der().to_vec()],
            &key_pem,
        ));

        let line = refusal_line(server, offset, "cert.subject", &format!("CN={unique}"));
        assert_eq!(line["level"], "WARN", "{line}");
        assert_eq!(line["tls.reason"], "unknown_issuer", "{line}");
        assert_eq!(line["cert.issuer"], format!("CN={unique} root"), "{line}");
        assert_eq!(line["cert.sans"], format!("dns:{unique}.example"), "{line}");
        assert_eq!(line["cert.serial"], "01234567", "{line}");
        assert_eq!(line["cert.sha256"], sha256(leaf.der()), "{line}");
        let not_after = line["cert.not_after"].as_str().expect("cert.not_after");
        time::OffsetDateTime::parse(not_after, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|error| panic!("notAfter {not_after:?} is not RFC 3339: {error}"));
        assert_no_key_material(server, offset, &key_pem);
        assert_eq!(failures(server, "unknown_issuer"), before + 1);
    });
}

#[test]
fn fail_garbage_as_a_client_certificate_is_refused_as_malformed() {
    run_test_on(server(), "fail_garbage", |server| {
        let garbage = format!("not a certificate {}", server.unique("garbage")).into_bytes();
        let key = rcgen::KeyPair::generate().expect("key");
        let before = failures(server, "malformed");
        let offset = server.log_len();
        assert_refused(&get_healthz_presenting(
            server,
            std::slice::from_ref(&garbage),
            &key.serialize_pem(),
        ));
        let line = refusal_line(server, offset, "cert.sha256", &sha256(&garbage));
        assert_eq!(line["tls.reason"], "malformed", "{line}");
        assert!(line.get("cert.subject").is_none(), "{line}");
        assert_no_key_material(server, offset, &key.serialize_pem());
        assert_eq!(failures(server, "malformed"), before + 1);
    });
}

#[test]
fn fail_a_genuine_certificate_with_a_changed_signature_is_a_bad_signature() {
    run_test_on(server(), "fail_bad_signature", |server| {
        let name = format!("{}.tlsfail.internal", server.unique("sig"));
        let (bundle, mut chain, key_pem) = enroll(server, &name);
        // The last byte is inside the signature's `s`: the certificate
        // still parses, its signature no longer verifies.
        let leaf = &mut chain[0];
        let last = leaf.len() - 1;
        leaf[last] ^= 0x01;
        let tampered = leaf.clone();
        let before = failures(server, "bad_signature");
        let offset = server.log_len();
        assert_refused(&get_healthz_presenting(server, &chain, &key_pem));
        let line = refusal_line(server, offset, "cert.sha256", &sha256(&tampered));
        assert_eq!(line["tls.reason"], "bad_signature", "{line}");
        assert_eq!(line["cert.serial"], bundle.serial.as_str(), "{line}");
        assert_eq!(line["cert.sans"], format!("dns:{name}"), "{line}");
        let issuer = parse_certificate(&chain[1])
            .tbs_certificate()
            .subject()
            .to_string();
        assert_eq!(line["cert.issuer"], issuer.as_str(), "{line}");
        assert_no_key_material(server, offset, &key_pem);
        assert_eq!(failures(server, "bad_signature"), before + 1);
    });
}

#[test]
fn fail_a_genuine_certificate_without_its_key_is_a_bad_handshake_signature() {
    run_test_on(server(), "fail_without_key", |server| {
        let name = format!("{}.tlsfail.internal", server.unique("nokey"));
        let (bundle, chain, _key_pem) = enroll(server, &name);
        let other_key = rcgen::KeyPair::generate().expect("another key");
        let before = failures(server, "bad_handshake_signature");
        let offset = server.log_len();
        assert_refused(&get_healthz_presenting(
            server,
            &chain,
            &other_key.serialize_pem(),
        ));
        let line = refusal_line(server, offset, "cert.serial", &bundle.serial);
        assert_eq!(line["tls.reason"], "bad_handshake_signature", "{line}");
        assert_no_key_material(server, offset, &other_key.serialize_pem());
        assert_eq!(failures(server, "bad_handshake_signature"), before + 1);
    });
}
