//! Renewal and self-revocation over mutual TLS, on SQLite and PostgreSQL:
//! the holder of a certificate gets a new one for a fresh key with the same
//! identity, recorded with its predecessor; every reason a holder may not
//! renew has its own problem code; certificates from another CA never get
//! past the handshake.

use certmint::wire::{CertificateBundle, CertificateInfo, CertificateStatus};
use certmint_e2e::{
    backend_tests, der_to_pem, identity, make_csr, parse_certificate, pem_chain, pem_to_der,
    policy_json, verify_with_openssl, verify_with_webpki, Auth, RequestBody, TestServer,
    EKU_CLIENT_AUTH,
};
use der::Encode as _;
use serde_json::{json, Value};

/// A workload that enrolled: its key and what the server returned.
struct Enrolled {
    key_pem: String,
    bundle: CertificateBundle,
}

impl Enrolled {
    /// Leaf then issuing chain, as a TLS client presents it.
    fn presented_chain(&self) -> String {
        format!("{}{}", self.bundle.certificate_pem, self.bundle.chain_pem)
    }
}

const NAMES: &[&str] = &["api.renew.internal"];

/// Creates a policy (edited by `edit`), mints a token and enrolls once.
fn enroll(server: &TestServer, edit: impl FnOnce(&mut Value)) -> (String, Enrolled) {
    let policy = server.unique("renew");
    let mut spec = policy_json(&policy, &["*.renew.internal"], &[], &[]);
    edit(&mut spec);
    server.create_policy(&spec);
    let token = server.mint_token(&policy, &identity(NAMES, &[], &[]), 1);
    let (csr, key_pem) = make_csr("ec-p256", NAMES, &[], &[]);
    let response = server.enroll(&csr, &token.token);
    response.assert_status(201);
    (
        policy,
        Enrolled {
            key_pem,
            bundle: response.json(),
        },
    )
}

/// `POST /v1/renew` as the holder of `enrolled`, for a fresh key with `names`.
fn renew(
    server: &TestServer,
    enrolled: &Enrolled,
    names: &[&str],
) -> (certmint_e2e::Response, String) {
    let holder = server.holder(&enrolled.presented_chain(), &enrolled.key_pem);
    let (csr, key_pem) = make_csr("ec-p256", names, &[], &[]);
    let response = server.request(
        Auth::Holder(&holder),
        "POST",
        "/v1/renew",
        Some(RequestBody::Json(json!({ "csr": csr }))),
    );
    (response, key_pem)
}

/// The renewed leaf verifies with rustls-webpki and `openssl verify`.
fn check_chain(server: &TestServer, bundle: &CertificateBundle) {
    let chain = pem_chain(&bundle.chain_pem);
    let root = pem_to_der(server.root_pem());
    let leaf = pem_to_der(&bundle.certificate_pem);
    verify_with_webpki(&leaf, &chain[..1], &root, EKU_CLIENT_AUTH)
        .unwrap_or_else(|error| panic!("rustls-webpki refuses the renewed leaf: {error:?}"));
    let issuing_pem = der_to_pem("CERTIFICATE", &chain[0]);
    verify_with_openssl(
        &bundle.certificate_pem,
        &issuing_pem,
        server.root_pem(),
        Some("sslclient"),
    )
    .unwrap_or_else(|output| panic!("openssl verify refuses the renewed leaf:\n{output}"));
}

fn spki_der(certificate_pem: &str) -> Vec<u8> {
    let der = pem_chain(certificate_pem).remove(0);
    parse_certificate(&der)
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .expect("SPKI re-encodes")
}

