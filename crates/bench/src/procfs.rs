//! Readers for the few `/proc` figures the benchmark reports: a process's CPU time, its resident
//! memory, its open-file limit and count, and the whole machine's busy time (to spot noise from
//! other processes). Linux only, like the rest of the tool.

use std::fs;

use anyhow::{Context, Result, ensure};

/// Clock ticks per second of the times in `/proc/*/stat` (`USER_HZ`, 100 on every Linux
/// architecture the tool runs on; `getconf CLK_TCK` prints it).
pub const TICKS_PER_SEC: f64 = 100.0;

/// CPU time (user + system, all threads) used so far by process `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let (user, system) = cpu_ticks_split(pid)?;
    Ok(user + system)
}

/// User and system CPU time (all threads) used so far by process `pid`, in clock ticks.
pub fn cpu_ticks_split(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may contain spaces; the fields after it are plain.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no field {n} in {path}"))
    };
    Ok((field(14)?, field(15)?))
}

/// Ticks all processes of the machine spent in user and system mode (all CPUs), from
/// `/proc/stat`. Interrupt and softirq time is left out: the kernel accounts it apart from any
/// process, and on loopback most of it is caused by the benchmark's own traffic.
pub fn machine_process_ticks() -> Result<u64> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().unwrap_or_default();
    // Fields: user nice system idle iowait irq softirq steal ...
    Ok(line
        .split_whitespace()
        .skip(1)
        .take(3)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum())
}

/// Busy ticks of CPU `cpu` (user, nice, system, irq, softirq, steal: everything but idle and
/// iowait), from `/proc/stat`. Unlike a process's own time, this includes the interrupt and softirq
/// work the kernel does on that core, e.g. loopback TCP receive processing.
pub fn cpu_busy_ticks(cpu: u32) -> Result<u64> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .with_context(|| format!("no {name} in /proc/stat"))?;
    // Fields: user nice system idle iowait irq softirq steal ...
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    ensure!(fields.len() == 8, "short {name} line in /proc/stat");
    Ok(fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7])
}

/// CPU time (user + system) used so far by the live threads of process `pid`, in ns: the
/// scheduler's own accounting from `/proc/PID/task/*/schedstat`, far finer than the 10 ms ticks of
/// [`cpu_ticks`] when a window holds only a few ticks of work. Threads that exited are not in it.
pub fn cpu_ns(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for task in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let path = task?.path().join("schedstat");
        // A thread may exit between the listing and the read.
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("bad {}", path.display()))?;
    }
    Ok(total)
}

/// Resident set size (`VmRSS`) of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// Number of open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/fd");
    Ok(fs::read_dir(&path)
        .with_context(|| format!("listing {path}"))?
        .count() as u64)
}

/// Soft open-file limit (`RLIMIT_NOFILE`) of process `pid`; `pid` may be `"self"`.
pub fn nofile_limit(pid: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/limits");
    let limits = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
        .with_context(|| format!("no `Max open files` in {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).expect("rss") > 0);
        assert!(open_fds(pid).expect("fds") >= 3);
        assert!(nofile_limit("self").expect("limit") > 0);
        cpu_ticks(pid).expect("cpu");
        assert!(cpu_ns(pid).expect("cpu ns") > 0);
        let (user, system) = cpu_ticks_split(pid).expect("cpu split");
        assert!(
            user + system <= cpu_ticks(pid).expect("cpu"),
            "ticks only grow"
        );
        machine_process_ticks().expect("busy");
        cpu_busy_ticks(0).expect("cpu0");
    }
}
