//! [`Positions`]: which received transactions are done, and so how far the
//! slot's confirmed position may move.
//!
//! After a restart PostgreSQL decodes from the slot's confirmed position and
//! skips every transaction whose commit record starts before it. So the
//! position confirmed is the Commit's `end_lsn` (where the commit record
//! ends) of the newest transaction that is done together with every one
//! before it: its commit LSN would replay it after every restart
//! (docs/design/log-relay-plan.md §3.1). Events finish out of order (batches,
//! pipelining, hand-overs), so a done transaction waits for the ones before
//! it. With nothing received still open, the last keepalive's `wal_end` is
//! confirmed instead: PostgreSQL 15 sends nothing for transactions that
//! publish nothing, and a slot behind an idle outbox would pin WAL (§3.2).
//!
//! One `Positions` per replication connection: after a reconnect the stream
//! starts again from the confirmed position, so the events of the old one
//! are abandoned with it, and handing one in here is an error.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::postgres::log::Lsn;

/// Tells the events of one `Positions` from another's.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The confirmable position of one replication connection.
#[derive(Debug)]
pub(crate) struct Positions {
    id: u64,
    /// Received units the position has not passed, oldest first; the last
    /// one may be the transaction still being received. Holds only what is
    /// open and what waits behind it.
    units: VecDeque<Unit>,
    /// The sequence number of `units[0]`.
    first: u64,
    /// The final LSN of the transaction between Begin and Commit.
    open: Option<Lsn>,
    /// Where the newest received unit ends, to refuse a stream going back.
    last: Lsn,
    /// The highest `wal_end` of a keepalive.
    keepalive: Option<Lsn>,
    /// What may be confirmed; only ever rises.
    confirmed: Option<Lsn>,
}

/// A transaction, or a non-transactional message, as the position sees it.
#[derive(Debug)]
struct Unit {
    /// Where the position may move once the unit is done: the transaction's
    /// `end_lsn` (`None` until its Commit), or the message's LSN.
    end: Option<Lsn>,
    /// Commit time (µs since 2000-01-01 UTC); `None` for a message.
    commit_time_micros: Option<i64>,
    /// Events handed out and not yet done.
    pending: u64,
}

/// One event of a received transaction, to hand back to
/// [`Positions::done`] once it is acked or handed over. Not `Clone`: an
/// event is done once.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "an event that is never done holds the confirmed position back for good"]
pub(crate) struct EventRef {
    owner: u64,
    unit: u64,
}

/// A call out of the stream's order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum PositionError {
    /// A Begin before the Commit of the transaction begun last.
    #[error("Begin at {final_lsn} while the transaction of {open} has not committed")]
    AlreadyInTransaction {
        /// The open transaction's final LSN.
        open: Lsn,
        /// The new Begin's final LSN.
        final_lsn: Lsn,
    },
    /// An event or a Commit with no transaction begun.
    #[error("{what} outside a transaction")]
    NotInTransaction {
        /// What was called.
        what: &'static str,
    },
    /// A non-transactional message between a Begin and its Commit: only a
    /// streamed transaction (protocol 2+) can interleave them.
    #[error("non-transactional message at {lsn} inside the transaction of {open}")]
    InTransaction {
        /// The open transaction's final LSN.
        open: Lsn,
        /// The message's LSN.
        lsn: Lsn,
    },
    /// A Commit whose end is not after its start: the commit LSN was passed
    /// where the end LSN belongs (§3.1).
    #[error("commit end {end_lsn} is not after the transaction's final LSN {final_lsn}")]
    EndNotAfterStart {
        /// The Begin's final LSN.
        final_lsn: Lsn,
        /// The LSN given as the end.
        end_lsn: Lsn,
    },
    /// A position before the end of a unit received earlier: the stream is
    /// in commit order, so this is a stream of another connection.
    #[error("stream position {lsn} is before {previous}, received earlier")]
    Backwards {
        /// Where the last received unit ended.
        previous: Lsn,
        /// The position given.
        lsn: Lsn,
    },
    /// An event of another `Positions` (an earlier connection's).
    #[error("event of another replication connection")]
    ForeignEvent,
}

