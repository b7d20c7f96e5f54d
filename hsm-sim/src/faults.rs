//! Fault injection: latency, random failures, device removal and a session
//! limit, changeable while an application runs.
//!
//! Faults come from the control file `<dir>/faults.toml` (written by
//! `hsm-sim fault …`) when it exists, and otherwise from the `[faults]`
//! table of the configuration file. Both are re-read whenever their size,
//! modification time or inode changes, which the module checks (one `stat`
//! each) on every PKCS#11 call. A file that fails to parse while the module
//! runs is ignored and the previous faults stay in force.
//!
//! The module applies a [`Decision`] before running the real function:
//! first the delay (outside any lock, so slow calls still overlap), then the
//! injected return code, if one was drawn.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{parse_code, Ckr};

/// The fault knobs, as written in TOML.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Fixed delay added to every call, e.g. `"200ms"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<String>,
    /// Extra random delay, uniform in `[0, jitter]`, e.g. `"50ms"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<String>,
    /// Probability in `[0, 1]` that a call fails with `fail_code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_rate: Option<f64>,
    /// The return code of injected failures (default `CKR_DEVICE_ERROR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_code: Option<String>,
    /// Only these functions fail (e.g. `["C_Sign"]`); empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fail_functions: Vec<String>,
    /// Maximum number of open sessions; `C_OpenSession` beyond it returns
    /// `CKR_SESSION_COUNT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_limit: Option<u64>,
    /// The device is removed: every session is closed, calls on sessions
    /// return `CKR_DEVICE_REMOVED` and tokens are reported absent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub device_removed: bool,
}

/// A validated [`FaultConfig`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Fixed delay per call.
    pub latency: Duration,
    /// Maximum extra random delay per call.
    pub jitter: Duration,
    /// Failure probability.
    pub fail_rate: f64,
    /// Injected return code.
    pub fail_code: Option<Ckr>,
    /// Functions that may fail; empty means all.
    pub fail_functions: Vec<String>,
    /// Session limit.
    pub session_limit: Option<u64>,
    /// Device removed.
    pub device_removed: bool,
}

/// What happens to one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// How long to wait before running the call.
    pub delay: Duration,
    /// Fail with this code instead of running the call.
    pub fail: Option<Ckr>,
    /// The device is removed.
    pub device_removed: bool,
    /// The session limit in force.
    pub session_limit: Option<u64>,
}

/// Functions never delayed nor failed: the application could not even load
/// or unload the module otherwise.
const EXEMPT: &[&str] = &[
    "C_GetFunctionList",
    "C_Initialize",
    "C_Finalize",
    "C_GetInfo",
];

impl FaultConfig {
    /// Checks the values and converts them.
    pub fn validate(&self) -> Result<Faults, String> {
        let duration = |value: &Option<String>, name: &str| match value {
            None => Ok(Duration::ZERO),
            Some(text) => {
                parse_duration(text).ok_or_else(|| format!("{name}: invalid duration {text:?}"))
            }
        };
        let fail_rate = self.fail_rate.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&fail_rate) {
            return Err(format!(
                "fail_rate must be between 0 and 1, not {fail_rate}"
            ));
        }
        let fail_code = match &self.fail_code {
            None => None,
            Some(text) => match parse_code(text) {
                Some(0) => return Err("fail_code cannot be CKR_OK".to_owned()),
                Some(code) => Some(Ckr(code)),
                None => return Err(format!("fail_code: unknown return code {text:?}")),
            },
        };
        Ok(Faults {
            latency: duration(&self.latency, "latency")?,
            jitter: duration(&self.jitter, "jitter")?,
            fail_rate,
            fail_code,
            fail_functions: self.fail_functions.clone(),
            session_limit: self.session_limit,
            device_removed: self.device_removed,
        })
    }

    /// True when no fault is set.
    pub fn is_empty(&self) -> bool {
        *self == FaultConfig::default()
    }
}

impl Faults {
    /// Decides the fate of one call to `function`, drawing randomness from
    /// `random` (a uniform number in `[0, 1)`) for jitter and failures.
    pub fn decide(&self, function: &str, mut random: impl FnMut() -> f64) -> Decision {
        let mut decision = Decision {
            device_removed: self.device_removed,
            session_limit: self.session_limit,
            ..Decision::default()
        };
        if EXEMPT.contains(&function) {
            return decision;
        }
        decision.delay = self.latency;
        if !self.jitter.is_zero() {
            decision.delay += self.jitter.mul_f64(random());
        }
        let targeted = self.fail_functions.is_empty()
            || self.fail_functions.iter().any(|name| name == function);
        if self.fail_rate > 0.0 && targeted && random() < self.fail_rate {
            decision.fail = Some(self.fail_code.unwrap_or(Ckr::DEVICE_ERROR));
        }
        decision
    }
}

