//! When to renew and how long to wait after a failure: pure functions of
//! the certificate's dates, the current time and a random number, so tests
//! need neither a clock nor sleeping.
//!
//! Invariants:
//! - A renewal is never scheduled later than [`MAX_LIFETIME_FRACTION`] of
//!   the lifetime, whatever the server's hint and the jitter say.
//! - A wait is never negative (a time in the past means "now").
//! - Backoff delays grow exponentially, never exceed the configured cap,
//!   and never reach past the certificate's `not_after`.

use std::time::Duration as StdDuration;

use time::OffsetDateTime;

use crate::agent::output::Meta;

/// Latest point of the lifetime at which a renewal is scheduled.
pub const MAX_LIFETIME_FRACTION: f64 = 0.9;

/// A renewal waits at least this fraction of the certificate's lifetime
/// after the certificate was received (by this host's clock).
pub const MIN_LIFETIME_FRACTION_BEFORE_RENEWAL: f64 = 0.1;

/// A uniformly distributed number in `[0, 1)` from the system CSPRNG; the
/// schedule does not need cryptographic randomness, but ring's generator is
/// already here and never blocks after boot. Falls back to 0.5 (no jitter)
/// if the generator fails.
pub fn random_unit() -> f64 {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.5;
    }
    // 53 random bits: every value is exactly representable and below 1.
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// When to renew the certificate described by `meta`: the server's
/// `renew_after`, moved by up to `± jitter × lifetime` (`unit` in `[0, 1)`
/// picks where), and never later than 90 % of the lifetime.
///
/// The lifetime runs from when the certificate became usable here
/// (`max(not_before, received_at)`) to `not_after`: with short lifetimes
/// the server's backdating of `not_before` would otherwise dwarf it.
///
/// A certificate that is due the moment it arrives (by this host's clock)
/// waits a tenth of its lifetime instead: `renew_after` comes from the
/// server's clock, and a host clock running ahead by most of a lifetime
/// would otherwise find every new certificate due at once and renew in a
/// loop.
pub fn renewal_time(meta: &Meta, jitter: f64, unit: f64) -> OffsetDateTime {
    let start = meta.not_before.max(meta.received_at).min(meta.not_after);
    let lifetime = (meta.not_after - start).as_seconds_f64();
    let jitter = jitter.clamp(0.0, 0.5);
    let shift = lifetime * jitter * (unit.clamp(0.0, 1.0) * 2.0 - 1.0);
    let target = meta.renew_after + time::Duration::seconds_f64(shift);
    let cap = start + time::Duration::seconds_f64(lifetime * MAX_LIFETIME_FRACTION);
    let scheduled = target.min(cap);
    if scheduled > meta.received_at {
        return scheduled;
    }
    // Due the moment it arrived: this host's clock is ahead of the
    // server's (or the server asks for it back at once, which would loop
    // just the same).
    let full_lifetime = (meta.not_after - meta.not_before).as_seconds_f64().max(0.0);
    let floor = meta.received_at
        + time::Duration::seconds_f64(full_lifetime * MIN_LIFETIME_FRACTION_BEFORE_RENEWAL);
    floor.min(meta.not_after.max(meta.received_at))
}

/// How long from `now` until `at`; zero when `at` has passed.
pub fn wait_until(now: OffsetDateTime, at: OffsetDateTime) -> StdDuration {
    let seconds = (at - now).as_seconds_f64();
    if seconds > 0.0 {
        StdDuration::from_secs_f64(seconds)
    } else {
        StdDuration::ZERO
    }
}

/// Capped exponential backoff with jitter, for an unreachable server.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: StdDuration,
    max: StdDuration,
    failures: u32,
}

impl Backoff {
    /// Starts at `initial`, doubles per failure, never above `max`.
    pub fn new(initial: StdDuration, max: StdDuration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            failures: 0,
        }
    }

    /// Failures since the last [`Backoff::reset`].
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a failure and returns how long to wait before the next try:
    /// `min(max, initial × 2^(n-1))`, scaled by a factor in `[0.5, 1)`
    /// (`unit` in `[0, 1)`), so many agents that lost the server at the same
    /// moment do not come back in lockstep.
    pub fn next_delay(&mut self, unit: f64) -> StdDuration {
        let exponent = self.failures.min(30);
        self.failures = self.failures.saturating_add(1);
        let ceiling = self
            .initial
            .checked_mul(1u32 << exponent)
            .unwrap_or(self.max)
            .min(self.max);
        ceiling.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }

    /// Back to the initial delay (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// `delay`, shortened so that the retry happens no later than `not_after`
/// (a retry after expiry could only be answered `certificate.expired`).
/// Once `not_after` has passed, `delay` is kept as it is.
pub fn before_expiry(
    now: OffsetDateTime,
    not_after: OffsetDateTime,
    delay: StdDuration,
) -> StdDuration {
    let left = wait_until(now, not_after);
    if left.is_zero() {
        delay
    } else {
        delay.min(left)
    }
}

#[cfg(test)]
mod tests {
    use certmint::wire::{Identity, KeyType};
    use time::macros::datetime;

    use super::*;

