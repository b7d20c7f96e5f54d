//! Table tests of the policy module, through its public API only.
//!
//! Each row is named after what it proves (`ok_…`) or the defect it carries
//! (`fail_…`), and asserts problem codes and structured fields, never
//! message text.

use std::net::IpAddr;

use certmint::wire::{Identity, KeyType, PolicySpec};
use certmint::ProblemCode;
use serde_json::{json, Value};

use super::{
    canonical_dns_name, canonical_uri_name, evaluate, validate_policy_name, CompiledPolicy,
    Decision, ExtendedKeyUsage, IssuanceRequest, PolicyError, RequestedNames,
};

/// The policy every test starts from; `overrides` replaces top-level fields.
fn spec(overrides: Value) -> PolicySpec {
    let mut base = json!({
        "name": "payments-api",
        "allowed": {
            "dns": [
                "*.payments.internal",
                "payments.internal",
                "api.*.example.com",
                "xn--bcher-kva.example",
            ],
            "ip": ["10.20.0.0/16", "2001:db8::/32", "192.0.2.7"],
            "uri": [
                "spiffe://prod.example.org/ns/payments/sa/*",
                "https://api.example.com/v1/*/status",
            ],
        },
        "key_types": ["ec-p256", "ed25519"],
        "ttl": { "default": "24h", "max": "72h" },
        "extended_key_usage": ["client_auth", "server_auth"],
        "renewal": { "allowed": true, "max_chain_age": "90d" },
    });
    if let (Some(base), Some(overrides)) = (base.as_object_mut(), overrides.as_object()) {
        for (key, value) in overrides {
            base.insert(key.clone(), value.clone());
        }
    }
    serde_json::from_value(base).expect("test spec deserialises")
}

fn policy(overrides: Value) -> CompiledPolicy {
    CompiledPolicy::compile(&spec(overrides), 3).expect("test policy compiles")
}

fn codes(decision: &Decision) -> Vec<ProblemCode> {
    decision
        .refusals()
        .iter()
        .map(|refusal| refusal.code.clone())
        .collect()
}

fn names(dns: &[&str], ip: &[&str], uri: &[&str]) -> RequestedNames {
    RequestedNames {
        dns: dns.iter().map(|name| (*name).to_owned()).collect(),
        ip: ip
            .iter()
            .map(|addr| addr.parse::<IpAddr>().expect("test address parses"))
            .collect(),
        uri: uri.iter().map(|name| (*name).to_owned()).collect(),
    }
}

fn identity(dns: &[&str], ip: &[&str], uri: &[&str]) -> Identity {
    let owned = |list: &[&str]| list.iter().map(|entry| (*entry).to_owned()).collect();
    Identity {
        dns: owned(dns),
        ip: owned(ip),
        uri: owned(uri),
    }
}

/// Evaluates `requested` with an allowed key type and the default lifetime.
fn decide(
    policy: &CompiledPolicy,
    requested: &RequestedNames,
    token: Option<&Identity>,
) -> Decision {
    evaluate(
        policy,
        &IssuanceRequest {
            names: requested,
            key_type: KeyType::EcP256,
            ttl: None,
            token_identity: token,
        },
    )
}

/// Runs a table of `(case, input, expected code or None for allow)`.
fn run_table(
    policy: &CompiledPolicy,
    cases: &[(&str, &str, Option<ProblemCode>)],
    build: impl Fn(&str) -> RequestedNames,
) {
    for (case, input, want) in cases {
        let decision = decide(policy, &build(input), None);
        let want: Vec<ProblemCode> = want.iter().cloned().collect();
        assert_eq!(codes(&decision), want, "{case}: {input:?}");
        assert_eq!(decision.is_allow(), want.is_empty(), "{case}");
    }
}

