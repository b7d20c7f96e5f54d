//! `certmint doctor --listen`: a mutual TLS test server that asks for (but
//! does not require) a client certificate, accepts whatever is presented
//! (the client must still prove it holds the key: handshake signatures
//! are verified), and explains each client's certificate: who it names,
//! who issued it, its dates and usages, whether it chains to our CA file,
//! whether the CRLs list it, and what a strict server would answer (the
//! alert rustls's own client verifier would send).
//!
//! Invariants: connections are served one at a time, each with timeouts,
//! so a silent client cannot stall the server for long; nothing the
//! client sends is used but to explain it; the explanation is
//! [`explain`], pure and unit-tested; the client gets one line back
//! saying what a strict server would have done.

use std::io::{ErrorKind, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde::Serialize;
use time::OffsetDateTime;
use x509_cert::der::Encode as _;

use super::analysis::{self, Cert, ChainFinding, Crl, Purpose};
use super::connect::alert_name;
use super::local::{self, Material};
use super::report::{Cause, Check, Layer, Report};

/// How long one client's handshake may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks for a client certificate from our CAs, accepts any, verifies the
/// client's handshake signature (so a certificate without its key fails).
#[derive(Debug)]
struct AnyClient {
    provider: Arc<CryptoProvider>,
    hints: Vec<DistinguishedName>,
}

impl ClientCertVerifier for AnyClient {
    fn client_auth_mandatory(&self) -> bool {
        // Asked, not required: a client without a certificate is explained too.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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

/// The facts of a client certificate, for `--json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Facts {
    /// Subject, RFC 4514.
    pub subject: String,
    /// subjectAltNames, `dns: …; ip: …; uri: …`.
    pub names: String,
    /// Issuer, RFC 4514.
    pub issuer: String,
    /// Serial, hex.
    pub serial: String,
    /// notBefore, RFC 3339.
    pub not_before: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// Extended key usages.
    pub eku: String,
}

/// One client explained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// Where it connected from.
    pub peer: String,
    /// Its certificate; `None` when it sent none.
    pub certificate: Option<Facts>,
    /// What a strict server answers: `accept`, or the alert it sends.
    pub strict_answer: String,
    /// The layered report.
    #[serde(flatten)]
    pub report: Report,
}

impl Explanation {
    /// The text form.
    pub fn render(&self, colour: bool) -> String {
        let mut out = format!("client {}\n", self.peer);
        match &self.certificate {
            Some(facts) => {
                for (label, value) in [
                    ("subject", &facts.subject),
                    ("names", &facts.names),
                    ("issuer", &facts.issuer),
                    ("serial", &facts.serial),
                    (
                        "valid",
                        &format!("{} to {}", facts.not_before, facts.not_after),
                    ),
                    ("eku", &facts.eku),
                ] {
                    out.push_str(&format!(
                        "  {label:<8}  {}\n",
                        crate::table::printable(value)
                    ));
                }
            }
            None => out.push_str("  (no client certificate)\n"),
        }
        out.push_str(&self.report.render(colour));
        out.push_str(&format!("strict server: {}\n", self.strict_text()));
        out
    }

    fn strict_text(&self) -> String {
        if self.strict_answer == "accept" {
            "would accept this client".to_owned()
        } else {
            format!("would refuse it with the alert {}", self.strict_answer)
        }
    }
}

/// Serves on `address` until killed, or until the first client with `once`.
/// Returns the last client's report.
pub fn serve(
    address: &str,
    material: &Material,
    once: bool,
    json: bool,
    colour: bool,
) -> Result<Option<Report>, String> {
    let config = server_config(material)?;
    let listener = TcpListener::bind(address)
        .map_err(|error| format!("cannot listen on {address}: {error}"))?;
    let local = listener
        .local_addr()
        .map_err(|error| format!("cannot read the listening address: {error}"))?;
    eprintln!(
        "certmint doctor: listening on {local}; asking clients for a certificate from {}",
        material
            .roots
            .iter()
            .map(Cert::subject)
            .collect::<Vec<_>>()
            .join("; ")
    );
    let mut last = None;
    for stream in listener.incoming() {
        let tcp = match stream {
            Ok(tcp) => tcp,
            // A client that vanished between SYN and accept: next.
            Err(error) if error.kind() == ErrorKind::ConnectionAborted => continue,
            Err(error) => return Err(format!("accept failed: {error}")),
        };
        let peer = tcp.peer_addr().map_or_else(
            |_| "(unknown peer)".to_owned(),
            |peer: SocketAddr| peer.to_string(),
        );
        let explanation = serve_one(&config, tcp, &peer, material);
        if json {
            match serde_json::to_string(&explanation) {
                Ok(line) => println!("{line}"),
                Err(error) => return Err(format!("cannot encode the explanation: {error}")),
            }
        } else {
            print!("{}", explanation.render(colour));
        }
        // Each explanation as it happens, even into a pipe.
        let _ = std::io::stdout().flush();
        last = Some(explanation.report);
        if once {
            break;
        }
    }
    Ok(last)
}

fn server_config(material: &Material) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = material
        .key
        .as_ref()
        .ok_or("no usable private key to serve with")?
        .clone_key();
    let chain: Vec<CertificateDer<'static>> =
        material.chain.iter().map(|cert| cert.der.clone()).collect();
    let hints = material
        .roots
        .iter()
        .filter_map(|root| root.x509.tbs_certificate().subject().to_der().ok())
        .map(DistinguishedName::from)
        .collect();
    let config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS versions: {error}"))?
        .with_client_cert_verifier(Arc::new(AnyClient { provider, hints }))
        .with_single_cert(chain, key)
        .map_err(|error| format!("cannot serve with our certificate and key: {error}"))?;
    Ok(Arc::new(config))
}

