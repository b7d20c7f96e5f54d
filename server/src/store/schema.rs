//! Diesel table definitions, written by hand to match `migrations/sqlite` and
//! `migrations/postgres` (the schema-parity test keeps the two in step).
//!
//! Only SQL types that diesel's `MultiConnection` backend supports on both
//! dialects appear here: `BigInt`, `Integer`, `Text`, `Binary`, `Bool`.

diesel::table! {
    policies (name, version) {
        name -> Text,
        version -> BigInt,
        spec_json -> Text,
        enabled -> Bool,
        created_at -> BigInt,
        created_by -> Text,
    }
}

diesel::table! {
    bootstrap_tokens (id) {
        id -> Text,
        policy -> Text,
        identity_json -> Text,
        max_uses -> BigInt,
        uses -> BigInt,
        expires_at -> BigInt,
        created_at -> BigInt,
        created_by -> Text,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    provisioners (name) {
        name -> Text,
        public_key_pem -> Text,
        algorithm -> Text,
        key_id -> Text,
        policies_json -> Text,
        max_token_ttl -> BigInt,
        created_at -> BigInt,
        created_by -> Text,
        disabled_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    certificates (serial) {
        serial -> Text,
        status -> Text,
        policy -> Text,
        policy_version -> BigInt,
        identity_json -> Text,
        key_type -> Text,
        subject_key_sha256 -> Text,
        not_before -> BigInt,
        not_after -> BigInt,
        tbs_der -> Binary,
        certificate_der -> Nullable<Binary>,
        token_id -> Nullable<Text>,
        predecessor -> Nullable<Text>,
        created_at -> BigInt,
        issued_at -> Nullable<BigInt>,
        failure -> Nullable<Text>,
    }
}

diesel::table! {
    certificate_revocations (serial) {
        serial -> Text,
        revoked_at -> BigInt,
        reason -> Text,
        revoked_by -> Text,
        invalidity_date -> Nullable<BigInt>,
    }
}

diesel::joinable!(certificate_revocations -> certificates (serial));

diesel::table! {
    renewal_chains (serial) {
        serial -> Text,
        chain_started_at -> BigInt,
    }
}

diesel::joinable!(renewal_chains -> certificates (serial));

diesel::table! {
    ca_state (id) {
        id -> Integer,
        root_der -> Binary,
        issuing_der -> Nullable<Binary>,
        root_key_label -> Nullable<Text>,
        issuing_key_label -> Text,
        issuing_key_type -> Text,
        pending_csr_der -> Nullable<Binary>,
        created_at -> BigInt,
        intermediates_der -> Nullable<Binary>,
    }
}

diesel::table! {
    ca_key_reservations (label) {
        label -> Text,
        key_id -> Binary,
        key_type -> Text,
        reserved_at -> BigInt,
    }
}

diesel::table! {
    audit_events (seq) {
        seq -> BigInt,
        at -> BigInt,
        kind -> Text,
        actor -> Text,
        subject -> Text,
        data_json -> Text,
        prev_hash -> Text,
        hash -> Text,
    }
}

diesel::table! {
    audit_head (id) {
        id -> Integer,
        seq -> BigInt,
        hash -> Text,
    }
}

diesel::table! {
    crl_assignments (serial) {
        serial -> Text,
        issuer_key_id -> Text,
        shard -> Integer,
    }
}

diesel::joinable!(crl_assignments -> certificates (serial));

diesel::table! {
    crl_issuers (issuer_key_id) {
        issuer_key_id -> Text,
        last_number -> BigInt,
    }
}

diesel::table! {
    crl_shards (issuer_key_id, shard) {
        issuer_key_id -> Text,
        shard -> Integer,
        generation -> BigInt,
        claim_number -> BigInt,
        claimed_until -> BigInt,
    }
}

diesel::table! {
    crls (issuer_key_id, number) {
        issuer_key_id -> Text,
        number -> BigInt,
        shard -> Integer,
        scope -> Text,
        generation -> BigInt,
        this_update -> BigInt,
        next_update -> BigInt,
        entries -> BigInt,
        der -> Binary,
        sha256 -> Text,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    policies,
    bootstrap_tokens,
    provisioners,
    certificates,
    certificate_revocations,
    renewal_chains,
    ca_state,
    ca_key_reservations,
    audit_events,
    crl_assignments,
    crl_issuers,
    crl_shards,
    crls,
    audit_head,
);
