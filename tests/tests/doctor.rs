//! `certmint doctor` against real peers on loopback: a small rustls server
//! run by the test, `openssl s_server`, and `certmint doctor --listen`,
//! each with a PKI made here with rcgen. Every test asserts the layer, the
//! cause and the exit code doctor names (never its prose). The layer
//! logic is unit-tested beside the code (`client/src/bin/certmint/doctor/`);
//! these tests check that real handshakes are classified as it says.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use certmint_e2e::cli::run_certmint;
use certmint_e2e::workload::free_port;
use certmint_e2e::CommandOutput;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use serde_json::Value;
use time::{Duration as TimeDuration, OffsetDateTime};

const IO_TIMEOUT: Duration = Duration::from_secs(15);

// --- the PKI ---------------------------------------------------------------

/// A CA: its certificate and what signs with it.
struct Ca {
    cert: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf: its certificate and key.
struct Leaf {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn ca(name: &str, parent: Option<&Ca>) -> Ca {
    let key = KeyPair::generate().expect("a CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now() - TimeDuration::days(30);
    params.not_after = now() + TimeDuration::days(365);
    let cert = match parent {
        Some(parent) => params.signed_by(&key, &parent.issuer),
        None => params.self_signed(&key),
    }
    .expect("sign a CA");
    Ca {
        cert,
        issuer: Issuer::new(params, key),
    }
}

fn leaf(
    issuer: &Ca,
    name: &str,
    eku: &[ExtendedKeyUsagePurpose],
    serial: u8,
    edit: impl FnOnce(&mut CertificateParams),
) -> Leaf {
    let key = KeyPair::generate().expect("a leaf key");
    let mut params = CertificateParams::new(vec![name.to_owned()]).expect("leaf params");
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("an IP")));
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = eku.to_vec();
    params.not_before = now() - TimeDuration::hours(1);
    params.not_after = now() + TimeDuration::hours(23);
    params.serial_number = Some(SerialNumber::from_slice(&[0x5e, serial]));
    edit(&mut params);
    let cert = params.signed_by(&key, &issuer.issuer).expect("sign a leaf");
    Leaf { cert, key }
}

fn crl(issuer: &Ca, serials: &[u8]) -> CertificateRevocationListDer<'static> {
    let params = CertificateRevocationListParams {
        this_update: now() - TimeDuration::minutes(10),
        next_update: now() + TimeDuration::days(1),
        crl_number: SerialNumber::from(7u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|serial| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&[0x5e, *serial]),
                revocation_time: now() - TimeDuration::minutes(5),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params
        .signed_by(&issuer.issuer)
        .expect("sign a CRL")
        .der()
        .clone()
}

fn crl_pem(crl: &CertificateRevocationListDer<'_>) -> String {
    certmint::client::trust::pem_block("X509 CRL", crl.as_ref())
}

/// The usual world: one root, one issuing intermediate, a server and a client.
struct World {
    root: Ca,
    intermediate: Ca,
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        World::named("doctor test")
    }

    /// A world whose CAs are `<prefix> root` and `<prefix> issuing`.
    fn named(prefix: &str) -> World {
        let root = ca(&format!("{prefix} root"), None);
        let intermediate = ca(&format!("{prefix} issuing"), Some(&root));
        World {
            root,
            intermediate,
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    fn server(&self, serial: u8) -> Leaf {
        leaf(
            &self.intermediate,
            "localhost",
            &[ExtendedKeyUsagePurpose::ServerAuth],
            serial,
            |_| {},
        )
    }

    fn client(&self, serial: u8) -> Leaf {
        leaf(
            &self.intermediate,
            "workload.test",
            &[ExtendedKeyUsagePurpose::ClientAuth],
            serial,
            |_| {},
        )
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write a test file");
        path
    }

    /// Writes `leaf` (with the intermediate) and its key; `(cert, key)` paths.
    fn files(&self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        let cert = self.write(
            &format!("{name}.pem"),
            &format!("{}{}", leaf.cert.pem(), self.intermediate.cert.pem()),
        );
        let key = self.write(&format!("{name}.key"), &leaf.key.serialize_pem());
        (cert, key)
    }

    fn ca_file(&self) -> PathBuf {
        self.write("ca.pem", &self.root.cert.pem())
    }

    fn full_chain(&self, leaf: &Leaf) -> Vec<CertificateDer<'static>> {
        vec![
            leaf.cert.der().clone(),
            self.intermediate.cert.der().clone(),
        ]
    }
}

// --- peers -----------------------------------------------------------------

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn private_key(leaf: &Leaf) -> PrivateKeyDer<'static> {
    PrivateKeyDer::try_from(leaf.key.serialize_der()).expect("a PKCS#8 key")
}

