//! Enrollment happy paths, on SQLite and PostgreSQL: what a workload gets is
//! a leaf that independent verifiers (rustls-webpki, OpenSSL, a real mTLS
//! handshake) accept, that carries exactly what the policy and request said,
//! and that is recorded and audited; the CA keys stay inside the token.

use std::collections::BTreeSet;
use std::net::IpAddr;

use certmint::wire::{CertificateBundle, CertificateStatus, Directory};
use certmint_e2e::{
    backend_tests, identity, make_csr, mtls_handshake, parse_certificate, pem_chain, pem_to_der,
    policy_json, verify_with_openssl, verify_with_webpki, TestServer, EKU_CLIENT_AUTH,
    EKU_SERVER_AUTH,
};
use der::asn1::ObjectIdentifier;
use der::{Decode as _, Encode as _};
use serde_json::json;
use time::OffsetDateTime;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAltName};

const ID_KP_CLIENT_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");
const ID_KP_SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");

/// The names a certificate carries, by kind.
#[derive(Debug, Default, PartialEq, Eq)]
struct Names {
    dns: BTreeSet<String>,
    ip: BTreeSet<IpAddr>,
    uri: BTreeSet<String>,
}

fn names(dns: &[&str], ip: &[&str], uri: &[&str]) -> Names {
    Names {
        dns: dns.iter().map(|name| (*name).to_owned()).collect(),
        ip: ip.iter().map(|ip| ip.parse().expect("an IP")).collect(),
        uri: uri.iter().map(|name| (*name).to_owned()).collect(),
    }
}

