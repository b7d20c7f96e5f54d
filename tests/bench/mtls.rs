//! Client side of mutual TLS for the renewal benchmark: one rustls
//! configuration per worker that presents whichever holder's certificate the
//! worker is about to use, never resumes a session, and counts what every
//! handshake did; and a bare handshake (no HTTP) over a plain `TcpStream`.
//!
//! Why a per-worker "slot" instead of one `ClientConfig` per holder: a
//! reqwest client owns its TLS configuration, and building a reqwest
//! blocking client per renewal would spawn a runtime thread per renewal and
//! bill that to the client's share of the two cores. Instead each worker
//! keeps one client with keep-alive off and, before each job, puts the
//! holder's certified key in the slot its resolver reads during the next
//! handshake. A worker runs one job at a time and a connection's handshake
//! happens inside that job, so the slot always holds the right key.
//!
//! Invariants the counters let the caller check: with session resumption
//! disabled and no connection reuse, every job is exactly one full
//! handshake, so the server certificate is verified once per job, the
//! client certificate is sent once per job, and the version-specific
//! handshake signature check runs once per job (TLS 1.3 or 1.2, which tells
//! the version even where the connection itself is hidden inside reqwest).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use serde::Serialize;

use crate::BoxError;

/// How many times each handshake step ran, over all workers of a phase.
#[derive(Debug, Default)]
pub struct Counters {
    /// The server asked for a client certificate and we sent one.
    client_certificates: AtomicUsize,
    /// Server certificate chains verified (one per full handshake).
    server_certificates: AtomicUsize,
    /// TLS 1.3 CertificateVerify signatures checked.
    tls13: AtomicUsize,
    /// TLS 1.2 ServerKeyExchange signatures checked.
    tls12: AtomicUsize,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Handshakes {
    /// Client certificates sent.
    pub client_certificates: usize,
    /// Full handshakes (server certificate verified).
    pub full_handshakes: usize,
    /// Of those, TLS 1.3.
    pub tls13: usize,
    /// Of those, TLS 1.2.
    pub tls12: usize,
}

impl Counters {
    /// Current totals.
    pub fn snapshot(&self) -> Handshakes {
        Handshakes {
            client_certificates: self.client_certificates.load(Ordering::Relaxed),
            full_handshakes: self.server_certificates.load(Ordering::Relaxed),
            tls13: self.tls13.load(Ordering::Relaxed),
            tls12: self.tls12.load(Ordering::Relaxed),
        }
    }
}

impl Handshakes {
    /// Whether `jobs` jobs each made exactly one full handshake with a
    /// client certificate; `Err` says what differed.
    pub fn expect_one_each(&self, jobs: usize) -> Result<(), String> {
        if self.full_handshakes == jobs
            && self.client_certificates == jobs
            && self.tls13 + self.tls12 == jobs
        {
            Ok(())
        } else {
            Err(format!(
                "{jobs} jobs but {} full handshakes, {} client certificates sent, \
                 {} TLS 1.3 + {} TLS 1.2 handshake signatures (a connection was \
                 reused or resumed, or the server did not ask for the certificate)",
                self.full_handshakes, self.client_certificates, self.tls13, self.tls12
            ))
        }
    }
}

/// A holder's certificate chain (leaf first) and key, ready for rustls.
pub fn certified_key(chain_pem: &str, pkcs8_der: Vec<u8>) -> Result<Arc<CertifiedKey>, BoxError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("certificate chain: {error}"))?;
    if chain.is_empty() {
        return Err("certificate chain: no certificate".into());
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8_der));
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

/// Presents whatever key the worker last put in the slot.
#[derive(Debug, Default)]
pub struct Slot {
    current: Mutex<Option<Arc<CertifiedKey>>>,
    counters: Arc<Counters>,
}

impl Slot {
    /// The key the next handshake of this worker presents.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(key);
    }
}

impl ResolvesClientCert for Slot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let key = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if key.is_some() {
            self.counters
                .client_certificates
                .fetch_add(1, Ordering::Relaxed);
        }
        key
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// rustls-webpki's server verifier, unchanged, plus counting: every
/// decision is the inner verifier's.
#[derive(Debug)]
struct CountingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    counters: Arc<Counters>,
}