#[test]
fn dns_names_without_wildcard_permission() {
    let policy = policy(json!({}));
    let long_label = format!("{}.payments.internal", "a".repeat(64));
    let max_label = format!("{}.payments.internal", "a".repeat(63));
    let long_name = format!("{0}.{0}.{0}.{0}.payments.internal", "a".repeat(60));
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Option<ProblemCode>)> = vec![
        ("ok_exact_name", "payments.internal", None),
        ("ok_star_matches_one_label", "db.payments.internal", None),
        ("ok_uppercase_is_normalised", "DB.Payments.INTERNAL", None),
        ("ok_middle_star_pattern", "api.eu.example.com", None),
        ("ok_punycode_label", "xn--bcher-kva.example", None),
        ("ok_label_of_63", &max_label, None),
        ("fail_nul_in_name", "db\0.payments.internal", Some(ProblemCode::PolicyInvalidName)),
        ("fail_empty_name", "", Some(ProblemCode::PolicyInvalidName)),
        ("fail_empty_label", "db..payments.internal", Some(ProblemCode::PolicyInvalidName)),
        ("fail_leading_dot", ".payments.internal", Some(ProblemCode::PolicyInvalidName)),
        ("fail_trailing_dot", "db.payments.internal.", Some(ProblemCode::PolicyInvalidName)),
        ("fail_star_in_middle", "foo.*.com", Some(ProblemCode::PolicyInvalidName)),
        ("fail_star_inside_label", "*foo.example.com", Some(ProblemCode::PolicyInvalidName)),
        ("fail_star_suffix_in_label", "db*.payments.internal", Some(ProblemCode::PolicyInvalidName)),
        ("fail_double_wildcard", "*.*.payments.internal", Some(ProblemCode::PolicyInvalidName)),
        ("fail_bare_star", "*", Some(ProblemCode::PolicyInvalidName)),
        ("fail_label_too_long", &long_label, Some(ProblemCode::PolicyInvalidName)),
        ("fail_name_too_long", &long_name, Some(ProblemCode::PolicyInvalidName)),
        ("fail_ipv4_as_dns_name", "10.20.0.1", Some(ProblemCode::PolicyInvalidName)),
        ("fail_ipv6_as_dns_name", "2001:db8::1", Some(ProblemCode::PolicyInvalidName)),
        ("fail_non_ascii", "bücher.example", Some(ProblemCode::PolicyInvalidName)),
        ("fail_fullwidth_dot", "db\u{ff0e}payments.internal", Some(ProblemCode::PolicyInvalidName)),
        ("fail_underscore", "_acme.payments.internal", Some(ProblemCode::PolicyInvalidName)),
        ("fail_space", "db .payments.internal", Some(ProblemCode::PolicyInvalidName)),
        ("fail_tab", "db\t.payments.internal", Some(ProblemCode::PolicyInvalidName)),
        ("fail_leading_hyphen", "-db.payments.internal", Some(ProblemCode::PolicyInvalidName)),
        ("fail_trailing_hyphen", "db-.payments.internal", Some(ProblemCode::PolicyInvalidName)),
        ("fail_reserved_hyphens", "ab--cd.payments.internal", Some(ProblemCode::PolicyInvalidName)),
        ("fail_bare_punycode_prefix", "xn--.payments.internal", Some(ProblemCode::PolicyInvalidName)),
        // "a⒈": U+2488 is disallowed under the STD3 rules.
        ("fail_punycode_of_disallowed_code_point", "xn--a-ecp.example", Some(ProblemCode::PolicyInvalidName)),
        // "a<ZWJ>b": a zero-width joiner outside the context IDNA allows.
        ("fail_punycode_of_zero_width_joiner", "xn--ab-m1t.example", Some(ProblemCode::PolicyInvalidName)),
        // "bÜcher": IDNA maps Ü to ü, so the canonical label is xn--bcher-kva.
        ("fail_non_canonical_punycode", "xn--bcher-2pa.example", Some(ProblemCode::PolicyInvalidName)),
        ("fail_undecodable_punycode", "xn--99999999999999.example", Some(ProblemCode::PolicyInvalidName)),
        ("fail_single_label", "localhost", Some(ProblemCode::PolicyInvalidName)),
        ("fail_numeric_top_label", "db.payments.123", Some(ProblemCode::PolicyInvalidName)),
        ("fail_wildcard_without_permission", "*.payments.internal", Some(ProblemCode::PolicyWildcardNotAllowed)),
        ("fail_star_does_not_span_two_labels", "a.b.payments.internal", Some(ProblemCode::PolicyNameNotAllowed)),
        ("fail_parent_of_star_pattern", "internal.example", Some(ProblemCode::PolicyNameNotAllowed)),
        ("fail_outside_policy", "evil.example.net", Some(ProblemCode::PolicyNameNotAllowed)),
        ("fail_suffix_trick", "db.payments.internal.evil.example", Some(ProblemCode::PolicyNameNotAllowed)),
    ];
    run_table(&policy, &cases, |name| names(&[name], &[], &[]));
}

