//! CPU time of processes, from `/proc`: what a workload costs each party
//! (the benchmark's own process, PostgreSQL, the broker), so a section can
//! say where the time per event goes rather than guess.

/// User + system CPU seconds used so far by process `pid`, `None` when it
/// has gone or `/proc/<pid>/stat` is not in the expected form.
pub(crate) fn process_seconds(pid: u32) -> Option<f64> {
    stat_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// User + system CPU seconds used so far by this process.
pub(crate) fn own_seconds() -> Option<f64> {
    process_seconds(std::process::id())
}

/// User + system CPU seconds used so far by every live process whose name
/// (`comm`) is one of `names`. Processes that started and ended between two
/// samples are missed, so this suits servers with long-lived workers
/// (PostgreSQL backends of a pool, a broker), not short-lived children.
pub(crate) fn seconds_of(names: &[&str]) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(std::result::Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| comm(stat).is_some_and(|c| names.contains(&c)))
        .filter_map(|stat| stat_seconds(&stat))
        .sum()
}

/// The CPU of the parties of a run, sampled before and after a window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// This process.
    pub(crate) own: f64,
    /// Every PostgreSQL process.
    pub(crate) postgres: f64,
    /// The broker's processes (tansu, RabbitMQ's Erlang VM).
    pub(crate) broker: f64,
}

impl Sample {
    /// Reads the counters now.
    pub(crate) fn now() -> Self {
        Self {
            own: own_seconds().unwrap_or(0.0),
            postgres: seconds_of(&["postgres"]),
            broker: seconds_of(&["tansu", "beam.smp"]),
        }
    }

    /// CPU spent since `earlier`, in microseconds per unit of work.
    pub(crate) fn micros_per(&self, earlier: &Self, units: u64) -> Self {
        let per = |now: f64, then: f64| (now - then).max(0.0) * 1e6 / units.max(1) as f64;
        Self {
            own: per(self.own, earlier.own),
            postgres: per(self.postgres, earlier.postgres),
            broker: per(self.broker, earlier.broker),
        }
    }
}

/// The process name between the parentheses of a `stat` line.
fn comm(stat: &str) -> Option<&str> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    stat.get(open + 1..close)
}

/// utime + stime of a `/proc/<pid>/stat` line, in seconds. Fields after the
/// `(comm)`, which may contain spaces: state is the 3rd field overall, utime
/// the 14th and stime the 15th.
fn stat_seconds(stat: &str) -> Option<f64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / clock_ticks())
}

/// `sysconf(_SC_CLK_TCK)` through `getconf`, 100 if that fails.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_spaces_in_the_name_is_read() {
        let line =
            "42 (tokio rt worker) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 1 0 0";
        assert_eq!(comm(line), Some("tokio rt worker"));
        let seconds = stat_seconds(line).expect("parsed");
        assert!((seconds - 300.0 / clock_ticks()).abs() < 1e-9, "{seconds}");
    }

    #[test]
    fn this_process_uses_cpu() {
        let before = own_seconds().expect("own stat");
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(own_seconds().expect("own stat") > before);
    }
}