fn serve_one(
    config: &Arc<rustls::ServerConfig>,
    mut tcp: TcpStream,
    peer: &str,
    material: &Material,
) -> Explanation {
    let now = OffsetDateTime::now_utc();
    let failed = |detail: String| Explanation {
        peer: peer.to_owned(),
        certificate: None,
        strict_answer: "handshake_failure".to_owned(),
        report: Report::from_checks(
            vec![Check::fail(Layer::Protocol, Cause::HandshakeFailed, detail)],
            "",
        ),
    };
    if let Err(error) = tcp
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| tcp.set_write_timeout(Some(IO_TIMEOUT)))
    {
        return failed(format!("cannot set socket timeouts: {error}"));
    }
    let mut connection = match rustls::ServerConnection::new(config.clone()) {
        Ok(connection) => connection,
        Err(error) => return failed(format!("cannot start a TLS server: {error}")),
    };
    if let Err(error) = complete(&mut connection, &mut tcp) {
        return failed(error);
    }
    let chain: Vec<Cert> = connection
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .filter_map(|der| Cert::from_der(der.clone().into_owned()).ok())
        .collect();
    let strict = strict_answer(&chain, &material.roots, &material.crls);
    let explanation = explain(peer, &chain, &material.roots, &material.crls, now, strict);
    // Tell the client too: one line, then a clean close.
    let line = format!("certmint doctor: {}\n", explanation.strict_text());
    let _ = connection.writer().write_all(line.as_bytes());
    connection.send_close_notify();
    while connection.wants_write() {
        if connection.write_tls(&mut tcp).is_err() {
            break;
        }
    }
    explanation
}

fn complete(connection: &mut rustls::ServerConnection, tcp: &mut TcpStream) -> Result<(), String> {
    while connection.is_handshaking() {
        while connection.wants_write() {
            connection
                .write_tls(tcp)
                .map_err(|error| format!("handshake write: {error}"))?;
        }
        if !connection.is_handshaking() {
            break;
        }
        match connection.read_tls(tcp) {
            Ok(0) => return Err("the client closed the connection during the handshake".into()),
            Ok(_) => {
                if let Err(error) = connection.process_new_packets() {
                    let _ = connection.write_tls(tcp);
                    return Err(match error {
                        rustls::Error::AlertReceived(alert) => format!(
                            "the client aborted the handshake with the alert {} (it refuses \
                             our server certificate?)",
                            alert_name(alert)
                        ),
                        other => format!("handshake failed: {other}"),
                    });
                }
            }
            Err(error) => return Err(format!("handshake read: {error}")),
        }
    }
    while connection.wants_write() {
        connection
            .write_tls(tcp)
            .map_err(|error| format!("handshake write: {error}"))?;
    }
    Ok(())
}