#[test]
fn dns_names_with_wildcard_permission() {
    let policy = policy(json!({ "allow_wildcard_certificates": true }));
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Option<ProblemCode>)> = vec![
        ("ok_wildcard_with_permission", "*.payments.internal", None),
        ("ok_wildcard_uppercase", "*.PAYMENTS.internal", None),
        ("ok_exact_name_still_allowed", "db.payments.internal", None),
        ("fail_wildcard_not_under_star_label", "*.eu.example.com", Some(ProblemCode::PolicyNameNotAllowed)),
        ("fail_wildcard_too_broad", "*.internal", Some(ProblemCode::PolicyInvalidName)),
        ("fail_double_wildcard", "*.*.payments.internal", Some(ProblemCode::PolicyInvalidName)),
        ("fail_star_in_middle", "foo.*.com", Some(ProblemCode::PolicyInvalidName)),
        ("fail_wildcard_outside_policy", "*.evil.example", Some(ProblemCode::PolicyNameNotAllowed)),
    ];
    run_table(&policy, &cases, |name| names(&[name], &[], &[]));
}

#[test]
fn ip_addresses() {
    let policy = policy(json!({}));
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Option<ProblemCode>)> = vec![
        ("ok_ipv4_in_cidr", "10.20.3.4", None),
        ("ok_ipv4_cidr_first_address", "10.20.0.0", None),
        ("ok_ipv4_cidr_last_address", "10.20.255.255", None),
        ("ok_bare_address_is_one_host", "192.0.2.7", None),
        ("ok_ipv6_in_cidr", "2001:db8:1::5", None),
        ("ok_ipv4_mapped_ipv6_as_ipv4", "::ffff:10.20.0.5", None),
        ("fail_ipv4_outside_cidr", "10.21.0.1", Some(ProblemCode::PolicyNameNotAllowed)),
        ("fail_next_to_bare_address", "192.0.2.8", Some(ProblemCode::PolicyNameNotAllowed)),
        ("fail_ipv6_outside_cidr", "2001:db9::1", Some(ProblemCode::PolicyNameNotAllowed)),
        ("fail_ipv4_mapped_outside", "::ffff:10.21.0.5", Some(ProblemCode::PolicyNameNotAllowed)),
        ("fail_loopback", "127.0.0.1", Some(ProblemCode::PolicyNameNotAllowed)),
    ];
    run_table(&policy, &cases, |addr| names(&[], &[addr], &[]));
}

#[test]
fn ip_policy_written_as_ipv4_mapped_range() {
    let policy = policy(json!({ "allowed": { "ip": ["::ffff:10.30.0.0/112"] } }));
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Option<ProblemCode>)> = vec![
        ("ok_ipv4_inside_mapped_range", "10.30.1.2", None),
        ("ok_mapped_inside_mapped_range", "::ffff:10.30.1.2", None),
        ("fail_ipv4_outside_mapped_range", "10.31.0.1", Some(ProblemCode::PolicyNameNotAllowed)),
    ];
    run_table(&policy, &cases, |addr| names(&[], &[addr], &[]));
}

