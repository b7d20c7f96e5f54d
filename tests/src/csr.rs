//! Certificate signing requests as clients make them (rcgen; `openssl req`
//! for RSA), and PEM/DER conversion.
//!
//! Invariant: a CSR names exactly the SANs it is given; nothing is added, so
//! a refusal test knows what the server saw.

use std::process::Command;

/// Makes a CSR for `key_type` (`ec-p256`, `ec-p384`, `ed25519`, `rsa-<bits>`)
/// naming exactly the given SANs; returns `(csr_pem, key_pem)`.
pub fn make_csr(key_type: &str, dns: &[&str], ip: &[&str], uri: &[&str]) -> (String, String) {
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans(dns, ip, uri);
    make_csr_from(key_type, params)
}

/// The SAN list for rcgen; panics on names rcgen cannot encode.
pub fn sans(dns: &[&str], ip: &[&str], uri: &[&str]) -> Vec<rcgen::SanType> {
    let mut names = Vec::new();
    for name in dns {
        let ia5 = rcgen::string::Ia5String::try_from(*name)
            .unwrap_or_else(|error| panic!("rcgen cannot encode dNSName {name:?}: {error}"));
        names.push(rcgen::SanType::DnsName(ia5));
    }
    for address in ip {
        names.push(rcgen::SanType::IpAddress(
            address.parse().expect("a valid IP address"),
        ));
    }
    for name in uri {
        let ia5 = rcgen::string::Ia5String::try_from(*name)
            .unwrap_or_else(|error| panic!("rcgen cannot encode URI {name:?}: {error}"));
        names.push(rcgen::SanType::URI(ia5));
    }
    names
}

/// Makes a CSR from explicit rcgen parameters (SANs, `is_ca`, …).
/// RSA keys come from `openssl req`, which then honours only the SANs.
pub fn make_csr_from(key_type: &str, params: rcgen::CertificateParams) -> (String, String) {
    let algorithm = match key_type {
        "ec-p256" => &rcgen::PKCS_ECDSA_P256_SHA256,
        "ec-p384" => &rcgen::PKCS_ECDSA_P384_SHA384,
        "ed25519" => &rcgen::PKCS_ED25519,
        other => {
            let bits = other
                .strip_prefix("rsa-")
                .and_then(|bits| bits.parse::<u32>().ok())
                .unwrap_or_else(|| panic!("unknown key type {other:?}"));
            return openssl_rsa_csr(bits, &params.subject_alt_names);
        }
    };
    let key = rcgen::KeyPair::generate_for(algorithm).expect("generate a key");
    let csr = params
        .serialize_request(&key)
        .expect("serialise the CSR")
        .pem()
        .expect("PEM-encode the CSR");
    (csr, key.serialize_pem())
}

/// `openssl req -new -newkey rsa:<bits>` with the given SANs.
pub fn openssl_rsa_csr(bits: u32, names: &[rcgen::SanType]) -> (String, String) {
    let san: Vec<String> = names
        .iter()
        .map(|name| match name {
            rcgen::SanType::DnsName(dns) => format!("DNS:{}", dns.as_str()),
            rcgen::SanType::IpAddress(ip) => format!("IP:{ip}"),
            rcgen::SanType::URI(uri) => format!("URI:{}", uri.as_str()),
            other => panic!("openssl_rsa_csr cannot express {other:?}"),
        })
        .collect();
    let dir = tempfile::tempdir().expect("temporary directory");
    let key_path = dir.path().join("key.pem");
    let csr_path = dir.path().join("csr.pem");
    let mut command = Command::new("openssl");
    command
        .args(["req", "-new", "-newkey", &format!("rsa:{bits}"), "-nodes"])
        .arg("-keyout")
        .arg(&key_path)
        .arg("-out")
        .arg(&csr_path)
        .args(["-subj", "/CN=certmint-e2e"]);
    if !san.is_empty() {
        command.args(["-addext", &format!("subjectAltName={}", san.join(","))]);
    }
    let output = command.output().expect("run openssl req");
    assert!(
        output.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        std::fs::read_to_string(&csr_path).expect("read the CSR"),
        std::fs::read_to_string(&key_path).expect("read the key"),
    )
}

/// The DER inside a PEM block.
#[track_caller]
pub fn pem_to_der(pem: &str) -> Vec<u8> {
    der::pem::decode_vec(pem.as_bytes())
        .unwrap_or_else(|error| panic!("not PEM ({error}): {pem}"))
        .1
}

/// PEM-encodes `der` with `label`.
pub fn der_to_pem(label: &str, der: &[u8]) -> String {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der).expect("PEM-encode")
}
