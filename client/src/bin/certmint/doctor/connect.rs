//! `certmint doctor --connect`: the handshake a workload makes (rustls,
//! TLS 1.2 and 1.3, our certificate), made once with every observation
//! recorded, then explained layer by layer.
//!
//! How: the server certificate verifier records the chain the server sent
//! and accepts it (its handshake signatures are still verified), and the
//! client certificate resolver records whether a certificate was asked for
//! and from which CAs. So one connection reaches every layer even when an
//! early one would have stopped the workload, and each layer is then judged
//! on what was recorded ([`super::analysis`]), in order: TCP, protocol,
//! server chain, dates, name, usage, revocation, client authentication,
//! and the alert the server sent about our certificate. The verdict is the
//! first failure, so a workload's failure is still named by the layer that
//! stopped it.
//!
//! Invariants: nothing read from the server is trusted for anything but
//! this report (the connection carries no application data); every
//! socket operation has a timeout; the classification functions are pure
//! and unit-tested, the I/O is in [`diagnose`] only.

use std::io::{ErrorKind, Read as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, DigitallySignedStruct, SignatureScheme};
use time::OffsetDateTime;

use super::analysis::{self, AcceptedCas, Cert, ChainFinding, Purpose};
use super::local::{self, Material};
use super::probe::{self, ProbeAnswer};
use super::report::{Cause, Check, Layer};

/// How long the TCP connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any one read or write of the handshake may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// After the handshake, how long to wait for the server's verdict on our
/// certificate: in TLS 1.3 the server judges it after our Finished, so a
/// refusal arrives as an alert after the client thinks it is done.
const VERDICT_WAIT: Duration = Duration::from_millis(1500);

/// What the handshake recorded.
#[derive(Debug, Default)]
struct Seen {
    /// The chain the server sent, when it got that far.
    server_chain: Option<Vec<CertificateDer<'static>>>,
    /// The certificate_authorities of the server's CertificateRequest;
    /// `None` when it did not ask for a client certificate.
    request: Option<Vec<Vec<u8>>>,
    /// Whether we sent a certificate in answer.
    sent_certificate: bool,
}

type Shared = Arc<Mutex<Seen>>;

fn seen(shared: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    // A panic while holding the lock cannot leave `Seen` half-written in a
    // way that matters to a report; keep going with what it holds.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records the server's chain and accepts it; verifies its signatures.
#[derive(Debug)]
struct RecordingVerifier {
    provider: Arc<CryptoProvider>,
    seen: Shared,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|der| der.clone().into_owned())
            .collect();
        seen(&self.seen).server_chain = Some(chain);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Records the server's CertificateRequest and answers with our identity.
#[derive(Debug)]
struct RecordingResolver {
    key: Option<Arc<CertifiedKey>>,
    seen: Shared,
}

impl ResolvesClientCert for RecordingResolver {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let mut seen = seen(&self.seen);
        seen.request = Some(
            root_hint_subjects
                .iter()
                .map(|hint| hint.to_vec())
                .collect(),
        );
        seen.sent_certificate = self.key.is_some();
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        // Always true, so that rustls asks us and a request is recorded
        // even when we have no certificate to send.
        true
    }
}

/// What to connect to and as whom.
pub struct Target {
    /// `host:port` as given.
    pub connect: String,
    /// The name to verify the server certificate against (and send as SNI).
    pub server_name: ServerName<'static>,
}

/// How the handshake ended.
#[derive(Debug)]
enum Handshake {
    /// Completed; then the server did `after`.
    Done {
        version: String,
        suite: String,
        after: After,
    },
    /// Failed.
    Failed(Failure),
}

#[derive(Debug)]
enum Failure {
    Tls(rustls::Error),
    Closed,
    Io(std::io::Error),
}

/// What the server did after the handshake, within [`VERDICT_WAIT`].
#[derive(Debug, PartialEq, Eq)]
enum After {
    Alert(AlertDescription),
    Closed,
    Quiet,
    Data,
    Error(String),
}