#[test]
fn uris() {
    let policy = policy(json!({}));
    let base = "spiffe://prod.example.org/ns/payments/sa";
    let long = format!("https://api.example.com/v1/{}/status", "a".repeat(2100));
    #[rustfmt::skip]
    let owned: Vec<(&str, String, Option<ProblemCode>)> = vec![
        ("ok_spiffe_segment_wildcard", format!("{base}/api"), None),
        ("ok_scheme_and_host_case_insensitive", "SPIFFE://Prod.Example.ORG/ns/payments/sa/api".into(), None),
        ("ok_https_segment_wildcard", "https://api.example.com/v1/orders/status".into(), None),
        ("fail_path_is_case_sensitive", "spiffe://prod.example.org/ns/Payments/sa/api".into(), Some(ProblemCode::PolicyNameNotAllowed)),
        ("fail_star_does_not_match_two_segments", format!("{base}/a/b"), Some(ProblemCode::PolicyNameNotAllowed)),
        ("fail_star_does_not_match_nothing", base.into(), Some(ProblemCode::PolicyNameNotAllowed)),
        ("fail_other_scheme", "http://api.example.com/v1/orders/status".into(), Some(ProblemCode::PolicyNameNotAllowed)),
        ("fail_other_port", "https://api.example.com:8443/v1/orders/status".into(), Some(ProblemCode::PolicyNameNotAllowed)),
        ("fail_other_trust_domain", "spiffe://evil.example.org/ns/payments/sa/api".into(), Some(ProblemCode::PolicyNameNotAllowed)),
        ("fail_trailing_slash", format!("{base}/"), Some(ProblemCode::PolicyInvalidName)),
        ("fail_spiffe_id_of_a_trust_domain_with_a_slash", "spiffe://prod.example.org/".into(), Some(ProblemCode::PolicyInvalidName)),
        ("fail_empty_segment", "spiffe://prod.example.org/ns//payments/sa/api".into(), Some(ProblemCode::PolicyInvalidName)),
        ("fail_query", format!("{base}/api?x=1"), Some(ProblemCode::PolicyInvalidName)),
        ("fail_fragment", format!("{base}/api#frag"), Some(ProblemCode::PolicyInvalidName)),
        ("fail_userinfo", "https://user@api.example.com/v1/orders/status".into(), Some(ProblemCode::PolicyInvalidName)),
        ("fail_relative_reference", "/ns/payments/sa/api".into(), Some(ProblemCode::PolicyInvalidName)),
        ("fail_no_scheme", "prod.example.org/ns/payments/sa/api".into(), Some(ProblemCode::PolicyInvalidName)),
        ("fail_no_authority", "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66".into(), Some(ProblemCode::PolicyInvalidName)),
        ("fail_dot_dot_segment", format!("{base}/../../admin/sa/x"), Some(ProblemCode::PolicyInvalidName)),
        ("fail_dot_segment", format!("{base}/./api"), Some(ProblemCode::PolicyInvalidName)),
        ("fail_percent_encoded_slash", format!("{base}/a%2Fb"), Some(ProblemCode::PolicyInvalidName)),
        ("fail_star_in_requested_uri", format!("{base}/*"), Some(ProblemCode::PolicyInvalidName)),
        ("fail_nul_in_uri", format!("{base}/a\0b"), Some(ProblemCode::PolicyInvalidName)),
        ("fail_space_in_uri", format!("{base}/a b"), Some(ProblemCode::PolicyInvalidName)),
        ("fail_non_ascii_in_uri", format!("{base}/bücher"), Some(ProblemCode::PolicyInvalidName)),
        ("fail_spiffe_with_port", "spiffe://prod.example.org:443/ns/payments/sa/api".into(), Some(ProblemCode::PolicyInvalidName)),
        ("fail_spiffe_bad_path_character", format!("{base}/a:b"), Some(ProblemCode::PolicyInvalidName)),
        ("fail_ip_literal_host", "https://[::1]/v1/orders/status".into(), Some(ProblemCode::PolicyInvalidName)),
        ("fail_empty_host", "https:///v1/orders/status".into(), Some(ProblemCode::PolicyInvalidName)),
        ("fail_bad_port", "https://api.example.com:0/v1/orders/status".into(), Some(ProblemCode::PolicyInvalidName)),
        ("fail_uri_too_long", long, Some(ProblemCode::PolicyInvalidName)),
    ];
    let cases: Vec<(&str, &str, Option<ProblemCode>)> = owned
        .iter()
        .map(|(case, input, want)| (*case, input.as_str(), want.clone()))
        .collect();
    run_table(&policy, &cases, |uri| names(&[], &[], &[uri]));
}

/// Allowed with this lifetime in seconds, or refused with this one code.
type Expected = Result<u64, ProblemCode>;

#[test]
fn key_type_and_ttl() {
    let policy = policy(json!({}));
    let requested = names(&["db.payments.internal"], &[], &[]);
    #[rustfmt::skip]
    let cases: &[(&str, KeyType, Option<u64>, Expected)] = &[
        ("ok_default_ttl", KeyType::EcP256, None, Ok(86_400)),
        ("ok_ttl_below_max", KeyType::Ed25519, Some(3_600), Ok(3_600)),
        ("ok_ttl_equal_to_max", KeyType::EcP256, Some(259_200), Ok(259_200)),
        ("fail_ttl_over_max", KeyType::EcP256, Some(259_201), Err(ProblemCode::PolicyTtlExceedsMax)),
        ("fail_zero_ttl", KeyType::EcP256, Some(0), Err(ProblemCode::RequestMalformed)),
        ("fail_key_type_not_allowed", KeyType::Rsa2048, None, Err(ProblemCode::PolicyKeyTypeNotAllowed)),
    ];
    for (case, key_type, ttl, want) in cases {
        let decision = evaluate(
            &policy,
            &IssuanceRequest {
                names: &requested,
                key_type: *key_type,
                ttl: *ttl,
                token_identity: None,
            },
        );
        match want {
            Ok(ttl_seconds) => assert_eq!(
                decision,
                Decision::Allow {
                    ttl_seconds: *ttl_seconds
                },
                "{case}"
            ),
            Err(code) => assert_eq!(codes(&decision), vec![code.clone()], "{case}"),
        }
    }
}

