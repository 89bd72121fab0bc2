//! Readings from `/proc`: memory, CPU time, open-files limits.

use super::*;

/// Resident and peak resident memory of `pid` in KiB (`VmRSS`, `VmHWM`).
pub(crate) fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resident memory of `pid` in KiB, 0 when unreadable.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    memory_kib(pid).map_or(0, |(rss, _)| rss)
}

/// CPU time (user + system) of a process in clock ticks (1/100 s on Linux); `None` for
/// `/proc/self`.
pub(crate) fn cpu_ticks(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0;
    };
    // Fields after the command name (which may contain spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// The soft open-files limit of a process (`/proc/<pid>/limits`).
pub(crate) fn open_files_limit(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/limits"),
        None => "/proc/self/limits".to_owned(),
    };
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Busy and total clock ticks of the whole machine, all cores (`/proc/stat`).
pub(crate) fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// CPU counters at one moment: the server, this process and the whole machine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSample {
    /// When.
    pub(crate) at: Instant,
    /// Server ticks.
    pub(crate) server: u64,
    /// Load generator ticks.
    pub(crate) load: u64,
    /// Machine busy and total ticks.
    pub(crate) machine: (u64, u64),
}

/// CPU use over an interval.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuUse {
    /// The server, % of one core.
    pub(crate) server: f64,
    /// The load generator, % of one core.
    pub(crate) load: f64,
    /// The whole machine (server, load generator, database, anything else), % of all cores.
    pub(crate) machine: f64,
    /// Everything but the server and the load generator (the database server, and any
    /// unrelated work that disturbs the measurement), % of one core.
    pub(crate) other: f64,
}

impl CpuSample {
    /// Read the counters now.
    pub(crate) fn now(server_pid: u32) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            server: cpu_ticks(Some(server_pid)),
            load: cpu_ticks(None),
            machine: machine_ticks(),
        }
    }

    /// CPU use from `earlier` to this sample.
    pub(crate) fn since(&self, earlier: &CpuSample) -> CpuUse {
        let secs = self.at.duration_since(earlier.at).as_secs_f64();
        if secs <= 0.0 {
            return CpuUse::default();
        }
        // Clock ticks are 1/100 s on Linux.
        let core_percent = |a: u64, b: u64| a.saturating_sub(b) as f64 / 100.0 / secs * 100.0;
        let total = self.machine.1.saturating_sub(earlier.machine.1);
        let server = core_percent(self.server, earlier.server);
        let load = core_percent(self.load, earlier.load);
        let machine = if total == 0 {
            0.0
        } else {
            self.machine.0.saturating_sub(earlier.machine.0) as f64 / total as f64 * 100.0
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        CpuUse {
            server,
            load,
            machine,
            other: (machine * cores - server - load).max(0.0),
        }
    }
}

/// KiB as MB (10^6 bytes).
pub(crate) fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}
