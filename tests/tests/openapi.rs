//! The body half of the OpenAPI contract: real responses from a running
//! server, for every documented operation and its main error paths, are
//! validated against `openapi/openapi.yaml`: the status must be documented
//! for the operation, the content type must match, and a JSON body must
//! satisfy the documented schema (JSON Schema 2020-12, formats checked).
//! The route half (registered routes == documented routes) is a unit test
//! in `server/src/api/mod.rs`.

use std::collections::BTreeSet;
use std::sync::Mutex;

use certmint_e2e::{backend_tests, identity, make_csr, policy_json, Auth, RequestBody, TestServer};
use serde_json::{json, Value};

fn spec() -> &'static Value {
    static SPEC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.yaml");
        let text = std::fs::read_to_string(path).expect("read openapi.yaml");
        serde_norway::from_str(&text).expect("openapi.yaml parses")
    })
}

/// Operations exercised so far, to prove every documented one was checked.
static EXERCISED: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());

/// Sends a request and checks the response against the spec's operation
/// `method template`. Returns the response for further assertions.
fn checked(
    server: &TestServer,
    auth: Auth<'_>,
    method: &str,
    template: &str,
    path: &str,
    body: Option<Value>,
) -> certmint_e2e::Response {
    let response = server.request_unchecked(auth, method, path, body.map(RequestBody::Json));
    let operation = &spec()["paths"][template][method.to_ascii_lowercase()];
    assert!(
        operation.is_object(),
        "{method} {template} is not documented in openapi.yaml"
    );
    let documented = &operation["responses"][response.status.to_string()];
    let documented = resolve(documented);
    assert!(
        documented.is_object(),
        "{}: status {} is not documented for {method} {template}: {}",
        response.request,
        response.status,
        response.text
    );
    let media_type = response
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let content = &documented["content"];
    if let Some(types) = content.as_object() {
        let described = &types
            .get(&media_type)
            .unwrap_or_else(|| {
                panic!(
                    "{}: content type {media_type:?} is not documented for {} {method} {template} (documented: {:?})",
                    response.request,
                    response.status,
                    types.keys().collect::<Vec<_>>()
                )
            })["schema"];
        if media_type.ends_with("json") {
            validate(described, &response.body, &response.request, &response.text);
        }
    }
    EXERCISED
        .lock()
        .expect("the exercised-operations set is never poisoned")
        .insert((method.to_ascii_lowercase(), template.to_owned()));
    response
}

/// Follows a `$ref` to `#/components/...` (responses are often shared).
fn resolve(value: &Value) -> &Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.trim_start_matches('#');
            resolve(spec().pointer(pointer).unwrap_or(&Value::Null))
        }
        None => value,
    }
}

fn validate(schema: &Value, instance: &Value, request: &str, text: &str) {
    // The operation's schema, with the spec's components beside it so that
    // `#/components/schemas/...` references resolve.
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": spec()["components"],
        "allOf": [schema],
    });
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&root)
        .expect("the documented schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{request}: body violates the documented schema:\n  {}\nbody: {text}",
        errors.join("\n  ")
    );
}

