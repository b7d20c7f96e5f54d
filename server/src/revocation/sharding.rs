//! Which CRL lists a certificate: its issuer's shard for its notAfter, and
//! the URL that names that shard.
//!
//! Sharding is temporal (as Boulder's): a certificate's shard is
//! `(notAfter / width) % shards`. Certificates that expire in the same
//! window share a CRL, so a shard's entries leave it together once they
//! have been listed past their expiry, and no CRL grows without bound
//! however long the CA lives. The number of shards, and so the set of URLs
//! relying parties fetch, is fixed. The rule is applied once, at issuance,
//! and the result stored with the certificate: changing `crl.shards` or
//! `crl.shard_width` later moves only certificates issued afterwards.

/// How an issuer's leaf certificates are spread over CRLs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlSharding {
    /// Base URL of the distribution points, no trailing slash.
    pub base_url: String,
    /// Number of shards (at least 1).
    pub shards: u32,
    /// Width of one expiry window, seconds (at least 1).
    pub width_seconds: i64,
}

impl CrlSharding {
    /// The shard of a certificate expiring at `not_after_unix`.
    pub fn shard_of(&self, not_after_unix: i64) -> u32 {
        shard_of(not_after_unix, self.width_seconds, self.shards)
    }
}

/// `(not_after / width) % shards`, for any (even pre-1970) notAfter.
pub fn shard_of(not_after_unix: i64, width_seconds: i64, shards: u32) -> u32 {
    let window = not_after_unix.div_euclid(width_seconds.max(1));
    let shard = window.rem_euclid(i64::from(shards.max(1)));
    // rem_euclid of a positive modulus lies in [0, shards), which fits.
    u32::try_from(shard).unwrap_or(0)
}

/// Server-relative path of a CRL: `/crl/<issuer key id>/<shard>.crl`.
pub fn crl_path(issuer_key_id: &str, shard: u32) -> String {
    format!("/crl/{issuer_key_id}/{shard}.crl")
}

/// The distribution point URL of a CRL, as certificates and the CRL's own
/// Issuing Distribution Point carry it.
pub fn distribution_point(base_url: &str, issuer_key_id: &str, shard: u32) -> String {
    format!("{base_url}{}", crl_path(issuer_key_id, shard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_expiring_in_one_window_share_a_shard() {
        let hour = 3600;
        let sharding = CrlSharding {
            base_url: "http://ca.test".into(),
            shards: 4,
            width_seconds: 6 * hour,
        };
        let start = 1_800_000_000 - 1_800_000_000 % (6 * hour);
        assert_eq!(
            sharding.shard_of(start),
            sharding.shard_of(start + 6 * hour - 1)
        );
        assert_ne!(
            sharding.shard_of(start),
            sharding.shard_of(start + 6 * hour)
        );
        // The cycle closes after `shards` windows.
        assert_eq!(
            sharding.shard_of(start),
            sharding.shard_of(start + 24 * hour)
        );
    }

    #[test]
    fn shards_stay_in_range_for_any_time() {
        for not_after in [i64::MIN, -1, 0, 1, i64::MAX] {
            assert!(shard_of(not_after, 3600, 16) < 16, "{not_after}");
            assert_eq!(shard_of(not_after, 0, 0), 0);
        }
    }

    #[test]
    fn urls_name_issuer_and_shard() {
        assert_eq!(
            distribution_point("http://127.0.0.1:8080", "ab12", 3),
            "http://127.0.0.1:8080/crl/ab12/3.crl"
        );
    }
}