/// Runs the whole diagnosis.
pub fn diagnose(
    target: &Target,
    material: &Material,
    mut checks: Vec<Check>,
    now: OffsetDateTime,
) -> Vec<Check> {
    checks.extend(local::identity_checks(material, now, Purpose::Client));

    let (tcp, address) = match open(&target.connect) {
        Ok(opened) => opened,
        Err(check) => {
            checks.push(check);
            skip_from(&mut checks, Layer::Protocol, "no TCP connection");
            return checks;
        }
    };
    checks.push(Check::ok(
        Layer::Tcp,
        format!("connected to {} ({address})", target.connect),
    ));

    let shared = Shared::default();
    let handshake = match handshake(tcp, target, material, &shared) {
        Ok(handshake) => handshake,
        Err(why) => {
            checks.push(Check::fail(Layer::Protocol, Cause::HandshakeFailed, why));
            return checks;
        }
    };
    let seen = std::mem::take(&mut *seen(&shared));

    if seen.server_chain.is_none() {
        // The handshake died before the server showed a certificate:
        // versions, suites, or not TLS at all. Ask the server what it speaks.
        let failure = match &handshake {
            Handshake::Failed(failure) => failure_text(failure),
            Handshake::Done { .. } => "the server sent no certificate".to_owned(),
        };
        let sni = match &target.server_name {
            ServerName::DnsName(name) => Some(name.as_ref().to_owned()),
            _ => None,
        };
        checks.push(protocol_check(
            &probe::probe(address, sni.as_deref()),
            &failure,
        ));
        skip_from(
            &mut checks,
            Layer::ServerChain,
            "the TLS handshake did not get that far",
        );
        return checks;
    }

    checks.push(protocol_after_certificate(&handshake));

    let server_chain = match parse_chain(seen.server_chain.as_deref().unwrap_or_default()) {
        Ok(chain) => chain,
        Err(check) => {
            // Judging the rest of a chain with a hole in it would mislead.
            checks.push(check);
            skip_from(
                &mut checks,
                Layer::ServerDates,
                "the server's chain does not parse",
            );
            return checks;
        }
    };
    checks.extend(server_checks(
        &server_chain,
        &material.roots,
        &material.crls,
        &target.server_name,
        now,
    ));

    let accepted = seen
        .request
        .as_ref()
        .map(|hints| analysis::accepted_cas(hints, &material.chain));
    checks.push(client_auth_check(
        accepted.as_ref(),
        !material.chain.is_empty(),
    ));

    let outcome = match handshake {
        Handshake::Done { after, .. } => after,
        Handshake::Failed(Failure::Tls(rustls::Error::AlertReceived(alert))) => After::Alert(alert),
        Handshake::Failed(Failure::Closed) => After::Closed,
        Handshake::Failed(_) => {
            checks.push(Check::skip(
                Layer::Refused,
                "the handshake failed before the server could judge our certificate",
            ));
            return checks;
        }
    };
    checks.push(refusal_check(
        &outcome,
        accepted.as_ref(),
        seen.sent_certificate,
        material.chain.first(),
    ));
    checks
}