/// Parses `"200ms"`, `"1.5s"`, `"250us"`, `"2m"` or `"0"`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "us" | "µs" => number / 1_000_000.0,
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

/// Identity of a file's current contents, to notice rewrites cheaply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    /// The stamp of `path`, or `None` if it does not exist.
    pub fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            inode: metadata.ino(),
        })
    }
}

/// A watched fault source: the control file, falling back to the
/// configuration file's `[faults]`.
#[derive(Debug)]
pub struct FaultWatch {
    control: PathBuf,
    config_file: Option<PathBuf>,
    control_stamp: Option<FileStamp>,
    config_stamp: Option<FileStamp>,
    control_faults: Option<Faults>,
    config_faults: Faults,
}

impl FaultWatch {
    /// Watches `control` and, if given, the configuration file.
    pub fn new(control: PathBuf, config_file: Option<PathBuf>) -> FaultWatch {
        let mut watch = FaultWatch {
            control,
            config_file,
            control_stamp: None,
            config_stamp: None,
            control_faults: None,
            config_faults: Faults::default(),
        };
        watch.refresh();
        watch
    }

    /// The faults in force, re-reading changed files first.
    pub fn current(&mut self) -> &Faults {
        self.refresh();
        self.control_faults.as_ref().unwrap_or(&self.config_faults)
    }

    fn refresh(&mut self) {
        let stamp = FileStamp::of(&self.control);
        if stamp != self.control_stamp {
            self.control_stamp = stamp;
            if stamp.is_none() {
                self.control_faults = None;
            } else if let Some(faults) = read_fault_file(&self.control) {
                self.control_faults = Some(faults);
            }
        }
        if let Some(config_file) = &self.config_file {
            let stamp = FileStamp::of(config_file);
            if stamp != self.config_stamp {
                self.config_stamp = stamp;
                if let Ok(file) = crate::config::read_config_file(config_file) {
                    if let Ok(faults) = file.faults.validate() {
                        self.config_faults = faults;
                    }
                }
            }
        }
    }
}

/// Reads a control file; `None` if it cannot be read or is invalid.
fn read_fault_file(path: &Path) -> Option<Faults> {
    let text = std::fs::read_to_string(path).ok()?;
    let config: FaultConfig = toml::from_str(&text).ok()?;
    config.validate().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_parse_durations() {
        assert_eq!(parse_duration("200ms"), Some(Duration::from_millis(200)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("10 ms"), Some(Duration::from_millis(10)));
        assert_eq!(parse_duration("fast"), None);
        assert_eq!(parse_duration("5h"), None);
    }

    #[test]
    fn ok_decide_applies_latency_jitter_and_failure() {
        let faults = FaultConfig {
            latency: Some("10ms".into()),
            jitter: Some("10ms".into()),
            fail_rate: Some(0.5),
            fail_code: Some("CKR_DEVICE_MEMORY".into()),
            ..FaultConfig::default()
        }
        .validate()
        .expect("valid");
        let decision = faults.decide("C_Sign", || 0.25);
        assert_eq!(decision.delay, Duration::from_micros(12_500));
        assert_eq!(decision.fail, Some(Ckr(cryptoki_sys::CKR_DEVICE_MEMORY)));
        assert_eq!(faults.decide("C_Sign", || 0.75).fail, None);
        assert_eq!(faults.decide("C_Initialize", || 0.0), Decision::default());
    }

    #[test]
    fn ok_fail_functions_limit_failures() {
        let faults = FaultConfig {
            fail_rate: Some(1.0),
            fail_functions: vec!["C_Sign".into()],
            ..FaultConfig::default()
        }
        .validate()
        .expect("valid");
        assert_eq!(
            faults.decide("C_Sign", || 0.0).fail,
            Some(Ckr::DEVICE_ERROR)
        );
        assert_eq!(faults.decide("C_FindObjects", || 0.0).fail, None);
    }

    #[test]
    fn fail_validate_rejects_bad_values() {
        let bad_rate = FaultConfig {
            fail_rate: Some(1.5),
            ..FaultConfig::default()
        };
        assert!(bad_rate.validate().is_err());
        let bad_code = FaultConfig {
            fail_code: Some("CKR_NOPE".into()),
            ..FaultConfig::default()
        };
        assert!(bad_code.validate().is_err());
    }

    #[test]
    fn ok_watch_follows_control_file() {
        let temp = tempfile::tempdir().expect("tempdir");
        let control = temp.path().join("faults.toml");
        let mut watch = FaultWatch::new(control.clone(), None);
        assert!(!watch.current().device_removed);
        std::fs::write(&control, "device_removed = true\n").expect("write");
        assert!(watch.current().device_removed);
        std::fs::remove_file(&control).expect("remove");
        assert!(!watch.current().device_removed);
    }
}
