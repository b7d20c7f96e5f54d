//! CPU time of a process from `/proc/<pid>/stat` (Linux).

use std::time::Duration;

use crate::BoxError;

/// Reads user + system CPU time of `pid` (`"self"` for this process).
pub struct CpuClock {
    ticks_per_second: f64,
}

impl CpuClock {
    /// Asks `getconf CLK_TCK` for the clock-tick rate (falls back to 100).
    pub fn new() -> CpuClock {
        let ticks = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .filter(|output| output.status.success())
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|text| text.trim().parse::<f64>().ok())
            .filter(|ticks| *ticks > 0.0)
            .unwrap_or(100.0);
        CpuClock {
            ticks_per_second: ticks,
        }
    }

    /// utime + stime of `pid` (a number, or `self`).
    pub fn cpu_time(&self, pid: &str) -> Result<Duration, BoxError> {
        let path = format!("/proc/{pid}/stat");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        // The command name (field 2) is in parentheses and may hold spaces:
        // count fields after the last ')'. utime and stime are fields 14 and
        // 15, i.e. the 12th and 13th after the name.
        let rest = text
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| format!("{path}: unexpected format"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |index: usize| -> Result<f64, BoxError> {
            Ok(fields
                .get(index)
                .ok_or_else(|| format!("{path}: too few fields"))?
                .parse::<f64>()?)
        };
        let ticks = field(11)? + field(12)?;
        Ok(Duration::from_secs_f64(ticks / self.ticks_per_second))
    }
}