/// The server's chain as parsed certificates, or the `server_chain`
/// failure naming the first one that is not X.509.
fn parse_chain(ders: &[CertificateDer<'static>]) -> Result<Vec<Cert>, Check> {
    ders.iter()
        .enumerate()
        .map(|(index, der)| {
            Cert::from_der(der.clone()).map_err(|error| {
                Check::fail(
                    Layer::ServerChain,
                    Cause::InvalidChain,
                    format!("the server's certificate #{}: {error}", index + 1),
                )
            })
        })
        .collect()
}

/// The `protocol` check once the server has shown its certificate: the
/// version and suite, or why the handshake broke on our side. An alert or
/// a close is the server's verdict on us, judged by the `refused` layer.
fn protocol_after_certificate(handshake: &Handshake) -> Check {
    match handshake {
        Handshake::Done { version, suite, .. } => {
            Check::ok(Layer::Protocol, format!("{version}, {suite}"))
        }
        Handshake::Failed(Failure::Tls(rustls::Error::AlertReceived(_)) | Failure::Closed) => {
            Check::ok(
                Layer::Protocol,
                "versions and suites agree (the server ended the handshake after its certificate)",
            )
        }
        Handshake::Failed(Failure::Tls(error)) => Check::fail(
            Layer::Protocol,
            Cause::HandshakeFailed,
            format!(
                "the handshake failed after the server's certificate: rustls: {error} (a server \
                 whose handshake signature does not verify with its certificate's key?)"
            ),
        ),
        Handshake::Failed(failure @ Failure::Io(_)) => Check::fail(
            Layer::Protocol,
            Cause::HandshakeFailed,
            format!(
                "the server stopped answering during the handshake ({})",
                failure_text(failure)
            ),
        ),
    }
}

/// Appends a `skip` for every connect layer from `from` on.
fn skip_from(checks: &mut Vec<Check>, from: Layer, why: &str) {
    const ORDER: [Layer; 8] = [
        Layer::Protocol,
        Layer::ServerChain,
        Layer::ServerDates,
        Layer::ServerName,
        Layer::ServerEku,
        Layer::Revocation,
        Layer::ClientAuth,
        Layer::Refused,
    ];
    let start = ORDER.iter().position(|layer| *layer == from).unwrap_or(0);
    for layer in &ORDER[start..] {
        checks.push(Check::skip(*layer, why));
    }
}

/// Resolves and connects; a `tcp` check on failure.
fn open(connect: &str) -> Result<(TcpStream, SocketAddr), Check> {
    let addresses: Vec<SocketAddr> = connect
        .to_socket_addrs()
        .map_err(|error| {
            Check::fail(
                Layer::Tcp,
                Cause::Dns,
                format!("cannot resolve {connect}: {error}"),
            )
        })?
        .collect();
    if addresses.is_empty() {
        return Err(Check::fail(
            Layer::Tcp,
            Cause::Dns,
            format!("{connect} resolves to no address"),
        ));
    }
    let mut failures = Vec::new();
    for address in &addresses {
        match TcpStream::connect_timeout(address, CONNECT_TIMEOUT) {
            Ok(tcp) => return Ok((tcp, *address)),
            Err(error) => failures.push((*address, error)),
        }
    }
    Err(tcp_failure(connect, &failures))
}

/// The `tcp` check for connection attempts that all failed.
fn tcp_failure(connect: &str, failures: &[(SocketAddr, std::io::Error)]) -> Check {
    let tried = failures
        .iter()
        .map(|(address, error)| format!("{address}: {error}"))
        .collect::<Vec<_>>()
        .join("; ");
    let kinds: Vec<ErrorKind> = failures.iter().map(|(_, error)| error.kind()).collect();
    if kinds.contains(&ErrorKind::ConnectionRefused) {
        Check::fail(
            Layer::Tcp,
            Cause::ConnectionRefused,
            format!("nothing listens on {connect} (connection refused; {tried}): is the server running, on this port?"),
        )
    } else if kinds.contains(&ErrorKind::TimedOut) || kinds.contains(&ErrorKind::WouldBlock) {
        Check::fail(
            Layer::Tcp,
            Cause::Timeout,
            format!(
                "no answer from {connect} within {}s ({tried}): a firewall dropping packets, or a wrong address?",
                CONNECT_TIMEOUT.as_secs()
            ),
        )
    } else {
        Check::fail(
            Layer::Tcp,
            Cause::Unreachable,
            format!("cannot reach {connect}: {tried}"),
        )
    }
}

/// Makes the handshake on `tcp`, then waits for the server's verdict.
/// `Err` only when the connection could not even be set up.
fn handshake(
    mut tcp: TcpStream,
    target: &Target,
    material: &Material,
    shared: &Shared,
) -> Result<Handshake, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = certified_key(material, &provider);
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS versions: {error}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RecordingVerifier {
            provider,
            seen: shared.clone(),
        }))
        .with_client_cert_resolver(Arc::new(RecordingResolver {
            key,
            seen: shared.clone(),
        }));
    let mut connection =
        rustls::ClientConnection::new(Arc::new(config), target.server_name.clone())
            .map_err(|error| format!("cannot start a TLS client: {error}"))?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| tcp.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|error| format!("cannot set socket timeouts: {error}"))?;

    if let Err(failure) = complete(&mut connection, &mut tcp) {
        return Ok(Handshake::Failed(failure));
    }
    let version = connection
        .protocol_version()
        .map_or_else(|| "TLS".to_owned(), version_text);
    let suite = connection.negotiated_cipher_suite().map_or_else(
        || "unknown suite".to_owned(),
        |suite| format!("{:?}", suite.suite()),
    );
    let after = verdict(&mut connection, &mut tcp);
    Ok(Handshake::Done {
        version,
        suite,
        after,
    })
}

fn version_text(version: rustls::ProtocolVersion) -> String {
    match version {
        rustls::ProtocolVersion::TLSv1_3 => "TLS 1.3".to_owned(),
        rustls::ProtocolVersion::TLSv1_2 => "TLS 1.2".to_owned(),
        other => format!("{other:?}"),
    }
}

/// Our identity for rustls. A key that does not match is still sent (the
/// identity layer already failed), so the server's reaction is observed.
fn certified_key(material: &Material, provider: &CryptoProvider) -> Option<Arc<CertifiedKey>> {
    let key = material.key.as_ref()?;
    if material.chain.is_empty() {
        return None;
    }
    let chain: Vec<CertificateDer<'static>> =
        material.chain.iter().map(|cert| cert.der.clone()).collect();
    match CertifiedKey::from_der(chain.clone(), key.clone_key(), provider) {
        Ok(certified) => Some(Arc::new(certified)),
        Err(_) => provider
            .key_provider
            .load_private_key(key.clone_key())
            .ok()
            .map(|signing| Arc::new(CertifiedKey::new(chain, signing))),
    }
}

/// Drives the handshake to its end.
fn complete(connection: &mut rustls::ClientConnection, tcp: &mut TcpStream) -> Result<(), Failure> {
    while connection.is_handshaking() {
        while connection.wants_write() {
            connection.write_tls(tcp).map_err(Failure::Io)?;
        }
        if !connection.is_handshaking() {
            break;
        }
        match connection.read_tls(tcp) {
            Ok(0) => return Err(Failure::Closed),
            Ok(_) => {
                if let Err(error) = connection.process_new_packets() {
                    // Tell the server why we stop (rustls queued the alert).
                    let _ = connection.write_tls(tcp);
                    return Err(Failure::Tls(error));
                }
            }
            Err(error) if error.kind() == ErrorKind::ConnectionReset => {
                return Err(Failure::Closed)
            }
            Err(error) => return Err(Failure::Io(error)),
        }
    }
    // Our last flight (in TLS 1.3 our certificate and Finished).
    while connection.wants_write() {
        connection.write_tls(tcp).map_err(Failure::Io)?;
    }
    Ok(())
}