#[test]
fn fail_key_type_refusal_names_the_key_type() {
    let policy = policy(json!({}));
    let requested = names(&["db.payments.internal"], &[], &[]);
    let decision = evaluate(
        &policy,
        &IssuanceRequest {
            names: &requested,
            key_type: KeyType::Rsa4096,
            ttl: Some(300_000),
            token_identity: None,
        },
    );
    let refusals = decision.refusals();
    assert_eq!(refusals.len(), 2);
    assert_eq!(
        (refusals[0].kind.as_str(), refusals[0].name.as_str()),
        ("key_type", "rsa-4096")
    );
    assert_eq!(refusals[1].kind, "ttl");
}

#[test]
fn fail_disabled_policy_refuses_alone() {
    let policy = policy(json!({ "enabled": false }));
    assert!(!policy.is_enabled());
    let requested = names(&["evil.example.net"], &["10.99.0.1"], &[]);
    let decision = decide(&policy, &requested, None);
    assert_eq!(codes(&decision), vec![ProblemCode::PolicyDisabled]);
    assert_eq!(decision.refusals()[0].kind, "policy");
}

#[test]
fn fail_no_names() {
    let policy = policy(json!({}));
    let decision = decide(&policy, &RequestedNames::default(), None);
    assert_eq!(codes(&decision), vec![ProblemCode::CsrNoNames]);
}

#[test]
fn fail_multiple_refusals_all_reported_in_order() {
    let policy = policy(json!({}));
    let requested = names(
        &[
            "db.payments.internal",
            "db..payments.internal",
            "evil.example.net",
            "*.payments.internal",
        ],
        &["10.20.0.1", "10.99.0.1"],
        &["spiffe://prod.example.org/ns/payments/sa/api?x=1"],
    );
    let decision = evaluate(
        &policy,
        &IssuanceRequest {
            names: &requested,
            key_type: KeyType::Rsa3072,
            ttl: Some(997_200),
            token_identity: None,
        },
    );
    assert_eq!(
        codes(&decision),
        vec![
            ProblemCode::PolicyInvalidName,
            ProblemCode::PolicyNameNotAllowed,
            ProblemCode::PolicyWildcardNotAllowed,
            ProblemCode::PolicyNameNotAllowed,
            ProblemCode::PolicyInvalidName,
            ProblemCode::PolicyKeyTypeNotAllowed,
            ProblemCode::PolicyTtlExceedsMax,
        ]
    );
    let refused: Vec<(&str, &str)> = decision
        .refusals()
        .iter()
        .map(|refusal| (refusal.kind.as_str(), refusal.name.as_str()))
        .collect();
    assert_eq!(
        refused,
        vec![
            ("dns", "db..payments.internal"),
            ("dns", "evil.example.net"),
            ("dns", "*.payments.internal"),
            ("ip", "10.99.0.1"),
            ("uri", "spiffe://prod.example.org/ns/payments/sa/api?x=1"),
            ("key_type", "rsa-3072"),
            ("ttl", "277h"),
        ]
    );
}