/// How the test server treats client certificates.
enum ClientAuth {
    /// It does not ask for one.
    NotRequested,
    /// It requires one chaining to `roots`, not listed in `crls`.
    Required {
        roots: Vec<CertificateDer<'static>>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    },
}

/// A rustls server for one connection; its thread's result says how the
/// handshake ended on the server side.
struct TlsServer {
    port: u16,
    done: JoinHandle<Result<(), String>>,
}

impl TlsServer {
    fn start(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        auth: ClientAuth,
    ) -> TlsServer {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let builder = match auth {
            ClientAuth::NotRequested => builder.with_no_client_auth(),
            ClientAuth::Required { roots, crls } => {
                let mut store = rustls::RootCertStore::empty();
                for root in roots {
                    store.add(root).expect("a usable root");
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(store),
                    provider(),
                )
                .with_crls(crls)
                .allow_unknown_revocation_status()
                .build()
                .expect("a client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = Arc::new(
            builder
                .with_single_cert(chain, key)
                .expect("server certificate"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test server");
        let port = listener.local_addr().expect("its address").port();
        let done = std::thread::spawn(move || {
            let (mut tcp, _) = listener.accept().map_err(|error| error.to_string())?;
            tcp.set_read_timeout(Some(IO_TIMEOUT))
                .map_err(|error| error.to_string())?;
            let mut connection =
                rustls::ServerConnection::new(config).map_err(|error| error.to_string())?;
            while connection.is_handshaking() {
                // complete_io sends our alert before it reports an error.
                connection
                    .complete_io(&mut tcp)
                    .map_err(|error| error.to_string())?;
            }
            // Hold the connection as a real server would, until the client leaves.
            let mut sink = [0u8; 1024];
            while matches!(tcp.read(&mut sink), Ok(read) if read > 0) {}
            Ok(())
        });
        TlsServer { port, done }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How the server side ended.
    fn finish(self) -> Result<(), String> {
        self.done
            .join()
            .unwrap_or_else(|_| Err("the server thread panicked".into()))
    }
}

/// `openssl s_server` with extra arguments, killed on drop.
struct OpensslServer {
    child: Child,
    port: u16,
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OpensslServer {
    fn start(cert: &Path, key: &Path, extra: &[&str]) -> OpensslServer {
        let port = free_port();
        let mut child = Command::new("openssl")
            .arg("s_server")
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            // -rev: answer without reading stdin, which is closed here.
            .arg("-rev")
            .args(extra)
            // No system-wide MinProtocol or seclevel: the test sets its own.
            .env("OPENSSL_CONF", "/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run openssl s_server");
        let stdout = child.stdout.take().expect("s_server stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.trim() == "ACCEPT" => break,
                Ok(_) => {}
                Err(_) => panic!("openssl s_server did not start on {port}"),
            }
        }
        OpensslServer { child, port }
    }
}

/// A running `certmint doctor --listen … --once --json`.
struct Listener {
    child: Child,
    port: u16,
}

impl Listener {
    fn start(args: &[&str]) -> Listener {
        let mut child = Command::new(certmint_e2e::certmint_binary())
            .args(["doctor", "--listen", "127.0.0.1:0", "--once", "--json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run certmint doctor --listen");
        let stderr = child.stderr.take().expect("doctor stderr");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let line = lines
            .recv_timeout(IO_TIMEOUT)
            .expect("doctor --listen says where it listens");
        let port = line
            .split("listening on 127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Listener { child, port }
    }

    /// Waits for it to exit: its exit code and its one JSON line.
    fn finish(mut self) -> (Option<i32>, Value) {
        let deadline = Instant::now() + IO_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for doctor --listen") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "doctor --listen --once did not exit"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .expect("doctor stdout")
            .read_to_string(&mut stdout)
            .expect("read doctor stdout");
        let json = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|error| panic!("not one JSON line ({error}): {stdout}"));
        (status.code(), json)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- running doctor ----------------------------------------------------------

/// `certmint doctor --connect ADDRESS --server-name localhost --json …`.
fn doctor(address: &str, identity: &[&Path], extra: &[&str]) -> (CommandOutput, Value) {
    let [cert, key, ca] = identity else {
        panic!("give cert, key and CA paths");
    };
    let (cert, key, ca) = (path(cert), path(key), path(ca));
    let mut args = vec![
        "doctor",
        "--connect",
        address,
        "--server-name",
        "localhost",
        "--cert",
        &cert,
        "--key",
        &key,
        "--ca",
        &ca,
        "--json",
    ];
    args.extend_from_slice(extra);
    let output = run_certmint(&args, &[], None);
    let json = output.json();
    (output, json)
}

fn path(path: &Path) -> String {
    path.display().to_string()
}

/// Asserts the verdict's layer, cause and exit code.
#[track_caller]
fn assert_verdict(output: &CommandOutput, json: &Value, layer: &str, cause: &str, code: i32) {
    assert_eq!(
        (json["layer"].as_str(), json["cause"].as_str()),
        (Some(layer), Some(cause)),
        "{}",
        output.stdout
    );
    assert_eq!(json["ok"], false);
    output.assert_exit(code);
}

/// The cause of the first check of `layer` with status `status`.
fn check_cause<'a>(json: &'a Value, layer: &str, status: &str) -> Option<&'a str> {
    json["checks"]
        .as_array()?
        .iter()
        .find(|check| check["layer"] == layer && check["status"] == status)
        .and_then(|check| check["cause"].as_str())
}

fn strict_server(
    world: &World,
    server: &Leaf,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> TlsServer {
    TlsServer::start(
        world.full_chain(server),
        private_key(server),
        ClientAuth::Required {
            roots: vec![world.root.cert.der().clone()],
            crls,
        },
    )
}

// --- connect -----------------------------------------------------------------

#[test]
fn ok_good_mutual_tls_is_exit_zero() {
    let world = World::new();
    let server = strict_server(&world, &world.server(1), vec![]);
    let (cert, key) = world.files("client", &world.client(2));
    let (output, json) = doctor(&server.address(), &[&cert, &key, &world.ca_file()], &[]);
    output.assert_exit(0);
    assert_eq!(json["ok"], true, "{}", output.stdout);
    assert_eq!(json["layer"], Value::Null);
    assert!(json["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .all(|check| check["status"] != "fail"));
    server.finish().expect("the server accepted the client");

    // The text form: one line per check and the verdict, no colour in a pipe.
    let server = strict_server(&world, &world.server(1), vec![]);
    let address = server.address();
    let text = run_certmint(
        &[
            "doctor",
            "--connect",
            &address,
            "--server-name",
            "localhost",
            "--cert",
            &path(&cert),
            "--key",
            &path(&key),
            "--ca",
            &path(&world.ca_file()),
        ],
        &[],
        None,
    );
    text.assert_exit(0);
    assert!(text.stdout.contains("ok    refused"), "{}", text.stdout);
    assert!(
        text.stdout
            .ends_with(&format!("verdict: ok: mutual TLS with {address} works\n")),
        "{}",
        text.stdout
    );
    assert!(!text.stdout.contains('\x1b'));
}

#[test]
fn fail_expired_client_certificate() {
    let world = World::new();
    let server = strict_server(&world, &world.server(1), vec![]);
    let expired = leaf(
        &world.intermediate,
        "workload.test",
        &[ExtendedKeyUsagePurpose::ClientAuth],
        3,
        |params| {
            params.not_before = now() - TimeDuration::days(2);
            params.not_after = now() - TimeDuration::hours(2);
        },
    );
    let (cert, key) = world.files("client", &expired);
    let (output, json) = doctor(&server.address(), &[&cert, &key, &world.ca_file()], &[]);
    assert_verdict(&output, &json, "identity", "expired", 20);
    // And the server said so too, in its own words.
    assert_eq!(
        check_cause(&json, "refused", "fail"),
        Some("certificate_expired"),
        "{}",
        output.stdout
    );
    assert!(
        server.finish().is_err(),
        "the server must have refused the client"
    );
}

#[test]
fn fail_missing_intermediate_on_the_server() {
    let world = World::new();
    let server_leaf = world.server(1);
    let server = TlsServer::start(
        vec![server_leaf.cert.der().clone()],
        private_key(&server_leaf),
        ClientAuth::NotRequested,
    );
    let (cert, key) = world.files("client", &world.client(2));
    let (output, json) = doctor(&server.address(), &[&cert, &key, &world.ca_file()], &[]);
    assert_verdict(&output, &json, "server_chain", "missing_intermediate", 23);
    assert!(
        json["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("CN=doctor test issuing"),
        "{}",
        output.stdout
    );
}

#[test]
fn fail_server_certificate_for_another_name() {
    let world = World::new();
    let wrong = leaf(
        &world.intermediate,
        "other.test",
        &[ExtendedKeyUsagePurpose::ServerAuth],
        1,
        |params| {
            params.subject_alt_names = vec![SanType::DnsName(
                "other.test".try_into().expect("a DNS name"),
            )];
        },
    );
    let server = strict_server(&world, &wrong, vec![]);
    let (cert, key) = world.files("client", &world.client(2));
    let (output, json) = doctor(&server.address(), &[&cert, &key, &world.ca_file()], &[]);
    assert_verdict(&output, &json, "server_name", "name_mismatch", 25);
    let detail = json["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("localhost") && detail.contains("other.test"),
        "{detail}"
    );
}

#[test]
fn fail_client_certificate_without_client_auth() {
    let world = World::new();
    let server = strict_server(&world, &world.server(1), vec![]);
    let server_only = leaf(
        &world.intermediate,
        "workload.test",
        &[ExtendedKeyUsagePurpose::ServerAuth],
        4,
        |_| {},
    );
    let (cert, key) = world.files("client", &server_only);
    let (output, json) = doctor(&server.address(), &[&cert, &key, &world.ca_file()], &[]);
    assert_verdict(&output, &json, "identity", "no_client_auth", 20);
    assert_eq!(
        check_cause(&json, "refused", "fail"),
        Some("unsupported_certificate"),
        "{}",
        output.stdout
    );
}

#[test]
fn fail_revoked_server_certificate() {
    let world = World::new();
    let server = strict_server(&world, &world.server(9), vec![]);
    let crl = world.write("crl.pem", &crl_pem(&crl(&world.intermediate, &[9])));
    let (cert, key) = world.files("client", &world.client(2));
    let (output, json) = doctor(
        &server.address(),
        &[&cert, &key, &world.ca_file()],
        &["--crl", &path(&crl)],
    );
    assert_verdict(
        &output,
        &json,
        "revocation",
        "server_certificate_revoked",
        27,
    );
    assert!(
        json["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("keyCompromise"),
        "{}",
        output.stdout
    );
}

#[test]
fn fail_own_certificate_revoked_read_from_the_output_directory() {
    let world = World::new();
    let revoked = crl(&world.intermediate, &[2]);
    let server = strict_server(&world, &world.server(1), vec![revoked.clone()]);
    let client = world.client(2);
    let out = world.dir.path().join("out");
    std::fs::create_dir(&out).expect("the output directory");
    std::fs::write(
        out.join("cert.pem"),
        format!("{}{}", client.cert.pem(), world.intermediate.cert.pem()),
    )
    .expect("cert.pem");
    std::fs::write(out.join("key.pem"), client.key.serialize_pem()).expect("key.pem");
    std::fs::write(out.join("ca.pem"), world.root.cert.pem()).expect("ca.pem");
    std::fs::write(out.join("crl.pem"), crl_pem(&revoked)).expect("crl.pem");
    let output = run_certmint(
        &[
            "doctor",
            "--connect",
            &server.address(),
            "--server-name",
            "localhost",
            "--out",
            &path(&out),
            "--json",
        ],
        &[],
        None,
    );
    let json = output.json();
    assert_verdict(
        &output,
        &json,
        "revocation",
        "client_certificate_revoked",
        27,
    );
    assert_eq!(
        check_cause(&json, "refused", "fail"),
        Some("certificate_revoked"),
        "{}",
        output.stdout
    );
}

#[test]
fn fail_server_does_not_trust_our_ca() {
    let world = World::new();
    // We hold a certificate of another CA, which our own CA file trusts
    // too; the server trusts only its own root.
    let other_root = ca("another root", None);
    let ours = leaf(
        &other_root,
        "workload.test",
        &[ExtendedKeyUsagePurpose::ClientAuth],
        5,
        |_| {},
    );
    let cert = world.write("other-client.pem", &ours.cert.pem());
    let key = world.write("other-client.key", &ours.key.serialize_pem());
    let ca_file = world.write(
        "both.pem",
        &format!("{}{}", world.root.cert.pem(), other_root.cert.pem()),
    );
    let server = strict_server(&world, &world.server(1), vec![]);
    let (output, json) = doctor(&server.address(), &[&cert, &key, &ca_file], &[]);
    assert_verdict(&output, &json, "refused", "unknown_ca_alert", 29);
    let detail = json["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("it accepts CN=doctor test root"),
        "{detail}"
    );
    assert!(detail.contains("CN=another root"), "{detail}");
    assert_eq!(
        check_cause(&json, "client_auth", "warn"),
        Some("ca_not_accepted"),
        "{}",
        output.stdout
    );
}

#[test]
fn fail_server_of_a_ca_we_do_not_trust() {
    let world = World::new();
    let theirs = World::named("their");
    let server = strict_server(&theirs, &theirs.server(1), vec![]);
    let (cert, key) = world.files("client", &world.client(2));
    let (output, json) = doctor(&server.address(), &[&cert, &key, &world.ca_file()], &[]);
    assert_verdict(&output, &json, "server_chain", "unknown_ca", 23);
    let detail = json["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("CN=their issuing") && detail.contains("CN=their root"),
        "{detail}"
    );
}

#[test]
fn fail_server_of_a_ca_with_our_root_name_but_another_key() {
    let world = World::new();
    let impostor = World::new();
    let server = strict_server(&impostor, &impostor.server(1), vec![]);
    let (cert, key) = world.files("client", &world.client(2));
    let (output, json) = doctor(&server.address(), &[&cert, &key, &world.ca_file()], &[]);
    assert_verdict(&output, &json, "server_chain", "wrong_ca_key", 23);
    // The server's root of the same name cannot verify our chain either.
    assert_eq!(
        check_cause(&json, "refused", "fail"),
        Some("decrypt_error"),
        "{}",
        output.stdout
    );
}

#[test]
fn fail_server_that_does_not_ask_for_a_client_certificate() {
    let world = World::new();
    let server_leaf = world.server(1);
    let server = TlsServer::start(
        world.full_chain(&server_leaf),
        private_key(&server_leaf),
        ClientAuth::NotRequested,
    );
    let (cert, key) = world.files("client", &world.client(2));
    let (output, json) = doctor(&server.address(), &[&cert, &key, &world.ca_file()], &[]);
    assert_verdict(&output, &json, "client_auth", "not_requested", 28);
}

#[test]
fn fail_nothing_listening() {
    let world = World::new();
    let (cert, key) = world.files("client", &world.client(2));
    let address = format!("127.0.0.1:{}", free_port());
    let (output, json) = doctor(&address, &[&cert, &key, &world.ca_file()], &[]);
    assert_verdict(&output, &json, "tcp", "connection_refused", 21);
    // The layers above TCP are skipped, not guessed.
    let protocol = json["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|check| check["layer"] == "protocol"))
        .unwrap_or_else(|| panic!("no protocol check: {}", output.stdout));
    assert_eq!(protocol["status"], "skip", "{}", output.stdout);
}

#[test]
fn fail_name_that_does_not_resolve() {
    let world = World::new();
    let (cert, key) = world.files("client", &world.client(2));
    // .invalid never resolves (RFC 6761).
    let (output, json) = doctor(
        "doctor-test.invalid:443",
        &[&cert, &key, &world.ca_file()],
        &[],
    );
    assert_verdict(&output, &json, "tcp", "dns", 21);
}

#[test]
fn fail_plain_http_where_tls_was_expected() {
    let world = World::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a plain TCP server");
    let port = listener.local_addr().expect("its address").port();
    // Two connections: the handshake and the protocol probe.
    std::thread::spawn(move || {
        for _ in 0..2 {
            let Ok((mut tcp, _)) = listener.accept() else {
                return;
            };
            let mut request = [0u8; 512];
            let _ = tcp.read(&mut request);
            let _ = std::io::Write::write_all(
                &mut tcp,
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
            );
        }
    });
    let (cert, key) = world.files("client", &world.client(2));
    let (output, json) = doctor(
        &format!("127.0.0.1:{port}"),
        &[&cert, &key, &world.ca_file()],
        &[],
    );
    assert_verdict(&output, &json, "protocol", "not_tls", 22);
}

#[test]
fn fail_server_speaking_only_tls_1_1() {
    let world = World::new();
    let (server_cert, server_key) = world.files("server", &world.server(1));
    // OpenSSL 3 refuses TLS 1.1 at its default security level.
    let server = OpensslServer::start(
        &server_cert,
        &server_key,
        &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0", "-naccept", "2"],
    );
    let (cert, key) = world.files("client", &world.client(2));
    let address = format!("127.0.0.1:{}", server.port);
    let (output, json) = doctor(&address, &[&cert, &key, &world.ca_file()], &[]);
    assert_verdict(&output, &json, "protocol", "no_common_version", 22);
    assert!(
        json["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("TLS 1.1"),
        "{}",
        output.stdout
    );
}

#[test]
fn fail_server_offering_only_suites_rustls_lacks() {
    let world = World::new();
    let (server_cert, server_key) = world.files("server", &world.server(1));
    let server = OpensslServer::start(
        &server_cert,
        &server_key,
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-SHA",
            "-naccept",
            "2",
        ],
    );
    let (cert, key) = world.files("client", &world.client(2));
    let address = format!("127.0.0.1:{}", server.port);
    let (output, json) = doctor(&address, &[&cert, &key, &world.ca_file()], &[]);
    assert_verdict(&output, &json, "protocol", "no_common_cipher_suite", 22);
    assert!(
        json["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"),
        "{}",
        output.stdout
    );
}

// --- listen ------------------------------------------------------------------

/// Runs `doctor --listen --once` with our server identity and `crl`, has
/// `client` connect with `doctor --connect`, and returns the listener's
/// exit code and explanation.
fn listen_and_connect(
    world: &World,
    client: &Leaf,
    crl: &Path,
) -> (Option<i32>, Value, CommandOutput) {
    let (server_cert, server_key) = world.files("listen-server", &world.server(1));
    let ca_file = world.ca_file();
    let listener = Listener::start(&[
        "--cert",
        &path(&server_cert),
        "--key",
        &path(&server_key),
        "--ca",
        &path(&ca_file),
        "--crl",
        &path(crl),
    ]);
    let (cert, key) = world.files("listen-client", client);
    let address = format!("127.0.0.1:{}", listener.port);
    let (connected, _) = doctor(&address, &[&cert, &key, &ca_file], &[]);
    let (code, json) = listener.finish();
    (code, json, connected)
}

#[test]
fn ok_listen_explains_a_good_client() {
    let world = World::new();
    let crl = world.write("crl.pem", &crl_pem(&crl(&world.intermediate, &[77])));
    let (code, json, connected) = listen_and_connect(&world, &world.client(2), &crl);
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(json["strict_answer"], "accept");
    assert_eq!(json["certificate"]["serial"], "5e02");
    assert_eq!(json["certificate"]["issuer"], "CN=doctor test issuing");
    assert!(
        json["certificate"]["names"]
            .as_str()
            .unwrap_or_default()
            .contains("dns: workload.test"),
        "{json}"
    );
    assert_eq!(json["certificate"]["eku"], "clientAuth");
    // The client side saw a working mutual TLS server.
    connected.assert_exit(0);
}

#[test]
fn fail_listen_explains_a_revoked_client() {
    let world = World::new();
    let crl = world.write("crl.pem", &crl_pem(&crl(&world.intermediate, &[2])));
    let (code, json, _) = listen_and_connect(&world, &world.client(2), &crl);
    assert_eq!(code, Some(27), "{json}");
    assert_eq!(json["layer"], "revocation", "{json}");
    assert_eq!(json["cause"], "client_certificate_revoked", "{json}");
    assert_eq!(json["strict_answer"], "certificate_revoked");
    assert_eq!(json["certificate"]["serial"], "5e02");
}

#[test]
fn fail_listen_explains_a_client_without_a_certificate() {
    let world = World::new();
    let (server_cert, server_key) = world.files("listen-server", &world.server(1));
    let ca_file = world.ca_file();
    let listener = Listener::start(&[
        "--cert",
        &path(&server_cert),
        "--key",
        &path(&server_key),
        "--ca",
        &path(&ca_file),
    ]);
    // A plain rustls client that trusts the listener but has no identity.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(world.root.cert.der().clone())
        .expect("a usable root");
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("a server name");
    let connection = rustls::ClientConnection::new(Arc::new(config), name).expect("a TLS client");
    let tcp = TcpStream::connect(("127.0.0.1", listener.port)).expect("connect to the listener");
    tcp.set_read_timeout(Some(IO_TIMEOUT))
        .expect("a read timeout");
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("the listener answers and closes");
    assert_eq!(
        answer,
        "certmint doctor: would refuse it with the alert certificate_required\n"
    );
    let (code, json) = listener.finish();
    assert_eq!(code, Some(28), "{json}");
    assert_eq!(json["layer"], "client_auth");
    assert_eq!(json["cause"], "no_certificate");
    assert_eq!(json["certificate"], Value::Null);
}