/// Waits up to [`VERDICT_WAIT`] for what the server does after the handshake.
fn verdict(connection: &mut rustls::ClientConnection, tcp: &mut TcpStream) -> After {
    let deadline = Instant::now() + VERDICT_WAIT;
    let mut data = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return if data { After::Data } else { After::Quiet };
        }
        if tcp.set_read_timeout(Some(left)).is_err() {
            return After::Quiet;
        }
        match connection.read_tls(tcp) {
            Ok(0) => return if data { After::Data } else { After::Closed },
            Ok(_) => match connection.process_new_packets() {
                Ok(state) => {
                    if state.plaintext_bytes_to_read() > 0 {
                        // Drain it; the server talking means it accepted us.
                        let mut sink = vec![0u8; state.plaintext_bytes_to_read()];
                        let _ = connection.reader().read(&mut sink);
                        data = true;
                    }
                    if state.peer_has_closed() {
                        return if data { After::Data } else { After::Closed };
                    }
                }
                Err(rustls::Error::AlertReceived(alert)) => return After::Alert(alert),
                Err(error) => return After::Error(error.to_string()),
            },
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return if data { After::Data } else { After::Quiet };
            }
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return After::Closed,
            Err(error) => return After::Error(error.to_string()),
        }
    }
}

fn failure_text(failure: &Failure) -> String {
    match failure {
        Failure::Tls(rustls::Error::AlertReceived(alert)) => {
            format!("the server sent the alert {}", alert_name(*alert))
        }
        Failure::Tls(error) => format!("rustls: {error}"),
        Failure::Closed => "the server closed the connection".to_owned(),
        Failure::Io(error) => format!("I/O: {error}"),
    }
}

/// The RFC 8446 name of an alert.
pub fn alert_name(alert: AlertDescription) -> String {
    let name = match alert {
        AlertDescription::CloseNotify => "close_notify",
        AlertDescription::UnexpectedMessage => "unexpected_message",
        AlertDescription::BadRecordMac => "bad_record_mac",
        AlertDescription::HandshakeFailure => "handshake_failure",
        AlertDescription::BadCertificate => "bad_certificate",
        AlertDescription::UnsupportedCertificate => "unsupported_certificate",
        AlertDescription::CertificateRevoked => "certificate_revoked",
        AlertDescription::CertificateExpired => "certificate_expired",
        AlertDescription::CertificateUnknown => "certificate_unknown",
        AlertDescription::IllegalParameter => "illegal_parameter",
        AlertDescription::UnknownCA => "unknown_ca",
        AlertDescription::AccessDenied => "access_denied",
        AlertDescription::DecodeError => "decode_error",
        AlertDescription::DecryptError => "decrypt_error",
        AlertDescription::ProtocolVersion => "protocol_version",
        AlertDescription::InsufficientSecurity => "insufficient_security",
        AlertDescription::InternalError => "internal_error",
        AlertDescription::UnrecognisedName => "unrecognized_name",
        AlertDescription::CertificateRequired => "certificate_required",
        AlertDescription::NoApplicationProtocol => "no_application_protocol",
        AlertDescription::MissingExtension => "missing_extension",
        AlertDescription::UnsupportedExtension => "unsupported_extension",
        other => return format!("alert #{}", u8::from(other)),
    };
    name.to_owned()
}