#[test]
fn token_identity_at_enrollment() {
    let policy = policy(json!({}));
    let token = identity(
        &["api.payments.internal", "*.eu.example.com"],
        &["10.20.1.0/24"],
        &["spiffe://prod.example.org/ns/payments/sa/api"],
    );
    #[rustfmt::skip]
    let cases: &[(&str, RequestedNames, &[ProblemCode])] = &[
        ("ok_inside_token_and_policy", names(&["API.payments.internal"], &["10.20.1.9"], &["spiffe://prod.example.org/ns/payments/sa/api"]), &[]),
        ("ok_token_pattern", names(&["api.eu.example.com"], &[], &[]), &[]),
        ("fail_dns_outside_token", names(&["db.payments.internal"], &[], &[]), &[ProblemCode::TokenNameNotAllowed]),
        ("fail_ip_outside_token", names(&[], &["10.20.2.1"], &[]), &[ProblemCode::TokenNameNotAllowed]),
        ("fail_uri_outside_token", names(&[], &[], &["spiffe://prod.example.org/ns/payments/sa/db"]), &[ProblemCode::TokenNameNotAllowed]),
        ("fail_outside_token_and_policy", names(&["evil.example.net"], &[], &[]), &[ProblemCode::TokenNameNotAllowed, ProblemCode::PolicyNameNotAllowed]),
    ];
    for (case, requested, want) in cases {
        let decision = decide(&policy, requested, Some(&token));
        assert_eq!(codes(&decision), want.to_vec(), "{case}");
    }
}

#[test]
fn fail_malformed_token_identity_matches_nothing() {
    let policy = policy(json!({}));
    let token = identity(&["a*.payments.internal"], &["10.20.1.0/33"], &[]);
    let requested = names(&["a1.payments.internal"], &["10.20.1.1"], &[]);
    let decision = decide(&policy, &requested, Some(&token));
    assert_eq!(
        codes(&decision),
        vec![
            ProblemCode::TokenNameNotAllowed,
            ProblemCode::TokenNameNotAllowed
        ]
    );
}

#[test]
fn token_identity_at_minting() {
    let policy = policy(json!({}));
    #[rustfmt::skip]
    let cases: &[(&str, Identity, &[ProblemCode])] = &[
        ("ok_exact_names", identity(&["db.payments.internal"], &["10.20.1.1"], &["spiffe://prod.example.org/ns/payments/sa/api"]), &[]),
        ("ok_equal_patterns", identity(&["*.payments.internal"], &["10.20.0.0/16"], &["spiffe://prod.example.org/ns/payments/sa/*"]), &[]),
        ("ok_narrower_patterns", identity(&["api.*.example.com", "api.eu.example.com"], &["10.20.7.0/24", "::ffff:10.20.0.9"], &["https://api.example.com/v1/*/status"]), &[]),
        ("ok_uppercase_pattern", identity(&["*.PAYMENTS.internal"], &[], &[]), &[]),
        ("fail_wider_dns_pattern", identity(&["*.*.example.com"], &[], &[]), &[ProblemCode::PolicyIdentityOutsidePolicy]),
        ("fail_dns_outside", identity(&["evil.example.net"], &[], &[]), &[ProblemCode::PolicyIdentityOutsidePolicy]),
        ("fail_wider_cidr", identity(&[], &["10.0.0.0/8"], &[]), &[ProblemCode::PolicyIdentityOutsidePolicy]),
        ("fail_supernet_cidr", identity(&[], &["10.20.0.0/15"], &[]), &[ProblemCode::PolicyIdentityOutsidePolicy]),
        ("fail_wider_ipv6_cidr", identity(&[], &["2001:db8::/31"], &[]), &[ProblemCode::PolicyIdentityOutsidePolicy]),
        ("fail_wider_uri_pattern", identity(&[], &[], &["spiffe://prod.example.org/ns/*/sa/*"]), &[ProblemCode::PolicyIdentityOutsidePolicy]),
        ("fail_partial_wildcard_entry", identity(&["a*.payments.internal"], &[], &[]), &[ProblemCode::PolicyInvalidName]),
        ("fail_bad_cidr_entry", identity(&[], &["10.20.0.0/33"], &[]), &[ProblemCode::PolicyInvalidName]),
        ("fail_uri_query_entry", identity(&[], &[], &["spiffe://prod.example.org/ns/payments/sa/x?y"]), &[ProblemCode::PolicyInvalidName]),
        ("fail_empty_identity", Identity::default(), &[ProblemCode::PolicyIdentityOutsidePolicy]),
        ("fail_every_offender_listed", identity(&["evil.example.net", "db.payments.internal", "a..b"], &["10.0.0.0/8"], &["https://evil.example/x"]), &[ProblemCode::PolicyIdentityOutsidePolicy, ProblemCode::PolicyInvalidName, ProblemCode::PolicyIdentityOutsidePolicy, ProblemCode::PolicyIdentityOutsidePolicy]),
    ];
    for (case, identity, want) in cases {
        let decision = policy.check_identity_within(identity);
        assert_eq!(codes(&decision), want.to_vec(), "{case}");
    }
}

