//! Human durations on the wire: `"90s"`, `"15m"`, `"24h"`, `"90d"`.
//!
//! Invariant: a [`Duration`] is a whole number of seconds, greater than zero.
//! It remembers the unit it was written with, so `"24h"` read from a policy is
//! written back as `"24h"`, not `"1d"`; comparisons look at seconds only.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A positive span of whole seconds written with a unit suffix.
#[derive(Clone, Copy, Debug)]
pub struct Duration {
    seconds: u64,
    /// Unit size in seconds to display with; always divides `seconds`.
    unit: u64,
}

impl PartialEq for Duration {
    fn eq(&self, other: &Self) -> bool {
        self.seconds == other.seconds
    }
}

impl Eq for Duration {}

impl PartialOrd for Duration {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Duration {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.seconds.cmp(&other.seconds)
    }
}

impl std::hash::Hash for Duration {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.seconds.hash(state);
    }
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// The string does not have the `<number><unit>` shape.
    #[error("duration {0:?} must look like 90s, 15m, 24h or 90d")]
    Malformed(String),
    /// Zero-length durations are never meaningful here.
    #[error("duration must be greater than zero")]
    Zero,
    /// The value does not fit in 64 bits of seconds.
    #[error("duration {0:?} is too large")]
    TooLarge(String),
}

const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

impl Duration {
    /// A duration of `seconds`, shown in the largest unit that divides it
    /// exactly; `None` for zero.
    pub fn from_seconds(seconds: u64) -> Option<Self> {
        let unit = UNITS
            .iter()
            .map(|(_, size)| *size)
            .find(|size| seconds.is_multiple_of(*size))
            .unwrap_or(1);
        (seconds > 0).then_some(Self { seconds, unit })
    }

    /// Length in seconds.
    pub fn as_seconds(&self) -> u64 {
        self.seconds
    }

    /// Length as a standard library duration.
    pub fn to_std(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.seconds)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || DurationError::Malformed(text.to_owned());
        let unit = text.chars().last().ok_or_else(malformed)?;
        let (_, multiplier) = UNITS
            .iter()
            .find(|(suffix, _)| *suffix == unit)
            .ok_or_else(malformed)?;
        let digits = &text[..text.len() - 1];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        let count: u64 = digits
            .parse()
            .map_err(|_| DurationError::TooLarge(text.to_owned()))?;
        let seconds = count
            .checked_mul(*multiplier)
            .ok_or_else(|| DurationError::TooLarge(text.to_owned()))?;
        if seconds == 0 {
            return Err(DurationError::Zero);
        }
        Ok(Self {
            seconds,
            unit: *multiplier,
        })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (suffix, size) = UNITS
            .iter()
            .find(|(_, size)| *size == self.unit)
            .copied()
            .unwrap_or(('s', 1));
        write!(f, "{}{}", self.seconds / size, suffix)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_units_round_trip() {
        for (text, seconds) in [
            ("90s", 90),
            ("15m", 900),
            ("24h", 86_400),
            ("90d", 7_776_000),
        ] {
            let parsed: Duration = text.parse().unwrap();
            assert_eq!(parsed.as_seconds(), seconds);
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn ok_display_uses_largest_exact_unit() {
        assert_eq!(Duration::from_seconds(3_600).unwrap().to_string(), "1h");
        assert_eq!(Duration::from_seconds(3_601).unwrap().to_string(), "3601s");
        assert_eq!("24h".parse::<Duration>().unwrap(), "1d".parse().unwrap());
    }

    #[test]
    fn fail_malformed_zero_and_overflow() {
        for text in ["", "h", "10", "1.5h", "-1h", "10w", " 1h", "1h "] {
            assert!(
                matches!(text.parse::<Duration>(), Err(DurationError::Malformed(_))),
                "{text}"
            );
        }
        assert_eq!("0s".parse::<Duration>(), Err(DurationError::Zero));
        assert!(matches!(
            "99999999999999999999d".parse::<Duration>(),
            Err(DurationError::TooLarge(_))
        ));
    }
}
