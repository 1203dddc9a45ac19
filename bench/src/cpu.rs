//! Where the CPU time of a run goes: the broker, the workers, the
//! benchmark process itself (its HTTP server, and the reference loops it
//! runs), the producers it ran, and the machine in all, read from `/proc`.
//!
//! On a machine where everything shares two cores, throughput follows CPU
//! time: these figures say what each part of a scenario costs per file or
//! per megabyte, which the wall times alone cannot.

use std::fmt;

/// Linux reports process and machine times in `USER_HZ` ticks, which is
/// 100 on every architecture warren runs on (unlike the kernel's `HZ`).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds used so far, by part.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    /// Every core's busy time (not idle, not waiting for I/O).
    pub machine: f64,
    /// The RabbitMQ node (`beam.smp`).
    pub broker: f64,
    /// The worker processes given to [`CpuTimes::now`].
    pub workers: f64,
    /// This process: the HTTP server, and any reference loop.
    pub bench: f64,
    /// Child processes this one has waited for: the producers.
    pub producers: f64,
}

impl CpuTimes {
    /// The times now, with `workers` the worker processes' ids.
    pub fn now(workers: &[u32]) -> CpuTimes {
        let own = process_ticks("self");
        CpuTimes {
            machine: machine_busy_ticks().unwrap_or(0.0) / TICKS_PER_SECOND,
            broker: broker_pid()
                .and_then(|pid| process_ticks(&pid.to_string()))
                .map_or(0.0, |t| t.own / TICKS_PER_SECOND),
            workers: workers
                .iter()
                .filter_map(|pid| process_ticks(&pid.to_string()))
                .map(|t| t.own / TICKS_PER_SECOND)
                .sum(),
            bench: own.map_or(0.0, |t| t.own / TICKS_PER_SECOND),
            producers: own.map_or(0.0, |t| t.children / TICKS_PER_SECOND),
        }
    }

    /// What was used between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            machine: self.machine - earlier.machine,
            broker: self.broker - earlier.broker,
            workers: self.workers - earlier.workers,
            bench: self.bench - earlier.bench,
            producers: self.producers - earlier.producers,
        }
    }

    /// Adds another interval's times.
    pub fn add(&mut self, other: &CpuTimes) {
        self.machine += other.machine;
        self.broker += other.broker;
        self.workers += other.workers;
        self.bench += other.bench;
        self.producers += other.producers;
    }

    /// Every part divided by `by` (files, megabytes, runs).
    pub fn per(&self, by: f64) -> CpuTimes {
        CpuTimes {
            machine: self.machine / by,
            broker: self.broker / by,
            workers: self.workers / by,
            bench: self.bench / by,
            producers: self.producers / by,
        }
    }

    /// What the machine spent outside the parts measured: the kernel's own
    /// threads (writeback, the network's soft interrupts), other programs.
    pub fn other(&self) -> f64 {
        (self.machine - self.broker - self.workers - self.bench - self.producers).max(0.0)
    }
}

/// In milliseconds, each part that used any time.
impl fmt::Display for CpuTimes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            ("broker", self.broker),
            ("workers", self.workers),
            ("producer", self.producers),
            ("bench", self.bench),
            ("other", self.other()),
        ];
        let mut first = true;
        for (name, seconds) in parts {
            if seconds * 1e3 < 0.005 {
                continue;
            }
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{name} {:.2}", seconds * 1e3)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct ProcessTicks {
    /// utime + stime.
    own: f64,
    /// cutime + cstime: children waited for.
    children: f64,
}

/// A process's CPU ticks from `/proc/PID/stat`.
fn process_ticks(pid: &str) -> Option<ProcessTicks> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are
    // plain numbers. utime is field 14, counted from 1.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<f64> = after_name
        .split_whitespace()
        .take(15)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // after_name starts at field 3 (state), so field n is fields[n - 3].
    let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0.0);
    Some(ProcessTicks {
        own: field(14) + field(15),
        children: field(16) + field(17),
    })
}

/// Busy ticks of all cores from `/proc/stat`: everything but idle and
/// iowait.
fn machine_busy_ticks() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already counted in user).
    let total: f64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0.0) + values.get(4).copied().unwrap_or(0.0);
    Some(total - idle)
}

/// CPU seconds the hypervisor gave to other machines while this one had
/// work (steal time, all cores), since boot; 0 where not reported. On a
/// shared VM this is what makes runs of different hours disagree.
pub fn stolen_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    stat.lines()
        .find(|l| l.starts_with("cpu "))
        .and_then(|line| line.split_whitespace().nth(8)?.parse::<f64>().ok())
        .map_or(0.0, |ticks| ticks / TICKS_PER_SECOND)
}

/// The RabbitMQ node's process: the one `beam.smp` on this machine.
fn broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim() == "beam.smp").then_some(pid)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins until `/proc` shows this process used 0.1 s of CPU, however
    /// loaded the machine is (a wall-clock loop gets less CPU under load),
    /// then checks that the machine's busy time covers it. Bounded: a
    /// machine that gives this process no CPU for a minute fails the test.
    #[test]
    fn cpu_times_count_this_process_and_the_machine() {
        let before = CpuTimes::now(&[]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut x = 0u64;
        let used = loop {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            let used = CpuTimes::now(&[]).since(&before);
            if used.bench >= 0.1 {
                break used;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no 0.1 s of CPU time in 60 s: {used:?}"
            );
        };
        // One tick of rounding on each of the two readings.
        assert!(used.machine >= used.bench - 0.02, "{used:?}");
        assert!(used.producers >= 0.0 && used.workers == 0.0, "{used:?}");
    }
}
