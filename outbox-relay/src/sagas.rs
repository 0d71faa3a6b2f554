//! `outbox-relay sagas list|show`: the saga instances a service keeps in its
//! saga table (`eventbus_sagas`), on any of the three databases — how many
//! each saga has by status, which are stuck, what one holds and which
//! timeouts it still waits for. Read only.

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Subcommand, ValueEnum};
use eventbus::backend::{connect, Create};
use eventbus::saga::{SagaCount, SagaQuery, SagaRecord, SagaStatus, Sagas};
use eventbus::{Error, Result};

use crate::config::{self, Common, FileConfig};

/// `outbox-relay sagas …`.
#[derive(Debug, Subcommand)]
pub(crate) enum SagasAction {
    /// A summary per saga and status (instances, pending timeouts, oldest
    /// start), then one line per instance, the most recently changed first:
    /// saga, instance id, status, version, age, last change, pending
    /// timeouts and when the next is due. The summary covers the same saga
    /// and status as the list.
    List {
        /// Only instances of this saga (its `Saga::NAME`).
        #[arg(long, value_name = "NAME")]
        saga: Option<String>,
        /// Only instances in this status.
        #[arg(long, value_enum)]
        status: Option<Status>,
        /// At most this many instance lines.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        #[command(flatten)]
        table: SagaTable,
    },
    /// Every field of one instance: status, version, times, its state as
    /// JSON and each timeout it waits for. Exits non-zero when there is no
    /// such instance.
    Show {
        /// The saga's name.
        saga: String,
        /// The instance's correlation id.
        instance_id: String,
        #[command(flatten)]
        table: SagaTable,
    },
}

/// `--status` of `sagas list`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Status {
    /// Started and not completed.
    Active,
    /// Completed.
    Completed,
}

impl From<Status> for SagaStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Active => SagaStatus::Active,
            Status::Completed => SagaStatus::Completed,
        }
    }
}

/// The saga table the commands read.
#[derive(Debug, clap::Args)]
pub(crate) struct SagaTable {
    /// Saga table name (`table` or `schema.table`).
    #[arg(
        long = "table",
        value_name = "TABLE",
        env = "EVENTBUS_SAGA_TABLE",
        default_value = eventbus::saga::DEFAULT_TABLE
    )]
    name: String,
}

