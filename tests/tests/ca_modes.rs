//! CA set-up modes: every CA key type `init` offers, and the external-root
//! mode where `init` creates only the issuing key and its CSR, an offline
//! root (played by `openssl`) signs it, and `ca import-chain` installs the
//! chain. Each test starts its own server, because the CA is fixed at `init`.
//!
//! The key-type tests run on SQLite only: the database plays no part in
//! which key the token generates or how it signs, and each of them starts a
//! server of its own on a 2-core machine. The external-root tests run on
//! both back ends, because `init` and `ca import-chain` write the pending
//! and the completed CA state to the database.

use certmint::wire::{CertificateBundle, Directory};
use certmint_e2e::{
    backend_tests, der_to_pem, identity, make_csr, parse_certificate, pem_chain, pem_to_der,
    policy_json, private_key_labels, verify_with_openssl, verify_with_webpki, Auth, Backend,
    OfflineRoot, PendingCa, RequestBody, ServerOptions, TestServer, Token, EKU_CLIENT_AUTH,
    TOKEN_SIGNING_KEY_LABEL,
};
use der::asn1::ObjectIdentifier;
use der::{Decode as _, Encode as _};
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, SubjectKeyIdentifier};

const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const ID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// What a CA of one key type must produce.
struct Expected {
    /// `init --key-type` and the directory's `issuer_key_type`.
    key_type: &'static str,
    /// The signatureAlgorithm of everything the CA signs.
    signature: ObjectIdentifier,
    /// Whether that AlgorithmIdentifier carries parameters: NULL for RSA
    /// (RFC 4055), absent for ECDSA (RFC 5758) and Ed25519 (RFC 8410).
    null_parameters: bool,
    /// What `openssl x509 -text` says about the CA's public key.
    openssl_key: &'static str,
}

/// Starts a SQLite server whose CA has `expected.key_type`, enrolls an
/// ec-p256 CSR and checks the CA's key, the signature algorithm of the leaf
/// and of the issuing certificate, and the chain with both verifiers.
fn check_ca_key_type(name: &str, expected: &Expected) {
    let Some(server) = TestServer::builder(Backend::Sqlite)
        .key_type(expected.key_type)
        .start()
    else {
        return;
    };
    certmint_e2e::run_test_on(Some(&server), name, |server| {
        let directory: Directory = server.get("/v1/directory").json();
        assert_eq!(directory.ca.issuer_key_type, expected.key_type);

        let bundle = enroll_one(server, "keytype");
        let leaf = parse_certificate(&pem_to_der(&bundle.certificate_pem));
        let chain = pem_chain(&bundle.chain_pem);
        assert_eq!(chain.len(), 2, "chain_pem must be issuing then root");
        let issuing = parse_certificate(&chain[0]);
        let root = parse_certificate(&chain[1]);
        for (what, certificate) in [("leaf", &leaf), ("issuing", &issuing), ("root", &root)] {
            let algorithm = certificate.signature_algorithm();
            assert_eq!(
                algorithm.oid, expected.signature,
                "{}: the {what} certificate's signatureAlgorithm",
                expected.key_type
            );
            assert_eq!(
                algorithm.oid,
                certificate.tbs_certificate().signature().oid,
                "{what}: outer and TBS signature algorithms differ"
            );
            let parameters = algorithm
                .parameters
                .as_ref()
                .map(|any| any.to_der().expect("encode parameters"));
            let wanted = expected.null_parameters.then(|| vec![0x05, 0x00]);
            assert_eq!(
                parameters, wanted,
                "{what}: AlgorithmIdentifier parameters for {}",
                expected.key_type
            );
        }
        // The CA keys really are of that type and size.
        for (what, der) in [("issuing", &chain[0]), ("root", &chain[1])] {
            let text = openssl_text(&der_to_pem("CERTIFICATE", der));
            assert!(
                text.contains(expected.openssl_key),
                "{what} key is not {}:\n{text}",
                expected.openssl_key
            );
        }
        assert_eq!(pem_to_der(server.root_pem()), chain[1]);

        verify_with_webpki(
            &pem_to_der(&bundle.certificate_pem),
            &chain[..1],
            &chain[1],
            EKU_CLIENT_AUTH,
        )
        .unwrap_or_else(|error| panic!("rustls-webpki refuses the leaf: {error:?}"));
        verify_with_openssl(
            &bundle.certificate_pem,
            &der_to_pem("CERTIFICATE", &chain[0]),
            server.root_pem(),
            Some("sslclient"),
        )
        .unwrap_or_else(|output| panic!("openssl verify refuses the leaf:\n{output}"));
    });
}

