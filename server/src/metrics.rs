//! Prometheus metrics served at `/metrics`.
//!
//! Names carry their unit (`_seconds`, `_total`). Labels are bounded: the
//! standard HTTP methods (any extension method a client invents is
//! `other`), route patterns (never raw paths), problem codes from the fixed
//! table, a small set of store operations, and the fixed reasons of
//! [`HandshakeFailure`].

use std::fmt::Write as _;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric as _, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeFailureLabels {
    reason: HandshakeFailure,
}

/// The label is the reason's stable lower_snake name, not the variant's.
impl EncodeLabelValue for HandshakeFailure {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.label())
    }
}

use crate::store::Store;
use crate::tls::HandshakeFailure;

fn latency_histogram() -> Histogram {
    // 100 µs … ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// All server metrics.
pub struct Metrics {
    registry: Registry,
    issuances: Counter,
    refusals: Family<CodeLabels, Counter>,
    requests: Family<RequestLabels, Histogram, fn() -> Histogram>,
    hsm_sign: Histogram,
    server_certificate_expiry: Gauge,
    database: Family<OperationLabels, Histogram, fn() -> Histogram>,
    tls_handshake_failures: TlsHandshakeFailures,
    crl: CrlMetrics,
}

/// The CRL publisher's metrics: CRLs signed, signings that failed, and the
/// thisUpdate of the oldest CRL served (alert when it nears `next_update`:
/// relying parties would soon hold an expired CRL).
#[derive(Clone, Debug, Default)]
pub struct CrlMetrics {
    signed: Counter,
    failures: Counter,
    oldest_this_update: Gauge,
}

impl CrlMetrics {
    /// One CRL signed and recorded.
    pub fn signed(&self) {
        self.signed.inc();
    }

    /// One CRL that could not be signed or recorded.
    pub fn failed(&self) {
        self.failures.inc();
    }

    /// The oldest thisUpdate among the CRLs served, unix time.
    pub fn oldest_this_update(&self, unix: i64) {
        self.oldest_this_update.set(unix);
    }
}

/// `certmint_tls_handshake_failures_total{reason}`: a handle for the TLS
/// client-certificate verifier ([`crate::tls::HolderCertificateVerifier`]),
/// which counts every certificate it refuses.
#[derive(Clone, Debug, Default)]
pub struct TlsHandshakeFailures(Family<HandshakeFailureLabels, Counter>);

impl TlsHandshakeFailures {
    /// One handshake refused for `reason`.
    pub fn inc(&self, reason: HandshakeFailure) {
        self.0
            .get_or_create(&HandshakeFailureLabels { reason })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("certmint");
        let issuances = Counter::default();
        registry.register(
            "certificates_issued",
            "Certificates signed and recorded",
            issuances.clone(),
        );
        let refusals = Family::<CodeLabels, Counter>::default();
        registry.register(
            "refusals",
            "Requests refused, by problem code",
            refusals.clone(),
        );
        let requests = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route pattern",
            requests.clone(),
        );
        let hsm_sign = latency_histogram();
        registry.register(
            "hsm_sign_duration_seconds",
            "Latency of C_Sign on the HSM",
            hsm_sign.clone(),
        );
        let database =
            Family::<OperationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "db_duration_seconds",
            "Latency of database operations",
            database.clone(),
        );
        let server_certificate_expiry = Gauge::default();
        registry.register(
            "server_certificate_expiry_timestamp_seconds",
            "notAfter of the TLS certificate the server is serving (unix time); alert well before it",
            server_certificate_expiry.clone(),
        );
        let tls_handshake_failures = TlsHandshakeFailures::default();
        // Every reason is exported from the start, at 0, so that a rate or
        // an alert on one reason has a series before its first failure.
        for reason in HandshakeFailure::ALL {
            // The guard only reads the new series; creating it is the point.
            drop(
                tls_handshake_failures
                    .0
                    .get_or_create(&HandshakeFailureLabels { reason }),
            );
        }
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes refused because of the client certificate, by reason",
            tls_handshake_failures.0.clone(),
        );
        let crl = CrlMetrics::default();
        registry.register(
            "crl_signed",
            "CRLs signed on the HSM and recorded by this replica",
            crl.signed.clone(),
        );
        registry.register(
            "crl_sign_failures",
            "CRLs this replica could not sign or record (retried at its next look)",
            crl.failures.clone(),
        );
        registry.register(
            "crl_oldest_this_update_timestamp_seconds",
            "thisUpdate of the oldest CRL this replica serves (unix time); alert when it nears crl.next_update",
            crl.oldest_this_update.clone(),
        );
        Self {
            crl,
            registry,
            issuances,
            refusals,
            requests,
            hsm_sign,
            server_certificate_expiry,
            database,
            tls_handshake_failures,
        }
    }

    /// A handle for the CRL publisher.
    pub fn crl(&self) -> CrlMetrics {
        self.crl.clone()
    }

    /// One certificate issued.
    pub fn issued(&self) {
        self.issuances.inc();
    }

    /// One request refused with `code`.
    pub fn refused(&self, code: &str) {
        self.refusals
            .get_or_create(&CodeLabels {
                code: code.to_owned(),
            })
            .inc();
    }

    /// One HTTP request finished.
    pub fn request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method_label(method).to_owned(),
                route: route.to_owned(),
                status,
            })
            .observe(seconds);
    }

    /// One C_Sign.
    pub fn hsm_sign(&self, seconds: f64) {
        self.hsm_sign.observe(seconds);
    }

    /// The gauge of the served TLS certificate's notAfter (unix time), for
    /// [`crate::tls::ServerCertificate`] to keep: a handle to the same value.
    pub fn server_certificate_expiry(&self) -> Gauge {
        self.server_certificate_expiry.clone()
    }

    /// The counter of refused client certificates, for the TLS verifier to
    /// keep: a handle to the same series `/metrics` shows.
    pub fn tls_handshake_failures(&self) -> TlsHandshakeFailures {
        self.tls_handshake_failures.clone()
    }

    /// One database operation.
    pub fn database(&self, operation: &str, seconds: f64) {
        self.database
            .get_or_create(&OperationLabels {
                operation: operation.to_owned(),
            })
            .observe(seconds);
    }

    /// Adds the SQLite group-commit counters of `store`, read at each
    /// scrape: `writes_total / batches_total` is the mean batch, i.e. how
    /// many write transactions share one durable COMMIT. Nothing is added
    /// for PostgreSQL.
    pub fn register_group_commit(&mut self, store: Store) {
        if store.group_commit_counts().is_some() {
            self.registry
                .register_collector(Box::new(GroupCommitCollector { store }));
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The method as a label: one of RFC 9110's methods, or `other`. HTTP lets
/// a client send any token as a method, and each distinct label value would
/// be a new series kept for the life of the process.
fn method_label(method: &str) -> &str {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    STANDARD
        .into_iter()
        .find(|standard| *standard == method)
        .unwrap_or("other")
}

/// Reads the store's group-commit totals at each scrape.
#[derive(Debug)]
struct GroupCommitCollector {
    store: Store,
}

impl Collector for GroupCommitCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(counts) = self.store.group_commit_counts() else {
            return Ok(());
        };
        for (name, help, value) in [
            (
                "db_group_commit_batches",
                "SQLite group-commit batches (one durable COMMIT each)",
                counts.batches,
            ),
            (
                "db_group_commit_writes",
                "Write transactions run in SQLite group-commit batches",
                counts.writes,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_share_one_label() {
        let metrics = Metrics::new();
        metrics.request("POST", "/v1/enroll", 201, 0.001);
        for n in 0..50 {
            metrics.request(&format!("X-INVENTED-{n}"), "unmatched", 405, 0.001);
        }
        let text = metrics.render();
        assert!(text.contains(r#"method="POST""#), "{text}");
        assert!(text.contains(r#"method="other""#), "{text}");
        assert!(!text.contains("INVENTED"), "{text}");
        let other_series = text
            .lines()
            .filter(|line| line.contains(r#"method="other""#) && line.contains("_count"))
            .count();
        assert_eq!(other_series, 1, "{text}");
    }

    #[test]
    fn ok_every_handshake_failure_reason_is_exported_from_the_start() {
        let metrics = Metrics::new();
        let text = metrics.render();
        for reason in HandshakeFailure::ALL {
            let line = format!(
                "certmint_tls_handshake_failures_total{{reason=\"{}\"}} 0",
                reason.label()
            );
            assert!(text.contains(&line), "no {line:?} in {text}");
        }
    }

    #[test]
    fn ok_a_counted_handshake_failure_shows_under_its_reason_only() {
        let metrics = Metrics::new();
        let failures = metrics.tls_handshake_failures();
        failures.inc(HandshakeFailure::UnknownIssuer);
        failures.inc(HandshakeFailure::UnknownIssuer);
        let text = metrics.render();
        assert!(
            text.contains(r#"certmint_tls_handshake_failures_total{reason="unknown_issuer"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"certmint_tls_handshake_failures_total{reason="malformed"} 0"#),
            "{text}"
        );
    }
}
