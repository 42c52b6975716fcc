//! Reading a process's CPU time and memory from `/proc` (Linux only; elsewhere every reading is
//! `None` and the report leaves those columns empty).
//!
//! CPU time is `utime + stime` from `/proc/PID/stat`, in clock ticks of 1/100 s (USER_HZ is 100
//! on every Linux architecture this runs on), so a 10 s window is exact to about 0.1 %. Memory is
//! `VmRSS` from `/proc/PID/status`.

use std::fs;

/// Clock ticks per second of `/proc/PID/stat` times (USER_HZ).
const USER_HZ: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// User + system CPU seconds since the process started (all threads).
    pub cpu_s: f64,
    /// Resident set size.
    pub rss_kb: u64,
}

/// `pid`'s CPU time and RSS now; `None` when it cannot be read (gone, or not Linux).
pub fn sample(pid: &str) -> Option<Sample> {
    Some(Sample { cpu_s: cpu_s(pid)?, rss_kb: status_kb(pid, "VmRSS:")? })
}

/// User + system CPU seconds of `pid` (`"self"` for this process).
pub fn cpu_s(pid: &str) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// A `kB` line of `/proc/PID/status` (`VmRSS:`, `VmHWM:`).
pub fn status_kb(pid: &str, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Busy CPU seconds of the whole machine since boot (every core: user, nice, system, irq,
/// softirq and steal time from the `cpu` line of `/proc/stat`).
pub fn machine_busy_s() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    let busy = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum::<u64>();
    Some(busy as f64 / USER_HZ)
}

/// This process's soft limit on open files.
pub fn open_files_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        if cfg!(target_os = "linux") {
            let s = super::sample("self").expect("linux has /proc");
            assert!(s.rss_kb > 0 && s.cpu_s >= 0.0);
            assert!(super::open_files_limit().is_some());
            assert!(super::machine_busy_s().is_some_and(|b| b > 0.0));
        }
    }
}