/// Creates a policy for `*.<prefix>.internal`, mints a token and enrolls an
/// ec-p256 CSR; returns the bundle.
#[track_caller]
fn enroll_one(server: &TestServer, prefix: &str) -> CertificateBundle {
    let policy = server.unique(prefix);
    let domain = format!("{policy}.internal");
    server.create_policy(&policy_json(&policy, &[&format!("*.{domain}")], &[], &[]));
    let name = format!("api.{domain}");
    let minted = server.mint_token(&policy, &identity(&[&name], &[], &[]), 1);
    let (csr, _key) = make_csr("ec-p256", &[&name], &[], &[]);
    let response = server.enroll(&csr, &minted.token);
    response.assert_status(201);
    response.json()
}

/// `openssl x509 -noout -text`.
fn openssl_text(certificate_pem: &str) -> String {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("certificate.pem");
    std::fs::write(&path, certificate_pem).expect("write the certificate");
    let output = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&path)
        .output()
        .expect("run openssl x509");
    assert!(output.status.success(), "openssl x509 -text failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The DER SubjectPublicKeyInfo a CSR carries.
#[track_caller]
fn csr_public_key(csr_pem: &str) -> Vec<u8> {
    x509_cert::request::CertReq::from_der(&pem_to_der(csr_pem))
        .expect("the CSR parses")
        .info
        .public_key
        .to_der()
        .expect("encode the SPKI")
}

/// The DER SubjectPublicKeyInfo a certificate carries.
#[track_caller]
fn certificate_public_key(der: &[u8]) -> Vec<u8> {
    parse_certificate(der)
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .expect("encode the SPKI")
}

/// The keyIdentifier of a certificate's authorityKeyIdentifier, hex.
#[track_caller]
fn authority_key_id(der: &[u8]) -> Option<String> {
    let certificate = parse_certificate(der);
    let (_, aki) = certificate
        .tbs_certificate()
        .get_extension::<AuthorityKeyIdentifier>()
        .expect("authorityKeyIdentifier decodes")?;
    aki.key_identifier.map(|id| hex::encode(id.as_bytes()))
}

/// A certificate's subjectKeyIdentifier, hex.
#[track_caller]
fn subject_key_id(der: &[u8]) -> String {
    let certificate = parse_certificate(der);
    let (_, ski) = certificate
        .tbs_certificate()
        .get_extension::<SubjectKeyIdentifier>()
        .expect("subjectKeyIdentifier decodes")
        .expect("the certificate has a subjectKeyIdentifier");
    hex::encode(ski.0.as_bytes())
}

fn sha256_fingerprint(der: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
    )
}

/// What external-root `init` must have left: one key on the token and no
/// root.pem beside the config.
#[track_caller]
fn assert_pending(pending: &PendingCa) {
    assert!(
        !pending.dir().join("root.pem").exists(),
        "a pending CA must not have a root.pem"
    );
    assert_eq!(
        private_key_labels(&pending.list_private_keys()),
        ISSUING_AND_TOKEN_KEYS,
        "external-root mode creates only the issuing key (and the token-signing key)"
    );
}

/// The private keys on the token of an external-root CA.
const ISSUING_AND_TOKEN_KEYS: [&str; 2] = ["certmint-issuing", TOKEN_SIGNING_KEY_LABEL];

