//! The real `certmint agent` keeping `crl.pem` current, and `certmint
//! status` reading it.
//!
//! - Against a CRL listener played by a loopback HTTP server (the
//!   workload's PKI made here, so the test controls every CRL): a good CRL
//!   is written and runs the reload hook; a CRL from another key, one that
//!   copies the CA's name and key id with a forged signature, a lower CRL
//!   number, garbage and a wrong content type are refused while the last
//!   good `crl.pem` stays, and so does an index that fails; a newer CRL
//!   replaces it, runs the hook, and `status` then reports the certificate
//!   revoked.
//!
//! - Against the real server (SQLite and PostgreSQL): the agent enrolls and
//!   writes `crl.pem` (the issuer's CRLs, among them the shard the leaf
//!   names) before the one reload hook run that covers both; `certmint admin certificates revoke`
//!   reaches `crl.pem` within a refresh, runs the hook again, and `status`
//!   reports the certificate revoked. Another workload reading the CRL
//!   listener (`crl.url`) with `agent --once` gets the same revocation.
//!
//! The per-CRL checks themselves are unit-tested in
//! `client/src/bin/certmint/agent/crl.rs`; this checks the binary.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certmint::wire::{CrlIndex, CrlScope, CrlSummary};
use certmint_e2e::cli::{admin, layer_line, run_certmint, write_agent_dir, EnrolledFiles};
use certmint_e2e::workload::Workload;
use certmint_e2e::{backend_tests, certmint_binary, identity, pem_chain, policy_json, TestServer};
use der::Decode as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
    CrlDistributionPoint, CrlIssuingDistributionPoint, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use rustls_pki_types::pem::PemObject as _;
use time::OffsetDateTime;

const EXIT_NOT_USABLE: i32 = 9;
const LEAF_SERIAL: [u8; 2] = [0x0a, 0xbc];
const DNS: &str = "crl-mock.test";

/// A root, an issuing CA and a leaf, as a certmint CA issues them.
struct Pki {
    root: CertifiedIssuer<'static, KeyPair>,
    issuing: CertifiedIssuer<'static, KeyPair>,
    issuing_params: CertificateParams,
    leaf_pem: String,
    leaf_key_pem: String,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = OffsetDateTime::now_utc() + time::Duration::days(30);
    params
}

