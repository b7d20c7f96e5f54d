//! Helpers for driving the `certmint` CLI (`admin`, `status`) in tests.