backend_tests! {
    fn ok_every_operation_answers_as_documented(server: &TestServer) {
        let policy = server.unique("contract");
        let spec_json = policy_json(&policy, &["*.contract.internal"], &["10.9.0.0/16"], &[]);

        // Public endpoints.
        checked(server, Auth::None, "GET", "/v1/directory", "/v1/directory", None);
        checked(server, Auth::None, "GET", "/v1/ca/chain.pem", "/v1/ca/chain.pem", None);
        let crls = checked(server, Auth::None, "GET", "/v1/crls", "/v1/crls", None);
        let first_crl = crls.body["crls"][0]["path"]
            .as_str()
            .expect("the index lists a CRL")
            .to_owned();
        checked(server, Auth::None, "GET", "/crl/{issuer}/{file}", &first_crl, None);
        let issuer = first_crl.split('/').nth(2).expect("an issuer segment");
        checked(
            server,
            Auth::None,
            "GET",
            "/crl/{issuer}/{file}",
            &format!("/crl/{issuer}/9999.crl"),
            None,
        )
        .assert_problem(404, "crl.not_found");
        checked(server, Auth::None, "GET", "/healthz", "/healthz", None);
        checked(server, Auth::None, "GET", "/readyz", "/readyz", None);
        checked(server, Auth::None, "GET", "/metrics", "/metrics", None);
        checked(server, Auth::None, "GET", "/openapi.json", "/openapi.json", None);

        // Policies.
        checked(server, Auth::Admin, "POST", "/v1/admin/policies", "/v1/admin/policies", Some(spec_json.clone()))
            .assert_status(201);
        checked(server, Auth::Admin, "POST", "/v1/admin/policies", "/v1/admin/policies", Some(spec_json.clone()))
            .assert_problem(409, "policy.already_exists");
        checked(server, Auth::Auditor, "POST", "/v1/admin/policies", "/v1/admin/policies", Some(spec_json.clone()))
            .assert_problem(403, "auth.forbidden");
        checked(server, Auth::None, "GET", "/v1/admin/policies", "/v1/admin/policies", None)
            .assert_problem(401, "auth.missing");
        checked(server, Auth::Auditor, "GET", "/v1/admin/policies", "/v1/admin/policies?limit=2", None)
            .assert_status(200);
        let named = format!("/v1/admin/policies/{policy}");
        checked(server, Auth::Admin, "GET", "/v1/admin/policies/{name}", &named, None).assert_status(200);
        checked(server, Auth::Admin, "GET", "/v1/admin/policies/{name}", "/v1/admin/policies/no-such", None)
            .assert_problem(404, "policy.not_found");
        checked(server, Auth::Admin, "PUT", "/v1/admin/policies/{name}", &named, Some(spec_json.clone()))
            .assert_status(200);
        let mut bad = spec_json.clone();
        bad["ttl"] = json!({"default": "96h", "max": "24h"});
        checked(server, Auth::Admin, "PUT", "/v1/admin/policies/{name}", &named, Some(bad))
            .assert_problem(422, "policy.invalid");

        // Tokens and enrollment.
        let minted = checked(
            server, Auth::Admin, "POST", "/v1/admin/tokens", "/v1/admin/tokens",
            Some(json!({"policy": policy, "identity": identity(&["*.contract.internal"], &[], &[]), "ttl": "10m", "max_uses": 2})),
        );
        minted.assert_status(201);
        let token = minted.body["token"].as_str().unwrap().to_owned();
        let token_id = minted.body["id"].as_str().unwrap().to_owned();
        checked(
            server, Auth::Admin, "POST", "/v1/admin/tokens", "/v1/admin/tokens",
            Some(json!({"policy": policy, "identity": identity(&["*.elsewhere.internal"], &[], &[])})),
        )
        .assert_problem(422, "policy.identity_outside_policy");
        checked(server, Auth::Auditor, "GET", "/v1/admin/tokens", "/v1/admin/tokens", None).assert_status(200);
        let token_path = format!("/v1/admin/tokens/{token_id}");
        checked(server, Auth::Admin, "GET", "/v1/admin/tokens/{id}", &token_path, None).assert_status(200);
        checked(server, Auth::Admin, "GET", "/v1/admin/tokens/{id}", &format!("/v1/admin/tokens/{}", "0".repeat(32)), None)
            .assert_problem(404, "token.not_found");

        let (csr, key) = make_csr("ec-p256", &["api.contract.internal"], &[], &[]);
        let enrolled = checked(server, Auth::None, "POST", "/v1/enroll", "/v1/enroll", Some(json!({"csr": csr, "token": token})));
        enrolled.assert_status(201);
        let serial = enrolled.body["serial"].as_str().unwrap().to_owned();
        let (outside, _key) = make_csr("ec-p256", &["api.elsewhere.internal"], &[], &[]);
        checked(server, Auth::None, "POST", "/v1/enroll", "/v1/enroll", Some(json!({"csr": outside, "token": token})))
            .assert_problem(403, "token.name_not_allowed");
        checked(server, Auth::None, "POST", "/v1/enroll", "/v1/enroll", Some(json!({"csr": "garbage", "token": token})))
            .assert_problem(400, "csr.malformed");
        checked(server, Auth::None, "POST", "/v1/enroll", "/v1/enroll", Some(json!({"csr": csr, "token": "a.b.c"})))
            .assert_problem(401, "token.malformed");

        // Renewal and self-revocation over mutual TLS.
        let bundle: certmint::wire::CertificateBundle = enrolled.json();
        let holder = server.holder(&format!("{}{}", bundle.certificate_pem, bundle.chain_pem), &key);
        let (fresh, fresh_key) = make_csr("ec-p256", &["api.contract.internal"], &[], &[]);
        let renewed = checked(server, Auth::Holder(&holder), "POST", "/v1/renew", "/v1/renew", Some(json!({"csr": fresh})));
        renewed.assert_status(201);
        checked(server, Auth::None, "POST", "/v1/renew", "/v1/renew", Some(json!({"csr": fresh})))
            .assert_problem(401, "mtls.certificate_required");
        checked(server, Auth::Holder(&holder), "POST", "/v1/renew", "/v1/renew", Some(json!({"csr": outside})))
            .assert_problem(403, "renewal.identity_mismatch");
        checked(server, Auth::Holder(&holder), "POST", "/v1/renew", "/v1/renew", Some(json!({"csr": "garbage"})))
            .assert_problem(400, "csr.malformed");
        let renewed: certmint::wire::CertificateBundle = renewed.json();
        let renewed_holder = server.holder(&format!("{}{}", renewed.certificate_pem, renewed.chain_pem), &fresh_key);
        checked(server, Auth::Holder(&renewed_holder), "POST", "/v1/revoke", "/v1/revoke", Some(json!({"reason": "superseded"})))
            .assert_status(200);
        checked(server, Auth::Holder(&renewed_holder), "POST", "/v1/revoke", "/v1/revoke", Some(json!({})))
            .assert_problem(409, "certificate.already_revoked");
        checked(server, Auth::Holder(&renewed_holder), "POST", "/v1/renew", "/v1/renew", Some(json!({"csr": fresh})))
            .assert_problem(403, "certificate.revoked");
        checked(server, Auth::None, "POST", "/v1/revoke", "/v1/revoke", Some(json!({})))
            .assert_problem(401, "mtls.certificate_required");

        // Dry run.
        let evaluate = format!("/v1/admin/policies/{policy}/evaluate");
        let dry = checked(server, Auth::Auditor, "POST", "/v1/admin/policies/{name}/evaluate", &evaluate,
            Some(json!({"csr": outside, "ttl": "1h"})));
        dry.assert_status(200);
        assert_eq!(dry.body["decision"], "deny");

        // Inventory and revocation.
        checked(server, Auth::Auditor, "GET", "/v1/admin/certificates", "/v1/admin/certificates?status=issued&limit=5", None)
            .assert_status(200);
        checked(server, Auth::Auditor, "GET", "/v1/admin/certificates", "/v1/admin/certificates?cursor=junk", None)
            .assert_problem(400, "request.invalid_parameter");
        let certificate_path = format!("/v1/admin/certificates/{serial}");
        checked(server, Auth::Auditor, "GET", "/v1/admin/certificates/{serial}", &certificate_path, None)
            .assert_status(200);
        let revoke = format!("/v1/admin/certificates/{serial}/revoke");
        checked(server, Auth::Admin, "POST", "/v1/admin/certificates/{serial}/revoke", &revoke,
            Some(json!({"reason": "key_compromise"}))).assert_status(200);
        checked(server, Auth::Admin, "POST", "/v1/admin/certificates/{serial}/revoke", &revoke,
            Some(json!({"reason": "superseded"}))).assert_problem(409, "certificate.already_revoked");

        // Provisioners, and enrollment with a provisioner's token.
        let provisioner = certmint_e2e::TestProvisioner::new(&server.unique("orchestrator"));
        let registration = provisioner.registration(&[&policy]);
        checked(server, Auth::Admin, "POST", "/v1/admin/provisioners", "/v1/admin/provisioners", Some(registration.clone()))
            .assert_status(201);
        checked(server, Auth::Admin, "POST", "/v1/admin/provisioners", "/v1/admin/provisioners", Some(registration))
            .assert_problem(409, "provisioner.already_exists");
        let mut bad_key = provisioner.registration(&[&policy]);
        bad_key["name"] = json!(server.unique("badkey"));
        bad_key["public_key_pem"] = json!("not a key");
        checked(server, Auth::Admin, "POST", "/v1/admin/provisioners", "/v1/admin/provisioners", Some(bad_key))
            .assert_problem(422, "provisioner.invalid");
        checked(server, Auth::Auditor, "GET", "/v1/admin/provisioners", "/v1/admin/provisioners", None).assert_status(200);
        let provisioner_path = format!("/v1/admin/provisioners/{}", provisioner.name);
        checked(server, Auth::Auditor, "GET", "/v1/admin/provisioners/{name}", &provisioner_path, None).assert_status(200);
        checked(server, Auth::Admin, "GET", "/v1/admin/provisioners/{name}", "/v1/admin/provisioners/no-such", None)
            .assert_problem(404, "provisioner.not_found");
        let audience = certmint_e2e::jwt_segments(&token).1["aud"].as_str().unwrap().to_owned();
        let dns = identity(&["*.contract.internal"], &[], &[]);
        let signed = provisioner.token(&audience, &policy, &dns, "contract-1");
        let (csr, _key) = make_csr("ec-p256", &["p.contract.internal"], &[], &[]);
        checked(server, Auth::None, "POST", "/v1/enroll", "/v1/enroll", Some(json!({"csr": csr, "token": signed})))
            .assert_status(201);
        // A replay with another key (the same CSR would get its certificate
        // again: a retry after a lost response).
        let (replayed, _key) = make_csr("ec-p256", &["p.contract.internal"], &[], &[]);
        checked(server, Auth::None, "POST", "/v1/enroll", "/v1/enroll", Some(json!({"csr": replayed, "token": signed})))
            .assert_problem(401, "token.used");
        let elsewhere = provisioner.token(&audience, "no-such-policy", &dns, "contract-2");
        checked(server, Auth::None, "POST", "/v1/enroll", "/v1/enroll", Some(json!({"csr": csr, "token": elsewhere})))
            .assert_problem(403, "token.policy_not_allowed");
        checked(server, Auth::Admin, "DELETE", "/v1/admin/provisioners/{name}", &provisioner_path, None).assert_status(200);
        let after = provisioner.token(&audience, &policy, &dns, "contract-3");
        checked(server, Auth::None, "POST", "/v1/enroll", "/v1/enroll", Some(json!({"csr": csr, "token": after})))
            .assert_problem(401, "token.issuer_disabled");

        // Revoke the token, disable the policy, read the audit log.
        checked(server, Auth::Admin, "DELETE", "/v1/admin/tokens/{id}", &token_path, None).assert_status(200);
        checked(server, Auth::Admin, "DELETE", "/v1/admin/policies/{name}", &named, None).assert_status(200);
        checked(server, Auth::Auditor, "GET", "/v1/admin/audit", "/v1/admin/audit?limit=50", None).assert_status(200);

        // Every documented operation was exercised by this test.
        let exercised = EXERCISED.lock().unwrap().clone();
        let mut documented = BTreeSet::new();
        for (path, item) in spec()["paths"].as_object().unwrap() {
            for method in ["get", "put", "post", "delete", "patch"] {
                if item.get(method).is_some() {
                    documented.insert((method.to_owned(), path.clone()));
                }
            }
        }
        let missed: Vec<_> = documented.difference(&exercised).collect();
        assert!(missed.is_empty(), "operations the contract test did not exercise: {missed:?}");
    }
}
