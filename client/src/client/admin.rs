//! Admin API calls (`/v1/admin/...`), made with a bearer admin JWT
//! ([`super::Client::with_bearer`]).
