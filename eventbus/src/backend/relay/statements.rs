//! [`RelaySql`]: the relay statements whose shape is the same on every
//! database, spelled by its [`Dialect`], next to each store's own.

use crate::backend::dialect::Dialect;
use crate::table::TableName;

/// The quoted names a relay statement uses.
#[derive(Debug)]
pub(crate) struct Names {
    /// The outbox table.
    pub(crate) outbox: String,
    /// Its lease table, `<outbox>_partitions`.
    pub(crate) partitions: String,
    /// Its membership table, `<outbox>_relays`.
    pub(crate) relays: String,
    /// The `partition` column (a reserved word on MySQL).
    pub(crate) partition: String,
}

/// The relay's SQL for one outbox table, built once (names are validated
/// and quoted): the statements every database writes alike, and the
/// backend's `own`.
///
/// Parameters: `relay` is the relay's id, `partitions` a list of partitions
/// (bound as the dialect binds lists), `span` a duration (bound as the
/// dialect shifts times). With positional placeholders (MySQL) a parameter
/// used twice is bound twice: the statements say where.
#[derive(Debug)]
pub(crate) struct RelaySql<Own> {
    /// The outbox's partitions, in order.
    pub(crate) partitions: String,
    /// How many rows are parked (`failed`).
    pub(crate) parked: String,
    /// (relay, name; MySQL: name again): records the relay's heartbeat.
    pub(crate) heartbeat: String,
    /// (span, relay, partitions): extends the leases the relay holds.
    pub(crate) renew: String,
    /// (relay, span, partitions; MySQL: relay again): takes the free or
    /// expired leases of `partitions`, in a new tenure (epoch).
    pub(crate) acquire: String,
    /// (relay, partitions): the leases the relay holds among `partitions`,
    /// read back where an `UPDATE` cannot return them (MySQL).
    pub(crate) owned: String,
    /// (relay, partitions): gives up leases.
    pub(crate) release: String,
    /// (relay): gives up every lease.
    pub(crate) release_all: String,
    /// (relay): leaves the membership table.
    pub(crate) deregister: String,
    /// (span): the relays whose heartbeat is that recent.
    pub(crate) live: String,
    /// (span): forgets relays whose heartbeat is older.
    pub(crate) forget_dead: String,
    /// (span): how many published rows are older.
    pub(crate) expired_published: String,
    /// (span, batch): deletes up to `batch` published rows that are older.
    pub(crate) delete_published: String,
    /// (partitions): per partition, the pending rows, the age of the oldest
    /// and how long the oldest held-back row has waited.
    pub(crate) stats: String,
    /// The backend's statements of its own shape.
    pub(crate) own: Own,
}

impl<Own> RelaySql<Own> {
    /// The statements for `table` in `dialect`, with the backend's `own`
    /// built from the same names. `held_back` is the SQL of how long the
    /// oldest pending row `o` of a partition group has been held back for
    /// commit order, in seconds (`NULL` where nothing is ever held back).
    pub(crate) fn new(
        dialect: Dialect,
        table: &TableName,
        held_back: &str,
        own: impl FnOnce(&Names) -> Own,
    ) -> Self {
        let names = Names {
            outbox: dialect.table(table),
            partitions: dialect.object(table, "_partitions"),
            relays: dialect.object(table, "_relays"),
            partition: dialect.column("partition"),
        };
        let Names {
            outbox: t,
            partitions: p,
            relays: r,
            partition: part,
        } = &names;
        let param = |n| dialect.param(n);
        let now = dialect.now();
        // Where there is no `UPDATE … RETURNING` (MySQL), the store reads
        // the leases back.
        let returning = dialect.returning(&format!("{part}, epoch"));
        // There, a lease the relay still holds but had lost track of counts
        // as free: it comes back in a new tenure, never with an unknown
        // remaining time.
        let lost_track = if dialect.has_returning() {
            String::new()
        } else {
            format!(" OR owner = {}", param(4))
        };
        let expired = format!("published_at < {}", dialect.ago(1));
        RelaySql {
            partitions: format!("SELECT {part} FROM {p} ORDER BY {part}"),
            parked: format!("SELECT count(*) FROM {t} WHERE state = 'failed'"),
            heartbeat: format!(
                "INSERT INTO {r} (relay_id, name) VALUES ({relay}, {name}) \
                 {upsert} heartbeat_at = {now}, name = {name}",
                relay = param(1),
                name = param(2),
                upsert = dialect.upsert("relay_id"),
            ),
            acquire: format!(
                "UPDATE {p} SET owner = {relay}, epoch = epoch + 1, lease_expires_at = {until} \
                 WHERE {wanted} AND (owner IS NULL OR lease_expires_at IS NULL \
                       OR lease_expires_at < {now}{lost_track}){returning}",
                relay = param(1),
                until = dialect.later(2),
                wanted = dialect.in_list(part, 3),
            ),
            owned: format!(
                "SELECT {part}, epoch FROM {p} WHERE owner = {relay} AND {wanted} ORDER BY {part}",
                relay = param(1),
                wanted = dialect.in_list(part, 2),
            ),
            delete_published: dialect.limited_delete(
                t,
                &format!("state = 'published' AND {expired}"),
                2,
            ),
            stats: format!(
                "SELECT o.{part} AS {part}, count(*) AS n, \
                        {oldest} AS oldest, {held_back} AS held \
                 FROM {t} o WHERE o.state = 'pending' AND {wanted} GROUP BY o.{part}",
                oldest = dialect.age("min(o.created_at)"),
                wanted = dialect.in_list(&format!("o.{part}"), 1),
            ),
            renew: format!(
                "UPDATE {p} SET lease_expires_at = {until} WHERE owner = {relay} AND {held}{returning}",
                until = dialect.later(1),
                relay = param(2),
                held = dialect.in_list(part, 3),
            ),
            release: format!(
                "UPDATE {p} SET owner = NULL, lease_expires_at = NULL \
                 WHERE owner = {relay} AND {held}",
                relay = param(1),
                held = dialect.in_list(part, 2),
            ),
            release_all: format!(
                "UPDATE {p} SET owner = NULL, lease_expires_at = NULL WHERE owner = {}",
                param(1)
            ),
            deregister: format!("DELETE FROM {r} WHERE relay_id = {}", param(1)),
            live: format!(
                "SELECT relay_id FROM {r} WHERE heartbeat_at > {} ORDER BY relay_id",
                dialect.ago(1)
            ),
            // Crashed relays never deregister: forget them once long dead.
            forget_dead: format!("DELETE FROM {r} WHERE heartbeat_at < {}", dialect.ago(1)),
            expired_published: format!(
                "SELECT count(*) FROM {t} WHERE state = 'published' AND {expired}"
            ),
            own: own(&names),
        }
    }
}
