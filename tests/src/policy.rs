//! Policy and identity JSON for tests: the defaults a test changes one
//! field of, so each test states only what it is about.

use serde_json::{json, Value};

/// A policy JSON with sensible defaults: ec-p256 only, 24h/72h, client_auth.
pub fn policy_json(name: &str, dns: &[&str], ip: &[&str], uri: &[&str]) -> Value {
    json!({
        "name": name,
        "description": "end-to-end test policy",
        "allowed": {"dns": dns, "ip": ip, "uri": uri},
        "key_types": ["ec-p256"],
        "ttl": {"default": "24h", "max": "72h"},
        "extended_key_usage": ["client_auth"],
        "renewal": {"allowed": true, "max_chain_age": "90d"},
        "allow_wildcard_certificates": false,
        "enabled": true
    })
}

/// An identity JSON.
pub fn identity(dns: &[&str], ip: &[&str], uri: &[&str]) -> Value {
    json!({"dns": dns, "ip": ip, "uri": uri})
}