/// The `protocol` check from the probe's answer, after the real handshake
/// failed with `failure`.
fn protocol_check(answer: &ProbeAnswer, failure: &str) -> Check {
    let ours = "certmint (rustls) speaks TLS 1.2 and TLS 1.3 only";
    match answer {
        ProbeAnswer::Hello { version, suite } if *version < 0x0303 => Check::fail(
            Layer::Protocol,
            Cause::NoCommonVersion,
            format!(
                "the server speaks at most {} (it answered a probe with {}, {}); {ours}: \
                 enable TLS 1.2 or 1.3 on the server ({failure})",
                probe::version_name(*version),
                probe::version_name(*version),
                probe::suite_name(*suite)
            ),
        ),
        ProbeAnswer::Hello { suite, .. } if !probe::rustls_has(*suite) => Check::fail(
            Layer::Protocol,
            Cause::NoCommonCipherSuite,
            format!(
                "the server speaks TLS 1.2 but chose {}, which rustls does not implement; \
                 rustls offers {} (and TLS 1.3): enable one of them on the server ({failure})",
                probe::suite_name(*suite),
                probe::rustls_tls12_suites().join(", ")
            ),
        ),
        ProbeAnswer::Hello { suite, .. } => Check::fail(
            Layer::Protocol,
            Cause::HandshakeFailed,
            format!(
                "the server speaks TLS 1.2 with {}, which we offer too, yet refused our \
                 handshake: no key exchange group or signature scheme in common? ({failure})",
                probe::suite_name(*suite)
            ),
        ),
        ProbeAnswer::Alert(70) => Check::fail(
            Layer::Protocol,
            Cause::NoCommonVersion,
            format!(
                "the server refuses TLS 1.0 to 1.2 (alert protocol_version) and our TLS 1.3 \
                 ({failure}); {ours}"
            ),
        ),
        ProbeAnswer::Alert(40) | ProbeAnswer::Alert(71) => Check::fail(
            Layer::Protocol,
            Cause::NoCommonCipherSuite,
            format!(
                "the server refused every cipher suite offered, including older ones rustls \
                 lacks (alert {}; {failure})",
                if matches!(answer, ProbeAnswer::Alert(40)) {
                    "handshake_failure"
                } else {
                    "insufficient_security"
                }
            ),
        ),
        ProbeAnswer::Alert(other) => Check::fail(
            Layer::Protocol,
            Cause::HandshakeFailed,
            format!("the server refused the handshake (alert #{other}; {failure})"),
        ),
        ProbeAnswer::NotTls => Check::fail(
            Layer::Protocol,
            Cause::NotTls,
            format!("what answers is not a TLS server (plain HTTP? another protocol?) ({failure})"),
        ),
        ProbeAnswer::Closed => Check::fail(
            Layer::Protocol,
            Cause::HandshakeFailed,
            format!(
                "the server closes the connection on every ClientHello (ours, and a TLS 1.0–1.2 \
                 probe): does it expect another protocol first? ({failure})"
            ),
        ),
        ProbeAnswer::Failed(why) => Check::fail(
            Layer::Protocol,
            Cause::HandshakeFailed,
            format!("{failure}; the protocol probe failed too: {why}"),
        ),
    }
}

/// The server-side layers for the chain the server sent.
fn server_checks(
    chain: &[Cert],
    roots: &[Cert],
    crls: &[analysis::Crl],
    name: &ServerName<'_>,
    now: OffsetDateTime,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let at = analysis::chain_time(chain, now);
    let finding = analysis::chain(chain, roots, at);
    let verified = matches!(finding, ChainFinding::Verified { .. });
    checks.push(chain_check(&finding, chain.len()));
    let Some(leaf) = chain.first() else {
        return checks;
    };
    if let Some(dates) = analysis::dates(chain, now.unix_timestamp()) {
        checks.push(local::dates_check(
            Layer::ServerDates,
            "the server's",
            &dates,
        ));
    }
    let asked = match name {
        ServerName::DnsName(dns) => format!("dns: {}", dns.as_ref()),
        ServerName::IpAddress(ip) => format!("ip: {}", std::net::IpAddr::from(*ip)),
        other => format!("{other:?}"),
    };
    let names = analysis::san_text(leaf);
    checks.push(if analysis::name_matches(leaf, name) {
        Check::ok(
            Layer::ServerName,
            format!("asked for {asked}; the certificate has {names}"),
        )
    } else {
        Check::fail(
            Layer::ServerName,
            Cause::NameMismatch,
            format!(
                "asked for {asked}, but the server's certificate has {names}: connect by one of \
                 those names (or --server-name), or have the server's certificate issued for it"
            ),
        )
    });
    let usages = analysis::eku_text(leaf);
    checks.push(
        if analysis::eku_allows(chain, roots, at, verified, Purpose::Server) {
            Check::ok(
                Layer::ServerEku,
                format!("the server's certificate allows {usages}"),
            )
        } else {
            Check::fail(
                Layer::ServerEku,
                Cause::NoServerAuth,
                format!(
                "the server's certificate lacks serverAuth ({usages}): TLS clients refuse it as a \
                 server certificate (a client certificate installed on the server?)"
            ),
            )
        },
    );
    checks.push(local::revocation_check(
        "the server's",
        Cause::ServerCertificateRevoked,
        &analysis::revocation(chain, roots, crls, now),
    ));
    checks
}

fn chain_check(finding: &ChainFinding, sent: usize) -> Check {
    match finding {
        ChainFinding::Verified {
            intermediates,
            root,
        } => Check::ok(
            Layer::ServerChain,
            format!(
                "the server sent {sent} certificate(s): leaf <- {intermediates} intermediate(s) <- {root}, in our CA file"
            ),
        ),
        ChainFinding::Empty => Check::fail(
            Layer::ServerChain,
            Cause::NoCertificate,
            "the server sent no certificate",
        ),
        ChainFinding::MissingIntermediate { issuer, sent } => Check::fail(
            Layer::ServerChain,
            Cause::MissingIntermediate,
            format!(
                "the server sent {sent} certificate(s) but not its issuer {issuer}, which is not \
                 in our CA file either: configure the server to send its full chain \
                 (leaf then intermediates, like the agent's cert.pem)"
            ),
        ),
        ChainFinding::UnknownCa {
            top,
            issuer,
            trusted,
        } => Check::fail(
            Layer::ServerChain,
            Cause::UnknownCa,
            format!(
                "the server's chain climbs to {top}, issued by {issuer}, which our CA file does \
                 not contain (it trusts {}): a server of another CA, or a CA file that lacks it",
                trusted.join("; ")
            ),
        ),
        ChainFinding::WrongCaKey { issuer } => Check::fail(
            Layer::ServerChain,
            Cause::WrongCaKey,
            format!(
                "the server's chain names {issuer}, which our CA file has, but with another key: \
                 two CAs of the same name (an old and a new root?)"
            ),
        ),
        ChainFinding::Invalid(why) => Check::fail(
            Layer::ServerChain,
            Cause::InvalidChain,
            format!("the server's chain does not verify: {why}"),
        ),
    }
}