/// Runs `action` against the database of `common` / `file`.
pub(crate) async fn run(action: SagasAction, common: &Common, file: &FileConfig) -> Result<()> {
    let url = config::database_url(common, file)?;
    let db = connect(url.expose(), Create::AsUrlSays).await?;
    let now = Utc::now();
    let lines = match &action {
        SagasAction::List {
            saga,
            status,
            limit,
            table,
        } => {
            let sagas = Sagas::new().table(&table.name)?;
            let mut query = SagaQuery::new().limit(*limit);
            if let Some(saga) = saga {
                query = query.saga(saga.as_str());
            }
            if let Some(status) = status {
                query = query.status((*status).into());
            }
            let counts = db
                .saga_counts(&sagas)
                .await?
                .into_iter()
                .filter(|c| saga.as_ref().is_none_or(|s| *s == c.saga))
                .filter(|c| status.is_none_or(|s| SagaStatus::from(s) == c.status))
                .collect::<Vec<_>>();
            let records = db.list_sagas(&sagas, &query).await?;
            list_lines(&sagas, &counts, &records, *limit, now)
        }
        SagasAction::Show {
            saga,
            instance_id,
            table,
        } => {
            let sagas = Sagas::new().table(&table.name)?;
            let record = db
                .saga_record(&sagas, saga, instance_id)
                .await?
                .ok_or_else(|| Error::Saga {
                    saga: saga.clone(),
                    instance: instance_id.clone(),
                    reason: format!("no such instance in {}", sagas.table_name()),
                })?;
            show_lines(&record, now)
        }
    };
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// What `sagas list` prints: the summary, then the instances.
fn list_lines(
    sagas: &Sagas,
    counts: &[SagaCount],
    records: &[SagaRecord],
    limit: u32,
    now: DateTime<Utc>,
) -> Vec<String> {
    if counts.is_empty() && records.is_empty() {
        return vec![format!("no saga instances in {} match", sagas.table_name())];
    }
    let mut summary = vec![cells([
        "SAGA",
        "STATUS",
        "INSTANCES",
        "TIMEOUTS",
        "OLDEST STARTED",
    ])];
    for c in counts {
        summary.push(vec![
            c.saga.clone(),
            c.status.to_string(),
            c.instances.to_string(),
            c.pending_timeouts.to_string(),
            c.oldest_started_at
                .map_or_else(|| "-".to_owned(), |t| at(t, now)),
        ]);
    }
    let mut lines = columns(&summary);
    lines.push(String::new());
    let mut instances = vec![cells([
        "SAGA", "INSTANCE", "STATUS", "VERSION", "AGE", "CHANGED", "TIMEOUTS", "NEXT DUE",
    ])];
    for r in records {
        instances.push(vec![
            r.saga.clone(),
            r.instance_id.clone(),
            r.status.to_string(),
            r.version.to_string(),
            span(now - r.started_at),
            format!("{} ago", span(now - r.updated_at)),
            r.timeouts.len().to_string(),
            next_due(r, now),
        ]);
    }
    lines.extend(columns(&instances));
    let shown = records.len();
    let more = if u32::try_from(shown).is_ok_and(|n| n >= limit) {
        format!(" (the {limit} most recently changed; --limit for more)")
    } else {
        String::new()
    };
    let noun = if shown == 1 { "instance" } else { "instances" };
    lines.push(format!("{shown} {noun} shown{more}"));
    lines
}

/// When the instance's first pending timeout is due, or `-`.
fn next_due(record: &SagaRecord, now: DateTime<Utc>) -> String {
    record
        .timeouts
        .iter()
        .map(|t| t.due())
        .min()
        .map_or_else(|| "-".to_owned(), |next| at(next, now))
}

/// What `sagas show` prints.
fn show_lines(r: &SagaRecord, now: DateTime<Utc>) -> Vec<String> {
    let mut lines = vec![
        format!("saga:         {}", r.saga),
        format!("instance:     {}", r.instance_id),
        format!("status:       {}", r.status),
        format!("version:      {}", r.version),
        format!("started at:   {}", at(r.started_at, now)),
        format!("updated at:   {}", at(r.updated_at, now)),
        format!(
            "completed at: {}",
            r.completed_at
                .map_or_else(|| "-".to_owned(), |t| at(t, now))
        ),
        format!("timeouts:     {}", r.timeouts.len()),
    ];
    let mut pending = r.timeouts.clone();
    pending.sort_by_key(|t| t.due_ms);
    for t in &pending {
        lines.push(format!(
            "  {}  {}  due {}",
            t.id,
            t.event_type,
            at(t.due(), now)
        ));
    }
    lines.push("state:".to_owned());
    // `{:#}` pretty-prints a JSON value.
    lines.extend(format!("{:#}", r.state).lines().map(str::to_owned));
    lines
}

/// A time, and how far it is from `now`: `2026-01-02T03:04:05Z (5m0s ago)`
/// or `(in 14m58s)`.
fn at(time: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let stamp = time.to_rfc3339_opts(SecondsFormat::Secs, true);
    if time <= now {
        format!("{stamp} ({} ago)", span(now - time))
    } else {
        format!("{stamp} (in {})", span(time - now))
    }
}

/// A length of time in its two largest units, without spaces: `3d4h`,
/// `2h0m`, `14m58s`, `7s`.
fn span(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    let (days, hours, minutes, seconds) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

fn cells<const N: usize>(names: [&str; N]) -> Vec<String> {
    names.iter().map(|&n| n.to_owned()).collect()
}

/// Rows as lines, every column but the last padded to its widest cell.
fn columns(rows: &[Vec<String>]) -> Vec<String> {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[i].saturating_sub(cell.chars().count());
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            line
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_keep_their_two_largest_units() {
        let s = chrono::TimeDelta::seconds;
        assert_eq!(span(s(0)), "0s");
        assert_eq!(span(s(59)), "59s");
        assert_eq!(span(s(14 * 60 + 58)), "14m58s");
        assert_eq!(span(s(2 * 3600 + 59)), "2h0m");
        assert_eq!(span(s(3 * 86_400 + 4 * 3600 + 5)), "3d4h");
        assert_eq!(span(s(-5)), "0s", "a clock running behind shows no time");
    }

    #[test]
    fn times_say_how_far_they_are() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).expect("valid");
        let earlier = now - chrono::TimeDelta::seconds(300);
        let later = now + chrono::TimeDelta::seconds(90);
        assert_eq!(at(earlier, now), "2027-01-15T07:55:00Z (5m0s ago)");
        assert_eq!(at(later, now), "2027-01-15T08:01:30Z (in 1m30s)");
    }

    #[test]
    fn columns_are_padded_to_the_widest_cell_but_the_last() {
        let rows = vec![cells(["A", "BB", "C"]), cells(["aaa", "b", "c c"])];
        assert_eq!(columns(&rows), vec!["A    BB  C", "aaa  b   c c"]);
    }
}
