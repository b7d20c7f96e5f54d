//! The protocol probe: when the real handshake fails before the server
//! showed a certificate, one more connection offers TLS 1.0 to 1.2 with a
//! broad list of cipher suites, most of which rustls deliberately lacks
//! (CBC, RSA key exchange, 3DES, RC4), and reads what the server chooses.
//! A server that answers TLS 1.1 speaks no version we speak; one that
//! answers TLS 1.2 with a suite rustls lacks has no suite in common.
//!
//! rustls cannot send such a ClientHello (that is the point of it), so the
//! probe writes the few bytes of one itself. It is a probe only: it never
//! completes a handshake, negotiates no key and carries no secret, and the
//! connection is dropped after the first answer. Parsing the answer is
//! bounds-checked; a malformed answer is "not TLS", never a panic.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long the probe waits for the server's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS cipher suites by code: name, and whether rustls implements it.
const SUITES: &[(u16, &str, bool)] = &[
    (0xc02b, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", true),
    (0xc02c, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", true),
    (0xc02f, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", true),
    (0xc030, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", true),
    (
        0xcca9,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        true,
    ),
    (0xcca8, "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", true),
    (0xc009, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", false),
    (0xc00a, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", false),
    (0xc013, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", false),
    (0xc014, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", false),
    (0xc023, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", false),
    (0xc024, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384", false),
    (0xc027, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", false),
    (0xc028, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384", false),
    (0x009e, "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256", false),
    (0x009f, "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384", false),
    (0x0033, "TLS_DHE_RSA_WITH_AES_128_CBC_SHA", false),
    (0x0039, "TLS_DHE_RSA_WITH_AES_256_CBC_SHA", false),
    (0x009c, "TLS_RSA_WITH_AES_128_GCM_SHA256", false),
    (0x009d, "TLS_RSA_WITH_AES_256_GCM_SHA384", false),
    (0x002f, "TLS_RSA_WITH_AES_128_CBC_SHA", false),
    (0x0035, "TLS_RSA_WITH_AES_256_CBC_SHA", false),
    (0x003c, "TLS_RSA_WITH_AES_128_CBC_SHA256", false),
    (0x003d, "TLS_RSA_WITH_AES_256_CBC_SHA256", false),
    (0xc008, "TLS_ECDHE_ECDSA_WITH_3DES_EDE_CBC_SHA", false),
    (0xc012, "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA", false),
    (0x000a, "TLS_RSA_WITH_3DES_EDE_CBC_SHA", false),
    (0x0005, "TLS_RSA_WITH_RC4_128_SHA", false),
    (0x0004, "TLS_RSA_WITH_RC4_128_MD5", false),
];

/// What the server answered the probe with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeAnswer {
    /// A ServerHello: the version and suite it chose.
    Hello {
        /// The negotiated version (0x0301 TLS 1.0 … 0x0303 TLS 1.2).
        version: u16,
        /// The chosen cipher suite.
        suite: u16,
    },
    /// A TLS alert (level, description).
    Alert(u8),
    /// It closed the connection without a word.
    Closed,
    /// Bytes that are not TLS (an HTTP server, an SSH banner…).
    NotTls,
    /// The probe itself could not run (connect, timeout).
    Failed(String),
}

/// Offers TLS 1.0–1.2 and the suites above to `address`, naming `sni`.
pub fn probe(address: SocketAddr, sni: Option<&str>) -> ProbeAnswer {
    let mut tcp = match TcpStream::connect_timeout(&address, PROBE_TIMEOUT) {
        Ok(tcp) => tcp,
        Err(error) => return ProbeAnswer::Failed(error.to_string()),
    };
    if let Err(error) = tcp
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| tcp.set_write_timeout(Some(PROBE_TIMEOUT)))
    {
        return ProbeAnswer::Failed(error.to_string());
    }
    if let Err(error) = tcp.write_all(&client_hello(sni)) {
        return ProbeAnswer::Failed(error.to_string());
    }
    // A ServerHello fits in the first few hundred bytes; read what comes
    // until the first record is complete.
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match parse_answer(&answer) {
            Some(parsed) => return parsed,
            None if answer.len() > 16 * 1024 => return ProbeAnswer::NotTls,
            None => {}
        }
        match tcp.read(&mut buffer) {
            Ok(0) if answer.is_empty() => return ProbeAnswer::Closed,
            Ok(0) => return ProbeAnswer::NotTls,
            Ok(read) => answer.extend_from_slice(&buffer[..read]),
            Err(_) if answer.is_empty() => return ProbeAnswer::Closed,
            Err(error) => return ProbeAnswer::Failed(error.to_string()),
        }
    }
}

/// The suite's IANA name, or its code.
pub fn suite_name(suite: u16) -> String {
    SUITES
        .iter()
        .find(|(code, _, _)| *code == suite)
        .map_or_else(
            || format!("0x{suite:04x}"),
            |(_, name, _)| (*name).to_owned(),
        )
}

/// Does rustls (with the ring provider) implement this suite?
pub fn rustls_has(suite: u16) -> bool {
    rustls::crypto::ring::default_provider()
        .cipher_suites
        .iter()
        .any(|known| u16::from(known.suite()) == suite)
}

/// The names of the TLS 1.2 suites rustls offers, for the detail line.
pub fn rustls_tls12_suites() -> Vec<String> {
    SUITES
        .iter()
        .filter(|(code, _, listed)| *listed && rustls_has(*code))
        .map(|(_, name, _)| (*name).to_owned())
        .collect()
}

/// `TLS 1.1` for 0x0302.
pub fn version_name(version: u16) -> String {
    match version {
        0x0300 => "SSL 3.0".to_owned(),
        0x0301 => "TLS 1.0".to_owned(),
        0x0302 => "TLS 1.1".to_owned(),
        0x0303 => "TLS 1.2".to_owned(),
        0x0304 => "TLS 1.3".to_owned(),
        other => format!("0x{other:04x}"),
    }
}

fn push_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// Appends `body` preceded by its length in `width` bytes (2 or 3).
fn push_with_length(out: &mut Vec<u8>, width: usize, body: &[u8]) {
    let length = body.len().to_be_bytes();
    out.extend_from_slice(&length[length.len() - width..]);
    out.extend_from_slice(body);
}

fn extension(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
    push_u16(out, kind);
    push_with_length(out, 2, body);
}

/// A TLS 1.2 ClientHello (RFC 5246 §7.4.1.2) that also allows 1.0 and 1.1.
fn client_hello(sni: Option<&str>) -> Vec<u8> {
    let mut hello = Vec::new();
    push_u16(&mut hello, 0x0303);
    // The random needs no quality: no key is ever derived from it.
    hello.extend_from_slice(&[0x42; 32]);
    hello.push(0); // no session id
    let mut suites = Vec::new();
    for (code, _, _) in SUITES {
        push_u16(&mut suites, *code);
    }
    push_with_length(&mut hello, 2, &suites);
    hello.extend_from_slice(&[1, 0]); // compression: null only

    let mut extensions = Vec::new();
    if let Some(name) = sni {
        let mut entry = vec![0u8]; // host_name
        push_with_length(&mut entry, 2, name.as_bytes());
        let mut list = Vec::new();
        push_with_length(&mut list, 2, &entry);
        extension(&mut extensions, 0x0000, &list);
    }
    // supported_groups: x25519, P-256, P-384, P-521, ffdhe2048.
    let mut groups = Vec::new();
    for group in [0x001d, 0x0017, 0x0018, 0x0019, 0x0100] {
        push_u16(&mut groups, group);
    }
    let mut list = Vec::new();
    push_with_length(&mut list, 2, &groups);
    extension(&mut extensions, 0x000a, &list);
    extension(&mut extensions, 0x000b, &[1, 0]); // ec_point_formats: uncompressed
                                                 // signature_algorithms, SHA-1 ones last so old servers find one.
    let mut schemes = Vec::new();
    for scheme in [
        0x0403, 0x0503, 0x0603, 0x0807, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601, 0x0203,
        0x0201,
    ] {
        push_u16(&mut schemes, scheme);
    }
    let mut list = Vec::new();
    push_with_length(&mut list, 2, &schemes);
    extension(&mut extensions, 0x000d, &list);
    extension(&mut extensions, 0xff01, &[0]); // renegotiation_info, empty
    push_with_length(&mut hello, 2, &extensions);

    let mut handshake = vec![1u8]; // client_hello
    push_with_length(&mut handshake, 3, &hello);
    // The record layer says TLS 1.0, as every client does for compatibility.
    let mut record = vec![0x16, 0x03, 0x01];
    push_with_length(&mut record, 2, &handshake);
    record
}

/// Parses the first record of the server's answer; `None` while incomplete.
fn parse_answer(bytes: &[u8]) -> Option<ProbeAnswer> {
    let header = bytes.get(..5)?;
    let (content_type, major) = (header[0], header[1]);
    let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if !matches!(content_type, 0x15 | 0x16) || major != 3 {
        return Some(ProbeAnswer::NotTls);
    }
    let body = bytes.get(5..5 + length)?;
    if content_type == 0x15 {
        return Some(match body {
            [_level, description] => ProbeAnswer::Alert(*description),
            _ => ProbeAnswer::NotTls,
        });
    }
    // Handshake: type 2 (server_hello), 3-byte length, version, random,
    // session id, cipher suite.
    let hello = (|| {
        if *body.first()? != 2 {
            return None;
        }
        let version = u16::from_be_bytes([*body.get(4)?, *body.get(5)?]);
        let session_id_length = usize::from(*body.get(38)?);
        let at = 39 + session_id_length;
        let suite = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
        Some(ProbeAnswer::Hello { version, suite })
    })();
    Some(hello.unwrap_or(ProbeAnswer::NotTls))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_hello(version: u16, suite: u16) -> Vec<u8> {
        let mut hello = Vec::new();
        push_u16(&mut hello, version);
        hello.extend_from_slice(&[7; 32]);
        hello.push(4);
        hello.extend_from_slice(&[1, 2, 3, 4]);
        push_u16(&mut hello, suite);
        hello.push(0);
        let mut handshake = vec![2u8];
        push_with_length(&mut handshake, 3, &hello);
        let mut record = vec![0x16, 0x03, 0x02];
        push_with_length(&mut record, 2, &handshake);
        record
    }

    #[test]
    fn ok_server_hello_gives_version_and_suite() {
        let bytes = server_hello(0x0302, 0xc00a);
        assert_eq!(
            parse_answer(&bytes),
            Some(ProbeAnswer::Hello {
                version: 0x0302,
                suite: 0xc00a
            })
        );
        // Incomplete records wait for more bytes.
        assert_eq!(parse_answer(&bytes[..20]), None);
        assert_eq!(parse_answer(&bytes[..3]), None);
    }

    #[test]
    fn ok_alerts_and_non_tls_answers() {
        assert_eq!(
            parse_answer(&[0x15, 3, 3, 0, 2, 2, 70]),
            Some(ProbeAnswer::Alert(70))
        );
        assert_eq!(parse_answer(b"HTTP/1.1 400 Bad"), Some(ProbeAnswer::NotTls));
        assert_eq!(parse_answer(b"SSH-2.0-OpenSSH"), Some(ProbeAnswer::NotTls));
        // A handshake record too short for a ServerHello is not TLS.
        assert_eq!(
            parse_answer(&[0x16, 3, 3, 0, 3, 2, 0, 0]),
            Some(ProbeAnswer::NotTls)
        );
    }

    #[test]
    fn ok_client_hello_is_well_formed() {
        let hello = client_hello(Some("a.test"));
        assert_eq!(&hello[..3], &[0x16, 3, 1]);
        let record_length = usize::from(u16::from_be_bytes([hello[3], hello[4]]));
        assert_eq!(record_length, hello.len() - 5);
        assert_eq!(hello[5], 1);
        let handshake_length =
            usize::from(hello[6]) << 16 | usize::from(hello[7]) << 8 | usize::from(hello[8]);
        assert_eq!(handshake_length, hello.len() - 9);
        assert!(hello.windows(6).any(|window| window == b"a.test"));
    }

    #[test]
    fn ok_suite_table_agrees_with_rustls() {
        for (code, name, listed) in SUITES {
            assert_eq!(rustls_has(*code), *listed, "{name}");
        }
        assert_eq!(suite_name(0xc009), "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA");
        assert_eq!(version_name(0x0302), "TLS 1.1");
        assert!(!rustls_tls12_suites().is_empty());
    }
}
