//! What `/proc` says about the server process: CPU time, resident memory,
//! open files. CPU time (utime + stime) is the figure that stays stable on
//! a shared machine: other processes slow the server down but do not add
//! to its CPU time.

use std::fs;
use std::io;

/// A process's CPU time, in clock ticks or microseconds: in user space
/// (the program's own code) and in the kernel on its behalf (system calls,
/// the network stack).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTime<T> {
    /// utime: running the process's own code.
    pub user: T,
    /// stime: in the kernel on the process's behalf.
    pub system: T,
}

impl CpuTime<f64> {
    /// User and system time together.
    pub fn total(&self) -> f64 {
        self.user + self.system
    }
}

/// A process's CPU time, in clock ticks.
pub fn cpu_ticks(pid: u32) -> io::Result<CpuTime<u64>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).ok_or_else(|| io::Error::other("unexpected /proc/PID/stat format"))
}

/// utime (field 14) and stime (field 15) of a `/proc/PID/stat` line. The
/// command name (field 2) may hold spaces, so fields are counted after its
/// closing parenthesis, where field 3 starts.
pub fn parse_cpu_ticks(stat: &str) -> Option<CpuTime<u64>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user = fields.next()?.parse().ok()?;
    let system = fields.next()?.parse().ok()?;
    Some(CpuTime { user, system })
}

/// A process's resident set size in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/PID/status"))
}

/// How many file descriptors a process has open.
pub fn open_fds(pid: u32) -> io::Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// CPU time of a process between two points, for per-message figures.
#[derive(Clone, Copy, Debug)]
pub struct CpuMeter {
    pid: u32,
    ticks_per_s: u64,
    start: CpuTime<u64>,
}

impl CpuMeter {
    /// Starts measuring `pid`; `ticks_per_s` is `getconf CLK_TCK` (100 on Linux).
    pub fn start(pid: u32, ticks_per_s: u64) -> io::Result<Self> {
        Ok(CpuMeter {
            pid,
            ticks_per_s,
            start: cpu_ticks(pid)?,
        })
    }

    /// CPU microseconds used since `start`.
    pub fn elapsed_us(&self) -> io::Result<CpuTime<f64>> {
        let now = cpu_ticks(self.pid)?;
        let us =
            |now: u64, start: u64| now.saturating_sub(start) as f64 * 1e6 / self.ticks_per_s as f64;
        Ok(CpuTime {
            user: us(now.user, self.start.user),
            system: us(now.system, self.start.system),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_the_name() {
        let stat = "1234 (bench server) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0";
        assert_eq!(
            parse_cpu_ticks(stat),
            Some(CpuTime {
                user: 250,
                system: 75
            })
        );
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_ok());
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(open_fds(pid).unwrap() > 0);
    }
}
