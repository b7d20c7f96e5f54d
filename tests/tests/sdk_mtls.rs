//! The SDK's rustls configurations (`certmint::mtls`) in real handshakes
//! over loopback: a server built with `server_config`, clients built with
//! `client_config`, each reading an agent-style output directory. The
//! directories change under them, the way the agent changes them (each file
//! replaced by rename), and nothing is restarted.
//!
//! The PKI is made here with rcgen (root → issuing CA → leaves, a CRL per
//! issuer with an Issuing Distribution Point, leaves carrying the matching
//! CRL distribution point), so these tests need no certmint server.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use certmint::mtls::{self, MtlsFiles, MtlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CrlDistributionPoint,
    CrlIssuingDistributionPoint, CrlScope, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{AlertDescription, CertificateError};

const SERVER_NAME: &str = "server.test";
const ROOT_CRL_URL: &str = "http://127.0.0.1:8080/crl/root/0.crl";
const ISSUING_CRL_URL: &str = "http://127.0.0.1:8080/crl/issuing/0.crl";
const RELOAD_INTERVAL: Duration = Duration::from_millis(100);
const DEADLINE: Duration = Duration::from_secs(15);

static NUMBERS: AtomicU64 = AtomicU64::new(1);

/// Root → issuing CA; leaves and CRLs on demand.
struct Pki {
    root_pem: String,
    root_issuer: Issuer<'static, KeyPair>,
    issuing_pem: String,
    issuing_issuer: Issuer<'static, KeyPair>,
}

/// A leaf, as the agent writes it.
struct Leaf {
    chain_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    serial: SerialNumber,
}

impl Pki {
    fn new() -> Self {
        let root_key = KeyPair::generate().expect("root key");
        let mut root = CertificateParams::new(Vec::new()).expect("root params");
        root.distinguished_name
            .push(DnType::CommonName, "sdk mtls test root");
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root_pem = root.self_signed(&root_key).expect("root").pem();
        let root_issuer = Issuer::new(root, root_key);

        let issuing_key = KeyPair::generate().expect("issuing key");
        let mut issuing = CertificateParams::new(Vec::new()).expect("issuing params");
        issuing
            .distinguished_name
            .push(DnType::CommonName, "sdk mtls test issuing CA");
        issuing.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        issuing.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        issuing.use_authority_key_identifier_extension = true;
        issuing.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![ROOT_CRL_URL.into()],
        }];
        let issuing_pem = issuing
            .signed_by(&issuing_key, &root_issuer)
            .expect("issuing CA")
            .pem();
        Self {
            root_pem,
            root_issuer,
            issuing_pem,
            issuing_issuer: Issuer::new(issuing, issuing_key),
        }
    }

    fn leaf(&self, name: &str) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let serial = SerialNumber::from(NUMBERS.fetch_add(1, Ordering::Relaxed) + 1_000_000);
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("leaf params");
        params.serial_number = Some(serial.clone());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![ISSUING_CRL_URL.into()],
        }];
        let cert = params.signed_by(&key, &self.issuing_issuer).expect("leaf");
        Leaf {
            chain_pem: format!("{}{}{}", cert.pem(), self.issuing_pem, self.root_pem),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            serial,
        }
    }

    /// `crl.pem` as the agent writes it: the root's CRL of CA
    /// certificates, then the issuing CA's CRL revoking `revoked`.
    fn crl_pem(&self, revoked: &[&Leaf]) -> String {
        let root = crl(&self.root_issuer, ROOT_CRL_URL, CrlScope::CaCertsOnly, &[]);
        let serials: Vec<SerialNumber> = revoked.iter().map(|leaf| leaf.serial.clone()).collect();
        let issuing = crl(
            &self.issuing_issuer,
            ISSUING_CRL_URL,
            CrlScope::UserCertsOnly,
            &serials,
        );
        format!("{root}{issuing}")
    }

    /// An agent output directory for `leaf`.
    fn agent_dir(&self, leaf: &Leaf, crl: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        install(dir.path(), leaf);
        replace(&dir.path().join("ca.pem"), &self.root_pem);
        if let Some(crl) = crl {
            replace(&dir.path().join("crl.pem"), crl);
        }
        dir
    }
}

fn crl(
    issuer: &Issuer<'static, KeyPair>,
    url: &str,
    scope: CrlScope,
    revoked: &[SerialNumber],
) -> String {
    let now = time::OffsetDateTime::now_utc();
    CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + time::Duration::days(1),
        crl_number: SerialNumber::from(NUMBERS.fetch_add(1, Ordering::Relaxed)),
        issuing_distribution_point: Some(CrlIssuingDistributionPoint {
            distribution_point: CrlDistributionPoint {
                uris: vec![url.into()],
            },
            scope: Some(scope),
        }),
        revoked_certs: revoked
            .iter()
            .map(|serial| RevokedCertParams {
                serial_number: serial.clone(),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(issuer)
    .expect("CRL")
    .pem()
    .expect("CRL PEM")
}

/// Replaces `path` atomically, as the agent does (temporary file, rename).
fn replace(path: &Path, contents: &str) {
    let temporary = path.with_extension("pem.tmp");
    std::fs::write(&temporary, contents).expect("write");
    std::fs::rename(&temporary, path).expect("rename");
}

/// A renewal, as the agent writes it: the key, then the certificate.
fn install(dir: &Path, leaf: &Leaf) {
    replace(&dir.join("key.pem"), &leaf.key_pem);
    replace(&dir.join("cert.pem"), &leaf.chain_pem);
}

fn options() -> MtlsOptions {
    let mut options = MtlsOptions::default();
    options.reload_interval = RELOAD_INTERVAL;
    options
}

/// A TLS echo server on loopback: for each connection, after the
/// handshake, it answers one line with the SHA-256 of the client's leaf.
fn serve(config: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let config = config.clone();
            std::thread::spawn(move || answer(config, stream));
        }
    });
    address
}