/// What rustls's own client verifier (with our roots and CRLs) answers.
fn strict_answer(chain: &[Cert], roots: &[Cert], crls: &[Crl]) -> String {
    let Some(leaf) = chain.first() else {
        return "certificate_required".to_owned();
    };
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        // A root rustls cannot use trusts nothing; the chain layer says so.
        let _ = store.add(root.der.clone());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
        .with_crls(crls.iter().map(|crl| crl.der.clone()))
        .allow_unknown_revocation_status()
        .build();
    let verifier = match verifier {
        Ok(verifier) => verifier,
        // No usable root at all: every client is of an unknown CA.
        Err(_) => return alert_name(AlertDescription::UnknownCA),
    };
    let intermediates: Vec<CertificateDer<'static>> =
        chain[1..].iter().map(|cert| cert.der.clone()).collect();
    let now = UnixTime::now();
    match verifier.verify_client_cert(&leaf.der, &intermediates, now) {
        Ok(_) => "accept".to_owned(),
        Err(rustls::Error::InvalidCertificate(error)) => alert_name(AlertDescription::from(error)),
        Err(_) => alert_name(AlertDescription::BadCertificate),
    }
}

/// Explains one client's `chain` (empty: it sent none) against our roots
/// and CRLs at `now`; `strict` is what a strict server answers.
pub fn explain(
    peer: &str,
    chain: &[Cert],
    roots: &[Cert],
    crls: &[Crl],
    now: OffsetDateTime,
    strict: String,
) -> Explanation {
    let Some(leaf) = chain.first() else {
        return Explanation {
            peer: peer.to_owned(),
            certificate: None,
            strict_answer: strict,
            report: Report::from_checks(
                vec![Check::fail(
                    Layer::ClientAuth,
                    Cause::NoCertificate,
                    "the client sent no certificate although we asked for one: a strict server \
                     answers certificate_required (is the client configured with a certificate \
                     and key?)",
                )],
                "",
            ),
        };
    };
    let (not_before, not_after) = leaf.validity();
    let facts = Facts {
        subject: leaf.subject(),
        names: analysis::san_text(leaf),
        issuer: leaf.issuer(),
        serial: leaf.serial(),
        not_before: analysis::rfc3339(not_before),
        not_after: analysis::rfc3339(not_after),
        eku: analysis::eku_text(leaf),
    };
    let mut checks = vec![Check::ok(
        Layer::ClientAuth,
        format!("the client sent {} certificate(s)", chain.len()),
    )];
    let at = analysis::chain_time(chain, now);
    let finding = analysis::chain(chain, roots, at);
    let verified = matches!(finding, ChainFinding::Verified { .. });
    checks.push(match finding {
        ChainFinding::Verified {
            intermediates,
            root,
        } => Check::ok(
            Layer::ClientChain,
            format!("leaf <- {intermediates} intermediate(s) <- {root}, in our CA file"),
        ),
        ChainFinding::MissingIntermediate { issuer, sent } => Check::fail(
            Layer::ClientChain,
            Cause::MissingIntermediate,
            format!(
                "the client sent {sent} certificate(s) but not its issuer {issuer}, which is not \
                 in our CA file either: the client must send its intermediate (cert.pem holds \
                 leaf then chain)"
            ),
        ),
        ChainFinding::UnknownCa {
            issuer, trusted, ..
        } => Check::fail(
            Layer::ClientChain,
            Cause::UnknownCa,
            format!(
                "the client's chain leads to {issuer}, which our CA file does not contain (we \
                 trust {}): a client of another CA",
                trusted.join("; ")
            ),
        ),
        ChainFinding::WrongCaKey { issuer } => Check::fail(
            Layer::ClientChain,
            Cause::WrongCaKey,
            format!("the client's chain names {issuer}, which we trust, but with another key"),
        ),
        ChainFinding::Empty => Check::fail(Layer::ClientChain, Cause::NoCertificate, "empty chain"),
        ChainFinding::Invalid(why) => Check::fail(
            Layer::ClientChain,
            Cause::InvalidChain,
            format!("the client's chain does not verify: {why}"),
        ),
    });
    if let Some(dates) = analysis::dates(chain, now.unix_timestamp()) {
        checks.push(local::dates_check(
            Layer::ClientDates,
            "the client's",
            &dates,
        ));
    }
    checks.push(
        if analysis::eku_allows(chain, roots, at, verified, Purpose::Client) {
            Check::ok(Layer::ClientEku, format!("allows {}", facts.eku))
        } else {
            Check::fail(
                Layer::ClientEku,
                Cause::NoClientAuth,
                format!(
                    "the client's certificate lacks clientAuth ({}): a strict server answers \
                 unsupported_certificate",
                    facts.eku
                ),
            )
        },
    );
    checks.push(local::revocation_check(
        "the client's",
        Cause::ClientCertificateRevoked,
        &analysis::revocation(chain, roots, crls, now),
    ));
    Explanation {
        peer: peer.to_owned(),
        certificate: Some(facts),
        strict_answer: strict,
        report: Report::from_checks(
            checks,
            "the client's certificate is good for mutual TLS here",
        ),
    }
}