impl Pki {
    fn new() -> Pki {
        let root = CertifiedIssuer::self_signed(ca_params("mock root"), generate()).expect("root");
        let issuing_params = ca_params("mock issuing CA");
        let issuing = CertifiedIssuer::signed_by(issuing_params.clone(), generate(), &root)
            .expect("issuing CA");
        let leaf_key = generate();
        let mut params = CertificateParams::new(vec![DNS.to_owned()]).expect("leaf params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(&LEAF_SERIAL));
        params.not_before = OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = OffsetDateTime::now_utc() + time::Duration::days(1);
        let leaf = params.signed_by(&leaf_key, &issuing).expect("leaf");
        Pki {
            root,
            issuing,
            issuing_params,
            leaf_pem: leaf.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
        }
    }

    /// Lower-case hex of the issuing CA's key id (its CRLs' AKI).
    fn issuing_key_id(&self) -> String {
        let crl = self.crl(1, &[]);
        let parsed =
            x509_cert::crl::CertificateList::<x509_cert::certificate::Rfc5280>::from_der(&crl)
                .expect("own CRL parses");
        let aki = parsed
            .tbs_cert_list
            .crl_extensions
            .iter()
            .flatten()
            .find(|ext| ext.extn_id.to_string() == "2.5.29.35")
            .expect("AKI");
        let aki = x509_cert::ext::pkix::AuthorityKeyIdentifier::from_der(aki.extn_value.as_bytes())
            .expect("AKI parses");
        hex::encode(aki.key_identifier.expect("key id").as_bytes())
    }

    /// A CRL of the issuing CA with `number`, listing `serials`.
    fn crl(&self, number: u64, serials: &[&[u8]]) -> Vec<u8> {
        sign_crl(&self.issuing, number, serials, KeyIdMethod::Sha256)
    }
}

fn generate() -> KeyPair {
    KeyPair::generate().expect("generate a key")
}

fn crl_url(listener: &str) -> String {
    format!("{listener}/crl/shard/0.crl")
}

fn sign_crl(
    issuer: &rcgen::Issuer<'_, impl rcgen::SigningKey>,
    number: u64,
    serials: &[&[u8]],
    key_id: KeyIdMethod,
) -> Vec<u8> {
    let now = OffsetDateTime::now_utc();
    CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::hours(1),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: Some(CrlIssuingDistributionPoint {
            distribution_point: CrlDistributionPoint {
                uris: vec![crl_url("http://mock.invalid")],
            },
            scope: Some(rcgen::CrlScope::UserCertsOnly),
        }),
        revoked_certs: serials
            .iter()
            .map(|serial| RevokedCertParams {
                serial_number: SerialNumber::from_slice(serial),
                revocation_time: now,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: key_id,
    }
    .signed_by(issuer)
    .expect("sign a CRL")
    .der()
    .to_vec()
}

/// The server's plain-HTTP CRL listener, played on loopback: an index
/// naming one shard of the issuing CA, the body the test chose at its path
/// (304 for a matching `If-None-Match`, as the real one answers), and a
/// count of CRL requests.
struct MockListener {
    url: String,
    state: Arc<Mutex<MockState>>,
}

#[derive(Default)]
struct MockState {
    key_id: String,
    /// What the index says the current CRL is (its sha256).
    listed: Vec<u8>,
    /// What is served at the CRL's path, and as which media type.
    body: (String, Vec<u8>),
    /// `GET /v1/crls` fails with 503.
    index_down: bool,
    crl_requests: usize,
    index_requests: usize,
}

impl MockListener {
    fn start(key_id: &str) -> MockListener {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the mock listener");
        let url = format!("http://{}", socket.local_addr().expect("its address"));
        let state = Arc::new(Mutex::new(MockState {
            key_id: key_id.to_owned(),
            ..MockState::default()
        }));
        let shared = state.clone();
        let base = url.clone();
        std::thread::spawn(move || {
            for stream in socket.incoming() {
                let Ok(stream) = stream else { return };
                answer(stream, &shared, &base);
            }
        });
        MockListener { url, state }
    }

    /// Lists `listed` as the current CRL and serves `body` as `content_type`.
    fn serve(&self, listed: &[u8], body: &[u8], content_type: &str) {
        let mut state = self.state.lock().expect("mock state");
        state.listed = listed.to_vec();
        state.body = (content_type.to_owned(), body.to_vec());
    }

    fn crl_requests(&self) -> usize {
        self.state.lock().expect("mock state").crl_requests
    }

    fn index_requests(&self) -> usize {
        self.state.lock().expect("mock state").index_requests
    }

    fn set_index_down(&self, down: bool) {
        self.state.lock().expect("mock state").index_down = down;
    }
}

fn answer(stream: std::net::TcpStream, shared: &Mutex<MockState>, base: &str) {
    let mut writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(_) => return,
    };
    let mut reader = std::io::BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line.split(' ').nth(1).unwrap_or("").to_owned();
    let mut if_none_match = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("if-none-match") {
                if_none_match = Some(value.trim().to_owned());
            }
        }
    }
    let mut state = shared.lock().expect("mock state");
    let crl_path = format!("/crl/{}/0.crl", state.key_id);
    let (status, content_type, body) = if path == "/v1/crls" {
        state.index_requests += 1;
        if state.index_down {
            (
                "503 Service Unavailable",
                "text/plain".to_owned(),
                b"down".to_vec(),
            )
        } else {
            let now = OffsetDateTime::now_utc();
            let index = CrlIndex {
                crls: vec![CrlSummary {
                    issuer_key_id: state.key_id.clone(),
                    issuer_subject: "CN=mock issuing CA".into(),
                    shard: 0,
                    scope: CrlScope::UserCerts,
                    number: 0,
                    this_update: now,
                    next_update: now,
                    revoked: 0,
                    path: crl_path,
                    url: crl_url("http://mock.invalid"),
                    sha256: fingerprint(&state.listed),
                }],
            };
            let json = serde_json::to_vec(&index).expect("index JSON");
            ("200 OK", "application/json".to_owned(), json)
        }
    } else if path == crl_path {
        state.crl_requests += 1;
        let (content_type, body) = state.body.clone();
        if if_none_match.as_deref() == Some(format!("\"{}\"", fingerprint(&body)).as_str()) {
            ("304 Not Modified", content_type, Vec::new())
        } else {
            ("200 OK", content_type, body)
        }
    } else {
        (
            "404 Not Found",
            "text/plain".to_owned(),
            format!("{base}{path}").into_bytes(),
        )
    };
    drop(state);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = writer.write_all(head.as_bytes());
    let _ = writer.write_all(&body);
}