#[test]
fn ok_ca_key_type_ec_p384_signs_with_ecdsa_sha384() {
    check_ca_key_type(
        "ok_ca_key_type_ec_p384_signs_with_ecdsa_sha384",
        &Expected {
            key_type: "ec-p384",
            signature: ECDSA_WITH_SHA384,
            null_parameters: false,
            openssl_key: "Public-Key: (384 bit)",
        },
    );
}

#[test]
fn ok_ca_key_type_rsa_3072_signs_with_sha256_rsa() {
    check_ca_key_type(
        "ok_ca_key_type_rsa_3072_signs_with_sha256_rsa",
        &Expected {
            key_type: "rsa-3072",
            signature: SHA256_WITH_RSA,
            null_parameters: true,
            openssl_key: "Public-Key: (3072 bit)",
        },
    );
}

/// Kept: SoftHSM2 generates the two 4096-bit keys fast enough (measured on
/// the shared 2-core machine: the whole test, `init` to verification, in
/// 2.6 s, against 1.7 s for rsa-3072 and 0.9 s for ec-p384).
#[test]
fn ok_ca_key_type_rsa_4096_signs_with_sha256_rsa() {
    check_ca_key_type(
        "ok_ca_key_type_rsa_4096_signs_with_sha256_rsa",
        &Expected {
            key_type: "rsa-4096",
            signature: SHA256_WITH_RSA,
            null_parameters: true,
            openssl_key: "Public-Key: (4096 bit)",
        },
    );
}

#[test]
fn ok_ca_key_type_ed25519_signs_with_ed25519() {
    check_ca_key_type(
        "ok_ca_key_type_ed25519_signs_with_ed25519",
        &Expected {
            key_type: "ed25519",
            signature: ID_ED25519,
            null_parameters: false,
            openssl_key: "ED25519 Public-Key",
        },
    );
}

#[test]
fn fail_init_refuses_rsa_2048_for_ca_keys() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = dir.path().join("certmint.toml");
    let output = std::process::Command::new(certmint_e2e::server_binary())
        .arg("init")
        .arg("--config")
        .arg(&config)
        .args(["--key-type", "rsa-2048"])
        .output()
        .expect("run certmint-server init");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "a usage error:\n{stderr}");
    assert!(
        stderr.contains("\"rsa-2048\" is not a CA key type; expected one of ec-p256, ec-p384, rsa-3072, rsa-4096, ed25519"),
        "the error must list the CA key types:\n{stderr}"
    );
    assert!(
        !config.exists(),
        "nothing is written for a refused command line"
    );
}

/// hsm-sim faults that let `init` generate its keys and then fail the
/// first signature: the set-up dies between key generation and recording
/// the CA, which used to leave labels taken that every rerun refused.
const FAIL_EVERY_SIGNATURE: &[&str] = &["--failure-rate", "1", "--fail-function", "C_Sign"];

/// Asserts the kept output of the interrupted `init` reports the HSM.
fn assert_interrupted_by_the_hsm(dir: &std::path::Path) {
    let interrupted = std::fs::read_to_string(dir.join("init-interrupted.log"))
        .expect("read init-interrupted.log");
    assert!(
        interrupted.contains("C_Sign"),
        "the interrupted init must name the failed PKCS#11 call:\n{interrupted}"
    );
}

#[test]
fn fail_init_never_replaces_another_file_at_the_csr_path() {
    let Some(pending) = TestServer::builder(Backend::Sqlite)
        .external_root(true)
        .init_external_root()
    else {
        return;
    };
    let precious = pending.dir().join("precious.txt");
    std::fs::write(&precious, "not a CSR").expect("write a file in the way");
    let output = pending.init_again_writing_to(&precious);
    assert!(output.failed(), "init replaced a file:\n{}", output.text);
    assert!(
        output.text.contains("does not hold this CSR"),
        "the error must say why:\n{}",
        output.text
    );
    assert_eq!(
        std::fs::read_to_string(&precious).expect("read it back"),
        "not a CSR"
    );
    // The path the first init wrote already holds this CSR: a rerun
    // confirms it.
    let rerun = pending.init_again_writing_to(&pending.dir().join("issuing.csr"));
    assert!(rerun.success(), "rerun failed:\n{}", rerun.text);
}