#[test]
fn compile_refuses_bad_specs() {
    #[rustfmt::skip]
    let cases: Vec<(&str, Value)> = vec![
        ("fail_partial_wildcard_pattern", json!({ "allowed": { "dns": ["a*.example.com"] } })),
        ("fail_wildcard_rightmost_label", json!({ "allowed": { "dns": ["example.*"] } })),
        ("fail_bare_star_pattern", json!({ "allowed": { "dns": ["*"] } })),
        ("fail_trailing_dot_pattern", json!({ "allowed": { "dns": ["example.com."] } })),
        ("fail_cidr_prefix_too_long", json!({ "allowed": { "ip": ["10.0.0.0/33"] } })),
        ("fail_cidr_host_bits_set", json!({ "allowed": { "ip": ["10.20.1.0/16"] } })),
        ("fail_ip_not_an_address", json!({ "allowed": { "ip": ["ten.0.0.0/8"] } })),
        ("fail_ip_leading_zero", json!({ "allowed": { "ip": ["010.0.0.1"] } })),
        ("fail_uri_pattern_with_query", json!({ "allowed": { "uri": ["https://a.example/*?q"] } })),
        ("fail_uri_pattern_partial_star", json!({ "allowed": { "uri": ["https://a.example/v*"] } })),
        ("fail_uri_pattern_star_host", json!({ "allowed": { "uri": ["spiffe://*/ns/x"] } })),
        ("fail_no_allowed_names", json!({ "allowed": {} })),
        ("fail_unknown_key_type", json!({ "key_types": ["rsa-1024"] })),
        ("fail_empty_key_types", json!({ "key_types": [] })),
        ("fail_unknown_eku", json!({ "extended_key_usage": ["code_signing"] })),
        ("fail_empty_ekus", json!({ "extended_key_usage": [] })),
        ("fail_default_ttl_over_max", json!({ "ttl": { "default": "73h", "max": "72h" } })),
        ("fail_uppercase_name", json!({ "name": "Payments" })),
        ("fail_name_with_underscore", json!({ "name": "pay_ments" })),
    ];
    for (case, overrides) in cases {
        match CompiledPolicy::compile(&spec(overrides), 1) {
            Err(error @ PolicyError::Invalid(_)) => {
                let PolicyError::Invalid(problems) = &error;
                assert_eq!(problems.len(), 1, "{case}: {problems:?}");
            }
            Ok(_) => panic!("{case}: compiled"),
        }
    }
}

