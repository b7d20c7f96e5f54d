//! Independent checks of issued certificates: rustls-webpki, `openssl
//! verify`, and a real in-memory mutual-TLS handshake with rustls.
//!
//! Invariant: none of these uses the server's or the SDK's own verification
//! code; they are the second opinion.

use std::process::Command;
use std::sync::Arc;

use der::{Decode as _, Encode as _};

use crate::csr::pem_to_der;

/// OID of id-kp-clientAuth (1.3.6.1.5.5.7.3.2), DER content bytes.
pub const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
/// OID of id-kp-serverAuth (1.3.6.1.5.5.7.3.1), DER content bytes.
pub const EKU_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];

/// Every certificate in a PEM chain, as DER, in order.
#[track_caller]
pub fn pem_chain(pem: &str) -> Vec<Vec<u8>> {
    x509_cert::Certificate::load_pem_chain(pem.as_bytes())
        .unwrap_or_else(|error| panic!("not a PEM certificate chain ({error}): {pem}"))
        .iter()
        .map(|certificate| certificate.to_der().expect("re-encode a certificate"))
        .collect()
}

/// Parses one DER certificate.
#[track_caller]
pub fn parse_certificate(der: &[u8]) -> x509_cert::Certificate {
    x509_cert::Certificate::from_der(der).expect("a DER X.509 certificate")
}

/// Verifies `leaf` up to `root` through `intermediates` with rustls-webpki,
/// now, requiring the EKU `eku` (DER content bytes of the OID).
#[track_caller]
pub fn verify_with_webpki(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    root: &[u8],
    eku: &'static [u8],
) -> Result<(), webpki::Error> {
    use rustls_pki_types::{CertificateDer, UnixTime};

    let root = CertificateDer::from(root.to_vec());
    let anchor = webpki::anchor_from_trusted_cert(&root)?.to_owned();
    let leaf = CertificateDer::from(leaf.to_vec());
    let end_entity = webpki::EndEntityCert::try_from(&leaf)?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &intermediates,
            UnixTime::now(),
            webpki::KeyUsage::required_if_present(eku),
            None,
            None,
        )
        .map(|_| ())
}

/// `openssl verify -CAfile root.pem -untrusted issuing.pem [-purpose p] leaf.pem`;
/// returns `Err(output)` when OpenSSL refuses.
pub fn verify_with_openssl(
    leaf_pem: &str,
    intermediates_pem: &str,
    root_pem: &str,
    purpose: Option<&str>,
) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write a PEM file");
        path
    };
    let root = write("root.pem", root_pem);
    let untrusted = write("issuing.pem", intermediates_pem);
    let leaf = write("leaf.pem", leaf_pem);
    let mut command = Command::new("openssl");
    command
        .arg("verify")
        .args(["-x509_strict", "-CAfile"])
        .arg(&root)
        .arg("-untrusted")
        .arg(&untrusted);
    if let Some(purpose) = purpose {
        command.args(["-purpose", purpose]);
    }
    let output = command.arg(&leaf).output().expect("run openssl verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() && text.contains(": OK") {
        Ok(())
    } else {
        Err(text)
    }
}

/// Runs a real TLS 1.2/1.3 handshake in memory with client authentication:
/// the server presents `server_chain` (leaf first) for `server_name`, the
/// client presents `client_chain`; both sides trust only `root`. Then one
/// application message crosses. Keys are PKCS#8 PEM.
pub fn mtls_handshake(
    root: &[u8],
    server_name: &str,
    server_chain: &[Vec<u8>],
    server_key_pem: &str,
    client_chain: &[Vec<u8>],
    client_key_pem: &str,
) -> Result<(), String> {
    use std::io::{Read as _, Write as _};

    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(root.to_vec()))
        .map_err(|error| format!("root: {error}"))?;
    let roots = Arc::new(roots);
    let chain = |ders: &[Vec<u8>]| -> Vec<CertificateDer<'static>> {
        ders.iter()
            .map(|der| CertificateDer::from(der.clone()))
            .collect()
    };
    let key = |pem: &str| -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pem_to_der(pem)))
    };
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|error| format!("client verifier: {error}"))?;
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(server_chain), key(server_key_pem))
        .map_err(|error| format!("server certificate: {error}"))?;
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain(client_chain), key(client_key_pem))
        .map_err(|error| format!("client certificate: {error}"))?;
    let name = ServerName::try_from(server_name.to_owned()).map_err(|error| error.to_string())?;
    let mut client = rustls::ClientConnection::new(Arc::new(client_config), name)
        .map_err(|error| error.to_string())?;
    let mut server = rustls::ServerConnection::new(Arc::new(server_config))
        .map_err(|error| error.to_string())?;
    client
        .writer()
        .write_all(b"ping")
        .map_err(|error| error.to_string())?;
    let mut received = Vec::new();
    for _ in 0..32 {
        let mut wire = Vec::new();
        client
            .write_tls(&mut wire)
            .map_err(|error| error.to_string())?;
        server
            .read_tls(&mut wire.as_slice())
            .map_err(|error| error.to_string())?;
        server
            .process_new_packets()
            .map_err(|error| format!("server side: {error}"))?;
        let mut wire = Vec::new();
        server
            .write_tls(&mut wire)
            .map_err(|error| error.to_string())?;
        client
            .read_tls(&mut wire.as_slice())
            .map_err(|error| error.to_string())?;
        client
            .process_new_packets()
            .map_err(|error| format!("client side: {error}"))?;
        let mut buffer = [0u8; 16];
        match server.reader().read(&mut buffer) {
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error.to_string()),
        }
        if !client.is_handshaking() && !server.is_handshaking() && received == b"ping" {
            return match server.peer_certificates() {
                Some(presented)
                    if presented.first().map(|c| c.as_ref())
                        == client_chain.first().map(Vec::as_slice) =>
                {
                    Ok(())
                }
                other => Err(format!("server saw client certificates {other:?}")),
            };
        }
    }
    Err("handshake did not complete".to_owned())
}
