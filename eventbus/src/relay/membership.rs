//! Relay membership and partition leases: which relays are alive, which
//! partitions each should own, and which leases this relay holds right now.
//!
//! Each relay heartbeats; the live relays, sorted by id, split the partitions
//! round-robin. A relay renews the leases it holds, acquires free or expired ones
//! assigned to it, and (between batches, in the work loop) releases those
//! assigned elsewhere. A lease counts locally only until a safety margin before
//! it expires in the database, so a relay cut off from the database stops
//! publishing before anyone else may take over.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;
use uuid::Uuid;

use super::config::RelayConfig;
use super::metrics::RelayMetrics;
use super::store::{Lease, RelayStore};

/// This relay's view of partition ownership, shared by the heartbeat task and
/// the work loop.
#[derive(Debug)]
pub(crate) struct Membership {
    me: Uuid,
    partitions: Vec<i32>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Leases held: partition → (epoch, the instant until which we trust it).
    owned: BTreeMap<i32, (i64, Instant)>,
    /// Partitions the current membership assigns to us.
    assigned: BTreeSet<i32>,
}

impl Membership {
    pub(crate) fn new(me: Uuid, mut partitions: Vec<i32>) -> Self {
        partitions.sort_unstable();
        Membership {
            me,
            partitions,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the data is still sound.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Partitions we hold a valid lease on and are still assigned.
    pub(crate) fn usable(&self) -> Vec<i32> {
        let now = Instant::now();
        let s = self.state();
        s.owned
            .iter()
            .filter(|(p, (_, until))| *until > now && s.assigned.contains(p))
            .map(|(p, _)| *p)
            .collect()
    }

    /// The leases (with their epochs) we hold among `partitions`, trusted or not.
    pub(crate) fn leases(&self, partitions: &[i32]) -> Vec<Lease> {
        let s = self.state();
        partitions
            .iter()
            .filter_map(|p| {
                s.owned.get(p).map(|(epoch, _)| Lease {
                    partition: *p,
                    epoch: *epoch,
                })
            })
            .collect()
    }

    /// Until when every lease in `leases` is trusted, in the same tenure;
    /// `None` if one is not held any more (or was taken again since).
    pub(crate) fn trusted_until(&self, leases: &[Lease]) -> Option<Instant> {
        let s = self.state();
        leases
            .iter()
            .map(|l| match s.owned.get(&l.partition) {
                Some((epoch, until)) if *epoch == l.epoch => Some(*until),
                _ => None,
            })
            .try_fold(None, |earliest: Option<Instant>, until| {
                until.map(|u| Some(earliest.map_or(u, |e| e.min(u))))
            })
            .flatten()
    }

    /// Completes when a lease in `leases` is no longer trusted. Renewals
    /// while it waits push the moment back, so a long send under a lease
    /// kept alive is not cut short.
    pub(crate) async fn lapse(&self, leases: &[Lease]) {
        loop {
            match self.trusted_until(leases) {
                Some(until) if until > Instant::now() => {
                    tokio::time::sleep_until(until.into()).await;
                }
                _ => return,
            }
        }
    }

    /// Leases held on partitions now assigned to another relay.
    pub(crate) fn to_release(&self) -> Vec<i32> {
        let s = self.state();
        s.owned
            .keys()
            .filter(|p| !s.assigned.contains(p))
            .copied()
            .collect()
    }

    pub(crate) fn released(&self, partitions: &[i32]) {
        let mut s = self.state();
        for p in partitions {
            s.owned.remove(p);
        }
    }

    pub(crate) fn lowest_partition(&self) -> Option<i32> {
        self.partitions.first().copied()
    }

    pub(crate) fn owned_count(&self) -> usize {
        self.state().owned.len()
    }
}

/// The partitions `me` should own when `live` relays (sorted) share `partitions`.
pub(crate) fn assign(partitions: &[i32], live: &[Uuid], me: Uuid) -> BTreeSet<i32> {
    let Some(index) = live.iter().position(|id| *id == me) else {
        return BTreeSet::new();
    };
    partitions
        .iter()
        .enumerate()
        .filter(|(i, _)| i % live.len() == index)
        .map(|(_, p)| *p)
        .collect()
}

/// Heartbeats, renews and acquires leases every `heartbeat_interval`, forever.
pub(crate) async fn keep_alive(
    membership: Arc<Membership>,
    store: Arc<dyn RelayStore>,
    config: Arc<RelayConfig>,
    metrics: Arc<RelayMetrics>,
    wake: Arc<Notify>,
) {
    let me = membership.me;
    let ttl = config.lease_ttl;
    // Trust a lease for 80% of its length: the rest covers clock drift between
    // us and the database and the latency of the renewing statement.
    let trusted = ttl.mul_f64(0.8);
    let mut ticker = tokio::time::interval(config.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let started = Instant::now();
        let step = async {
            let live = store.heartbeat(me, &config.name, ttl).await?;
            let assigned = assign(&membership.partitions, &live, me);
            let held: Vec<i32> = membership.state().owned.keys().copied().collect();
            let renewed = store.renew(me, &held, ttl).await?;
            let wanted: Vec<i32> = assigned
                .iter()
                .filter(|p| !renewed.iter().any(|l| l.partition == **p))
                .copied()
                .collect();
            let acquired = if wanted.is_empty() {
                Vec::new()
            } else {
                store.acquire(me, &wanted, ttl).await?
            };
            Ok::<_, crate::Error>((assigned, renewed, acquired))
        };
        let result = step.await;
        let heartbeat_ok = result.is_ok();
        match result {
            Ok((assigned, renewed, acquired)) => {
                let until = started + trusted;
                {
                    let mut s = membership.state();
                    s.owned = renewed
                        .iter()
                        .chain(&acquired)
                        .map(|l| (l.partition, (l.epoch, until)))
                        .collect();
                    s.assigned = assigned;
                }
                if !acquired.is_empty() {
                    tracing::info!(relay = %me, partitions = ?acquired, "acquired partitions");
                    wake.notify_one();
                }
            }
            Err(e) => {
                // Leases run out by themselves; the work loop stops using them.
                tracing::warn!(error = %e, "relay heartbeat failed");
            }
        }
        let owned = membership.owned_count();
        let healthy = started.elapsed() < config.lease_ttl && heartbeat_ok;
        metrics.update_snapshot(|s| {
            s.owned_partitions = owned;
            s.database_available = healthy;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn holding(leases: &[(i32, i64, Duration)]) -> Membership {
        let m = Membership::new(Uuid::now_v7(), (0..4).collect());
        let now = Instant::now();
        m.state().owned = leases
            .iter()
            .map(|(p, epoch, left)| (*p, (*epoch, now + *left)))
            .collect();
        m
    }

    #[test]
    fn a_batch_is_trusted_until_its_first_lease_runs_out_and_only_in_its_tenure() {
        let m = holding(&[
            (0, 3, Duration::from_secs(4)),
            (1, 7, Duration::from_secs(2)),
        ]);
        let batch = m.leases(&[0, 1]);
        assert_eq!(
            batch,
            [
                Lease {
                    partition: 0,
                    epoch: 3
                },
                Lease {
                    partition: 1,
                    epoch: 7
                }
            ]
        );
        let until = m.trusted_until(&batch).expect("held");
        assert!(until <= Instant::now() + Duration::from_secs(2));
        // Lost partition 1 and got it back: a new tenure.
        m.state()
            .owned
            .insert(1, (8, Instant::now() + Duration::from_secs(9)));
        assert_eq!(m.trusted_until(&batch), None, "the old tenure is over");
        m.state().owned.remove(&0);
        assert_eq!(
            m.trusted_until(&m.leases(&[0, 1])),
            Some(m.state().owned[&1].1)
        );
    }

    // Real time: leases are measured with `std::time::Instant`.
    #[tokio::test]
    async fn lapse_waits_for_renewals_and_fires_once_a_lease_is_not_renewed() {
        let m = Arc::new(holding(&[(0, 1, Duration::from_millis(100))]));
        let batch = m.leases(&[0]);
        let renewer = {
            let m = Arc::clone(&m);
            tokio::spawn(async move {
                for _ in 0..3 {
                    tokio::time::sleep(Duration::from_millis(80)).await;
                    m.state()
                        .owned
                        .insert(0, (1, Instant::now() + Duration::from_millis(100)));
                }
            })
        };
        let started = tokio::time::Instant::now();
        m.lapse(&batch).await;
        let waited = started.elapsed();
        // Three renewals at 80 ms steps, then 100 ms: not before 340 ms.
        assert!(
            waited >= Duration::from_millis(340) && waited < Duration::from_secs(3),
            "lapsed after {waited:?}"
        );
        renewer.await.expect("renewer");
    }

    #[test]
    fn partitions_are_split_round_robin_among_live_relays() {
        let partitions: Vec<i32> = (0..8).collect();
        let mut live = vec![Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
        live.sort();
        let sets: Vec<_> = live
            .iter()
            .map(|me| assign(&partitions, &live, *me))
            .collect();
        let mut all: Vec<i32> = sets.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, partitions, "every partition exactly once");
        assert!(sets.iter().all(|s| s.len() == 2 || s.len() == 3));
        assert!(assign(&partitions, &live, Uuid::now_v7()).is_empty());
    }
}
