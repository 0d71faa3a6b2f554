//! The nemesis: which faults the soak injects and how often, the child
//! processes it kills and restarts, and the seeded random generator.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// A fault the driver injects.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    RelayKill,
    ConsumerKill,
    BrokerOutage,
    DatabaseCrash,
    BrokerRestart,
}

/// How often each fault is chosen, relative to the others. A broker restart
/// keeps RabbitMQ away for the 5 to 15 s a node takes to boot (and the
/// relays' back-off a little longer), so it comes half as often as each of
/// the others: chosen as often, restarts and cut-offs together would keep the
/// broker away for about a third of the run, and the backlog would take long
/// to drain.
const FAULT_WEIGHTS: [(Fault, u64); 5] = [
    (Fault::RelayKill, 2),
    (Fault::ConsumerKill, 2),
    (Fault::BrokerOutage, 2),
    (Fault::DatabaseCrash, 2),
    (Fault::BrokerRestart, 1),
];

impl Fault {
    pub(crate) fn pick(rng: &mut Lcg) -> Fault {
        let total: u64 = FAULT_WEIGHTS.iter().map(|(_, w)| w).sum();
        let mut roll = rng.below(total);
        for (fault, weight) in FAULT_WEIGHTS {
            if roll < weight {
                return fault;
            }
            roll -= weight;
        }
        Fault::RelayKill
    }
}

/// Counts of what was injected.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub(crate) relay_kills: u64,
    pub(crate) consumer_kills: u64,
    pub(crate) broker_outages: u64,
    pub(crate) database_crashes: u64,
    pub(crate) broker_restarts: u64,
    /// How long the restarted node took to accept connections, in all and at most.
    pub(crate) restart_time: Duration,
    pub(crate) longest_restart: Duration,
}

impl Faults {
    pub(crate) fn total(&self) -> u64 {
        self.relay_kills
            + self.consumer_kills
            + self.broker_outages
            + self.database_crashes
            + self.broker_restarts
    }
}

/// A child process kept running: restarted by [`Supervised::ensure`] when it
/// is not running. Its stderr goes to `eventbus-soak-<name>.log` in the
/// temporary directory.
pub(crate) struct Supervised {
    name: String,
    command: Box<dyn Fn() -> Command + Send>,
    child: Option<Child>,
}

impl std::fmt::Debug for Supervised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervised")
            .field("name", &self.name)
            .field("running", &self.child.is_some())
            .finish()
    }
}

impl Supervised {
    pub(crate) fn new(name: String, command: impl Fn() -> Command + Send + 'static) -> Self {
        Supervised {
            name,
            command: Box::new(command),
            child: None,
        }
    }

    /// Starts the process unless it is running.
    pub(crate) fn ensure(&mut self) {
        if let Some(child) = &mut self.child {
            if matches!(child.try_wait(), Ok(None)) {
                return;
            }
        }
        let log = std::env::temp_dir().join(format!("eventbus-soak-{}.log", self.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log);
        let mut cmd = (self.command)();
        // `SOAK_LOG` (e.g. `info`) makes the children say more.
        let level = std::env::var("SOAK_LOG").unwrap_or_else(|_| "warn".to_owned());
        cmd.env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        if let Ok(log) = log {
            cmd.stderr(log);
        }
        self.child = cmd.spawn().ok();
    }

    /// SIGKILLs the process (no shutdown, no drain) and reaps it.
    pub(crate) async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

/// A small deterministic generator: the workload and the fault schedule
/// need no cryptographic randomness, and a printed seed names a run.
#[derive(Debug, Clone)]
pub(crate) struct Lcg(u64);

impl Lcg {
    /// A seed from the clock.
    pub(crate) fn clock_seed() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    }

    pub(crate) fn new(seed: u64) -> Self {
        Lcg(seed | 1)
    }

    /// An independent generator for stream `n` (a writer, the nemesis).
    pub(crate) fn fork(seed: u64, n: u64) -> Self {
        Lcg::new(seed ^ n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub(crate) fn unit(&mut self) -> f64 {
        self.below(1_000_000) as f64 / 1_000_000.0
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A duration between zero and `max`.
    pub(crate) fn upto(&mut self, max: Duration) -> Duration {
        max.mul_f64(self.unit())
    }
}
