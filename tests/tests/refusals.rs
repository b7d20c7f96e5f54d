//! Refusals, on SQLite and PostgreSQL: every hostile or mistaken request gets
//! the right status and problem `code` (never asserted by message), never a
//! 500 (the harness checks every response), and never consumes a token or
//! issues a CA certificate.

use certmint::wire::{CertificateBundle, EvaluateResponse, Verdict};
use certmint_e2e::{
    backend_tests, der_to_pem, forge_alg_none, forge_foreign_ed25519, forge_hs256, identity,
    make_csr, make_csr_from, openssl_rsa_csr, parse_certificate, pem_to_der, policy_json, sans,
    Auth, RequestBody, TestServer,
};
use serde_json::{json, Value};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};

/// Name patterns of the standard test policy.
const DNS_PATTERNS: &[&str] = &["*.payments.internal", "payments.internal"];
const IP_RANGES: &[&str] = &["10.20.0.0/16"];
const URI_PATTERNS: &[&str] = &["spiffe://prod.example.org/ns/payments/sa/*"];

/// Creates the standard policy under a unique name and returns the name.
fn standard_policy(server: &TestServer, prefix: &str) -> String {
    let name = server.unique(prefix);
    server.create_policy(&policy_json(&name, DNS_PATTERNS, IP_RANGES, URI_PATTERNS));
    name
}

/// A single-use token for `dns` under `policy`.
fn token_for(server: &TestServer, policy: &str, dns: &[&str]) -> certmint::wire::MintedToken {
    server.mint_token(policy, &identity(dns, &[], &[]), 1)
}

/// The refused request must not have used the token up: a good CSR for
/// `name` still enrolls with it.
fn assert_token_unused(server: &TestServer, token: &str, name: &str) {
    let (csr, _) = make_csr("ec-p256", &[name], &[], &[]);
    server.enroll(&csr, token).assert_status(201);
}

/// Nothing was half-stored for `policy`: no certificate record of any status.
fn assert_inventory_empty(server: &TestServer, policy: &str) {
    let recorded = server.certificates(&format!("policy={policy}"));
    assert!(
        recorded.is_empty(),
        "refused requests left certificate records: {recorded:?}"
    );
}

/// Seconds since the Unix epoch.
fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