fn fingerprint(der: &[u8]) -> String {
    certmint::client::trust::fingerprint(der)
}

/// A running `certmint agent`, killed on drop.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn spawn(config: &Path, log: PathBuf) -> Agent {
        let stderr = std::fs::File::create(&log).expect("create the agent log");
        let child = Command::new(certmint_binary())
            .args(["agent", "--config"])
            .arg(config)
            .env_remove("CERTMINT_TOKEN")
            .env("CERTMINT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start certmint agent");
        Agent { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    #[track_caller]
    fn wait_for(&mut self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            if let Some(status) = self.child.try_wait().expect("poll the agent") {
                panic!(
                    "waiting for {what}: the agent exited ({status}); log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; agent log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn crls_in(path: &Path) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    rustls_pki_types::CertificateRevocationListDer::pem_slice_iter(text.as_bytes())
        .map(|crl| crl.expect("crl.pem holds PEM CRLs").as_ref().to_vec())
        .collect()
}

fn hook_runs(hook_log: &Path) -> usize {
    std::fs::read_to_string(hook_log)
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn ok_the_agent_keeps_the_last_good_crl_against_a_hostile_listener() {
    let pki = Pki::new();
    let key_id = pki.issuing_key_id();
    let listener = MockListener::start(&key_id);
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("create the output directory");
    // A certificate already in place (no meta.json: the agent falls back
    // to two thirds of the lifetime, hours away), trusted through a CA
    // bundle: the agent never needs the certmint server here.
    let files = EnrolledFiles {
        key_pem: pki.leaf_key_pem.clone(),
        cert_pem: format!("{}{}", pki.leaf_pem, pki.issuing.pem()),
        ca_pem: pki.root.pem(),
        serial: hex::encode(LEAF_SERIAL),
        bundle: serde_json::Value::Null,
    };
    write_agent_dir(&out, &files, None);
    std::fs::write(dir.path().join("bundle.pem"), pki.root.pem()).expect("write the bundle");
    let hook_log = dir.path().join("hook.log");
    let hook = format!(
        "echo \"$CERTMINT_SERIAL $CERTMINT_CRL_FILE\" >> {}",
        hook_log.display()
    );
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"server = "https://127.0.0.1:1"
ca_bundle = "bundle.pem"
output_dir = "out"
[names]
dns = ["{DNS}"]
[reload]
command = ["sh", "-c", {hook:?}]
[crl]
refresh = "1s"
url = "{url}"
"#,
            url = listener.url
        ),
    )
    .expect("write agent.toml");
    let crl_file = out.join("crl.pem");

    let good = pki.crl(5, &[&[0x0d, 0xef]]);
    listener.serve(&good, &good, "application/pkix-crl");
    let mut agent = Agent::spawn(&config, dir.path().join("agent.log"));
    agent.wait_for("crl.pem with the good CRL", || {
        crls_in(&crl_file) == vec![good.clone()]
    });
    agent.wait_for("the reload hook", || hook_runs(&hook_log) == 1);
    let hook_line = std::fs::read_to_string(&hook_log).expect("hook log");
    assert_eq!(
        hook_line.trim(),
        format!("{} {}", hex::encode(LEAF_SERIAL), crl_file.display()),
        "the hook names the certificate in place and crl.pem"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&crl_file)
        .expect("crl.pem")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    let good_file = std::fs::read_to_string(&crl_file).expect("crl.pem");

    let impostor =
        CertifiedIssuer::self_signed(ca_params("mock issuing CA"), generate()).expect("impostor");
    let forged_key_id = KeyIdMethod::PreSpecified(hex::decode(&key_id).expect("hex"));
    let forged = rcgen::Issuer::new(pki.issuing_params.clone(), generate());
    let hostile: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "another key",
            sign_crl(&impostor, 9, &[], KeyIdMethod::Sha256),
            "application/pkix-crl",
        ),
        (
            "forged signature",
            sign_crl(&forged, 9, &[], forged_key_id),
            "application/pkix-crl",
        ),
        ("lower number", pki.crl(4, &[]), "application/pkix-crl"),
        (
            "garbage",
            b"<html><body>502 Bad Gateway</body></html>".to_vec(),
            "application/pkix-crl",
        ),
        ("wrong content type", pki.crl(6, &[]), "text/html"),
    ];
    for (case, body, content_type) in hostile {
        listener.serve(&body, &body, content_type);
        let seen = listener.crl_requests();
        // Two fetches of the hostile body: the first was refused and the
        // agent carried on to the next refresh.
        agent.wait_for(case, || listener.crl_requests() >= seen + 2);
        assert_eq!(
            std::fs::read_to_string(&crl_file).expect("crl.pem"),
            good_file,
            "{case}: the last good crl.pem stays"
        );
        assert_eq!(hook_runs(&hook_log), 1, "{case}: no reload");
    }
    let log = agent.log();
    assert!(log.contains("refusing the CRL"), "{log}");
    for reason in [
        "not a CA this workload trusts",
        "signature does not verify",
        "lower than",
        "not a DER CRL",
        "text/html",
    ] {
        assert!(log.contains(reason), "no refusal naming {reason:?}:\n{log}");
    }

    // The listener's index fails: nothing changes.
    listener.set_index_down(true);
    let seen = listener.index_requests();
    agent.wait_for("two failed index reads", || {
        listener.index_requests() >= seen + 2
    });
    assert_eq!(
        std::fs::read_to_string(&crl_file).expect("crl.pem"),
        good_file
    );
    listener.set_index_down(false);

    // A newer CRL listing the workload's certificate: taken, hook again.
    let newer = pki.crl(7, &[&[0x0d, 0xef], &LEAF_SERIAL]);
    listener.serve(&newer, &newer, "application/pkix-crl");
    agent.wait_for("crl.pem with the newer CRL", || {
        crls_in(&crl_file) == vec![newer.clone()]
    });
    agent.wait_for("the second reload", || hook_runs(&hook_log) == 2);

    let dir_text = out.display().to_string();
    let report = run_certmint(&["status", "--dir", &dir_text], &[], None);
    report.assert_exit(EXIT_NOT_USABLE);
    let (word, detail) = layer_line(&report.stdout, "revocation")
        .unwrap_or_else(|| panic!("no revocation line:\n{}", report.stdout));
    assert_eq!(word, "FAIL", "{detail}");
    assert!(detail.contains(&hex::encode(LEAF_SERIAL)), "{detail}");
    assert_eq!(
        layer_line(&report.stdout, "crl").map(|line| line.0),
        Some("ok"),
        "{}",
        report.stdout
    );
    assert!(
        report
            .stdout
            .lines()
            .any(|line| line.starts_with("crl     CN=mock issuing CA shard 0 number 7")),
        "{}",
        report.stdout
    );
    let json = run_certmint(&["status", "--dir", &dir_text, "--json"], &[], None);
    let body = json.json();
    assert_eq!(body["usable"], false);
    assert_eq!(body["crls"][0]["number"], "7");
    assert_eq!(body["crls"][0]["revoked"], 2);
}