/// The `client_auth` check: did the server ask, and for which CAs?
fn client_auth_check(accepted: Option<&AcceptedCas>, have_certificate: bool) -> Check {
    match accepted {
        None => Check::fail(
            Layer::ClientAuth,
            Cause::NotRequested,
            "the server did not ask for a client certificate: this is not mutual TLS, the server \
             cannot tell who we are (configure it to request and verify client certificates)",
        ),
        Some(accepted) => match accepted.ours_included {
            None => Check::ok(
                Layer::ClientAuth,
                "the server asked for a client certificate, naming no particular CA",
            ),
            Some(true) => Check::ok(
                Layer::ClientAuth,
                format!(
                    "the server asked for a client certificate from {}; ours chains to one of them",
                    accepted.names.join("; ")
                ),
            ),
            Some(false) if have_certificate => Check::warn(
                Layer::ClientAuth,
                Cause::CaNotAccepted,
                format!(
                    "the server asked for a client certificate from {}; ours chains to none of them",
                    accepted.names.join("; ")
                ),
            ),
            Some(false) => Check::warn(
                Layer::ClientAuth,
                Cause::CaNotAccepted,
                format!(
                    "the server asked for a client certificate from {}; we have none to send",
                    accepted.names.join("; ")
                ),
            ),
        },
    }
}

/// The `refused` check: what the server did about our certificate.
fn refusal_check(
    after: &After,
    accepted: Option<&AcceptedCas>,
    sent_certificate: bool,
    ours: Option<&Cert>,
) -> Check {
    let alert =
        match after {
            After::Quiet | After::Data => {
                return Check::ok(
                    Layer::Refused,
                    if sent_certificate {
                        "the server accepted the handshake with our certificate"
                    } else {
                        "the server accepted the handshake (we sent no certificate)"
                    },
                )
            }
            After::Closed if !sent_certificate => {
                return Check::ok(
                    Layer::Refused,
                    "the server closed the connection after the handshake (we sent no certificate)",
                )
            }
            After::Closed => return Check::fail(
                Layer::Refused,
                Cause::ClosedWithoutAlert,
                "the server closed the connection right after receiving our certificate, without \
                 saying why: look at the server's log",
            ),
            After::Error(why) => {
                return Check::fail(
                    Layer::Refused,
                    Cause::OtherAlert,
                    format!("the connection failed after the server's certificate: {why}"),
                )
            }
            After::Alert(alert) => *alert,
        };
    let accepts = match accepted {
        Some(AcceptedCas { names, .. }) if !names.is_empty() => {
            format!("it accepts {}", names.join("; "))
        }
        Some(_) => "it named no CA it accepts".to_owned(),
        None => "it did not ask for a client certificate".to_owned(),
    };
    let issuer = ours.map_or_else(|| "(none)".to_owned(), Cert::issuer);
    let serial = ours.map_or_else(|| "(none)".to_owned(), Cert::serial);
    let name = alert_name(alert);
    let (cause, why) = match alert {
        AlertDescription::UnknownCA => (
            Cause::UnknownCaAlert,
            format!(
                "the server does not trust the CA that issued your certificate ({issuer}): {accepts}"
            ),
        ),
        AlertDescription::BadCertificate => (
            Cause::BadCertificate,
            "the server could not use your certificate: malformed, a bad signature, or refused \
             by its own checks (OpenSSL sends this for many verification failures; see its log)"
                .to_owned(),
        ),
        AlertDescription::CertificateRevoked => (
            Cause::CertificateRevoked,
            format!(
                "the server considers your certificate (serial {serial}) revoked: its CRL lists \
                 it; an administrator revoked it, enroll again with a new token"
            ),
        ),
        AlertDescription::CertificateExpired => (
            Cause::CertificateExpired,
            format!(
                "the server finds your certificate expired or not yet valid{}: compare the \
                 server's clock with the certificate's dates, and is the agent renewing?",
                ours.map(|cert| {
                    let (not_before, not_after) = cert.validity();
                    format!(
                        " (valid {} to {})",
                        analysis::rfc3339(not_before),
                        analysis::rfc3339(not_after)
                    )
                })
                .unwrap_or_default()
            ),
        ),
        AlertDescription::UnsupportedCertificate => (
            Cause::UnsupportedCertificate,
            format!(
                "the server cannot use your certificate for client authentication: it needs the \
                 clientAuth extended key usage (yours: {}) or another key type",
                ours.map_or_else(|| "(none)".to_owned(), analysis::eku_text)
            ),
        ),
        AlertDescription::AccessDenied => (
            Cause::AccessDenied,
            format!(
                "your certificate verified, but the server's policy does not admit its identity \
                 ({}): ask the server's operator",
                ours.map_or_else(|| "(none)".to_owned(), analysis::san_text)
            ),
        ),
        AlertDescription::CertificateRequired => (
            Cause::CertificateRequired,
            "the server requires a client certificate and we sent none: give --out DIR or \
             --cert/--key"
                .to_owned(),
        ),
        AlertDescription::HandshakeFailure if !sent_certificate => (
            Cause::CertificateRequired,
            "the server refused the handshake after we sent no certificate (handshake_failure): \
             it requires one"
                .to_owned(),
        ),
        AlertDescription::DecryptError => (
            Cause::DecryptError,
            format!(
                "a signature did not verify on the server's side: our handshake signature (a \
                 private key that does not belong to the certificate), or our chain's against \
                 a CA of the same name ({issuer}) with another key; {accepts}"
            ),
        ),
        AlertDescription::CertificateUnknown => (
            Cause::CertificateUnknown,
            format!("the server refused your certificate without a specific reason; {accepts}"),
        ),
        _ => (
            Cause::OtherAlert,
            format!("the server refused the connection after our certificate; {accepts}"),
        ),
    };
    Check::fail(Layer::Refused, cause, format!("alert {name}: {why}"))
}

