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
use super::store::RelayStore;

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
    /// Leases held, with the instant until which we trust them.
    owned: BTreeMap<i32, Instant>,
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
            .filter(|(p, until)| **until > now && s.assigned.contains(p))
            .map(|(p, _)| *p)
            .collect()
    }

    /// Whether our lease on `partition` is still valid.
    pub(crate) fn holds(&self, partition: i32) -> bool {
        self.state()
            .owned
            .get(&partition)
            .is_some_and(|until| *until > Instant::now())
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
                .filter(|p| !renewed.contains(p))
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
                        .map(|p| (*p, until))
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