/// Lower-case hex serials (no leading zeros) of every CRL in `crl.pem`.
fn listed_serials(path: &Path) -> Vec<String> {
    crls_in(path)
        .iter()
        .flat_map(|der| {
            let crl =
                x509_cert::crl::CertificateList::<x509_cert::certificate::Rfc5280>::from_der(der)
                    .expect("a CRL of crl.pem parses");
            crl.tbs_cert_list
                .revoked_certificates
                .unwrap_or_default()
                .into_iter()
                .map(|entry| strip_zeros(&hex::encode(entry.serial_number.as_bytes())))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn strip_zeros(hex: &str) -> String {
    hex.trim_start_matches('0').to_owned()
}

/// The Issuing Distribution Point URLs of the CRLs in `crl.pem`.
fn crl_urls(path: &Path) -> Vec<String> {
    use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
    use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
    crls_in(path)
        .iter()
        .filter_map(|der| {
            let crl =
                x509_cert::crl::CertificateList::<x509_cert::certificate::Rfc5280>::from_der(der)
                    .expect("a CRL of crl.pem parses");
            let ext = crl
                .tbs_cert_list
                .crl_extensions
                .unwrap_or_default()
                .into_iter()
                .find(|ext| ext.extn_id.to_string() == "2.5.29.28")?;
            let idp = IssuingDistributionPoint::from_der(ext.extn_value.as_bytes()).ok()?;
            match idp.distribution_point? {
                DistributionPointName::FullName(names) => {
                    names.into_iter().find_map(|name| match name {
                        GeneralName::UniformResourceIdentifier(uri) => Some(uri.to_string()),
                        _ => None,
                    })
                }
                DistributionPointName::NameRelativeToCRLIssuer(_) => None,
            }
        })
        .collect()
}

/// The CRL Distribution Point URL of the first certificate of `cert_pem`.
fn leaf_distribution_point(cert_pem: &str) -> String {
    use x509_cert::ext::pkix::crl::CrlDistributionPoints;
    use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
    let der = &pem_chain(cert_pem)[0];
    let leaf = x509_cert::Certificate::from_der(der).expect("the leaf parses");
    let (_, points) = leaf
        .tbs_certificate()
        .get_extension::<CrlDistributionPoints>()
        .expect("extensions decode")
        .expect("the leaf names its CRL");
    points
        .0
        .iter()
        .find_map(|point| match &point.distribution_point {
            Some(DistributionPointName::FullName(names)) => {
                names.iter().find_map(|name| match name {
                    GeneralName::UniformResourceIdentifier(uri) => Some(uri.to_string()),
                    _ => None,
                })
            }
            _ => None,
        })
        .expect("a URI distribution point")
}

/// A policy for `*.<name>.test`, an hour's lifetime (no renewal during the
/// test); returns its name.
fn hour_policy(server: &TestServer) -> String {
    let name = server.unique("crl-agent");
    let mut spec = policy_json(&name, &[&format!("*.{name}.test")], &[], &[]);
    spec["ttl"] = serde_json::json!({ "default": "1h", "max": "1h" });
    spec["extended_key_usage"] = serde_json::json!(["client_auth", "server_auth"]);
    server.create_policy(&spec);
    name
}

backend_tests! {
    fn ok_a_revocation_reaches_crl_pem_within_a_refresh_and_runs_the_hook(server: &TestServer) {
        let policy = hour_policy(server);
        let dns = format!("api.{policy}.test");
        let token = server.mint_token(&policy, &identity(&[&dns], &[], &[]), 1);
        let workload = Workload::new(server, &token.token, &[&dns], "crl.refresh = \"1s\"\n");
        // The hook notes whether crl.pem was there when it ran.
        let script = format!(
            "echo \"$CERTMINT_SERIAL $(test -s \"$CERTMINT_CRL_FILE\" && echo with-crl)\" >> {}",
            workload.hook_log.display()
        );
        workload.set_reload_command(&["sh", "-c", &script]);
        let crl_file = workload.path("crl.pem");
        let mut agent = workload.spawn_agent();
        agent.wait_for("the enrollment and its hook", Duration::from_secs(60), || {
            !workload.hook_serials().is_empty()
        });
        let serial = workload.serial().expect("a serial");
        // crl.pem was written before the certificate's hook, which covered
        // both: no second reload for it, through a few refreshes.
        std::thread::sleep(Duration::from_millis(2500));
        assert_eq!(workload.hook_serials(), vec![format!("{serial} with-crl")]);
        let generation = workload.current().expect("a generation");
        let shard = leaf_distribution_point(&generation.cert_pem);
        let urls = crl_urls(&crl_file);
        assert!(urls.contains(&shard), "crl.pem lacks the leaf's shard {shard}: {urls:?}");
        assert!(!listed_serials(&crl_file).contains(&strip_zeros(&serial)));

        admin(server, &["certificates", "revoke", &serial, "--reason", "key_compromise"])
            .assert_exit(0);
        agent.wait_for("crl.pem to list the revoked serial", Duration::from_secs(30), || {
            listed_serials(&crl_file).contains(&strip_zeros(&serial))
        });
        agent.wait_for("the hook for the new crl.pem", Duration::from_secs(20), || {
            workload.hook_serials().len() == 2
        });
        assert_eq!(workload.hook_serials()[1], format!("{serial} with-crl"));

        let out = workload.out.display().to_string();
        let report = run_certmint(&["status", "--dir", &out], &[], None);
        report.assert_exit(EXIT_NOT_USABLE);
        let (word, detail) = layer_line(&report.stdout, "revocation")
            .unwrap_or_else(|| panic!("no revocation line:\n{}", report.stdout));
        assert_eq!(word, "FAIL", "{detail}");
        assert_eq!(layer_line(&report.stdout, "crl").map(|line| line.0), Some("ok"), "{}", report.stdout);
        assert_eq!(agent.stop(), Some(0));

        // Another workload of the same issuer, reading the plain-HTTP CRL
        // listener: its first crl.pem already lists the revocation.
        let other_dns = format!("other.{policy}.test");
        let other_token = server.mint_token(&policy, &identity(&[&other_dns], &[], &[]), 1);
        let top = format!("crl.url = \"{}\"\n", server.crl_url());
        let other = Workload::new(server, &other_token.token, &[&other_dns], &top);
        let run = other.agent_once("30s");
        assert_eq!(run.code, Some(0), "agent --once failed:\n{}", run.stderr);
        let other_crls = other.path("crl.pem");
        assert!(
            listed_serials(&other_crls).contains(&strip_zeros(&serial)),
            "the listener's CRLs lack {serial}:\n{}",
            run.stderr
        );
        let report = run_certmint(&["status", "--dir", &other.out.display().to_string()], &[], None);
        report.assert_exit(0);
        assert_eq!(layer_line(&report.stdout, "revocation").map(|line| line.0), Some("ok"), "{}", report.stdout);
    }
    fn ok_one_shot_enroll_writes_crl_pem_and_runs_one_hook(server: &TestServer) {
        let policy = hour_policy(server);
        let dns = format!("enroll.{policy}.test");
        let token = server.mint_token(&policy, &identity(&[&dns], &[], &[]), 1);
        let workload = Workload::new(server, &token.token, &[&dns], "");
        let mut enroll = workload.spawn_enroll();
        assert_eq!(enroll.wait_exit(Duration::from_secs(60)), Some(0), "{}", enroll.log());
        let crl_file = workload.path("crl.pem");
        assert!(crl_file.exists(), "certmint enroll wrote no crl.pem: {}", enroll.log());
        let cert_pem = std::fs::read_to_string(workload.path("cert.pem")).expect("cert.pem");
        let wanted = leaf_distribution_point(&cert_pem);
        assert!(
            crl_urls(&crl_file).contains(&wanted),
            "crl.pem holds the CRL the leaf names ({wanted})"
        );
        assert_eq!(workload.hook_serials().len(), 1, "one hook run covers both");
    }
}