backend_tests! {
    fn ok_renewal_rotates_the_key_keeps_the_names_and_records_the_chain(server: &TestServer) {
        let (policy, first) = enroll(server, |_| {});
        let mut current = first;
        let mut serials = vec![current.bundle.serial.clone()];
        for _ in 0..3 {
            let (response, key_pem) = renew(server, &current, NAMES);
            response.assert_status(201);
            let bundle: CertificateBundle = response.json();
            assert_eq!(bundle.policy, policy);
            assert_ne!(bundle.serial, current.bundle.serial);
            assert_ne!(
                spki_der(&bundle.certificate_pem),
                spki_der(&current.bundle.certificate_pem),
                "a renewal certifies the CSR's fresh key"
            );
            assert!(bundle.renew_after > bundle.not_before && bundle.renew_after < bundle.not_after);
            check_chain(server, &bundle);
            let info: CertificateInfo = server.certificate(&bundle.serial);
            assert_eq!(info.predecessor.as_deref(), Some(current.bundle.serial.as_str()));
            assert_eq!(info.identity.dns, NAMES);
            assert_eq!(info.token_id, None, "renewals consume no token");
            serials.push(bundle.serial.clone());
            current = Enrolled { key_pem, bundle };
        }
        // The predecessors stay valid until they expire: renewal is not revocation.
        for serial in &serials {
            assert_eq!(server.certificate(serial).status, CertificateStatus::Issued);
        }
        let events = server.audit_events();
        let renewal = events
            .iter()
            .find(|event| event.kind == "certificate.signing" && event.subject == serials[1])
            .expect("the renewal is audited");
        assert_eq!(renewal.actor, format!("certificate:{}", serials[0]));
    }

    fn fail_successors_of_a_key_compromised_certificate_are_revoked_too(server: &TestServer) {
        let (_, first) = enroll(server, |_| {});
        let (response, key_pem) = renew(server, &first, NAMES);
        response.assert_status(201);
        let second = Enrolled { key_pem, bundle: response.json() };
        // Someone else holding the first key renewed it too: a fork.
        let (response, _) = renew(server, &first, NAMES);
        response.assert_status(201);
        let fork: CertificateBundle = response.json();
        server
            .admin_post(
                &format!("/v1/admin/certificates/{}/revoke", first.bundle.serial),
                &json!({ "reason": "key_compromise" }),
            )
            .assert_status(200);
        for serial in [&first.bundle.serial, &second.bundle.serial, &fork.serial] {
            assert_eq!(server.certificate(serial).status, CertificateStatus::Revoked, "{serial}");
        }
        let (response, _) = renew(server, &second, NAMES);
        response.assert_problem(403, "certificate.revoked");
        // Another reason revokes only the certificate named.
        let (_, other) = enroll(server, |_| {});
        let (response, _) = renew(server, &other, NAMES);
        response.assert_status(201);
        let successor: CertificateBundle = response.json();
        server
            .admin_post(
                &format!("/v1/admin/certificates/{}/revoke", other.bundle.serial),
                &json!({ "reason": "superseded" }),
            )
            .assert_status(200);
        assert_eq!(server.certificate(&successor.serial).status, CertificateStatus::Issued);
    }

    fn fail_renewal_without_a_client_certificate(server: &TestServer) {
        let (csr, _) = make_csr("ec-p256", NAMES, &[], &[]);
        server
            .post("/v1/renew", &json!({ "csr": csr }))
            .assert_problem(401, "mtls.certificate_required");
        server
            .post("/v1/revoke", &json!({}))
            .assert_problem(401, "mtls.certificate_required");
    }

    fn fail_renewal_for_other_names(server: &TestServer) {
        let (_, enrolled) = enroll(server, |_| {});
        let (response, _) = renew(server, &enrolled, &["api.renew.internal", "db.renew.internal"]);
        response.assert_problem(403, "renewal.identity_mismatch");
        let (response, _) = renew(server, &enrolled, &["db.renew.internal"]);
        response.assert_problem(403, "renewal.identity_mismatch");
    }

    fn fail_renewal_that_keeps_the_key(server: &TestServer) {
        let (_, enrolled) = enroll(server, |_| {});
        let key = rcgen::KeyPair::from_pem(&enrolled.key_pem).expect("the enrolled key");
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = certmint_e2e::sans(NAMES, &[], &[]);
        let same_key_csr = params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .expect("a CSR for the enrolled key");
        let holder = server.holder(&enrolled.presented_chain(), &enrolled.key_pem);
        let response = server.request(
            Auth::Holder(&holder),
            "POST",
            "/v1/renew",
            Some(RequestBody::Json(json!({ "csr": same_key_csr }))),
        );
        response.assert_problem(403, "renewal.key_not_rotated");
        assert!(response.text.contains(&enrolled.bundle.serial), "{}", response.text);
        // The certificate is still good for a renewal with a fresh key.
        let (response, _) = renew(server, &enrolled, NAMES);
        response.assert_status(201);
    }

    fn fail_renewal_of_a_revoked_certificate(server: &TestServer) {
        let (_, enrolled) = enroll(server, |_| {});
        server
            .admin_post(
                &format!("/v1/admin/certificates/{}/revoke", enrolled.bundle.serial),
                &json!({ "reason": "key_compromise" }),
            )
            .assert_status(200);
        let (response, _) = renew(server, &enrolled, NAMES);
        response.assert_problem(403, "certificate.revoked");
        assert!(response.text.contains("key_compromise"), "{}", response.text);
    }

    fn fail_renewal_when_the_policy_says_no(server: &TestServer) {
        let (policy, enrolled) = enroll(server, |spec| {
            spec["renewal"] = json!({ "allowed": false });
        });
        let (response, _) = renew(server, &enrolled, NAMES);
        response.assert_problem(403, "renewal.not_allowed");

        // Renewal is checked against the *current* policy version.
        let mut spec = policy_json(&policy, &["*.renew.internal"], &[], &[]);
        spec["renewal"] = json!({ "allowed": true });
        server.admin_put(&format!("/v1/admin/policies/{policy}"), &spec).assert_status(200);
        let (response, _) = renew(server, &enrolled, NAMES);
        response.assert_status(201);
        let renewed: CertificateBundle = response.json();
        assert!(renewed.policy_version >= 2);

        server.admin_delete(&format!("/v1/admin/policies/{policy}")).assert_status(200);
        let (response, _) = renew(server, &enrolled, NAMES);
        response.assert_problem(403, "policy.disabled");
    }

    fn fail_renewal_past_the_chain_age_and_renewals_stay_inside_it(server: &TestServer) {
        let (_, enrolled) = enroll(server, |spec| {
            spec["renewal"] = json!({ "allowed": true, "max_chain_age": "4s" });
        });
        let (response, _) = renew(server, &enrolled, NAMES);
        response.assert_status(201);
        let renewed: CertificateBundle = response.json();
        let first = server.certificate(&enrolled.bundle.serial);
        assert!(
            renewed.not_after <= first.created_at + time::Duration::seconds(4),
            "a renewal never outlives the chain's maximum age: {} > {} + 4s",
            renewed.not_after,
            first.created_at
        );
        std::thread::sleep(std::time::Duration::from_millis(4500));
        let (response, _) = renew(server, &enrolled, NAMES);
        response.assert_problem(403, "renewal.chain_too_old");
    }

    fn ok_renewal_under_a_chain_age_that_ends_past_the_calendar(server: &TestServer) {
        // "10000000d" (some 27 000 years) is how an admin writes "no limit";
        // the chain's end lies past year 9999 and must not break renewal.
        let (_, enrolled) = enroll(server, |spec| {
            spec["renewal"] = json!({ "allowed": true, "max_chain_age": "10000000d" });
        });
        let (response, _) = renew(server, &enrolled, NAMES);
        response.assert_status(201);
    }

    fn fail_renewal_of_an_expired_certificate_with_its_own_code(server: &TestServer) {
        let (_, enrolled) = enroll(server, |spec| {
            spec["ttl"] = json!({ "default": "2s", "max": "2s" });
        });
        std::thread::sleep(std::time::Duration::from_millis(2500));
        let (response, _) = renew(server, &enrolled, NAMES);
        response.assert_problem(403, "certificate.expired");
    }

    fn ok_holder_revokes_its_own_certificate_once(server: &TestServer) {
        let (_, enrolled) = enroll(server, |_| {});
        let holder = server.holder(&enrolled.presented_chain(), &enrolled.key_pem);
        let revoke = |body: Value| {
            server.request(Auth::Holder(&holder), "POST", "/v1/revoke", Some(RequestBody::Json(body)))
        };
        // Reasons only an administrator may assert are refused, and change
        // nothing.
        for reason in ["ca_compromise", "privilege_withdrawn"] {
            let response = revoke(json!({ "reason": reason }));
            response.assert_problem(403, "revocation.reason_not_allowed");
            assert!(response.text.contains(reason), "{}", response.text);
        }
        assert_eq!(server.certificate(&enrolled.bundle.serial).status, CertificateStatus::Issued);
        let response = revoke(json!({ "reason": "cessation_of_operation" }));
        response.assert_status(200);
        let info: CertificateInfo = response.json();
        assert_eq!(info.serial, enrolled.bundle.serial);
        assert_eq!(info.status, CertificateStatus::Revoked);
        revoke(json!({})).assert_problem(409, "certificate.already_revoked");
        revoke(json!({ "reason": "ca_compromise" })).assert_problem(409, "certificate.already_revoked");
        let (response, _) = renew(server, &enrolled, NAMES);
        response.assert_problem(403, "certificate.revoked");
        let events = server.audit_events();
        let event = events
            .iter()
            .find(|event| event.kind == "certificate.revoked" && event.subject == enrolled.bundle.serial)
            .expect("the self-revocation is audited");
        assert_eq!(event.actor, format!("certificate:{}", enrolled.bundle.serial));
    }

    fn fail_handshake_with_a_certificate_from_another_ca(server: &TestServer) {
        // A self-signed certificate for the same names: the handshake itself
        // fails, so no request reaches a handler.
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(NAMES.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let foreign = params.self_signed(&key).expect("self-signed");
        let holder = server.holder(&foreign.pem(), &key.serialize_pem());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            server.request_unchecked(Auth::Holder(&holder), "GET", "/healthz", None)
        }));
        assert!(result.is_err(), "a foreign client certificate must fail the handshake");
    }

    fn ok_a_client_presenting_only_its_leaf_still_renews(server: &TestServer) {
        // Some TLS stacks send the leaf alone; the server completes the chain
        // with its own issuing certificate.
        let (_, enrolled) = enroll(server, |_| {});
        let holder = server.holder(&enrolled.bundle.certificate_pem, &enrolled.key_pem);
        let (csr, _) = make_csr("ec-p256", NAMES, &[], &[]);
        server
            .request(Auth::Holder(&holder), "POST", "/v1/renew", Some(RequestBody::Json(json!({ "csr": csr }))))
            .assert_status(201);
    }
}
