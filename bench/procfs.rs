//! A process's CPU time and resident memory from Linux's `/proc`, shared by the benches
//! (`#[path]`-included by `bench/sustained.rs`, `bench/flood.rs` and `benches/receive.rs`).
//! Every function returns `None` when the file cannot be read or parsed (not Linux, the process
//! is gone).

/// user + system CPU seconds of the process whose `stat` file is `stat_path` (such as
/// `/proc/<pid>/stat` or `/proc/self/stat`): fields 14 and 15, which cover all its threads,
/// converted with the kernel's clock ticks per second (`USER_HZ`, 100 on Linux).
pub fn cpu_secs(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let mut fields = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// [`cpu_secs`] of process `pid`.
pub fn pid_cpu_secs(pid: u32) -> Option<f64> {
    cpu_secs(&format!("/proc/{pid}/stat"))
}

/// A `kB` field (`VmRSS:` now, `VmHWM:` the peak so far) of `/proc/<pid>/status`, in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}