#[cfg(test)]
mod tests {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    use time::Duration;

    use super::super::analysis::testing::*;
    use super::*;

    #[test]
    fn ok_good_client_is_accepted_by_a_strict_server() {
        let root = root("r");
        let intermediate = root.intermediate("i");
        let (leaf, _) = intermediate.leaf("me.test", &[ClientAuth], |_| {});
        let chain = [leaf, intermediate.cert.clone()];
        let roots = [root.cert.clone()];
        let strict = strict_answer(&chain, &roots, &[]);
        assert_eq!(strict, "accept");
        let explanation = explain("p", &chain, &roots, &[], now(), strict);
        assert!(explanation.report.ok, "{explanation:#?}");
        let facts = explanation.certificate.unwrap();
        assert_eq!(facts.names, "dns: me.test");
        assert_eq!(facts.serial, "112233");
        assert_eq!(facts.issuer, "CN=i");
    }

    #[test]
    fn fail_revoked_client_and_what_a_strict_server_says() {
        let root = root("r");
        let intermediate = root.intermediate("i");
        let (leaf, _) = intermediate.leaf("me.test", &[ClientAuth], |_| {});
        let chain = [leaf, intermediate.cert.clone()];
        let roots = [root.cert.clone()];
        let crls = [intermediate.crl(&[&[0x11, 0x22, 0x33]], now() + Duration::days(1))];
        let strict = strict_answer(&chain, &roots, &crls);
        assert_eq!(strict, "certificate_revoked");
        let explanation = explain("p", &chain, &roots, &crls, now(), strict);
        assert_eq!(explanation.report.layer, Some(Layer::Revocation));
        assert_eq!(
            explanation.report.cause,
            Some(Cause::ClientCertificateRevoked)
        );
        assert!(explanation
            .render(false)
            .contains("would refuse it with the alert certificate_revoked"));
    }

    #[test]
    fn fail_client_defects_by_layer() {
        let root = root("r");
        let other = super::super::analysis::testing::root("other");
        let roots = [root.cert.clone()];
        let (server_only, _) = root.leaf("me.test", &[ServerAuth], |_| {});
        assert_eq!(
            strict_answer(std::slice::from_ref(&server_only), &roots, &[]),
            "unsupported_certificate"
        );
        assert_eq!(
            explain("p", &[server_only], &roots, &[], now(), String::new())
                .report
                .cause,
            Some(Cause::NoClientAuth)
        );
        let (foreign, _) = other.leaf("me.test", &[ClientAuth], |_| {});
        assert_eq!(
            strict_answer(std::slice::from_ref(&foreign), &roots, &[]),
            "unknown_ca"
        );
        let (expired, _) = root.leaf("me.test", &[ClientAuth], |params| {
            params.not_before = now() - Duration::days(2);
            params.not_after = now() - Duration::days(1);
        });
        assert_eq!(
            strict_answer(std::slice::from_ref(&expired), &roots, &[]),
            "certificate_expired"
        );
        let report = explain("p", &[expired], &roots, &[], now(), String::new()).report;
        assert_eq!(
            (report.layer, report.cause),
            (Some(Layer::ClientDates), Some(Cause::Expired))
        );
        let none = explain(
            "p",
            &[],
            &roots,
            &[],
            now(),
            strict_answer(&[], &roots, &[]),
        );
        assert_eq!(none.strict_answer, "certificate_required");
        assert_eq!(none.report.cause, Some(Cause::NoCertificate));
    }
}