backend_tests! {
    fn fail_csr_bad_signature(server: &TestServer) {
        let policy = standard_policy(server, "badsig");
        let minted = token_for(server, &policy, &["api.payments.internal"]);
        let (csr, _) = make_csr("ec-p256", &["api.payments.internal"], &[], &[]);
        let mut der = pem_to_der(&csr);
        // The signature BIT STRING is the last element: flip its last byte.
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let tampered = der_to_pem("CERTIFICATE REQUEST", &der);
        server
            .enroll(&tampered, &minted.token)
            .assert_problem(400, "csr.bad_signature");
        assert_inventory_empty(server, &policy);
        assert_token_unused(server, &minted.token, "api.payments.internal");
    }

    fn fail_csr_malformed(server: &TestServer) {
        let policy = standard_policy(server, "garbage");
        let minted = token_for(server, &policy, &["api.payments.internal"]);
        let garbage_pem = "-----BEGIN CERTIFICATE REQUEST-----\nZ2FyYmFnZSBpbiwgZ2FyYmFnZSBvdXQ=\n-----END CERTIFICATE REQUEST-----\n";
        for csr in [garbage_pem, "not a CSR at all", ""] {
            server
                .enroll(csr, &minted.token)
                .assert_problem(400, "csr.malformed");
        }
        // A certificate is not a request.
        let (valid, _) = make_csr("ec-p256", &["api.payments.internal"], &[], &[]);
        let relabelled = valid.replace("CERTIFICATE REQUEST", "CERTIFICATE");
        server
            .enroll(&relabelled, &minted.token)
            .assert_problem(400, "csr.malformed");
        // More than 100 names: refused once, not with a refusal per name.
        let many: Vec<String> = (0..101).map(|n| format!("w{n}.payments.internal")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let (crowded, _) = make_csr("ec-p256", &many, &[], &[]);
        let response = server.enroll(&crowded, &minted.token);
        response.assert_problem(400, "csr.malformed");
        assert!(response.text.contains("at most 100"), "{}", response.text);
        assert_token_unused(server, &minted.token, "api.payments.internal");
    }

    fn fail_csr_weak_key_rsa1024(server: &TestServer) {
        let policy = server.unique("weak");
        let mut spec = policy_json(&policy, DNS_PATTERNS, IP_RANGES, URI_PATTERNS);
        spec["key_types"] = json!(["ec-p256", "rsa-2048", "rsa-3072"]);
        server.create_policy(&spec);
        let minted = token_for(server, &policy, &["api.payments.internal"]);
        let (csr, _) = openssl_rsa_csr(1024, &sans(&["api.payments.internal"], &[], &[]));
        server
            .enroll(&csr, &minted.token)
            .assert_problem(400, "csr.weak_key");
        assert_inventory_empty(server, &policy);
        assert_token_unused(server, &minted.token, "api.payments.internal");
    }

    fn fail_key_type_not_in_policy(server: &TestServer) {
        let policy = standard_policy(server, "keytype");
        let minted = token_for(server, &policy, &["api.payments.internal"]);
        let (csr, _) = make_csr("ec-p384", &["api.payments.internal"], &[], &[]);
        server
            .enroll(&csr, &minted.token)
            .assert_problem(403, "policy.key_type_not_allowed");
        assert_token_unused(server, &minted.token, "api.payments.internal");
    }

    fn fail_csr_without_names(server: &TestServer) {
        let policy = standard_policy(server, "nonames");
        let minted = token_for(server, &policy, &["api.payments.internal"]);
        let (csr, _) = make_csr("ec-p256", &[], &[], &[]);
        server
            .enroll(&csr, &minted.token)
            .assert_problem(400, "csr.no_names");
    }

    fn fail_name_outside_token_identity(server: &TestServer) {
        let policy = standard_policy(server, "tokenid");
        let minted = token_for(server, &policy, &["api.payments.internal"]);
        // Inside the policy, outside what the token binds.
        let (csr, _) = make_csr("ec-p256", &["db.payments.internal"], &[], &[]);
        let response = server.enroll(&csr, &minted.token);
        response.assert_problem(403, "token.name_not_allowed");
        assert_eq!(response.refusal_codes(), vec!["token.name_not_allowed"]);
        // One good name does not carry a bad one along.
        let (csr, _) = make_csr(
            "ec-p256",
            &["api.payments.internal", "db.payments.internal"],
            &[],
            &[],
        );
        server
            .enroll(&csr, &minted.token)
            .assert_problem(403, "token.name_not_allowed");
        // Same for IPs and URIs.
        let minted_ip = server.mint_token(&policy, &identity(&[], &["10.20.1.5"], &[]), 1);
        let (csr, _) = make_csr("ec-p256", &[], &["10.20.1.6"], &[]);
        server
            .enroll(&csr, &minted_ip.token)
            .assert_problem(403, "token.name_not_allowed");
        let minted_uri = server.mint_token(
            &policy,
            &identity(&[], &[], &["spiffe://prod.example.org/ns/payments/sa/api"]),
            1,
        );
        let (csr, _) = make_csr(
            "ec-p256",
            &[],
            &[],
            &["spiffe://prod.example.org/ns/payments/sa/db"],
        );
        server
            .enroll(&csr, &minted_uri.token)
            .assert_problem(403, "token.name_not_allowed");
        assert_token_unused(server, &minted.token, "api.payments.internal");
    }

    fn fail_token_identity_wider_than_policy_is_refused_at_mint(server: &TestServer) {
        let policy = standard_policy(server, "widemint");
        for wider in [
            identity(&["*.other.internal"], &[], &[]),
            identity(&["*.*.payments.internal"], &[], &[]),
            identity(&[], &["10.0.0.0/8"], &[]),
            identity(&[], &[], &["spiffe://prod.example.org/ns/*/sa/*"]),
            // `*` is exactly one label or path segment.
            identity(&["a.b.payments.internal"], &[], &[]),
            identity(&[], &[], &["spiffe://prod.example.org/ns/payments/sa/api/extra"]),
        ] {
            server
                .admin_post(
                    "/v1/admin/tokens",
                    &json!({"policy": policy, "identity": wider, "max_uses": 1}),
                )
                .assert_problem(422, "policy.identity_outside_policy");
        }
        server
            .admin_post(
                "/v1/admin/tokens",
                &json!({"policy": server.unique("no-such-policy"),
                        "identity": identity(&["api.payments.internal"], &[], &[])}),
            )
            .assert_problem(404, "policy.not_found");
        // Token limits: no zero-use tokens, no lifetimes beyond the server's maximum.
        for bad in [
            json!({"policy": policy, "identity": identity(&["api.payments.internal"], &[], &[]), "max_uses": 0}),
            json!({"policy": policy, "identity": identity(&["api.payments.internal"], &[], &[]), "ttl": "3650d"}),
            json!({"policy": policy, "identity": identity(&[], &[], &[])}),
        ] {
            server
                .admin_post("/v1/admin/tokens", &bad)
                .assert_problem(400, "request.malformed");
        }
    }

    fn fail_name_outside_policy(server: &TestServer) {
        let policy = standard_policy(server, "narrowed");
        let minted = server.mint_token(
            &policy,
            &identity(&["*.payments.internal"], &[], &[]),
            2,
        );
        // Narrow the policy after minting: the token still binds
        // *.payments.internal, the current policy version no longer does.
        let narrowed = server.admin_put(
            &format!("/v1/admin/policies/{policy}"),
            &policy_json(&policy, &["payments.internal"], IP_RANGES, URI_PATTERNS),
        );
        narrowed.assert_status(200);
        assert_eq!(narrowed.body["version"], 2);
        let (csr, _) = make_csr("ec-p256", &["api.payments.internal"], &[], &[]);
        let response = server.enroll(&csr, &minted.token);
        response.assert_problem(403, "policy.name_not_allowed");
        assert_eq!(response.refusal_codes(), vec!["policy.name_not_allowed"]);

        // A name outside both the token and the policy: both refusals listed.
        let (csr, _) = make_csr("ec-p256", &["api.evil.example"], &[], &[]);
        let response = server.enroll(&csr, &minted.token);
        assert_eq!(response.status, 403, "{}", response.text);
        let codes = response.refusal_codes();
        assert!(
            codes.contains(&"policy.name_not_allowed".to_owned())
                && codes.contains(&"token.name_not_allowed".to_owned()),
            "both refusals must be listed: {}",
            response.text
        );
        assert_eq!(Some(response.code()), codes.first().map(String::as_str));

        // `*` never matches a dot: two labels under *.payments.internal.
        let policy = standard_policy(server, "onelabel");
        let minted = server.mint_token(
            &policy,
            &identity(&["*.payments.internal"], &[], &[]),
            1,
        );
        let (csr, _) = make_csr("ec-p256", &["a.b.payments.internal"], &[], &[]);
        let response = server.enroll(&csr, &minted.token);
        assert_eq!(response.status, 403, "{}", response.text);
        assert!(
            response.refusal_codes().contains(&"policy.name_not_allowed".to_owned()),
            "{}",
            response.text
        );
        // An IP outside the policy (and so outside the token's range too):
        // the policy refusal is among the listed ones.
        let minted = server.mint_token(&policy, &identity(&[], &["10.20.0.0/16"], &[]), 1);
        let (csr, _) = make_csr("ec-p256", &[], &["10.21.0.1"], &[]);
        let response = server.enroll(&csr, &minted.token);
        assert_eq!(response.status, 403, "{}", response.text);
        assert!(
            response.refusal_codes().contains(&"policy.name_not_allowed".to_owned()),
            "{}",
            response.text
        );
        assert_inventory_empty(server, &policy);
    }

    fn fail_wildcard_without_permission(server: &TestServer) {
        let policy = standard_policy(server, "wild");
        let minted = token_for(server, &policy, &["*.payments.internal"]);
        let (csr, _) = make_csr("ec-p256", &["*.payments.internal"], &[], &[]);
        server
            .enroll(&csr, &minted.token)
            .assert_problem(403, "policy.wildcard_not_allowed");
        assert_token_unused(server, &minted.token, "api.payments.internal");
    }

    fn fail_invalid_dns_names(server: &TestServer) {
        let policy = standard_policy(server, "badnames");
        // One row per hostile name (STYLE item 3); rcgen encodes them all.
        let long_label = format!("{}.payments.internal", "a".repeat(64));
        let rows: &[(&str, &str)] = &[
            ("fail_nul_in_dns", "api\0.payments.internal"),
            ("fail_empty_label", "a..b.payments.internal"),
            ("fail_leading_dot", ".api.payments.internal"),
            ("fail_trailing_dot", "api.payments.internal."),
            ("fail_space_in_label", "api .payments.internal"),
            ("fail_underscore_in_label", "api_v2.payments.internal"),
            ("fail_hyphen_at_label_edge", "-api.payments.internal"),
            ("fail_label_too_long", &long_label),
            ("fail_wildcard_not_leftmost", "api.*.payments.internal"),
            ("fail_partial_wildcard", "a*.payments.internal"),
            ("fail_reserved_hyphens_not_punycode", "ab--cd.payments.internal"),
            ("fail_undecodable_punycode", "xn--99999999999999.payments.internal"),
            ("fail_non_canonical_punycode", "xn--bcher-2pa.payments.internal"),
        ];
        let minted = server.mint_token(
            &policy,
            &identity(&["*.payments.internal"], &[], &[]),
            1,
        );
        for (case, name) in rows {
            let (csr, _) = make_csr("ec-p256", &[name], &[], &[]);
            let response = server.enroll(&csr, &minted.token);
            assert_eq!(
                (response.status, response.code()),
                (400, "policy.invalid_name"),
                "{case} {name:?}: {}",
                response.text
            );
            response.assert_problem(400, "policy.invalid_name");
        }
        // The fixture rcgen cannot make: UTF-8 bytes inside an IA5String.
        let der = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/non_ascii_in_dns.der"))
            .expect("fixtures/non_ascii_in_dns.der");
        let response = server.enroll(&der_to_pem("CERTIFICATE REQUEST", &der), &minted.token);
        assert!(
            response.status == 400
                && ["csr.malformed", "policy.invalid_name"].contains(&response.code()),
            "fail_non_ascii_in_dns: {} {}",
            response.status,
            response.text
        );
        // None of these stored anything or used the token.
        assert_inventory_empty(server, &policy);
        assert_token_unused(server, &minted.token, "api.payments.internal");
    }

    fn fail_evaluate_lists_every_refused_name(server: &TestServer) {
        let policy = standard_policy(server, "evaluate");
        let (csr, _) = make_csr(
            "ec-p256",
            &["api.payments.internal", "api.evil.example", "a..b.payments.internal"],
            &[],
            &[],
        );
        let response = server.admin_post(
            &format!("/v1/admin/policies/{policy}/evaluate"),
            &json!({"csr": csr}),
        );
        response.assert_status(200);
        let outcome: EvaluateResponse = response.json();
        assert_eq!(outcome.decision, Verdict::Deny);
        assert_eq!(outcome.policy_version, 1);
        let refused: Vec<(String, String)> = outcome
            .refusals
            .iter()
            .map(|refusal| (refusal.name.clone(), refusal.code.to_string()))
            .collect();
        assert!(
            refused.contains(&("api.evil.example".into(), "policy.name_not_allowed".into()))
                && refused.contains(&("a..b.payments.internal".into(), "policy.invalid_name".into()))
                && !refused.iter().any(|(name, _)| name == "api.payments.internal"),
            "evaluate must refuse exactly the two bad names: {refused:?}"
        );
        // Real enrollment refuses with the same per-name reasons.
        let minted = token_for(server, &policy, &["*.payments.internal"]);
        let enrolled = server.enroll(&csr, &minted.token);
        assert_eq!(enrolled.status, 403, "{}", enrolled.text);
        let names: Vec<&str> = enrolled.body["refusals"]
            .as_array()
            .expect("refusals")
            .iter()
            .filter_map(|refusal| refusal["name"].as_str())
            .collect();
        assert!(
            names.contains(&"api.evil.example") && names.contains(&"a..b.payments.internal"),
            "{}",
            enrolled.text
        );
        // And an allowed request evaluates to allow, without consuming anything.
        let (good, _) = make_csr("ec-p256", &["api.payments.internal"], &[], &[]);
        let allowed: EvaluateResponse = server
            .admin_post(
                &format!("/v1/admin/policies/{policy}/evaluate"),
                &json!({"csr": good, "identity": identity(&["api.payments.internal"], &[], &[])}),
            )
            .json();
        assert_eq!(allowed.decision, Verdict::Allow, "{allowed:?}");
        assert!(allowed.refusals.is_empty());
    }

    fn fail_ttl_exceeds_policy_max(server: &TestServer) {
        let policy = standard_policy(server, "ttl");
        let minted = token_for(server, &policy, &["api.payments.internal"]);
        let (csr, _) = make_csr("ec-p256", &["api.payments.internal"], &[], &[]);
        server
            .enroll_with(&json!({"csr": csr, "token": minted.token, "ttl": "73h"}))
            .assert_problem(403, "policy.ttl_exceeds_max");
        server
            .enroll_with(&json!({"csr": csr, "token": minted.token, "ttl": "0s"}))
            .assert_problem(400, "request.malformed");
        server
            .enroll_with(&json!({"csr": csr, "token": minted.token, "ttl": "forever"}))
            .assert_problem(400, "request.malformed");
        assert_inventory_empty(server, &policy);
        // At the max: notAfter - notBefore is exactly the policy's max, the
        // backdate included (README, "Certificate profile").
        let response = server.enroll_with(&json!({"csr": csr, "token": minted.token, "ttl": "72h"}));
        response.assert_status(201);
        let bundle: CertificateBundle = response.json();
        let lifetime = bundle.not_after - bundle.not_before;
        assert_eq!(lifetime, time::Duration::hours(72), "{bundle:?}");
        let ahead = bundle.not_after - time::OffsetDateTime::now_utc();
        assert!(ahead > time::Duration::hours(71), "the backdate is still there: {bundle:?}");
    }

    fn fail_disabled_policy(server: &TestServer) {
        let policy = standard_policy(server, "disabled");
        let minted = token_for(server, &policy, &["api.payments.internal"]);
        let disabled = server.admin_delete(&format!("/v1/admin/policies/{policy}"));
        disabled.assert_status(200);
        assert_eq!(disabled.body["enabled"], false);
        let (csr, _) = make_csr("ec-p256", &["api.payments.internal"], &[], &[]);
        server
            .enroll(&csr, &minted.token)
            .assert_problem(403, "policy.disabled");
        server
            .admin_post(
                "/v1/admin/tokens",
                &json!({"policy": policy, "identity": identity(&["api.payments.internal"], &[], &[])}),
            )
            .assert_problem(403, "policy.disabled");
    }

    fn fail_expired_and_not_yet_valid_tokens(server: &TestServer) {
        let policy = standard_policy(server, "expired");
        let minted = token_for(server, &policy, &["api.payments.internal"]);
        let (csr, _) = make_csr("ec-p256", &["api.payments.internal"], &[], &[]);
        // Signed with the server's own key (the test owns the server host),
        // so only the times are wrong. The leeway is 30 s.
        let expired = server.resign_with_server_key(&minted.token, |claims| {
            claims["iat"] = json!(now_unix() - 600);
            claims["exp"] = json!(now_unix() - 120);
        });
        server
            .enroll(&csr, &expired)
            .assert_problem(401, "token.expired");
        let future = server.resign_with_server_key(&minted.token, |claims| {
            claims["iat"] = json!(now_unix() + 600);
            claims["exp"] = json!(now_unix() + 3600);
        });
        server
            .enroll(&csr, &future)
            .assert_problem(401, "token.not_yet_valid");
        // A validly signed token whose id the server never minted.
        let unknown_id = server.resign_with_server_key(&minted.token, |claims| {
            let id = certmint_e2e::random_hex(16);
            claims["jti"] = json!(id);
            claims["sub"] = json!(id);
        });
        server
            .enroll(&csr, &unknown_id)
            .assert_problem(401, "token.unknown");
        // Widening the identity in the claims breaks the signature.
        let (header, mut claims) = certmint_e2e::jwt_segments(&minted.token);
        claims["identity"]["dns"] = json!(["*.payments.internal"]);
        let signature = minted.token.rsplit('.').next().expect("signature");
        let tampered = format!(
            "{header}.{}.{signature}",
            certmint_e2e::b64url(claims.to_string().as_bytes())
        );
        server
            .enroll(&csr, &tampered)
            .assert_problem(401, "token.bad_signature");
        assert_inventory_empty(server, &policy);
        assert_token_unused(server, &minted.token, "api.payments.internal");
    }

    /// Slow (about 33 s): a real token minted with a 1 s lifetime, refused
    /// once the server's 30 s leeway has passed. No forging involved.
    fn fail_expired_token_after_leeway_slow(server: &TestServer) {
        let policy = standard_policy(server, "expiry");
        let minted = server.admin_post(
            "/v1/admin/tokens",
            &json!({"policy": policy, "identity": identity(&["api.payments.internal"], &[], &[]),
                    "ttl": "1s", "max_uses": 1}),
        );
        minted.assert_status(201);
        let token = minted.body["token"].as_str().expect("token").to_owned();
        std::thread::sleep(std::time::Duration::from_secs(33));
        let (csr, _) = make_csr("ec-p256", &["api.payments.internal"], &[], &[]);
        server
            .enroll(&csr, &token)
            .assert_problem(401, "token.expired");
    }

    fn fail_tokens_from_foreign_keys(server: &TestServer) {
        let policy = standard_policy(server, "foreign");
        let minted = token_for(server, &policy, &["api.payments.internal"]);
        let (csr, _) = make_csr("ec-p256", &["api.payments.internal"], &[], &[]);
        // A key id the server does not know.
        let foreign = forge_foreign_ed25519(&minted.token, Some("00112233445566778899aabb"));
        server
            .enroll(&csr, &foreign)
            .assert_problem(401, "token.unknown");
        // The server's key id, but another key.
        let impostor = forge_foreign_ed25519(&minted.token, None);
        server
            .enroll(&csr, &impostor)
            .assert_problem(401, "token.bad_signature");
        // Not a JWT at all.
        server
            .enroll(&csr, "not.a-jwt")
            .assert_problem(401, "token.malformed");
        assert_token_unused(server, &minted.token, "api.payments.internal");
    }

    fn fail_algorithm_confusion(server: &TestServer) {
        let policy = standard_policy(server, "alg");
        let minted = token_for(server, &policy, &["api.payments.internal"]);
        let (csr, _) = make_csr("ec-p256", &["api.payments.internal"], &[], &[]);
        server
            .enroll(&csr, &forge_alg_none(&minted.token))
            .assert_problem(401, "token.algorithm_not_allowed");
        server
            .enroll(&csr, &forge_hs256(&minted.token, b"garbage secret"))
            .assert_problem(401, "token.algorithm_not_allowed");
        // HS256 keyed with the server's public token key (the classic
        // RS256->HS256 confusion) is just as dead.
        let public_key = server.token_signing_public_key();
        let (signing_input, signature) = minted.token.rsplit_once('.').expect("a JWT");
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public_key)
            .verify(
                signing_input.as_bytes(),
                &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, signature)
                    .expect("base64url signature"),
            )
            .expect("the server's tokens are signed by its token-signing key");
        server
            .enroll(&csr, &forge_hs256(&minted.token, &public_key))
            .assert_problem(401, "token.algorithm_not_allowed");
        assert_token_unused(server, &minted.token, "api.payments.internal");
    }

    fn fail_admin_token_used_for_enrollment(server: &TestServer) {
        let policy = standard_policy(server, "audience");
        let minted = token_for(server, &policy, &["api.payments.internal"]);
        let (csr, _) = make_csr("ec-p256", &["api.payments.internal"], &[], &[]);
        server
            .enroll(&csr, server.admin_token())
            .assert_problem(401, "token.wrong_audience");
        assert_token_unused(server, &minted.token, "api.payments.internal");
    }

    fn fail_bootstrap_token_for_another_audience(server: &TestServer) {
        let policy = standard_policy(server, "otheraud");
        let minted = token_for(server, &policy, &["api.payments.internal"]);
        let (csr, _) = make_csr("ec-p256", &["api.payments.internal"], &[], &[]);
        // Validly signed by the server's key, minted for another server's enroll endpoint.
        let elsewhere = server.resign_with_server_key(&minted.token, |claims| {
            claims["aud"] = json!("https://elsewhere.example:8443/v1/enroll");
        });
        server
            .enroll(&csr, &elsewhere)
            .assert_problem(401, "token.wrong_audience");
        assert_token_unused(server, &minted.token, "api.payments.internal");
    }

    fn fail_bootstrap_token_used_as_admin_credential(server: &TestServer) {
        let policy = standard_policy(server, "asadmin");
        let minted = token_for(server, &policy, &["api.payments.internal"]);
        server
            .request(Auth::Bearer(&minted.token), "GET", "/v1/admin/policies", None)
            .assert_problem(401, "auth.invalid");
        assert_token_unused(server, &minted.token, "api.payments.internal");
    }

    fn fail_revoked_token(server: &TestServer) {
        let policy = standard_policy(server, "revoked");
        let minted = token_for(server, &policy, &["api.payments.internal"]);
        let revoked = server.admin_delete(&format!("/v1/admin/tokens/{}", minted.id));
        revoked.assert_status(200);
        assert!(revoked.body["revoked_at"].is_string(), "{}", revoked.text);
        let (csr, _) = make_csr("ec-p256", &["api.payments.internal"], &[], &[]);
        server
            .enroll(&csr, &minted.token)
            .assert_problem(401, "token.revoked");
        // Names the policy refuses: still the token's own refusal, not the
        // policy's (which would tell a dead token what the policy allows).
        let (outside, _) = make_csr("ec-p256", &["api.evil.example"], &[], &[]);
        server
            .enroll(&outside, &minted.token)
            .assert_problem(401, "token.revoked");
        server
            .admin_get(&format!("/v1/admin/tokens/{}", certmint_e2e::random_hex(16)))
            .assert_problem(404, "token.not_found");
    }

    fn fail_used_token(server: &TestServer) {
        let policy = standard_policy(server, "used");
        let minted = token_for(server, &policy, &["api.payments.internal"]);
        let (csr, _) = make_csr("ec-p256", &["api.payments.internal"], &[], &[]);
        server.enroll(&csr, &minted.token).assert_status(201);
        let (again, _) = make_csr("ec-p256", &["api.payments.internal"], &[], &[]);
        server
            .enroll(&again, &minted.token)
            .assert_problem(401, "token.used");
        let (outside, _) = make_csr("ec-p256", &["api.evil.example"], &[], &[]);
        server
            .enroll(&outside, &minted.token)
            .assert_problem(401, "token.used");
        let info = server.admin_get(&format!("/v1/admin/tokens/{}", minted.id));
        info.assert_status(200);
        assert_eq!(info.body["uses"], 1, "{}", info.text);
    }

    fn ok_csr_asking_for_ca_true_gets_a_leaf(server: &TestServer) {
        let policy = standard_policy(server, "catrue");
        let minted = token_for(server, &policy, &["api.payments.internal"]);
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans(&["api.payments.internal"], &[], &[]);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let (csr, _) = make_csr_from("ec-p256", params);
        let response = server.enroll(&csr, &minted.token);
        if response.status == 201 {
            let bundle: CertificateBundle = response.json();
            let leaf = parse_certificate(&pem_to_der(&bundle.certificate_pem));
            let (critical, constraints) = leaf
                .tbs_certificate()
                .get_extension::<BasicConstraints>()
                .expect("basicConstraints decodes")
                .expect("basicConstraints present");
            assert!(critical && !constraints.ca, "a CSR asking CA:TRUE got {constraints:?}");
            let (_, key_usage) = leaf
                .tbs_certificate()
                .get_extension::<KeyUsage>()
                .expect("keyUsage decodes")
                .expect("keyUsage present");
            assert!(
                !key_usage.key_cert_sign() && !key_usage.crl_sign(),
                "CSR key usages were copied: {key_usage:?}"
            );
        } else {
            assert!(
                (400..500).contains(&response.status),
                "refusing is fine, failing is not: {}",
                response.text
            );
        }
    }

    fn fail_oversized_body(server: &TestServer) {
        let big = "A".repeat(2 * 1024 * 1024);
        server
            .enroll_with(&json!({"csr": big, "token": "x"}))
            .assert_problem(413, "request.too_large");
        server
            .request(
                Auth::Admin,
                "POST",
                "/v1/admin/policies",
                Some(RequestBody::Json(json!({"name": "big", "description": big}))),
            )
            .assert_problem(413, "request.too_large");
        // Without Content-Length the limit must hold just the same.
        server
            .request(
                Auth::None,
                "POST",
                "/v1/enroll",
                Some(RequestBody::Chunked {
                    content_type: "application/json".into(),
                    bytes: json!({"csr": big, "token": "x"}).to_string().into_bytes(),
                }),
            )
            .assert_problem(413, "request.too_large");
    }

    fn fail_json_body_without_a_json_content_type(server: &TestServer) {
        // A browser posts forms and text/plain cross-site without a
        // preflight: such bodies are refused even when they parse as JSON.
        let body = json!({"csr": "x", "token": "x"}).to_string().into_bytes();
        for content_type in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "text/json",
            "image/json",
            "text/plain+json",
        ] {
            let response = server.request(
                Auth::None,
                "POST",
                "/v1/enroll",
                Some(RequestBody::Raw {
                    content_type: content_type.into(),
                    bytes: body.clone(),
                }),
            );
            response.assert_problem(400, "request.malformed");
            assert!(response.text.contains("application/json"), "{}", response.text);
        }
        // application/*+json is JSON too: it reaches the CSR check.
        server
            .request(
                Auth::None,
                "POST",
                "/v1/enroll",
                Some(RequestBody::Raw {
                    content_type: "application/merge-patch+json".into(),
                    bytes: body,
                }),
            )
            .assert_problem(400, "csr.malformed");
    }

    fn fail_unknown_route_and_method(server: &TestServer) {
        server.get("/v1/no-such-thing").assert_problem(404, "request.not_found");
        server.get("/").assert_problem(404, "request.not_found");
        server
            .request(Auth::Admin, "GET", "/v1/admin/nothing-here", None)
            .assert_problem(404, "request.not_found");
        server
            .request(Auth::None, "DELETE", "/v1/enroll", None)
            .assert_problem(405, "request.method_not_allowed");
    }

    fn fail_admin_auth(server: &TestServer) {
        for path in [
            "/v1/admin/policies",
            "/v1/admin/tokens",
            "/v1/admin/certificates",
            "/v1/admin/audit",
        ] {
            server
                .request(Auth::None, "GET", path, None)
                .assert_problem(401, "auth.missing");
        }
        server
            .request(Auth::Bearer("garbage"), "GET", "/v1/admin/policies", None)
            .assert_problem(401, "auth.invalid");
        // Read-only role: reads work, writes are forbidden.
        let policy = server.unique("auditor");
        server
            .request(Auth::Auditor, "GET", "/v1/admin/certificates", None)
            .assert_status(200);
        server
            .request(Auth::Auditor, "GET", "/v1/admin/audit", None)
            .assert_status(200);
        server
            .request(
                Auth::Auditor,
                "POST",
                "/v1/admin/policies",
                Some(RequestBody::Json(policy_json(&policy, DNS_PATTERNS, &[], &[]))),
            )
            .assert_problem(403, "auth.forbidden");
        server
            .admin_get(&format!("/v1/admin/policies/{policy}"))
            .assert_problem(404, "policy.not_found");
        let real = standard_policy(server, "auditor-real");
        server
            .request(
                Auth::Auditor,
                "POST",
                "/v1/admin/tokens",
                Some(RequestBody::Json(json!({"policy": real,
                    "identity": identity(&["api.payments.internal"], &[], &[])}))),
            )
            .assert_problem(403, "auth.forbidden");
        server
            .request(Auth::Auditor, "DELETE", &format!("/v1/admin/policies/{real}"), None)
            .assert_problem(403, "auth.forbidden");
    }

    fn fail_malformed_json(server: &TestServer) {
        let raw = |path: &str, auth: Auth, body: &str| {
            server.request(
                auth,
                "POST",
                path,
                Some(RequestBody::Raw {
                    content_type: "application/json".into(),
                    bytes: body.as_bytes().to_vec(),
                }),
            )
        };
        raw("/v1/enroll", Auth::None, "{not json").assert_problem(400, "request.malformed");
        raw("/v1/enroll", Auth::None, r#"{"csr": "x"}"#).assert_problem(400, "request.malformed");
        raw("/v1/enroll", Auth::None, "[]").assert_problem(400, "request.malformed");
        raw("/v1/admin/policies", Auth::Admin, r#"{"name": 5}"#)
            .assert_problem(400, "request.malformed");
        raw("/v1/admin/tokens", Auth::Admin, "{").assert_problem(400, "request.malformed");
    }

    fn fail_invalid_policy_documents(server: &TestServer) {
        let name = server.unique("invalid");
        let cases: Vec<(&str, Value)> = vec![
            ("fail_bad_policy_name", policy_json("Not_Valid", DNS_PATTERNS, &[], &[])),
            ("fail_bad_dns_pattern", policy_json(&name, &["api..payments.internal"], &[], &[])),
            ("fail_bad_cidr", policy_json(&name, DNS_PATTERNS, &["10.20.0.0/99"], &[])),
            ("fail_unknown_key_type", {
                let mut spec = policy_json(&name, DNS_PATTERNS, &[], &[]);
                spec["key_types"] = json!(["rsa-1024"]);
                spec
            }),
            ("fail_default_ttl_above_max", {
                let mut spec = policy_json(&name, DNS_PATTERNS, &[], &[]);
                spec["ttl"] = json!({"default": "96h", "max": "72h"});
                spec
            }),
        ];
        for (case, spec) in cases {
            let response = server.admin_post("/v1/admin/policies", &spec);
            assert!(
                (response.status, response.code()) == (422, "policy.invalid")
                    || (response.status, response.code()) == (400, "request.malformed"),
                "{case}: {} {}",
                response.status,
                response.text
            );
        }
        server
            .admin_get(&format!("/v1/admin/policies/{name}"))
            .assert_problem(404, "policy.not_found");
        let policy = standard_policy(server, "dup");
        server
            .admin_post("/v1/admin/policies", &policy_json(&policy, DNS_PATTERNS, &[], &[]))
            .assert_problem(409, "policy.already_exists");
    }

    fn fail_unrenewable_or_server_named_policies(server: &TestServer) {
        let name = server.unique("server-only");
        let mut spec = policy_json(&name, DNS_PATTERNS, &[], &[]);
        spec["extended_key_usage"] = json!(["server_auth"]);
        let response = server.admin_post("/v1/admin/policies", &spec);
        response.assert_problem(422, "policy.invalid");
        assert!(response.text.contains("renewal.allowed"), "{}", response.text);
        // Without renewal a server-only policy is fine, and a replacement
        // must keep to the same rule.
        spec["renewal"] = json!({ "allowed": false });
        server.admin_post("/v1/admin/policies", &spec).assert_status(201);
        spec["renewal"] = json!({ "allowed": true });
        server
            .admin_put(&format!("/v1/admin/policies/{name}"), &spec)
            .assert_problem(422, "policy.invalid");
        let reserved = policy_json("certmint-server-tls", DNS_PATTERNS, &[], &[]);
        let response = server.admin_post("/v1/admin/policies", &reserved);
        response.assert_problem(422, "policy.invalid");
        assert!(response.text.contains("reserved"), "{}", response.text);
    }

    fn fail_bad_admin_parameters(server: &TestServer) {
        for (path, status, code) in [
            ("/v1/admin/certificates?status=bogus", 400, "request.invalid_parameter"),
            ("/v1/admin/certificates?expiring_within=soon", 400, "request.invalid_parameter"),
            ("/v1/admin/certificates?cursor=not-a-cursor", 400, "request.invalid_parameter"),
            ("/v1/admin/audit?cursor=%00%ff", 400, "request.invalid_parameter"),
            ("/v1/admin/certificates?limit=-1", 400, "request.invalid_parameter"),
        ] {
            server.admin_get(path).assert_problem(status, code);
        }
        server
            .admin_get(&format!("/v1/admin/certificates/{}", certmint_e2e::random_hex(16)))
            .assert_problem(404, "certificate.not_found");
        server
            .admin_post(
                &format!("/v1/admin/policies/{}/evaluate", server.unique("missing")),
                &json!({"csr": make_csr("ec-p256", &["api.payments.internal"], &[], &[]).0}),
            )
            .assert_problem(404, "policy.not_found");
        // Odd parameters, NUL bytes above all (PostgreSQL text cannot hold
        // them): a 4xx problem every time, never a 500. Every offender is
        // collected before failing, so one run names them all.
        let long = "a".repeat(4000);
        let policy = standard_policy(server, "oddparams");
        let csr = make_csr("ec-p256", &["api.payments.internal"], &[], &[]).0;
        let nul_csr = make_csr("ec-p256", &["a\0.payments.internal"], &[], &[]).0;
        let json_body = |value: serde_json::Value| Some(RequestBody::Json(value));
        let probes: Vec<(&str, String, Option<RequestBody>)> = vec![
            ("GET", "/v1/admin/certificates/zz".to_owned(), None),
            ("GET", "/v1/admin/certificates/..%2f..%2fetc".to_owned(), None),
            ("GET", format!("/v1/admin/certificates/{long}"), None),
            ("GET", "/v1/admin/certificates/%00".to_owned(), None),
            ("GET", "/v1/admin/certificates?policy=%00".to_owned(), None),
            ("GET", "/v1/admin/policies/UPPER".to_owned(), None),
            ("GET", "/v1/admin/policies/%00".to_owned(), None),
            ("DELETE", "/v1/admin/policies/%00".to_owned(), None),
            (
                "PUT",
                "/v1/admin/policies/%00".to_owned(),
                json_body(policy_json("a", DNS_PATTERNS, &[], &[])),
            ),
            (
                "POST",
                "/v1/admin/policies/%00/evaluate".to_owned(),
                json_body(json!({"csr": csr})),
            ),
            ("GET", "/v1/admin/tokens/%00".to_owned(), None),
            ("DELETE", "/v1/admin/tokens/%00".to_owned(), None),
            ("GET", format!("/v1/admin/tokens/{long}"), None),
            (
                "POST",
                "/v1/admin/tokens".to_owned(),
                json_body(json!({"policy": "a\u{0}b",
                    "identity": identity(&["api.payments.internal"], &[], &[])})),
            ),
            (
                "POST",
                "/v1/admin/policies".to_owned(),
                json_body(policy_json("nul\u{0}name", DNS_PATTERNS, &[], &[])),
            ),
            (
                "POST",
                "/v1/admin/certificates/%00/revoke".to_owned(),
                json_body(json!({"reason": "superseded"})),
            ),
        ];
        let mut offenders = Vec::new();
        for (method, path, body) in probes {
            let response = server.request_unchecked(Auth::Admin, method, &path, body);
            let is_problem = response.content_type.starts_with("application/problem+json")
                && !response.code().is_empty();
            // A list filter naming nothing may also answer with an empty page.
            let empty_list = path.contains("?policy=")
                && response.status == 200
                && response.body["items"] == json!([]);
            if !(empty_list || ((400..500).contains(&response.status) && is_problem)) {
                offenders.push(format!("{} -> {} {}", response.request, response.status, response.text));
            }
        }
        // A NUL inside a CSR name in a dry run: refused per name, not a crash.
        let evaluated = server.request_unchecked(
            Auth::Admin,
            "POST",
            &format!("/v1/admin/policies/{policy}/evaluate"),
            json_body(json!({"csr": nul_csr})),
        );
        if evaluated.status != 200 || evaluated.body["decision"] != "deny" {
            offenders.push(format!("{} -> {} {}", evaluated.request, evaluated.status, evaluated.text));
        }
        assert!(
            offenders.is_empty(),
            "odd parameters were not refused with a 4xx problem:\n{}",
            offenders.join("\n")
        );
    }

    fn fail_revoking_certificates(server: &TestServer) {
        let policy = standard_policy(server, "revokecert");
        let minted = token_for(server, &policy, &["api.payments.internal"]);
        let (csr, _) = make_csr("ec-p256", &["api.payments.internal"], &[], &[]);
        let response = server.enroll(&csr, &minted.token);
        response.assert_status(201);
        let bundle: CertificateBundle = response.json();
        let path = format!("/v1/admin/certificates/{}/revoke", bundle.serial);
        server
            .request(
                Auth::Auditor,
                "POST",
                &path,
                Some(RequestBody::Json(json!({"reason": "key_compromise"}))),
            )
            .assert_problem(403, "auth.forbidden");
        server
            .admin_post(&path, &json!({"reason": "certificate_hold"}))
            .assert_problem(400, "request.malformed");
        let revoked = server.admin_post(&path, &json!({"reason": "key_compromise"}));
        revoked.assert_status(200);
        let info = server.certificate(&bundle.serial);
        assert_eq!(info.status, certmint::wire::CertificateStatus::Revoked);
        assert_eq!(
            info.revocation_reason,
            Some(certmint::wire::RevocationReason::KeyCompromise)
        );
        assert!(info.revoked_at.is_some());
        server
            .admin_post(&path, &json!({"reason": "superseded"}))
            .assert_problem(409, "certificate.already_revoked");
        server
            .admin_post(
                &format!("/v1/admin/certificates/{}/revoke", certmint_e2e::random_hex(16)),
                &json!({"reason": "superseded"}),
            )
            .assert_problem(404, "certificate.not_found");
        let listed = server.certificates(&format!("policy={policy}&status=revoked"));
        assert_eq!(listed.len(), 1);
        assert!(server.certificates(&format!("policy={policy}&status=issued")).is_empty());
    }

    fn ok_many_names_never_500(server: &TestServer) {
        let policy = standard_policy(server, "manynames");
        let minted = token_for(server, &policy, &["*.payments.internal"]);
        let names: Vec<String> = (0..300).map(|index| format!("n{index}.payments.internal")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let (csr, _) = make_csr("ec-p256", &names, &[], &[]);
        let response = server.enroll(&csr, &minted.token);
        assert!(
            response.status == 201 || (400..500).contains(&response.status),
            "{}",
            response.text
        );
        // Duplicates and mixed case: DNS compares case-insensitively.
        let minted = token_for(server, &policy, &["api.payments.internal"]);
        let (csr, _) = make_csr(
            "ec-p256",
            &["API.Payments.Internal", "api.payments.internal"],
            &[],
            &[],
        );
        let response = server.enroll(&csr, &minted.token);
        assert!(
            response.status == 201 || (400..500).contains(&response.status),
            "{}",
            response.text
        );
    }
}