#[cfg(test)]
mod tests {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    use time::Duration;

    use super::super::analysis::testing::*;
    use super::super::report::Status;
    use super::*;

    fn name(text: &str) -> ServerName<'static> {
        ServerName::try_from(text.to_owned()).unwrap()
    }

    fn failure_of(checks: &[Check]) -> Option<(Layer, Cause)> {
        checks
            .iter()
            .find(|check| check.status == Status::Fail)
            .and_then(|check| Some((check.layer, check.cause?)))
    }

    #[test]
    fn ok_tcp_failures_by_kind() {
        let refused = std::io::Error::from(ErrorKind::ConnectionRefused);
        let timeout = std::io::Error::from(ErrorKind::TimedOut);
        let other = std::io::Error::from(ErrorKind::NetworkUnreachable);
        let address: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            tcp_failure("x:1", &[(address, refused)]).cause,
            Some(Cause::ConnectionRefused)
        );
        assert_eq!(
            tcp_failure("x:1", &[(address, timeout)]).cause,
            Some(Cause::Timeout)
        );
        assert_eq!(
            tcp_failure("x:1", &[(address, other)]).cause,
            Some(Cause::Unreachable)
        );
    }

    #[test]
    fn ok_probe_answers_name_the_protocol_cause() {
        let cause = |answer| protocol_check(&answer, "x").cause;
        assert_eq!(
            cause(ProbeAnswer::Hello {
                version: 0x0302,
                suite: 0xc00a
            }),
            Some(Cause::NoCommonVersion)
        );
        assert_eq!(
            cause(ProbeAnswer::Hello {
                version: 0x0303,
                suite: 0xc009
            }),
            Some(Cause::NoCommonCipherSuite)
        );
        assert_eq!(
            cause(ProbeAnswer::Hello {
                version: 0x0303,
                suite: 0xc02b
            }),
            Some(Cause::HandshakeFailed)
        );
        assert_eq!(cause(ProbeAnswer::Alert(70)), Some(Cause::NoCommonVersion));
        assert_eq!(
            cause(ProbeAnswer::Alert(40)),
            Some(Cause::NoCommonCipherSuite)
        );
        assert_eq!(cause(ProbeAnswer::NotTls), Some(Cause::NotTls));
        assert_eq!(cause(ProbeAnswer::Closed), Some(Cause::HandshakeFailed));
    }

    #[test]
    fn fail_server_layers_each_name_their_defect() {
        let root = root("r");
        let intermediate = root.intermediate("i");
        let roots = [root.cert.clone()];
        let (good, _) = intermediate.leaf("api.test", &[ServerAuth], |_| {});
        let full = [good.clone(), intermediate.cert.clone()];
        assert_eq!(
            failure_of(&server_checks(&full, &roots, &[], &name("api.test"), now())),
            None
        );
        assert_eq!(
            failure_of(&server_checks(
                std::slice::from_ref(&good),
                &roots,
                &[],
                &name("api.test"),
                now()
            )),
            Some((Layer::ServerChain, Cause::MissingIntermediate))
        );
        assert_eq!(
            failure_of(&server_checks(
                &full,
                &roots,
                &[],
                &name("other.test"),
                now()
            )),
            Some((Layer::ServerName, Cause::NameMismatch))
        );
        let (client_only, _) = intermediate.leaf("api.test", &[ClientAuth], |_| {});
        assert_eq!(
            failure_of(&server_checks(
                &[client_only, intermediate.cert.clone()],
                &roots,
                &[],
                &name("api.test"),
                now()
            )),
            Some((Layer::ServerEku, Cause::NoServerAuth))
        );
        let (expired, _) = intermediate.leaf("api.test", &[ServerAuth], |params| {
            params.not_after = now() - Duration::minutes(5);
            params.not_before = now() - Duration::days(1);
        });
        let checks = server_checks(
            &[expired, intermediate.cert.clone()],
            &roots,
            &[],
            &name("api.test"),
            now(),
        );
        assert_eq!(
            failure_of(&checks),
            Some((Layer::ServerDates, Cause::Expired))
        );
        let crl = intermediate.crl(&[&[0x11, 0x22, 0x33]], now() + Duration::days(1));
        assert_eq!(
            failure_of(&server_checks(
                &full,
                &roots,
                &[crl],
                &name("api.test"),
                now()
            )),
            Some((Layer::Revocation, Cause::ServerCertificateRevoked))
        );
    }

    #[test]
    fn ok_protocol_after_the_certificate_blames_only_our_side() {
        let alert = Handshake::Failed(Failure::Tls(rustls::Error::AlertReceived(
            AlertDescription::UnknownCA,
        )));
        assert_eq!(protocol_after_certificate(&alert).status, Status::Ok);
        assert_eq!(
            protocol_after_certificate(&Handshake::Failed(Failure::Closed)).status,
            Status::Ok
        );
        let broken = Handshake::Failed(Failure::Tls(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadSignature,
        )));
        assert_eq!(
            protocol_after_certificate(&broken).cause,
            Some(Cause::HandshakeFailed)
        );
        let silent = Handshake::Failed(Failure::Io(std::io::Error::from(ErrorKind::TimedOut)));
        assert_eq!(
            protocol_after_certificate(&silent).cause,
            Some(Cause::HandshakeFailed)
        );
    }

    #[test]
    fn fail_a_server_certificate_that_is_not_x509() {
        let root = root("r");
        let good = root.cert.der.clone();
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        let check = parse_chain(&[good.clone(), garbage]).unwrap_err();
        assert_eq!(check.cause, Some(Cause::InvalidChain));
        assert!(check.detail.contains("#2"), "{}", check.detail);
        assert_eq!(parse_chain(&[good]).map(|chain| chain.len()).ok(), Some(1));
    }

    #[test]
    fn ok_client_auth_request_is_judged() {
        assert_eq!(
            client_auth_check(None, true).cause,
            Some(Cause::NotRequested)
        );
        let accepted = AcceptedCas {
            names: vec!["CN=x".into()],
            ours_included: Some(false),
        };
        let check = client_auth_check(Some(&accepted), true);
        assert_eq!(
            (check.status, check.cause),
            (Status::Warn, Some(Cause::CaNotAccepted))
        );
        let any = AcceptedCas {
            names: vec![],
            ours_included: None,
        };
        assert_eq!(client_auth_check(Some(&any), true).status, Status::Ok);
    }

    #[test]
    fn fail_alerts_translate_into_causes() {
        let root = root("r");
        let (ours, _) = root.leaf("me.test", &[ClientAuth], |_| {});
        let accepted = AcceptedCas {
            names: vec!["CN=their root".into()],
            ours_included: Some(false),
        };
        let check = refusal_check(
            &After::Alert(AlertDescription::UnknownCA),
            Some(&accepted),
            true,
            Some(&ours),
        );
        assert_eq!(check.cause, Some(Cause::UnknownCaAlert));
        assert!(
            check.detail.contains("it accepts CN=their root"),
            "{}",
            check.detail
        );
        assert!(check.detail.contains("(CN=r)"), "{}", check.detail);
        for (alert, cause) in [
            (
                AlertDescription::CertificateRevoked,
                Cause::CertificateRevoked,
            ),
            (
                AlertDescription::CertificateExpired,
                Cause::CertificateExpired,
            ),
            (
                AlertDescription::UnsupportedCertificate,
                Cause::UnsupportedCertificate,
            ),
            (AlertDescription::AccessDenied, Cause::AccessDenied),
            (AlertDescription::BadCertificate, Cause::BadCertificate),
            (
                AlertDescription::CertificateRequired,
                Cause::CertificateRequired,
            ),
            (AlertDescription::DecryptError, Cause::DecryptError),
        ] {
            assert_eq!(
                refusal_check(&After::Alert(alert), None, true, Some(&ours)).cause,
                Some(cause),
                "{alert:?}"
            );
        }
        assert_eq!(
            refusal_check(
                &After::Alert(AlertDescription::HandshakeFailure),
                None,
                false,
                None
            )
            .cause,
            Some(Cause::CertificateRequired)
        );
        assert_eq!(
            refusal_check(&After::Quiet, None, true, Some(&ours)).status,
            Status::Ok
        );
        assert_eq!(
            refusal_check(&After::Closed, None, true, Some(&ours)).cause,
            Some(Cause::ClosedWithoutAlert)
        );
    }
}