impl Default for Positions {
    fn default() -> Self {
        Positions::new()
    }
}

impl Positions {
    /// Nothing received, nothing to confirm.
    pub(crate) fn new() -> Self {
        Positions {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            units: VecDeque::new(),
            first: 0,
            open: None,
            last: Lsn::ZERO,
            keepalive: None,
            confirmed: None,
        }
    }

    /// A Begin: a transaction whose commit record starts at `final_lsn`.
    ///
    /// # Errors
    ///
    /// [`PositionError::AlreadyInTransaction`] before the last one's Commit;
    /// [`PositionError::Backwards`] when `final_lsn` is before the end of a
    /// unit received earlier.
    pub(crate) fn begin(
        &mut self,
        final_lsn: Lsn,
        commit_time_micros: i64,
    ) -> Result<(), PositionError> {
        if let Some(open) = self.open {
            return Err(PositionError::AlreadyInTransaction { open, final_lsn });
        }
        self.check_order(final_lsn)?;
        self.units.push_back(Unit {
            end: None,
            commit_time_micros: Some(commit_time_micros),
            pending: 0,
        });
        self.open = Some(final_lsn);
        Ok(())
    }

    /// An event (a row or a message) of the transaction being received.
    ///
    /// # Errors
    ///
    /// [`PositionError::NotInTransaction`] outside a Begin and its Commit.
    pub(crate) fn event(&mut self) -> Result<EventRef, PositionError> {
        let unit = match (self.open, self.units.back_mut()) {
            (Some(_), Some(unit)) => unit,
            _ => return Err(PositionError::NotInTransaction { what: "event" }),
        };
        unit.pending += 1;
        Ok(self.last_ref())
    }

    /// The Commit of the transaction being received; `end_lsn` is the
    /// Commit message's end LSN, not its commit LSN. A transaction with no
    /// events is done here.
    ///
    /// # Errors
    ///
    /// [`PositionError::NotInTransaction`] with no Begin;
    /// [`PositionError::EndNotAfterStart`] when `end_lsn` is not after the
    /// Begin's final LSN. The transaction stays open on an error.
    pub(crate) fn commit(&mut self, end_lsn: Lsn) -> Result<(), PositionError> {
        let Some(final_lsn) = self.open else {
            return Err(PositionError::NotInTransaction { what: "commit" });
        };
        if end_lsn <= final_lsn {
            return Err(PositionError::EndNotAfterStart { final_lsn, end_lsn });
        }
        let Some(unit) = self.units.back_mut() else {
            return Err(PositionError::NotInTransaction { what: "commit" });
        };
        unit.end = Some(end_lsn);
        self.open = None;
        self.last = end_lsn;
        self.advance();
        Ok(())
    }

    /// A non-transactional message, received between transactions; `lsn`
    /// is its Message frame's, where its WAL record ends. A restart past
    /// the record's start would skip it, so the position waits until it is
    /// done (parked, §3.13), then moves to `lsn`, which a restart does not
    /// replay.
    ///
    /// # Errors
    ///
    /// [`PositionError::InTransaction`] between a Begin and its Commit;
    /// [`PositionError::Backwards`] when `lsn` is before the end of a unit
    /// received earlier.
    pub(crate) fn non_transactional(&mut self, lsn: Lsn) -> Result<EventRef, PositionError> {
        if let Some(open) = self.open {
            return Err(PositionError::InTransaction { open, lsn });
        }
        self.check_order(lsn)?;
        self.units.push_back(Unit {
            end: Some(lsn),
            commit_time_micros: None,
            pending: 1,
        });
        self.last = lsn;
        Ok(self.last_ref())
    }

