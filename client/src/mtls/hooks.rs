//! The rustls trait objects that read the live state: certificate
//! resolvers, delegating verifiers, and session caches that forget every
//! session when the state changes.
//!
//! Invariants:
//! - Every hook that a handshake enters first gives [`Watched::poll`] its
//!   chance, then uses the state of that moment; none holds a lock across a
//!   call into rustls or webpki.
//! - The verifiers add no check of their own and skip none: each call goes
//!   to the webpki verifier built from the current roots and CRLs.
//! - A session cached under one state is never resumed under another, so a
//!   new CRL (or a new certificate) takes effect on the next connection of
//!   every peer, not when its session ticket runs out.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, ResolvesClientCert, Tls12ClientSessionValue,
    Tls13ClientSessionValue, WebPkiServerVerifier,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, NamedGroup, SignatureScheme};

use super::watch::Watched;

/// Sessions each cache keeps, as rustls' own default caches do.
const SESSION_CACHE_SIZE: usize = 256;

/// Serves the current `cert.pem`/`key.pem`.
pub(super) struct ReloadingServerCert {
    watched: Arc<Watched<dyn ClientCertVerifier>>,
}

impl ReloadingServerCert {
    pub(super) fn new(watched: Arc<Watched<dyn ClientCertVerifier>>) -> Self {
        Self { watched }
    }
}

impl ResolvesServerCert for ReloadingServerCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.watched.poll();
        Some(self.watched.identity())
    }
}

impl fmt::Debug for ReloadingServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingServerCert")
            .finish_non_exhaustive()
    }
}

/// Presents the current `cert.pem`/`key.pem`.
pub(super) struct ReloadingClientCert {
    watched: Arc<Watched<WebPkiServerVerifier>>,
}

impl ReloadingClientCert {
    pub(super) fn new(watched: Arc<Watched<WebPkiServerVerifier>>) -> Self {
        Self { watched }
    }
}

impl ResolvesClientCert for ReloadingClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        // The server verifier already polled in this handshake.
        Some(self.watched.identity())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl fmt::Debug for ReloadingClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingClientCert")
            .finish_non_exhaustive()
    }
}

/// Requires a client certificate and checks it with the current verifier.
pub(super) struct ReloadingClientVerifier {
    watched: Arc<Watched<dyn ClientCertVerifier>>,
}

impl ReloadingClientVerifier {
    pub(super) fn new(watched: Arc<Watched<dyn ClientCertVerifier>>) -> Self {
        Self { watched }
    }
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // rustls borrows the hints from this long-lived object, which cannot
        // lend the roots of the moment; an empty list lets every client send
        // its certificate (RFC 8446 4.3.2: certificate_authorities is
        // optional).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let result = self
            .watched
            .verifier()
            .verify_client_cert(end_entity, intermediates, now);
        if let Err(error) = &result {
            tracing::debug!(%error, "refused a client certificate");
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.watched
            .verifier()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.watched
            .verifier()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.watched.verifier().supported_verify_schemes()
    }
}

impl fmt::Debug for ReloadingClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingClientVerifier")
            .finish_non_exhaustive()
    }
}

/// Checks the server's certificate with the current verifier.
pub(super) struct ReloadingServerVerifier {
    watched: Arc<Watched<WebPkiServerVerifier>>,
}

impl ReloadingServerVerifier {
    pub(super) fn new(watched: Arc<Watched<WebPkiServerVerifier>>) -> Self {
        Self { watched }
    }
}

impl ServerCertVerifier for ReloadingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The first hook of a client handshake that reaches the server's
        // certificate: the files are checked here, before the identity is
        // resolved.
        self.watched.poll();
        let result = self.watched.verifier().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if let Err(error) = &result {
            tracing::debug!(%error, "refused a server certificate");
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.watched
            .verifier()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.watched
            .verifier()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.watched.verifier().supported_verify_schemes()
    }
}

impl fmt::Debug for ReloadingServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingServerVerifier")
            .finish_non_exhaustive()
    }
}

/// Gives the files their check; the session caches call it because a
/// resumed handshake enters neither a resolver nor a verifier.
pub(super) type Poll = Arc<dyn Fn() + Send + Sync>;

/// Counts installed changes; the session caches start afresh at each.
#[derive(Clone, Debug, Default)]
pub(super) struct SessionGeneration(Arc<AtomicU64>);

impl SessionGeneration {
    /// A new state was installed: no earlier session may be resumed.
    pub(super) fn advance(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// A server session cache that follows this generation.
    pub(super) fn server_store(&self, poll: Poll) -> Arc<dyn StoresServerSessions> {
        Arc::new(ServerSessions {
            poll,
            generation: self.clone(),
            cache: Mutex::new((
                self.current(),
                ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
            )),
        })
    }

    /// A client session cache that follows this generation.
    pub(super) fn client_store(&self, poll: Poll) -> Arc<dyn ClientSessionStore> {
        Arc::new(ClientSessions {
            poll,
            generation: self.clone(),
            cache: Mutex::new((
                self.current(),
                Arc::new(ClientSessionMemoryCache::new(SESSION_CACHE_SIZE)),
            )),
        })
    }
}

/// rustls' server cache, replaced by an empty one at each generation.
struct ServerSessions {
    poll: Poll,
    generation: SessionGeneration,
    cache: Mutex<(u64, Arc<ServerSessionMemoryCache>)>,
}

impl ServerSessions {
    fn cache(&self) -> Arc<ServerSessionMemoryCache> {
        let generation = self.generation.current();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.0 != generation {
            *cache = (
                generation,
                ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
            );
        }
        Arc::clone(&cache.1)
    }
}

impl fmt::Debug for ServerSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSessions")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl StoresServerSessions for ServerSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.cache().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        (self.poll)();
        self.cache().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        (self.poll)();
        self.cache().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// rustls' client cache, replaced by an empty one at each generation.
struct ClientSessions {
    poll: Poll,
    generation: SessionGeneration,
    cache: Mutex<(u64, Arc<ClientSessionMemoryCache>)>,
}

impl ClientSessions {
    fn cache(&self) -> Arc<ClientSessionMemoryCache> {
        let generation = self.generation.current();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.0 != generation {
            *cache = (
                generation,
                Arc::new(ClientSessionMemoryCache::new(SESSION_CACHE_SIZE)),
            );
        }
        Arc::clone(&cache.1)
    }
}

impl fmt::Debug for ClientSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSessions")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl ClientSessionStore for ClientSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.cache().set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.cache().kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.cache().set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        (self.poll)();
        self.cache().tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.cache().remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.cache().insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        (self.poll)();
        self.cache().take_tls13_ticket(server_name)
    }
}