impl ServerCertVerifier for CountingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.counters
            .server_certificates
            .fetch_add(1, Ordering::Relaxed);
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.counters.tls12.fetch_add(1, Ordering::Relaxed);
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.counters.tls13.fetch_add(1, Ordering::Relaxed);
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Trust anchors from a PEM file.
pub fn roots(root: &Path) -> Result<Arc<rustls::RootCertStore>, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(root).map_err(|e| format!("{}: {e}", root.display()))?
    {
        roots.add(cert.map_err(|e| format!("{}: {e}", root.display()))?)?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate", root.display()).into());
    }
    Ok(Arc::new(roots))
}

/// One worker's TLS client configuration and the slot it presents from.
///
/// Both phases build theirs here, so the renewal and bare-handshake phases
/// offer exactly the same versions, cipher suites, groups and ALPN, and the
/// server therefore negotiates the same parameters for both.
pub fn worker_config(
    roots: &Arc<rustls::RootCertStore>,
    counters: &Arc<Counters>,
) -> Result<(rustls::ClientConfig, Arc<Slot>), BoxError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(CountingVerifier {
        inner: WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()?,
        counters: counters.clone(),
    });
    let slot = Arc::new(Slot {
        current: Mutex::new(None),
        counters: counters.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(slot.clone());
    // A fleet of agents renewing once a day holds no session state for the
    // server: every connection is a full handshake with a certificate.
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, slot))
}

/// What the server negotiated, as `"TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519"`.
fn negotiated(connection: &rustls::ClientConnection) -> String {
    let version = connection
        .protocol_version()
        .map_or_else(|| "?".to_owned(), |v| format!("{v:?}"));
    let suite = connection
        .negotiated_cipher_suite()
        .map_or_else(|| "?".to_owned(), |s| format!("{:?}", s.suite()));
    let group = connection
        .negotiated_key_exchange_group()
        .map_or_else(|| "?".to_owned(), |g| format!("{:?}", g.name()));
    format!("{version} {suite} {group}")
}

/// One full mutual-TLS handshake and nothing else: TCP connect, handshake
/// presenting the slot's key, `close_notify`, then wait for the server to
/// close in turn. Returns the negotiated parameters.
///
/// Why wait for the server's close: in TLS 1.3 the client's handshake is
/// over as soon as it has *sent* its certificate, CertificateVerify and
/// Finished; the server verifies them only after reading them. The server
/// reads records in order, so once it answers our `close_notify` (or closes
/// the socket) it has checked the certificate, and a refused certificate
/// would have come back as an alert instead. This makes the latency cover
/// the server's whole part of the handshake, as a renewal's does.
pub fn bare_handshake(
    config: &Arc<rustls::ClientConfig>,
    address: SocketAddr,
    server_name: &ServerName<'static>,
) -> Result<String, String> {
    let mut socket =
        TcpStream::connect(address).map_err(|error| format!("connect {address}: {error}"))?;
    // As reqwest does; without it Nagle would delay the client's flights.
    socket
        .set_nodelay(true)
        .and_then(|()| socket.set_read_timeout(Some(Duration::from_secs(60))))
        .map_err(|error| format!("socket options: {error}"))?;
    let mut connection = rustls::ClientConnection::new(config.clone(), server_name.clone())
        .map_err(|error| format!("TLS client: {error}"))?;
    while connection.is_handshaking() {
        connection
            .complete_io(&mut socket)
            .map_err(|error| format!("handshake: {error}"))?;
    }
    // complete_io returns once the handshake state machine is done, which
    // may leave our last flight buffered: flush it.
    while connection.wants_write() {
        connection
            .write_tls(&mut socket)
            .map_err(|error| format!("writing the handshake: {error}"))?;
    }
    let parameters = negotiated(&connection);
    connection.send_close_notify();
    while connection.wants_write() {
        connection
            .write_tls(&mut socket)
            .map_err(|error| format!("sending close_notify: {error}"))?;
    }
    socket
        .flush()
        .map_err(|error| format!("sending close_notify: {error}"))?;
    // Read (and discard: session tickets, nothing else is expected) until
    // the server's close_notify or the end of the stream.
    loop {
        let read = connection
            .read_tls(&mut socket)
            .map_err(|error| format!("waiting for the server to close: {error}"))?;
        let state = connection
            .process_new_packets()
            .map_err(|error| format!("server refused the handshake: {error}"))?;
        if state.plaintext_bytes_to_read() > 0 {
            let mut sink = vec![0; state.plaintext_bytes_to_read()];
            connection
                .reader()
                .read_exact(&mut sink)
                .map_err(|error| format!("reading: {error}"))?;
            return Err("the server sent application data after a bare handshake".into());
        }
        if state.peer_has_closed() || read == 0 {
            break;
        }
    }
    Ok(parameters)
}