    /// `event` is done: acked by the broker or handed over to the table.
    ///
    /// # Errors
    ///
    /// [`PositionError::ForeignEvent`] for an event of another `Positions`.
    #[allow(
        clippy::needless_pass_by_value,
        reason = "taken by value so that an event is done once"
    )]
    pub(crate) fn done(&mut self, event: EventRef) -> Result<(), PositionError> {
        if event.owner != self.id {
            return Err(PositionError::ForeignEvent);
        }
        // A unit with pending events is never dropped, so an own event
        // always finds its unit with a count to take from.
        let unit = event
            .unit
            .checked_sub(self.first)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.units.get_mut(i))
            .filter(|unit| unit.pending > 0)
            .ok_or(PositionError::ForeignEvent)?;
        unit.pending -= 1;
        self.advance();
        Ok(())
    }

    /// A keepalive: the server has sent everything up to `wal_end`. It is
    /// confirmed once nothing received is open and no transaction is
    /// between Begin and Commit.
    pub(crate) fn keepalive(&mut self, wal_end: Lsn) {
        self.keepalive = self.keepalive.max(Some(wal_end));
        self.advance();
    }

    /// The position to report as applied: the `end_lsn` of the newest
    /// transaction done together with every one before it, or the last
    /// keepalive's `wal_end` when nothing is open, whichever is higher;
    /// never lower than before. `None` until there is one.
    pub(crate) fn confirmable(&self) -> Option<Lsn> {
        self.confirmed
    }

    /// The commit time (µs since 2000-01-01 UTC) of the oldest transaction
    /// not yet passed by the position, for the lag metric; `None` when
    /// there is none.
    pub(crate) fn oldest_open_commit_time(&self) -> Option<i64> {
        self.units.iter().find_map(|unit| unit.commit_time_micros)
    }

    fn check_order(&self, lsn: Lsn) -> Result<(), PositionError> {
        if lsn < self.last {
            return Err(PositionError::Backwards {
                previous: self.last,
                lsn,
            });
        }
        Ok(())
    }

    fn last_ref(&self) -> EventRef {
        EventRef {
            owner: self.id,
            unit: self.first + self.units.len() as u64 - 1,
        }
    }

    /// Drops the done units at the front, raising the position to each.
    fn advance(&mut self) {
        while let Some(&Unit {
            end: Some(end),
            pending: 0,
            ..
        }) = self.units.front()
        {
            self.confirmed = self.confirmed.max(Some(end));
            self.units.pop_front();
            self.first += 1;
        }
        // Every unit received before the keepalive is done, and none is
        // being received: whatever comes next commits after `wal_end`.
        if self.units.is_empty() {
            self.confirmed = self.confirmed.max(self.keepalive);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(value: u64) -> Lsn {
        Lsn(value)
    }

    #[test]
    fn out_of_order_completion_confirms_only_the_done_prefix() {
        let mut p = Positions::new();
        p.begin(lsn(100), 1).expect("begin");
        let a1 = p.event().expect("event");
        let a2 = p.event().expect("event");
        p.commit(lsn(110)).expect("commit");
        p.begin(lsn(200), 2).expect("begin");
        let b1 = p.event().expect("event");
        p.commit(lsn(210)).expect("commit");
        p.begin(lsn(300), 3).expect("begin");
        let c1 = p.event().expect("event");
        p.commit(lsn(310)).expect("commit");
        assert_eq!(p.confirmable(), None);

        // The newest transaction finishes first, then the middle one.
        p.done(c1).expect("done");
        p.done(b1).expect("done");
        assert_eq!(p.confirmable(), None, "the first is still open");
        p.done(a2).expect("done");
        assert_eq!(p.confirmable(), None, "half of the first");
        p.done(a1).expect("done");
        assert_eq!(p.confirmable(), Some(lsn(310)), "all three at once");
        assert!(p.units.is_empty());
    }

    #[test]
    fn a_done_transaction_waits_for_its_commit() {
        let mut p = Positions::new();
        p.begin(lsn(100), 1).expect("begin");
        let a = p.event().expect("event");
        p.done(a).expect("done");
        assert_eq!(p.confirmable(), None, "more events may follow");
        p.commit(lsn(120)).expect("commit");
        assert_eq!(p.confirmable(), Some(lsn(120)));
    }

    #[test]
    fn an_empty_transaction_is_done_at_commit() {
        let mut p = Positions::new();
        p.begin(lsn(100), 1).expect("begin");
        p.commit(lsn(130)).expect("commit");
        assert_eq!(p.confirmable(), Some(lsn(130)));

        // Behind an open one it waits.
        p.begin(lsn(200), 2).expect("begin");
        let a = p.event().expect("event");
        p.commit(lsn(210)).expect("commit");
        p.begin(lsn(300), 3).expect("begin");
        p.commit(lsn(310)).expect("commit");
        assert_eq!(p.confirmable(), Some(lsn(130)));
        p.done(a).expect("done");
        assert_eq!(p.confirmable(), Some(lsn(310)));
    }

    #[test]
    fn confirms_the_end_lsn_never_the_commit_lsn() {
        let mut p = Positions::new();
        p.begin(lsn(0x16_B374_D848), 1).expect("begin");
        let a = p.event().expect("event");
        // The commit LSN equals the Begin's final LSN: refused as an end.
        assert_eq!(
            p.commit(lsn(0x16_B374_D848)),
            Err(PositionError::EndNotAfterStart {
                final_lsn: lsn(0x16_B374_D848),
                end_lsn: lsn(0x16_B374_D848),
            })
        );
        p.commit(lsn(0x16_B374_D878))
            .expect("the transaction stayed open");
        p.done(a).expect("done");
        assert_eq!(p.confirmable(), Some(lsn(0x16_B374_D878)));
    }

    #[test]
    fn a_keepalive_counts_only_when_nothing_is_open_and_no_transaction_is_being_received() {
        let mut p = Positions::new();
        p.keepalive(lsn(50));
        assert_eq!(p.confirmable(), Some(lsn(50)), "idle slot advances");

        // A transaction is open (received, not done).
        p.begin(lsn(100), 1).expect("begin");
        let a = p.event().expect("event");
        p.commit(lsn(110)).expect("commit");
        p.keepalive(lsn(150));
        assert_eq!(p.confirmable(), Some(lsn(50)));
        p.done(a).expect("done");
        assert_eq!(p.confirmable(), Some(lsn(150)), "once it is done");

        // Between a Begin and its Commit, even with no event yet.
        p.begin(lsn(200), 2).expect("begin");
        p.keepalive(lsn(190));
        p.keepalive(lsn(199));
        assert_eq!(p.confirmable(), Some(lsn(150)));
        p.commit(lsn(220)).expect("commit");
        assert_eq!(p.confirmable(), Some(lsn(220)));
        p.keepalive(lsn(400));
        assert_eq!(p.confirmable(), Some(lsn(400)));
    }

    #[test]
    fn the_position_never_moves_backwards() {
        let mut p = Positions::new();
        p.keepalive(lsn(500));
        p.keepalive(lsn(300));
        assert_eq!(p.confirmable(), Some(lsn(500)));
        // A transaction ending before the last keepalive changes nothing.
        p.begin(lsn(400), 1).expect("begin");
        assert_eq!(p.confirmable(), Some(lsn(500)));
        p.commit(lsn(450)).expect("commit");
        assert_eq!(p.confirmable(), Some(lsn(500)));
        // Nor does a stream going back past what was received.
        assert_eq!(
            p.begin(lsn(449), 2),
            Err(PositionError::Backwards {
                previous: lsn(450),
                lsn: lsn(449),
            })
        );
        assert_eq!(p.confirmable(), Some(lsn(500)));
    }

    #[test]
    fn a_non_transactional_message_holds_the_position_until_done() {
        let mut p = Positions::new();
        p.begin(lsn(100), 1).expect("begin");
        p.commit(lsn(110)).expect("commit");
        let m = p.non_transactional(lsn(150)).expect("between transactions");
        p.begin(lsn(200), 2).expect("begin");
        p.commit(lsn(210)).expect("commit");
        p.keepalive(lsn(300));
        assert_eq!(p.confirmable(), Some(lsn(110)));
        assert_eq!(p.oldest_open_commit_time(), Some(2), "messages have none");
        p.done(m).expect("done");
        assert_eq!(p.confirmable(), Some(lsn(300)));

        p.begin(lsn(400), 3).expect("begin");
        assert_eq!(
            p.non_transactional(lsn(405)),
            Err(PositionError::InTransaction {
                open: lsn(400),
                lsn: lsn(405),
            })
        );
    }

    #[test]
    fn calls_out_of_the_stream_order_are_refused() {
        let mut p = Positions::new();
        assert_eq!(
            p.event(),
            Err(PositionError::NotInTransaction { what: "event" })
        );
        assert_eq!(
            p.commit(lsn(10)),
            Err(PositionError::NotInTransaction { what: "commit" })
        );
        p.begin(lsn(100), 1).expect("begin");
        assert_eq!(
            p.begin(lsn(200), 2),
            Err(PositionError::AlreadyInTransaction {
                open: lsn(100),
                final_lsn: lsn(200),
            })
        );
        let a = p.event().expect("event");
        p.commit(lsn(110)).expect("commit");
        assert_eq!(
            p.event(),
            Err(PositionError::NotInTransaction { what: "event" })
        );

        // An event of an earlier connection's `Positions` is refused, and
        // does not mark this connection's transaction done.
        let mut next = Positions::new();
        next.begin(lsn(100), 1).expect("begin");
        let b = next.event().expect("event");
        next.commit(lsn(110)).expect("commit");
        assert_eq!(next.done(a), Err(PositionError::ForeignEvent));
        assert_eq!(next.confirmable(), None);
        next.done(b).expect("done");
        assert_eq!(next.confirmable(), Some(lsn(110)));
    }

    #[test]
    fn the_lag_is_measured_from_the_oldest_open_transaction() {
        let mut p = Positions::new();
        assert_eq!(p.oldest_open_commit_time(), None);
        p.begin(lsn(100), 1_000).expect("begin");
        let a = p.event().expect("event");
        assert_eq!(p.oldest_open_commit_time(), Some(1_000), "mid-transaction");
        p.commit(lsn(110)).expect("commit");
        p.begin(lsn(200), 2_000).expect("begin");
        let b = p.event().expect("event");
        p.commit(lsn(210)).expect("commit");
        p.done(b).expect("done");
        assert_eq!(p.oldest_open_commit_time(), Some(1_000));
        p.done(a).expect("done");
        assert_eq!(p.oldest_open_commit_time(), None);
    }

    #[test]
    fn memory_holds_only_what_is_open_and_what_waits_behind_it() {
        let mut p = Positions::new();
        let mut at = 0;
        for _ in 0..10_000 {
            p.begin(lsn(at + 10), 0).expect("begin");
            let e = p.event().expect("event");
            p.commit(lsn(at + 20)).expect("commit");
            p.done(e).expect("done");
            at += 20;
        }
        assert_eq!(p.units.len(), 0);
        assert_eq!(p.confirmable(), Some(lsn(at)));

        p.begin(lsn(at + 10), 0).expect("begin");
        let stuck = p.event().expect("event");
        p.commit(lsn(at + 20)).expect("commit");
        for i in 1..=100 {
            p.begin(lsn(at + 20 * i + 10), 0).expect("begin");
            p.commit(lsn(at + 20 * i + 20)).expect("commit");
        }
        assert_eq!(p.units.len(), 101, "waiting behind the stuck one");
        p.done(stuck).expect("done");
        assert_eq!(p.units.len(), 0);
    }

    /// What the checker knows of a received unit.
    #[derive(Debug)]
    struct Model {
        /// Where its WAL record (the commit record, or the message) starts:
        /// a restart at a later position skips it.
        start: u64,
        /// Where the record ends, once received.
        end: Option<u64>,
        /// Events not yet done.
        pending: usize,
    }

    #[test]
    fn random_streams_confirm_no_more_than_is_done_and_no_less() {
        for seed in 1..=200_u64 {
            check_random_stream(seed);
        }
    }

    /// Plays a random stream (transactions of 0 to 4 events, unrelated WAL,
    /// keepalives between and inside transactions, non-transactional
    /// messages) with events done in random order, and after every step
    /// checks the position against a model of the server: it never passes
    /// the start of a unit not done (that unit would be lost after a
    /// restart), it reaches every fully done prefix and an idle keepalive,
    /// it never goes back, and memory is what is not yet passed.
    fn check_random_stream(seed: u64) {
        let mut rng = crate::test_rng::XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut p = Positions::new();
        let mut units: Vec<Model> = Vec::new();
        let mut outstanding: Vec<(usize, EventRef)> = Vec::new();
        // The end of the last WAL record the server has read.
        let mut wal = 1_000_u64;
        let mut in_transaction = false;
        let mut idle_keepalive = None;
        let mut previous = None;

        for step in 0..400_i64 {
            match rng.below(10) {
                // Unrelated writes, then maybe a keepalive at the read point.
                0 | 1 => {
                    if !in_transaction {
                        wal += 1 + rng.below(500);
                    }
                    if rng.chance(60) {
                        // Mid-transaction, the walsender has read up to a
                        // record before the commit record, no further.
                        let wal_end = match units.last() {
                            Some(open) if in_transaction => open.start - rng.below(8),
                            _ => wal,
                        };
                        p.keepalive(lsn(wal_end));
                        if !in_transaction {
                            idle_keepalive = idle_keepalive.max(Some(wal_end));
                        }
                    }
                }
                2..=4 if !in_transaction => {
                    // The commit record starts after the transaction's
                    // changes, themselves after what was read before.
                    let start = wal + 8 + rng.below(300);
                    p.begin(lsn(start), step).expect("begin");
                    units.push(Model {
                        start,
                        end: None,
                        pending: 0,
                    });
                    in_transaction = true;
                }
                2..=4 => {
                    let i = units.len() - 1;
                    if rng.chance(70) && units[i].pending < 4 {
                        outstanding.push((i, p.event().expect("event")));
                        units[i].pending += 1;
                    } else {
                        let end = units[i].start + 1 + rng.below(64);
                        p.commit(lsn(end)).expect("commit");
                        units[i].end = Some(end);
                        wal = end;
                        in_transaction = false;
                    }
                }
                5 if !in_transaction => {
                    let start = wal + 1 + rng.below(100);
                    let end = start + 1 + rng.below(100);
                    outstanding.push((units.len(), p.non_transactional(lsn(end)).expect("m")));
                    units.push(Model {
                        start,
                        end: Some(end),
                        pending: 1,
                    });
                    wal = end;
                }
                _ => {
                    if !outstanding.is_empty() {
                        let pick =
                            usize::try_from(rng.below(outstanding.len() as u64)).expect("small");
                        let (i, event) = outstanding.swap_remove(pick);
                        p.done(event).expect("done");
                        units[i].pending -= 1;
                    }
                }
            }

            let confirmed = p.confirmable();
            let context = || format!("seed {seed} step {step}: {confirmed:?} {units:?}");
            let is_done = |u: &Model| u.pending == 0 && u.end.is_some();
            let first_open = units.iter().position(|u| !is_done(u));

            // Safe: never past the start of a unit not done, and never past
            // the end of the oldest transaction not done.
            if let Some(open) = first_open.map(|i| &units[i]) {
                assert!(confirmed <= Some(lsn(open.start)), "{}", context());
                if let Some(end) = open.end {
                    assert!(confirmed <= Some(lsn(end)), "{}", context());
                }
            }
            // Live: at least the end of every fully done prefix, and the last
            // idle keepalive once everything received is done.
            let done_prefix = first_open.unwrap_or(units.len());
            if let Some(end) = done_prefix.checked_sub(1).and_then(|i| units[i].end) {
                assert!(confirmed >= Some(lsn(end)), "{}", context());
            }
            if let Some(wal_end) = idle_keepalive {
                if first_open.is_none() {
                    assert!(confirmed >= Some(lsn(wal_end)), "{}", context());
                }
            }
            // Monotonic.
            assert!(confirmed >= previous, "{}", context());
            previous = confirmed;
            // Bounded: exactly the units not yet passed.
            assert_eq!(p.units.len(), units.len() - done_prefix, "{}", context());
        }
    }
}