fn answer(config: Arc<rustls::ServerConfig>, stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(connection) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = BufReader::new(rustls::StreamOwned::new(connection, stream));
    let mut line = String::new();
    // A refused handshake ends here: rustls has sent its alert.
    if tls.read_line(&mut line).is_err() {
        return;
    }
    let client_leaf = tls
        .get_ref()
        .conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map_or_else(|| "none".to_owned(), |leaf| fingerprint(leaf));
    let _ = writeln!(tls.get_mut(), "{client_leaf}");
    let _ = tls.get_mut().flush();
}

fn fingerprint(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// What one connection saw.
#[derive(Debug)]
struct Seen {
    /// The server's leaf, SHA-256.
    server_leaf: String,
    /// The client leaf the server saw, SHA-256.
    client_leaf: String,
    /// Whether the session was resumed.
    resumed: bool,
}

/// One connection and one exchange; the TLS error when refused.
fn talk(config: &Arc<rustls::ClientConfig>, address: SocketAddr) -> Result<Seen, rustls::Error> {
    let stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let name = ServerName::try_from(SERVER_NAME).expect("name");
    let connection = rustls::ClientConnection::new(config.clone(), name)?;
    let mut tls = BufReader::new(rustls::StreamOwned::new(connection, stream));
    let tls_error = |error: std::io::Error| {
        error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .cloned()
            .unwrap_or_else(|| rustls::Error::General(format!("I/O: {error}")))
    };
    tls.get_mut().write_all(b"hello\n").map_err(tls_error)?;
    tls.get_mut().flush().map_err(tls_error)?;
    let mut line = String::new();
    tls.read_line(&mut line).map_err(tls_error)?;
    if line.is_empty() {
        return Err(rustls::Error::General("closed without an answer".into()));
    }
    let server_leaf = tls
        .get_ref()
        .conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| fingerprint(leaf))
        .unwrap_or_default();
    let resumed = tls.get_ref().conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    Ok(Seen {
        server_leaf,
        client_leaf: line.trim().to_owned(),
        resumed,
    })
}

/// Connects until `done` holds for the result, or fails the test.
fn until(
    what: &str,
    config: &Arc<rustls::ClientConfig>,
    address: SocketAddr,
    done: impl Fn(&Result<Seen, rustls::Error>) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let result = talk(config, address);
        if done(&result) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: last result {result:?}");
        std::thread::sleep(RELOAD_INTERVAL / 2);
    }
}

fn refused_as_revoked(result: &Result<Seen, rustls::Error>) -> bool {
    matches!(
        result,
        Err(rustls::Error::AlertReceived(
            AlertDescription::CertificateRevoked
        ))
    )
}

fn client(dir: &Path) -> Arc<rustls::ClientConfig> {
    mtls::client_config(&MtlsFiles::from_agent_dir(dir), options()).expect("client config")
}

#[test]
fn revoked_client_is_refused_without_a_restart_and_garbage_keeps_the_crl() {
    let pki = Pki::new();
    let server_leaf = pki.leaf(SERVER_NAME);
    let alice = pki.leaf("alice.test");
    let bob = pki.leaf("bob.test");
    let server_dir = pki.agent_dir(&server_leaf, Some(&pki.crl_pem(&[])));
    let server_crl = server_dir.path().join("crl.pem");
    let address = serve(
        mtls::server_config(&MtlsFiles::from_agent_dir(server_dir.path()), options())
            .expect("server config"),
    );
    let alice_dir = pki.agent_dir(&alice, Some(&pki.crl_pem(&[])));
    let bob_dir = pki.agent_dir(&bob, Some(&pki.crl_pem(&[])));
    // One config per client for the whole test, as a program keeps it.
    let (alice_tls, bob_tls) = (client(alice_dir.path()), client(bob_dir.path()));

    let seen = talk(&alice_tls, address).expect("alice before revocation");
    assert_eq!(seen.client_leaf, fingerprint(&alice.der));
    assert_eq!(seen.server_leaf, fingerprint(&server_leaf.der));
    talk(&bob_tls, address).expect("bob");
    // No session is resumed: every connection is checked against the CRLs
    // of its moment.
    let again = talk(&alice_tls, address).expect("alice again");
    assert!(
        !again.resumed,
        "a resumed session skips the revocation check"
    );

    replace(&server_crl, &pki.crl_pem(&[&alice]));
    until(
        "alice refused as revoked",
        &alice_tls,
        address,
        refused_as_revoked,
    );
    talk(&bob_tls, address).expect("bob is still accepted");

    // Garbage, then a file cut inside its second block: neither lifts the
    // revocation, however many checks pass.
    let whole = pki.crl_pem(&[&alice]);
    let cut = &whole[..whole.rfind("-----BEGIN").expect("two CRLs") + 5];
    for bad in ["this is not a CRL\n", cut] {
        replace(&server_crl, bad);
        let settle = Instant::now() + RELOAD_INTERVAL * 10;
        while Instant::now() < settle {
            let result = talk(&alice_tls, address);
            assert!(refused_as_revoked(&result), "{bad:?}: {result:?}");
            talk(&bob_tls, address).expect("bob is still accepted");
            std::thread::sleep(RELOAD_INTERVAL / 2);
        }
    }

    // The watch is still alive: a good CRL without alice's serial (say, a
    // certificate hold released) takes effect like any other.
    replace(&server_crl, &pki.crl_pem(&[&bob]));
    until("alice accepted again", &alice_tls, address, Result::is_ok);
    until("bob refused", &bob_tls, address, refused_as_revoked);
}