    fn meta(
        not_before: OffsetDateTime,
        received_at: OffsetDateTime,
        lifetime_s: i64,
        renew_s: i64,
    ) -> Meta {
        Meta {
            serial: "01".into(),
            not_before,
            not_after: received_at + time::Duration::seconds(lifetime_s),
            renew_after: received_at + time::Duration::seconds(renew_s),
            policy: "p".into(),
            policy_version: 1,
            key_type: KeyType::EcP256,
            names: Identity::default(),
            received_at,
        }
    }

    const T0: OffsetDateTime = datetime!(2026-01-01 00:00:00 UTC);

    #[test]
    fn ok_without_jitter_the_server_hint_is_kept() {
        let m = meta(T0, T0, 3600, 2400);
        assert_eq!(renewal_time(&m, 0.0, 0.9), m.renew_after);
        assert_eq!(renewal_time(&m, 0.1, 0.5), m.renew_after);
    }

    #[test]
    fn ok_jitter_stays_within_its_fraction_and_never_past_ninety_percent() {
        let m = meta(T0, T0, 1000, 600);
        for step in 0..=100 {
            let unit = f64::from(step) / 100.0 * 0.999_999;
            let at = renewal_time(&m, 0.1, unit);
            assert!(at >= T0 + time::Duration::seconds(500), "{at}");
            assert!(at <= T0 + time::Duration::seconds(700), "{at}");
        }
        // A hint at 99 % (or jitter pushing past 90 %) is pulled back to 90 %.
        let late = meta(T0, T0, 1000, 990);
        assert_eq!(
            renewal_time(&late, 0.1, 0.999),
            T0 + time::Duration::seconds(900)
        );
    }

    #[test]
    fn ok_a_backdated_not_before_does_not_shrink_the_cap() {
        // 6 s certificate backdated by 60 s: the cap is 90 % of the 6 s
        // from receipt, not 90 % of 66 s from not_before.
        let m = meta(T0 - time::Duration::seconds(60), T0, 6, 4);
        let at = renewal_time(&m, 0.0, 0.5);
        assert_eq!(at, T0 + time::Duration::seconds(4));
        let late = meta(T0 - time::Duration::seconds(60), T0, 6, 6);
        assert_eq!(
            renewal_time(&late, 0.0, 0.5),
            T0 + time::Duration::milliseconds(5400)
        );
    }

    #[test]
    fn ok_a_host_clock_ahead_of_the_server_does_not_renew_at_once() {
        // Issued at T0 by the server's clock for 1 h, renew_after at 40 min;
        // this host's clock runs 50 min ahead, so it received it at
        // "T0 + 50 min": the hint is already past here.
        let received = T0 + time::Duration::minutes(50);
        let m = Meta {
            not_after: T0 + time::Duration::hours(1),
            renew_after: T0 + time::Duration::minutes(40),
            ..meta(T0, received, 3600, 2400)
        };
        let at = renewal_time(&m, 0.0, 0.5);
        assert_eq!(
            at,
            received + time::Duration::minutes(6),
            "a tenth of the lifetime later"
        );
        // With a sane clock the floor changes nothing.
        let sane = meta(T0, T0, 3600, 2400);
        assert_eq!(renewal_time(&sane, 0.0, 0.5), sane.renew_after);
    }

    #[test]
    fn ok_waits_are_never_negative() {
        assert_eq!(
            wait_until(T0, T0 - time::Duration::seconds(5)),
            StdDuration::ZERO
        );
        assert_eq!(
            wait_until(T0, T0 + time::Duration::seconds(5)),
            StdDuration::from_secs(5)
        );
    }

    #[test]
    fn ok_backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let mut backoff = Backoff::new(StdDuration::from_secs(1), StdDuration::from_secs(300));
        let ceilings = [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300];
        for ceiling in ceilings {
            let high = backoff.next_delay(0.999_999);
            assert!(
                high <= StdDuration::from_secs(ceiling),
                "{high:?} > {ceiling}"
            );
            assert!(high > StdDuration::from_secs_f64(ceiling as f64 * 0.99));
        }
        for _ in 0..100 {
            let low = backoff.next_delay(0.0);
            assert_eq!(low, StdDuration::from_secs(150));
        }
        assert_eq!(backoff.failures(), 112);
        backoff.reset();
        assert_eq!(backoff.next_delay(0.0), StdDuration::from_millis(500));
    }

    #[test]
    fn ok_a_retry_never_sleeps_past_not_after() {
        let not_after = T0 + time::Duration::seconds(10);
        assert_eq!(
            before_expiry(T0, not_after, StdDuration::from_secs(300)),
            StdDuration::from_secs(10)
        );
        assert_eq!(
            before_expiry(T0, not_after, StdDuration::from_secs(3)),
            StdDuration::from_secs(3)
        );
        assert_eq!(
            before_expiry(not_after, not_after, StdDuration::from_secs(3)),
            StdDuration::from_secs(3)
        );
    }

    #[test]
    fn ok_random_unit_is_in_range() {
        for _ in 0..1000 {
            let unit = random_unit();
            assert!((0.0..1.0).contains(&unit));
        }
    }
}