backend_tests! {
    fn ok_inits_started_together_make_one_ca(backend: Backend) {
        // Replicas that each run init at start (an init container per pod)
        // against one database and token: they take turns, one makes the
        // token, keys and CA, the others find them.
        let options = ServerOptions::default().concurrent_inits(3);
        let Some(server) = TestServer::builder(backend).options(options).start() else {
            return;
        };
        assert_eq!(
            private_key_labels(&server.list_private_keys()),
            ["certmint-issuing", "certmint-root", TOKEN_SIGNING_KEY_LABEL],
            "one key per label, however many inits ran"
        );
        enroll_one(&server, "together");
    }

    fn ok_init_interrupted_after_key_generation_finishes_on_rerun(backend: Backend) {
        let options = ServerOptions {
            token: Token::HsmSim,
            ..ServerOptions::default()
        }
        .interrupt_first_init(FAIL_EVERY_SIGNATURE);
        let Some(server) = TestServer::builder(backend).options(options).start() else {
            return;
        };
        assert_interrupted_by_the_hsm(server.dir());
        assert_eq!(
            private_key_labels(&server.list_private_keys()),
            ["certmint-issuing", "certmint-root", TOKEN_SIGNING_KEY_LABEL],
            "the rerun must finish with the root and issuing keys the interrupted init generated, not new ones"
        );
        let bundle = enroll_one(&server, "resumed");
        let chain = pem_chain(&bundle.chain_pem);
        verify_with_webpki(
            &pem_to_der(&bundle.certificate_pem),
            &chain[..1],
            &pem_to_der(server.root_pem()),
            EKU_CLIENT_AUTH,
        )
        .unwrap_or_else(|error| panic!("rustls-webpki refuses the leaf: {error:?}"));
        let kinds: Vec<String> = server.audit_events().into_iter().map(|event| event.kind).collect();
        assert_eq!(
            kinds.iter().filter(|kind| *kind == "ca.initialized").count(),
            1,
            "{kinds:?}"
        );
    }

    fn ok_external_root_init_interrupted_before_its_csr_finishes_on_rerun(backend: Backend) {
        let options = ServerOptions {
            token: Token::HsmSim,
            ..ServerOptions::default()
        }
        .external_root(true)
        .interrupt_first_init(FAIL_EVERY_SIGNATURE);
        let Some(pending) = TestServer::builder(backend).options(options).init_external_root()
        else {
            return;
        };
        assert_interrupted_by_the_hsm(pending.dir());
        assert_pending(&pending);
        assert_eq!(
            private_key_labels(&pending.list_private_keys()),
            ISSUING_AND_TOKEN_KEYS,
            "the rerun must sign its CSR with the issuing key the interrupted init generated"
        );
        let server = pending.complete();
        enroll_one(&server, "resumed-external");
    }

    fn fail_serve_when_clients_would_refuse_its_own_certificate(backend: Backend) {
        let Some(pending) = TestServer::builder(backend).external_root(true).init_external_root()
        else {
            return;
        };
        // A chain that imports fine (every link and constraint holds) but
        // whose intermediate only permits names under corp.example: the
        // server's own certificate for localhost and 127.0.0.1 would fail
        // every client's handshake.
        let hierarchy = OfflineRoot::with_intermediate_extensions(
            "basicConstraints=critical,CA:TRUE,pathlen:1\n\
             keyUsage=critical,keyCertSign,cRLSign\n\
             nameConstraints=critical,permitted;DNS:corp.example,permitted;IP:10.0.0.0/255.0.0.0\n",
        );
        let import = pending.import_chain(&hierarchy.chain_for(pending.csr_pem()));
        assert!(import.success(), "import-chain failed:\n{}", import.text);
        let serve = pending.try_serve();
        assert!(serve.failed(), "serve must refuse to start (status {:?}):\n{}", serve.status, serve.text);
        assert!(
            serve.text.contains("would be refused by its clients: for localhost"),
            "serve must say why:\n{}",
            serve.text
        );
        // The refused certificate was issued and recorded before the check:
        // it is revoked, not left live in the inventory.
        if let Some(statuses) = pending.postgres_query(
            "SELECT status FROM certificates WHERE policy = 'certmint-server-tls'",
        ) {
            assert_eq!(statuses, "revoked", "the refused server certificate");
        }
    }

    fn ok_external_root_through_an_intermediate_ca(backend: Backend) {
        let Some(pending) = TestServer::builder(backend).external_root(true).init_external_root()
        else {
            return;
        };
        let root = OfflineRoot::with_intermediate();
        let root_der = pem_to_der(root.certificate_pem());
        let intermediate_der = pem_to_der(root.intermediate_pem().expect("an intermediate"));
        let server = pending.complete_with(&root);
        certmint_e2e::run_test_on(Some(&server), "ok_external_root_through_an_intermediate_ca", |server| {
            let served = server.get("/v1/ca/chain.pem");
            served.assert_status(200);
            let chain = pem_chain(&served.text);
            assert_eq!(chain.len(), 3, "chain.pem must be issuing, intermediate, root:\n{}", served.text);
            assert_eq!(chain[1], intermediate_der);
            assert_eq!(chain[2], root_der);

            // Enrollment: the bundle carries the whole chain, and the leaf
            // verifies through the intermediate with both verifiers.
            let policy = server.unique("deep");
            let domain = format!("{policy}.internal");
            server.create_policy(&policy_json(&policy, &[&format!("*.{domain}")], &[], &[]));
            let name = format!("api.{domain}");
            let minted = server.mint_token(&policy, &identity(&[&name], &[], &[]), 1);
            let (csr, key_pem) = make_csr("ec-p256", &[&name], &[], &[]);
            let response = server.enroll(&csr, &minted.token);
            response.assert_status(201);
            let bundle: CertificateBundle = response.json();
            assert_eq!(pem_chain(&bundle.chain_pem), chain, "the bundle's chain must be chain.pem");
            let leaf = pem_to_der(&bundle.certificate_pem);
            verify_with_webpki(&leaf, &chain[..2], &root_der, EKU_CLIENT_AUTH)
                .unwrap_or_else(|error| panic!("rustls-webpki refuses the leaf: {error:?}"));
            let untrusted = format!(
                "{}{}",
                der_to_pem("CERTIFICATE", &chain[0]),
                der_to_pem("CERTIFICATE", &chain[1])
            );
            verify_with_openssl(&bundle.certificate_pem, &untrusted, root.certificate_pem(), Some("sslclient"))
                .unwrap_or_else(|output| panic!("openssl verify refuses the leaf:\n{output}"));

            // Renewal over mutual TLS: the server builds the client's path
            // through the intermediate whether the client sends the chain or
            // only its leaf.
            for presented in [format!("{}{}", bundle.certificate_pem, bundle.chain_pem), bundle.certificate_pem.clone()] {
                let holder = server.holder(&presented, &key_pem);
                let (renewal_csr, _) = make_csr("ec-p256", &[&name], &[], &[]);
                server
                    .request(
                        Auth::Holder(&holder),
                        "POST",
                        "/v1/renew",
                        Some(RequestBody::Json(serde_json::json!({ "csr": renewal_csr }))),
                    )
                    .assert_status(201);
            }
        });
    }

    fn ok_external_root(backend: Backend) {
        let Some(pending) = TestServer::builder(backend).external_root(true).init_external_root()
        else {
            return;
        };
        assert_pending(&pending);
        assert!(
            certmint_e2e::parse_root_fingerprint(pending.init_output()).is_none(),
            "init in external-root mode must not claim a root:\n{}",
            pending.init_output()
        );
        let csr_key = csr_public_key(pending.csr_pem());
        let root = OfflineRoot::new();
        let root_der = pem_to_der(root.certificate_pem());
        let server = pending.complete_with(&root);
        certmint_e2e::run_test_on(Some(&server), "ok_external_root", |server| {
            // import-chain wrote the offline root beside the config.
            assert_eq!(pem_to_der(server.root_pem()), root_der, "root.pem must be the offline root");
            let expected_fingerprint = sha256_fingerprint(&root_der);
            assert_eq!(server.root_fingerprint(), expected_fingerprint);
            let directory: Directory = server.get("/v1/directory").json();
            assert_eq!(directory.ca.root_fingerprint, expected_fingerprint);

            let served = server.get("/v1/ca/chain.pem");
            served.assert_status(200);
            let chain = pem_chain(&served.text);
            assert_eq!(chain.len(), 2, "chain.pem must be issuing then root:\n{}", served.text);
            assert_eq!(chain.last(), Some(&root_der), "chain.pem must end with the offline root");
            assert_eq!(
                certificate_public_key(&chain[0]),
                csr_key,
                "the issuing certificate must carry the key from the CSR"
            );
            // The offline root (P-256) signed the issuing certificate.
            assert_eq!(parse_certificate(&chain[0]).signature_algorithm().oid, ECDSA_WITH_SHA256);

            let bundle = enroll_one(server, "external");
            assert_eq!(pem_chain(&bundle.chain_pem), chain, "the bundle's chain must be chain.pem");
            let leaf = pem_to_der(&bundle.certificate_pem);
            // RFC 5280 4.2.1.1: the leaf's authority key identifier is the
            // issuing certificate's subject key identifier (which the
            // offline root's tooling chose, not certmint).
            assert_eq!(
                authority_key_id(&leaf),
                Some(subject_key_id(&chain[0])),
                "the leaf's AKI must be the issuing certificate's SKI"
            );
            verify_with_webpki(&leaf, &chain[..1], &root_der, EKU_CLIENT_AUTH)
                .unwrap_or_else(|error| panic!("rustls-webpki refuses the leaf: {error:?}"));
            verify_with_openssl(
                &bundle.certificate_pem,
                &der_to_pem("CERTIFICATE", &chain[0]),
                root.certificate_pem(),
                Some("sslclient"),
            )
            .unwrap_or_else(|output| panic!("openssl verify refuses the leaf:\n{output}"));

            let events = server.audit_events();
            assert!(
                events.iter().any(|event| event.kind == "ca.imported"),
                "no ca.imported audit event: {:?}",
                events.iter().map(|event| &event.kind).collect::<Vec<_>>()
            );
            assert_eq!(
                private_key_labels(&server.list_private_keys()),
                ISSUING_AND_TOKEN_KEYS,
                "the token must still hold only the issuing key (and the token-signing key)"
            );
        });
    }

    fn fail_import_chain_with_a_foreign_issuing_certificate(backend: Backend) {
        let Some(pending) = TestServer::builder(backend).external_root(true).init_external_root()
        else {
            return;
        };
        let root = OfflineRoot::new();
        let other_root = OfflineRoot::new();
        // An issuing certificate from the right root, for a key that is not
        // on the token.
        let (foreign_csr, _key) = make_csr("ec-p256", &[], &[], &[]);
        let foreign_issuing = root.sign_issuing_csr(&foreign_csr);
        // The genuine issuing certificate, from another root.
        let genuine_from_other = other_root.sign_issuing_csr(pending.csr_pem());
        let bad_chains = [
            (
                "foreign issuing key",
                format!("{foreign_issuing}{}", root.certificate_pem()),
            ),
            (
                "issuing certificate not signed by the root that follows",
                format!("{genuine_from_other}{}", root.certificate_pem()),
            ),
            ("issuing certificate without its root", genuine_from_other.clone()),
            (
                "the root repeated where an intermediate CA belongs",
                format!(
                    "{}{}{}",
                    root.sign_issuing_csr(pending.csr_pem()),
                    root.certificate_pem(),
                    root.certificate_pem()
                ),
            ),
            (
                "the right key and root, but issued as a leaf (CA:FALSE)",
                format!(
                    "{}{}",
                    root.sign_csr_with(
                        pending.csr_pem(),
                        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    ),
                    root.certificate_pem()
                ),
            ),
            (
                "the right key and root, but keyUsage without keyCertSign",
                format!(
                    "{}{}",
                    root.sign_csr_with(
                        pending.csr_pem(),
                        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,digitalSignature,cRLSign\n"
                    ),
                    root.certificate_pem()
                ),
            ),
        ];
        for (why, chain) in &bad_chains {
            let import = pending.import_chain(chain);
            assert!(import.failed(), "{why}: import-chain must fail:\n{}", import.text);
            assert!(
                !pending.dir().join("root.pem").exists(),
                "{why}: a refused import must not write root.pem"
            );
        }
        // Intermediate CAs that would make clients refuse every path through
        // them; each refusal says why.
        let faulty_intermediates = [
            (
                "its pathLen 0 leaves no room for the issuing CA",
                "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
                "pathLenConstraint 0",
            ),
            (
                "its EKU allows server certificates only",
                "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nextendedKeyUsage=serverAuth\n",
                "extendedKeyUsage",
            ),
            (
                "it is not a CA",
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n",
                "not a CA",
            ),
        ];
        for (why, extensions, expected) in faulty_intermediates {
            let hierarchy = OfflineRoot::with_intermediate_extensions(extensions);
            let import = pending.import_chain(&hierarchy.chain_for(pending.csr_pem()));
            assert!(import.failed(), "{why}: import-chain must fail:\n{}", import.text);
            assert!(import.text.contains(expected), "{why}: expected {expected:?} in:\n{}", import.text);
        }
        // Nothing installed: serve still refuses, init still reprints the CSR.
        let serve = pending.try_serve();
        assert!(
            serve.failed(),
            "serve must refuse to start on a pending CA (status {:?}):\n{}",
            serve.status,
            serve.text
        );
        let (init, csr) = pending.init_again();
        assert!(init.success(), "init again failed:\n{}", init.text);
        let csr = csr.unwrap_or_else(|| panic!("init again wrote no CSR:\n{}", init.text));
        assert_eq!(csr_public_key(&csr), csr_public_key(pending.csr_pem()));
        assert_pending(&pending);

        // The refusals were about the chains: the right one still installs.
        let csr_key = csr_public_key(pending.csr_pem());
        let server = pending.complete_with(&root);
        certmint_e2e::run_test_on(
            Some(&server),
            "fail_import_chain_with_a_foreign_issuing_certificate",
            |server| {
                let chain = pem_chain(&server.get("/v1/ca/chain.pem").text);
                assert_eq!(certificate_public_key(&chain[0]), csr_key);
                assert_eq!(chain.last(), Some(&pem_to_der(root.certificate_pem())));
                enroll_one(server, "after-refusal");
            },
        );
    }

    fn ok_init_twice_in_external_mode_reprints_the_same_csr(backend: Backend) {
        let Some(pending) = TestServer::builder(backend).external_root(true).init_external_root()
        else {
            return;
        };
        let (init, csr) = pending.init_again();
        assert!(init.success(), "second init failed:\n{}", init.text);
        let csr = csr.unwrap_or_else(|| panic!("second init wrote no CSR:\n{}", init.text));
        assert_eq!(
            csr_public_key(&csr),
            csr_public_key(pending.csr_pem()),
            "second init must reprint a CSR for the same issuing key"
        );
        assert!(
            certmint_e2e::parse_root_fingerprint(&init.text).is_none(),
            "second init must not claim a root:\n{}",
            init.text
        );
        assert_pending(&pending);
    }
}