#[test]
fn client_without_a_certificate_is_refused() {
    let pki = Pki::new();
    let server_leaf = pki.leaf(SERVER_NAME);
    let server_dir = pki.agent_dir(&server_leaf, None);
    let address = serve(
        mtls::server_config(&MtlsFiles::from_agent_dir(server_dir.path()), options())
            .expect("server config"),
    );
    let mut roots = rustls::RootCertStore::empty();
    let root = CertificateDer::from_pem_slice(pki.root_pem.as_bytes()).expect("root");
    roots.add(root).expect("root");
    let anonymous = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let result = talk(&anonymous, address);
    assert!(
        matches!(
            result,
            Err(rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired
            ))
        ),
        "{result:?}"
    );
}

#[test]
fn rotated_certificates_are_served_and_presented_without_a_restart() {
    let pki = Pki::new();
    let first_server = pki.leaf(SERVER_NAME);
    let second_server = pki.leaf(SERVER_NAME);
    let first_alice = pki.leaf("alice.test");
    let second_alice = pki.leaf("alice.test");
    let server_dir = pki.agent_dir(&first_server, Some(&pki.crl_pem(&[])));
    let address = serve(
        mtls::server_config(&MtlsFiles::from_agent_dir(server_dir.path()), options())
            .expect("server config"),
    );
    let alice_dir = pki.agent_dir(&first_alice, Some(&pki.crl_pem(&[])));
    let alice_tls = client(alice_dir.path());

    let seen = talk(&alice_tls, address).expect("before rotation");
    assert_eq!(seen.server_leaf, fingerprint(&first_server.der));
    assert_eq!(seen.client_leaf, fingerprint(&first_alice.der));

    install(server_dir.path(), &second_server);
    until(
        "the new server certificate",
        &alice_tls,
        address,
        |result| matches!(result, Ok(seen) if seen.server_leaf == fingerprint(&second_server.der)),
    );
    install(alice_dir.path(), &second_alice);
    until(
        "the new client certificate",
        &alice_tls,
        address,
        |result| matches!(result, Ok(seen) if seen.client_leaf == fingerprint(&second_alice.der)),
    );

    // Half a rotation (a key without its certificate) is never served:
    // every connection meanwhile completes with the previous pair.
    let third_server = pki.leaf(SERVER_NAME);
    replace(&server_dir.path().join("key.pem"), &third_server.key_pem);
    let settle = Instant::now() + RELOAD_INTERVAL * 10;
    while Instant::now() < settle {
        let seen = talk(&alice_tls, address).expect("served with the last good pair");
        assert_eq!(seen.server_leaf, fingerprint(&second_server.der));
        std::thread::sleep(RELOAD_INTERVAL / 2);
    }
    replace(&server_dir.path().join("cert.pem"), &third_server.chain_pem);
    until(
        "the completed rotation",
        &alice_tls,
        address,
        |result| matches!(result, Ok(seen) if seen.server_leaf == fingerprint(&third_server.der)),
    );
}

#[test]
fn revoked_server_is_refused_by_the_client_without_a_restart() {
    let pki = Pki::new();
    let server_leaf = pki.leaf(SERVER_NAME);
    let alice = pki.leaf("alice.test");
    let server_dir = pki.agent_dir(&server_leaf, Some(&pki.crl_pem(&[])));
    let address = serve(
        mtls::server_config(&MtlsFiles::from_agent_dir(server_dir.path()), options())
            .expect("server config"),
    );
    let alice_dir = pki.agent_dir(&alice, Some(&pki.crl_pem(&[])));
    let alice_tls = client(alice_dir.path());
    talk(&alice_tls, address).expect("before revocation");

    replace(
        &alice_dir.path().join("crl.pem"),
        &pki.crl_pem(&[&server_leaf]),
    );
    until(
        "the server refused as revoked",
        &alice_tls,
        address,
        |result| {
            matches!(
                result,
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            )
        },
    );
}