fn san_names(certificate: &x509_cert::Certificate) -> Names {
    let (_, san) = certificate
        .tbs_certificate()
        .get_extension::<SubjectAltName>()
        .expect("SAN decodes")
        .expect("leaf has a subjectAltName");
    let mut names = Names::default();
    for name in san.0 {
        match name {
            GeneralName::DnsName(dns) => {
                names.dns.insert(dns.to_string());
            }
            GeneralName::UniformResourceIdentifier(uri) => {
                names.uri.insert(uri.to_string());
            }
            GeneralName::IpAddress(octets) => {
                let bytes = octets.as_bytes();
                let ip = match bytes.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes")),
                    16 => IpAddr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes")),
                    n => panic!("iPAddress SAN of {n} bytes"),
                };
                names.ip.insert(ip);
            }
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    names
}

/// Checks a leaf against what RFC 5280 and the design require of every
/// certificate certmint issues; returns the parsed leaf.
fn check_leaf_profile(
    bundle: &CertificateBundle,
    csr_pem: &str,
    expected_eku: &[ObjectIdentifier],
    expected_names: &Names,
) -> x509_cert::Certificate {
    let leaf = parse_certificate(&pem_to_der(&bundle.certificate_pem));
    let tbs = leaf.tbs_certificate();

    let (critical, constraints) = tbs
        .get_extension::<BasicConstraints>()
        .expect("basicConstraints decodes")
        .expect("leaf has basicConstraints");
    assert!(critical, "basicConstraints must be critical");
    assert!(!constraints.ca, "leaf must be CA:FALSE");
    assert_eq!(constraints.path_len_constraint, None);

    let (critical, key_usage) = tbs
        .get_extension::<KeyUsage>()
        .expect("keyUsage decodes")
        .expect("leaf has keyUsage");
    assert!(critical, "keyUsage must be critical");
    assert!(key_usage.digital_signature(), "{key_usage:?}");
    assert!(!key_usage.key_cert_sign(), "leaf may not sign certificates");
    assert!(!key_usage.crl_sign(), "leaf may not sign CRLs");

    let (_, eku) = tbs
        .get_extension::<ExtendedKeyUsage>()
        .expect("EKU decodes")
        .expect("leaf has extendedKeyUsage");
    let found: BTreeSet<ObjectIdentifier> = eku.0.into_iter().collect();
    let wanted: BTreeSet<ObjectIdentifier> = expected_eku.iter().copied().collect();
    assert_eq!(found, wanted, "EKUs must be exactly the policy's");

    assert_eq!(
        &san_names(&leaf),
        expected_names,
        "SANs must be as requested"
    );

    // Same key as the CSR: the certificate binds the requester's key.
    let request = x509_cert::request::CertReq::from_der(&pem_to_der(csr_pem)).expect("CSR parses");
    assert_eq!(
        tbs.subject_public_key_info().to_der().expect("encode SPKI"),
        request.info.public_key.to_der().expect("encode SPKI"),
        "the leaf must certify the CSR's key"
    );

    // The bundle's times are the certificate's.
    let not_before = tbs.validity().not_before.to_unix_duration().as_secs();
    let not_after = tbs.validity().not_after.to_unix_duration().as_secs();
    assert_eq!(
        i64::try_from(not_before).expect("time"),
        bundle.not_before.unix_timestamp()
    );
    assert_eq!(
        i64::try_from(not_after).expect("time"),
        bundle.not_after.unix_timestamp()
    );

    // Serial: positive, at most 20 octets, the bundle's (lower-case hex).
    let serial = tbs.serial_number().as_bytes();
    assert!(serial.len() <= 20 && !serial.is_empty());
    assert_eq!(serial[0] & 0x80, 0, "serial must be positive");
    let serial_hex = hex::encode(serial);
    assert_eq!(
        serial_hex.trim_start_matches('0'),
        bundle.serial.trim_start_matches('0'),
        "bundle serial must be the certificate's"
    );
    leaf
}

/// Verifies the chain with rustls-webpki and `openssl verify`.
fn check_chain(server: &TestServer, bundle: &CertificateBundle, eku: &'static [u8]) {
    let chain = pem_chain(&bundle.chain_pem);
    assert_eq!(chain.len(), 2, "chain_pem must be issuing then root");
    let root = pem_to_der(server.root_pem());
    assert_eq!(chain[1], root, "the chain must end in root.pem");
    let leaf = pem_to_der(&bundle.certificate_pem);
    verify_with_webpki(&leaf, &chain[..1], &root, eku)
        .unwrap_or_else(|error| panic!("rustls-webpki refuses the leaf: {error:?}"));
    let issuing_pem = certmint_e2e::der_to_pem("CERTIFICATE", &chain[0]);
    let purpose = if eku == EKU_CLIENT_AUTH {
        "sslclient"
    } else {
        "sslserver"
    };
    verify_with_openssl(
        &bundle.certificate_pem,
        &issuing_pem,
        server.root_pem(),
        Some(purpose),
    )
    .unwrap_or_else(|output| panic!("openssl verify refuses the leaf:\n{output}"));
}

backend_tests! {
    fn ok_names_go_into_the_certificate_in_the_form_the_policy_approved(server: &TestServer) {
        // Scheme and host of a URI, like DNS names, compare case-insensitively;
        // the certificate must carry the checked lower-case form (an upper-case
        // SPIFFE ID is not a valid SPIFFE ID), and case variants are one name.
        let policy = server.unique("canonical");
        server.create_policy(&policy_json(
            &policy,
            &["*.payments.internal"],
            &[],
            &["spiffe://prod.example.org/ns/payments/sa/*"],
        ));
        let lower_uri = "spiffe://prod.example.org/ns/payments/sa/api";
        let minted = server.mint_token(
            &policy,
            &identity(&["api.payments.internal"], &[], &[lower_uri]),
            1,
        );
        let (csr, _key) = make_csr(
            "ec-p256",
            &["API.Payments.Internal"],
            &[],
            &["SPIFFE://Prod.Example.ORG/ns/payments/sa/api", lower_uri],
        );
        let response = server.enroll(&csr, &minted.token);
        response.assert_status(201);
        let bundle: CertificateBundle = response.json();
        let leaf = parse_certificate(&pem_to_der(&bundle.certificate_pem));
        assert_eq!(
            san_names(&leaf),
            names(&["api.payments.internal"], &[], &[lower_uri])
        );
        assert_eq!(server.certificate(&bundle.serial).identity.uri, [lower_uri]);
    }

    fn ok_enroll_ec_p256_issues_a_checked_recorded_audited_leaf(server: &TestServer) {
        let policy = server.unique("payments");
        let dns = ["api.payments.internal"];
        let ip = ["10.20.1.5"];
        let uri = ["spiffe://prod.example.org/ns/payments/sa/api"];
        let created = server.create_policy(&policy_json(
            &policy,
            &["*.payments.internal"],
            &["10.20.0.0/16"],
            &["spiffe://prod.example.org/ns/payments/sa/*"],
        ));
        assert_eq!(created["version"], 1);
        let minted = server.mint_token(&policy, &identity(&dns, &ip, &uri), 1);
        assert_eq!(minted.max_uses, 1);
        assert_eq!(minted.policy, policy);

        let (csr, _key) = make_csr("ec-p256", &dns, &ip, &uri);
        let before = OffsetDateTime::now_utc();
        let response = server.enroll(&csr, &minted.token);
        response.assert_status(201);
        let bundle: CertificateBundle = response.json();
        assert_eq!(bundle.policy, policy);
        assert_eq!(bundle.policy_version, 1);
        assert!(
            bundle.serial.len() <= 40
                && bundle
                    .serial
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "serial must be lower-case hex: {}",
            bundle.serial
        );
        let now = OffsetDateTime::now_utc();
        assert!(bundle.not_before <= before, "notBefore must be backdated");
        assert!(
            before - bundle.not_before <= time::Duration::minutes(10),
            "notBefore backdated by more than 10 minutes: {}",
            bundle.not_before
        );
        let lifetime = bundle.not_after - bundle.not_before;
        assert!(
            lifetime >= time::Duration::hours(24)
                && lifetime <= time::Duration::hours(24) + time::Duration::minutes(10),
            "policy default ttl is 24h (plus backdating), got {lifetime}"
        );
        assert!(bundle.not_after > now + time::Duration::hours(23));
        assert!(
            bundle.renew_after > bundle.not_before && bundle.renew_after < bundle.not_after,
            "renew_after {} must lie inside the validity",
            bundle.renew_after
        );

        check_leaf_profile(&bundle, &csr, &[ID_KP_CLIENT_AUTH], &names(&dns, &ip, &uri));
        check_chain(server, &bundle, EKU_CLIENT_AUTH);
        // The policy grants client_auth only: a verifier asking for
        // server_auth must refuse (proves the EKU check has teeth).
        let chain = pem_chain(&bundle.chain_pem);
        assert!(
            verify_with_webpki(
                &pem_to_der(&bundle.certificate_pem),
                &chain[..1],
                &chain[1],
                EKU_SERVER_AUTH
            )
            .is_err(),
            "a client_auth-only leaf must not verify for server_auth"
        );

        // The chain endpoint serves the same chain.
        let served = server.get("/v1/ca/chain.pem");
        served.assert_status(200);
        assert_eq!(pem_chain(&served.text), chain);

        // Recorded, with its token and policy version.
        let info = server.certificate(&bundle.serial);
        assert_eq!(info.status, CertificateStatus::Issued);
        assert_eq!(info.policy, policy);
        assert_eq!(info.policy_version, 1);
        assert_eq!(info.token_id.as_deref(), Some(minted.id.as_str()));
        assert_eq!(info.key_type, "ec-p256");
        assert_eq!(info.identity.dns, dns);
        assert_eq!(info.identity.uri, uri);
        assert_eq!(info.identity.ip.len(), 1);
        assert_eq!(info.identity.ip[0].parse::<IpAddr>().ok(), ip[0].parse().ok());
        if let Some(pem) = &info.certificate_pem {
            assert_eq!(pem_to_der(pem), pem_to_der(&bundle.certificate_pem));
        }
        let listed = server.certificates(&format!("policy={policy}&status=issued"));
        assert_eq!(
            listed.iter().map(|c| c.serial.as_str()).collect::<Vec<_>>(),
            vec![bundle.serial.as_str()]
        );

        // Audited, in order, on an intact hash chain.
        let events = server.audit_events();
        for pair in events.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq + 1, "audit seq must be contiguous");
            assert_eq!(pair[1].prev_hash, pair[0].hash, "audit hash chain broken at {}", pair[1].seq);
        }
        let position = |kind: &str, subject: &str| {
            events
                .iter()
                .position(|event| event.kind == kind && event.subject == subject)
                .unwrap_or_else(|| {
                    panic!(
                        "no audit event {kind} for {subject}; events: {:?}",
                        events.iter().map(|e| (&e.kind, &e.subject)).collect::<Vec<_>>()
                    )
                })
        };
        let created_at = position("policy.created", &policy);
        let minted_at = position("token.minted", &minted.id);
        let signing_at = position("certificate.signing", &bundle.serial);
        let issued_at = position("certificate.issued", &bundle.serial);
        assert!(created_at < minted_at && minted_at < signing_at && signing_at < issued_at);
        for event in &events {
            assert!(
                !event.data.to_string().contains(&minted.token),
                "audit event {} contains the bootstrap JWT",
                event.seq
            );
        }
    }

    fn ok_every_enrollment_uses_the_current_policy_version(server: &TestServer) {
        // The server caches compiled policies; every change must still apply
        // to the very next enrollment, whichever way it cuts.
        let policy = server.unique("versions");
        let mut spec = policy_json(&policy, &["*.payments.internal"], &[], &[]);
        server.create_policy(&spec);
        let name = ["api.payments.internal"];
        let minted = server.mint_token(&policy, &identity(&name, &[], &[]), 5);
        let enroll = |key_type: &str| {
            let (csr, _) = make_csr(key_type, &name, &[], &[]);
            server.enroll(&csr, &minted.token)
        };
        let first: CertificateBundle = enroll("ec-p256").assert_status(201).json();
        assert_eq!(first.policy_version, 1);
        enroll("ec-p384").assert_problem(403, "policy.key_type_not_allowed");

        // Broadened: the cached version would refuse, the current allows.
        spec["key_types"] = json!(["ec-p256", "ec-p384"]);
        server
            .admin_put(&format!("/v1/admin/policies/{policy}"), &spec)
            .assert_status(200);
        let broadened: CertificateBundle = enroll("ec-p384").assert_status(201).json();
        assert_eq!(broadened.policy_version, 2);
        assert_eq!(server.certificate(&broadened.serial).policy_version, 2);

        // Disabled: the cached version would allow, the current refuses.
        server
            .admin_delete(&format!("/v1/admin/policies/{policy}"))
            .assert_status(200);
        enroll("ec-p256").assert_problem(403, "policy.disabled");
        let token = server.admin_get(&format!("/v1/admin/tokens/{}", minted.id));
        assert_eq!(token.body["uses"], 2, "refusals consume no use: {}", token.text);
        let recorded = server.certificates(&format!("policy={policy}"));
        assert_eq!(recorded.len(), 2, "{recorded:?}");
        assert!(recorded
            .iter()
            .all(|info| info.status == CertificateStatus::Issued));
    }

    fn ok_enroll_other_key_types(server: &TestServer) {
        let policy = server.unique("keytypes");
        let mut spec = policy_json(&policy, &["*.keys.internal"], &[], &[]);
        spec["key_types"] = json!(["ec-p256", "ec-p384", "ed25519", "rsa-3072"]);
        spec["extended_key_usage"] = json!(["client_auth", "server_auth"]);
        server.create_policy(&spec);
        for key_type in ["ec-p384", "ed25519", "rsa-3072"] {
            let name = format!("{key_type}.keys.internal");
            let minted = server.mint_token(&policy, &identity(&[&name], &[], &[]), 1);
            let (csr, _key) = make_csr(key_type, &[&name], &[], &[]);
            let response = server.enroll(&csr, &minted.token);
            response.assert_status(201);
            let bundle: CertificateBundle = response.json();
            check_leaf_profile(
                &bundle,
                &csr,
                &[ID_KP_CLIENT_AUTH, ID_KP_SERVER_AUTH],
                &names(&[&name], &[], &[]),
            );
            check_chain(server, &bundle, EKU_CLIENT_AUTH);
            check_chain(server, &bundle, EKU_SERVER_AUTH);
            let info = server.certificate(&bundle.serial);
            assert_eq!(info.key_type, key_type);
            assert_eq!(info.status, CertificateStatus::Issued);
        }
    }

    fn ok_issued_certificates_complete_an_mtls_handshake(server: &TestServer) {
        let policy = server.unique("mtls");
        let mut spec = policy_json(&policy, &["*.mesh.internal"], &[], &[]);
        spec["extended_key_usage"] = json!(["client_auth", "server_auth"]);
        server.create_policy(&spec);
        let issue = |name: &str| {
            let minted = server.mint_token(&policy, &identity(&[name], &[], &[]), 1);
            let (csr, key) = make_csr("ec-p256", &[name], &[], &[]);
            let response = server.enroll(&csr, &minted.token);
            response.assert_status(201);
            let bundle: CertificateBundle = response.json();
            let mut chain = vec![pem_to_der(&bundle.certificate_pem)];
            chain.push(pem_chain(&bundle.chain_pem)[0].clone());
            (chain, key)
        };
        let (server_chain, server_key) = issue("api.mesh.internal");
        let (client_chain, client_key) = issue("worker.mesh.internal");
        let root = pem_to_der(server.root_pem());
        mtls_handshake(
            &root,
            "api.mesh.internal",
            &server_chain,
            &server_key,
            &client_chain,
            &client_key,
        )
        .unwrap_or_else(|error| panic!("mTLS handshake failed: {error}"));
        // The name check has teeth: the same certificate for another name fails.
        assert!(
            mtls_handshake(
                &root,
                "other.mesh.internal",
                &server_chain,
                &server_key,
                &client_chain,
                &client_key,
            )
            .is_err(),
            "a handshake for a name the server certificate lacks must fail"
        );
    }

    fn ok_ca_private_keys_are_sensitive_and_never_extractable(server: &TestServer) {
        let listing = server.list_private_keys();
        assert_eq!(
            certmint_e2e::private_key_labels(&listing),
            ["certmint-issuing", "certmint-root", certmint_e2e::TOKEN_SIGNING_KEY_LABEL],
            "the token must hold exactly the root, issuing and token-signing keys:\n{listing}"
        );
        let objects: Vec<&str> = listing
            .split("Private Key Object")
            .skip(1)
            .collect();
        for object in objects {
            let access = object
                .lines()
                .find_map(|line| line.trim().strip_prefix("Access:"))
                .unwrap_or_else(|| panic!("no Access line:\n{object}"));
            let flags: Vec<&str> = access.split(',').map(str::trim).collect();
            assert!(flags.contains(&"sensitive"), "not sensitive:\n{object}");
            assert!(flags.contains(&"never extractable"), "extractable once:\n{object}");
            assert!(
                flags
                    .iter()
                    .all(|flag| !flag.contains("extractable") || flag.starts_with("never")),
                "key is extractable:\n{object}"
            );
        }
    }

    fn ok_init_twice_keeps_the_ca(server: &TestServer) {
        let root_before = std::fs::read(server.dir().join("root.pem")).expect("root.pem");
        let keys_before = server.list_private_keys();
        let output = server.run_init_again();
        assert_eq!(
            certmint_e2e::parse_root_fingerprint(&output).as_deref(),
            Some(server.root_fingerprint()),
            "second init must report the same root:\n{output}"
        );
        assert_eq!(
            std::fs::read(server.dir().join("root.pem")).expect("root.pem"),
            root_before,
            "second init must not change root.pem"
        );
        assert_eq!(
            server.list_private_keys().matches("Private Key Object").count(),
            keys_before.matches("Private Key Object").count(),
            "second init must not create keys"
        );
        let directory: Directory = server.get("/v1/directory").json();
        assert_eq!(directory.ca.root_fingerprint, server.root_fingerprint());
        // The fingerprint is the SHA-256 of root.pem's DER.
        let digest = ring::digest::digest(&ring::digest::SHA256, &pem_to_der(server.root_pem()));
        assert_eq!(
            server.root_fingerprint(),
            format!("sha256:{}", hex::encode(digest.as_ref()))
        );
    }

    fn ok_public_endpoints_answer(server: &TestServer) {
        let directory = server.get("/v1/directory");
        directory.assert_status(200);
        let directory: Directory = directory.json();
        assert_eq!(directory.api_version, "v1");
        assert_eq!(
            directory.endpoints.get("enroll").map(String::as_str),
            Some("/v1/enroll")
        );
        assert_eq!(directory.ca.issuer_key_type, "ec-p256");
        server.get("/healthz").assert_status(200);
        server.get("/readyz").assert_status(200);
        let metrics = server.get("/metrics");
        metrics.assert_status(200);
        assert!(metrics.text.contains("# TYPE"), "not Prometheus text:\n{}", metrics.text);
        let openapi = server.get("/openapi.json");
        openapi.assert_status(200);
        assert!(openapi.body.get("paths").is_some(), "openapi.json has no paths");
    }
}