#[test]
fn fail_compile_lists_every_problem() {
    let overrides = json!({
        "name": "-bad",
        "allowed": { "dns": ["a*.example.com", "ok.example.com"], "ip": ["10.0.0.0/33"] },
        "key_types": ["rsa-1024", "ec-p256"],
        "extended_key_usage": [],
        "ttl": { "default": "10d", "max": "1d" },
    });
    match CompiledPolicy::compile(&spec(overrides), 1) {
        Err(PolicyError::Invalid(problems)) => assert_eq!(problems.len(), 6, "{problems:?}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn new_versions_meet_the_write_time_rules() {
    let problems = |overrides: Value| match CompiledPolicy::compile_new_version(&spec(overrides), 1)
    {
        Ok(_) => 0,
        Err(PolicyError::Invalid(problems)) => problems.len(),
    };
    // (case, overrides, problems as a new version, compiles as a stored one)
    let cases = [
        ("ok_client_and_server_auth_with_renewal", json!({}), 0),
        (
            "ok_server_auth_only_without_renewal",
            json!({ "extended_key_usage": ["server_auth"], "renewal": { "allowed": false } }),
            0,
        ),
        (
            "fail_server_auth_only_with_renewal",
            json!({ "extended_key_usage": ["server_auth"] }),
            1,
        ),
        (
            "fail_server_auth_only_with_default_renewal",
            json!({ "extended_key_usage": ["server_auth"], "renewal": {} }),
            1,
        ),
        (
            "fail_reserved_server_policy_name",
            json!({ "name": super::SERVER_POLICY_NAME }),
            1,
        ),
        (
            "fail_both_and_a_compile_problem",
            json!({ "name": super::SERVER_POLICY_NAME, "extended_key_usage": ["server_auth"], "key_types": [] }),
            3,
        ),
    ];
    for (case, overrides, expected) in cases {
        assert_eq!(problems(overrides.clone()), expected, "{case}");
        if expected < 3 {
            // Versions stored before these rules existed still load.
            CompiledPolicy::compile(&spec(overrides), 1).unwrap_or_else(|e| panic!("{case}: {e}"));
        }
    }
}

#[test]
fn ok_compiled_policy_exposes_its_settings() {
    let compiled = policy(json!({
        "key_types": ["ed25519", "ec-p256", "ed25519"],
        "extended_key_usage": ["client_auth"],
        "allowed": { "dns": ["*.PAYMENTS.internal"], "ip": ["::ffff:10.0.0.0/104"] },
        "renewal": { "allowed": false },
    }));
    assert_eq!(compiled.name(), "payments-api");
    assert_eq!(compiled.version(), 3);
    assert!(compiled.is_enabled());
    assert_eq!(compiled.key_types(), &[KeyType::Ed25519, KeyType::EcP256]);
    assert_eq!(
        compiled.extended_key_usages(),
        &[ExtendedKeyUsage::ClientAuth]
    );
    assert_eq!(
        (compiled.ttl_default(), compiled.ttl_max()),
        (86_400, 259_200)
    );
    assert!(!compiled.allows_wildcard_certificates());
    assert!(!compiled.renewal_allowed());
    assert_eq!(compiled.max_chain_age(), None);
    assert_eq!(
        compiled.dns_patterns().collect::<Vec<_>>(),
        vec!["*.payments.internal"]
    );
    let ranges: Vec<String> = compiled.ip_ranges().iter().map(|r| r.to_string()).collect();
    assert_eq!(ranges, vec!["10.0.0.0/8"]);

    let base = policy(json!({}));
    assert_eq!(base.max_chain_age(), Some(90 * 86_400));
    assert!(base.renewal_allowed());
}

#[test]
fn ok_extended_key_usage_wire_names() {
    for usage in [ExtendedKeyUsage::ClientAuth, ExtendedKeyUsage::ServerAuth] {
        assert_eq!(ExtendedKeyUsage::parse(usage.as_str()), Some(usage));
    }
    assert_eq!(ExtendedKeyUsage::parse("ClientAuth"), None);
}

#[test]
fn policy_names() {
    let long = "a".repeat(64);
    let max = "a".repeat(63);
    #[rustfmt::skip]
    let cases: &[(&str, &str, bool)] = &[
        ("ok_simple", "payments-api", true),
        ("ok_digits", "team7", true),
        ("ok_single_character", "a", true),
        ("ok_63_characters", &max, true),
        ("fail_empty", "", false),
        ("fail_64_characters", &long, false),
        ("fail_uppercase", "Payments", false),
        ("fail_leading_hyphen", "-payments", false),
        ("fail_trailing_hyphen", "payments-", false),
        ("fail_dot", "payments.api", false),
        ("fail_space", "payments api", false),
        ("fail_non_ascii", "paymënts", false),
        ("fail_nul", "pay\0ments", false),
    ];
    for (case, name, ok) in cases {
        assert_eq!(validate_policy_name(name).is_ok(), *ok, "{case}");
    }
}

#[test]
fn canonical_dns_names() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("ok_lowercased", "DB.Payments.Internal", Some("db.payments.internal")),
        ("ok_wildcard_kept", "*.Payments.internal", Some("*.payments.internal")),
        ("fail_trailing_dot", "db.payments.internal.", None),
        ("fail_nul", "db\0.internal", None),
    ];
    for (case, input, want) in cases {
        assert_eq!(canonical_dns_name(input).ok().as_deref(), *want, "{case}");
    }
}

#[test]
fn canonical_uri_names() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("ok_scheme_and_host_lowercased_path_kept", "SPIFFE://Prod.Example.ORG/ns/Payments/sa/api", Some("spiffe://prod.example.org/ns/Payments/sa/api")),
        ("ok_port_as_a_plain_number", "https://API.example.com:0443/v1", Some("https://api.example.com:443/v1")),
        ("ok_already_canonical", "spiffe://td.example/sa/api", Some("spiffe://td.example/sa/api")),
        ("fail_spiffe_trailing_slash", "spiffe://td.example/", None),
        ("fail_query", "https://api.example.com/v1?x=1", None),
        ("fail_wildcard", "spiffe://td.example/sa/*", None),
    ];
    for (case, input, want) in cases {
        assert_eq!(canonical_uri_name(input).ok().as_deref(), *want, "{case}");
    }
}
