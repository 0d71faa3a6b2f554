//! W6, the relay's cost curve on PostgreSQL and Kafka: how the claim time
//! and the drain rate grow with the backlog, how the drain rate grows with
//! the number of relay processes, and how rate and memory go with the
//! payload size.
//!
//! | module | owns |
//! | --- | --- |
//! | `backlog` | the backlog written by one `INSERT … SELECT`, checked against the SDK's row |
//! | `claim` | timing the relay store's `claim` on a standing backlog |
//! | `drain` | relay processes: started, sharing the partitions, timed while draining |

mod backlog;
mod claim;
mod drain;

use self::drain::{drain_rate, peak_rss_mib, stop_all, Setup};
use super::{Broker, Ctx};
use crate::error::Result;
use crate::event::PAYLOAD_BYTES;
use crate::plot::{cost_curves, Axes, Curve};
use crate::relay_process::locate;
use crate::report::{number, Row, WorkloadReport};

/// The broker of every drain here.
pub(super) const BROKER: Broker = Broker::Kafka;

/// Target: the median claim at the largest backlog ÷ at the smallest.
const CLAIM_GROWTH_TARGET: f64 = 2.0;

/// Target: the relay's peak RSS, MiB, at every payload size.
const RSS_TARGET_MIB: f64 = 64.0;

/// One point of the backlog curve.
#[derive(Debug, Clone, Copy)]
struct BacklogPoint {
    /// Pending rows.
    backlog: usize,
    /// Median claim time, ms.
    claim_p50: Option<f64>,
    /// 99th percentile claim time, ms.
    claim_p99: Option<f64>,
    /// Rows/s the relay process drained.
    drain: f64,
}

/// Runs W6.
pub(crate) async fn run(ctx: &Ctx, report: &mut WorkloadReport) -> Result<()> {
    let o = &ctx.options.w6;
    report.title = "relay cost curve: claim time and drain rate against backlog, relay processes and payload size".into();
    let p = &mut report.parameters;
    p.insert("backlogs".into(), serde_json::json!(o.backlogs));
    p.insert("claims_per_backlog".into(), o.claims.into());
    p.insert("drain_rows_per_backlog".into(), o.drain_rows.into());
    p.insert("relay_processes".into(), serde_json::json!(o.relays));
    p.insert("relay_backlog".into(), o.relay_backlog.into());
    p.insert("payload_bytes".into(), serde_json::json!(o.payloads));
    p.insert("payload_rows".into(), o.payload_rows.into());
    p.insert(
        "relay_batch_size".into(),
        claim::default_limits().rows.into(),
    );
    p.insert("broker".into(), BROKER.name().into());
    let relay_bin = locate(ctx.relay_bin.as_deref())?;
    let setup = Setup {
        ctx,
        relay_bin: &relay_bin,
        prefix: format!("bench_{}_w6_", ctx.run_id),
    };
    BROKER
        .publisher(&ctx.services)
        .await?
        .ensure_destination(&format!(
            "{}{}",
            setup.prefix,
            <crate::event::Tick as eventbus::Event>::DESTINATION
        ))
        .await?;

    // The generated rows must be the SDK's, at every payload size used.
    let db = setup.db("check").await?;
    let mut sizes = o.payloads.clone();
    sizes.push(PAYLOAD_BYTES);
    sizes.sort_unstable();
    sizes.dedup();
    for &size in &sizes {
        backlog::check_against_sdk(&db.pool, size).await?;
    }
    drop(db);
    ctx.progress.log(format!(
        "W6 generated rows match the SDK's (payloads of {} bytes)",
        sizes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ));

    backlog_curve(&setup, report).await?;
    relays_curve(&setup, report).await?;
    payload_curve(&setup, report).await?;
    report.notes.push(format!(
        "Backlogs are written by one `INSERT … SELECT generate_series` statement (one transaction), \
         each row as `Outbox::publish` writes the bench's event: UUIDv7 event id, random UUID key \
         (so the rows spread over the {} partitions), the key as subject, no headers, \
         `{{\"key\":…,\"pad\":\"xxx…\"}}`; checked before the run against a row the SDK wrote, \
         for every payload size (all columns but ids, keys and times alike).",
        eventbus::migrate::DEFAULT_PARTITIONS
    ));
    Ok(())
}

/// Claim time and drain rate against the backlog.
async fn backlog_curve(setup: &Setup<'_>, report: &mut WorkloadReport) -> Result<()> {
    let (ctx, o) = (setup.ctx, &setup.ctx.options.w6);
    let batch = claim::default_limits().rows as usize;
    let mut points: Vec<BacklogPoint> = Vec::new();
    for &n in &o.backlogs {
        let db = setup.db(&format!("backlog_{n}")).await?;
        let bar = ctx
            .progress
            .bar(format!("W6 fill {} pending", number(n as f64)), n as u64);
        let took = backlog::fill(&db.pool, n, PAYLOAD_BYTES).await?;
        bar.set_position(n as u64);
        ctx.progress.done(&bar);
        // What autovacuum does soon after a large insert; done here so every
        // size is measured with statistics of its own backlog.
        sqlx::query("ANALYZE eventbus_outbox")
            .execute(&db.pool)
            .await?;

        let bar = ctx.progress.bar(
            format!("W6 claims at {} pending", number(n as f64)),
            o.claims as u64,
        );
        let claims = claim::time_claims(&db.pool, o.claims, n.min(batch), &bar).await?;
        ctx.progress.done(&bar);

        // The drain: the relay starts on the standing backlog; the clock
        // starts once it holds every partition (watched every 20 ms), as its
        // first claim follows at once.
        let drain = o.drain_rows.min(n);
        let mut relays = setup.relays(&db, &format!("backlog-{n}"), 1).await?;
        let bar = ctx.progress.bar(
            format!(
                "W6 drain {} of {} pending",
                number(drain as f64),
                number(n as f64)
            ),
            drain as u64,
        );
        let measured = drain_rate(&db.pool, &mut relays, drain, None, &bar).await;
        ctx.progress.done(&bar);
        let rss = peak_rss_mib(&relays);
        stop_all(relays).await?;
        let (drained, _) = measured?;
        drop(db);
        ctx.progress.log(format!(
            "W6 {n} pending: fill {:.1} s, claim p50 {} ms p99 {} ms ({} rows), drain {drained:.0}/s, relay peak RSS {rss:.1} MiB",
            took.as_secs_f64(),
            opt(claims.summary.p50_ms),
            opt(claims.summary.p99_ms),
            claims.rows
        ));
        points.push(BacklogPoint {
            backlog: n,
            claim_p50: claims.summary.p50_ms,
            claim_p99: claims.summary.p99_ms,
            drain: drained,
        });
    }

    let Some(&base) = points.iter().min_by_key(|p| p.backlog) else {
        return Ok(());
    };
    let smallest = base.backlog;
    let largest = points.iter().map(|p| p.backlog).max().unwrap_or(smallest);
    let at_smallest = format!("at {} pending", number(smallest as f64));
    for p in &points {
        let case = format!("{} pending", number(p.backlog as f64));
        report.rows.push(Row::lower_is_better(
            &case,
            "claim time, median",
            "ms",
            p.claim_p50,
            Some((at_smallest.clone(), base.claim_p50)),
            None,
        ));
        report.rows.push(Row::lower_is_better(
            &case,
            "claim time, p99",
            "ms",
            p.claim_p99,
            Some((at_smallest.clone(), base.claim_p99)),
            None,
        ));
        report.rows.push(
            Row::throughput(&case, p.drain, at_smallest.clone(), base.drain, None)
                .with_metric("drain rate")
                .with_unit("rows/s"),
        );
    }
    let growth_p50 = claim::growth(
        &points
            .iter()
            .map(|p| (p.backlog, p.claim_p50))
            .collect::<Vec<_>>(),
    );
    let growth_p99 = claim::growth(
        &points
            .iter()
            .map(|p| (p.backlog, p.claim_p99))
            .collect::<Vec<_>>(),
    );
    let growth_case = format!(
        "claim at {} ÷ at {} pending",
        number(largest as f64),
        number(smallest as f64)
    );
    report.rows.push(Row::lower_is_better(
        &growth_case,
        "median claim time growth",
        "×",
        growth_p50,
        None,
        Some(CLAIM_GROWTH_TARGET),
    ));
    report.rows.push(Row::lower_is_better(
        &growth_case,
        "p99 claim time growth",
        "×",
        growth_p99,
        None,
        None,
    ));
    ctx.progress.log(format!(
        "W6 claim time at {} ÷ at {} pending: median {}×, p99 {}× (target ≤ {CLAIM_GROWTH_TARGET}× for the median)",
        number(largest as f64),
        number(smallest as f64),
        opt(growth_p50),
        opt(growth_p99)
    ));
    report.notes.push(format!(
        "Claim time: one relay id registered through `PgRelayStore` (heartbeat, then every partition's \
         lease), then `claim` with the relay's default limits ({batch} rows, its byte budget) {} times \
         after one untimed claim; nothing is deleted, so every claim faces the same backlog. The backlog \
         is `ANALYZE`d after the fill. Drain: the `outbox-relay` process started on the standing \
         backlog; the clock runs from the moment it holds every partition until its \
         `eventbus_relay_published_total` reaches {} rows (or the whole backlog when smaller).",
        o.claims,
        number(o.drain_rows as f64)
    ));
    let claim_curve = |label: &str, pick: fn(&BacklogPoint) -> Option<f64>| Curve {
        label: label.into(),
        points: points
            .iter()
            .filter_map(|p| Some((p.backlog as f64, pick(p)?)))
            .collect(),
    };
    plot(
        setup,
        report,
        "w6_claim.png",
        &Axes {
            title: "W6: claim time against the backlog",
            x_desc: "pending rows",
            y_desc: "claim time, ms",
            log_x: true,
            log_y: true,
        },
        &[
            claim_curve("median", |p| p.claim_p50),
            claim_curve("p99", |p| p.claim_p99),
        ],
    )?;
    plot(
        setup,
        report,
        "w6_backlog_drain.png",
        &Axes {
            title: "W6: drain rate against the backlog (one relay process, Kafka)",
            x_desc: "pending rows",
            y_desc: "rows/s",
            log_x: true,
            log_y: false,
        },
        &[Curve {
            label: "drain rate".into(),
            points: points.iter().map(|p| (p.backlog as f64, p.drain)).collect(),
        }],
    )
}

/// Total drain rate against the number of relay processes.
async fn relays_curve(setup: &Setup<'_>, report: &mut WorkloadReport) -> Result<()> {
    let (ctx, o) = (setup.ctx, &setup.ctx.options.w6);
    let n = o.relay_backlog;
    let mut points: Vec<(usize, f64)> = Vec::new();
    for &count in &o.relays {
        let db = setup.db(&format!("relays_{count}")).await?;
        let mut relays = setup.relays(&db, &format!("relays-{count}"), count).await?;
        let bar = ctx.progress.bar(
            format!("W6 {count} relays drain {}", number(n as f64)),
            n as u64,
        );
        let measured = drain_rate(&db.pool, &mut relays, n, Some(PAYLOAD_BYTES), &bar).await;
        ctx.progress.done(&bar);
        stop_all(relays).await?;
        let (drained, _) = measured?;
        drop(db);
        ctx.progress
            .log(format!("W6 {count} relay processes: {drained:.0}/s"));
        points.push((count, drained));
    }
    let Some(&(fewest, base)) = points.iter().min_by_key(|p| p.0) else {
        return Ok(());
    };
    let baseline = format!(
        "{fewest} relay process{}",
        if fewest == 1 { "" } else { "es" }
    );
    for &(count, drained) in &points {
        report.rows.push(
            Row::throughput(
                format!(
                    "{count} relay process{}, {} rows",
                    if count == 1 { "" } else { "es" },
                    number(n as f64)
                ),
                drained,
                baseline.clone(),
                base,
                None,
            )
            .with_metric("total drain rate")
            .with_unit("rows/s"),
        );
    }
    report.notes.push(format!(
        "Relay processes: all started on an empty outbox and waited for until they share the \
         partitions (each holds some, together all); then {} rows written in one statement; the clock \
         runs from its commit until the sum of their `eventbus_relay_published_total` reaches the count.",
        number(n as f64)
    ));
    plot(
        setup,
        report,
        "w6_relays.png",
        &Axes {
            title: "W6: total drain rate against relay processes (Kafka)",
            x_desc: "relay processes",
            y_desc: "rows/s",
            log_x: false,
            log_y: false,
        },
        &[Curve {
            label: format!("{} rows", number(n as f64)),
            points: points.iter().map(|&(c, r)| (c as f64, r)).collect(),
        }],
    )
}

/// Drain rate (rows/s, MB/s) and the relay's peak RSS against payload size.
async fn payload_curve(setup: &Setup<'_>, report: &mut WorkloadReport) -> Result<()> {
    let (ctx, o) = (setup.ctx, &setup.ctx.options.w6);
    let n = o.payload_rows;
    // (payload bytes, rows/s, MB/s, peak RSS MiB)
    let mut points: Vec<(usize, f64, f64, f64)> = Vec::new();
    for &size in &o.payloads {
        let db = setup.db(&format!("payload_{size}")).await?;
        let mut relays = setup.relays(&db, &format!("payload-{size}"), 1).await?;
        let bar = ctx.progress.bar(
            format!("W6 drain {} rows of {size} B", number(n as f64)),
            n as u64,
        );
        let measured = drain_rate(&db.pool, &mut relays, n, Some(size), &bar).await;
        ctx.progress.done(&bar);
        let rss = peak_rss_mib(&relays);
        stop_all(relays).await?;
        let (drained, _) = measured?;
        drop(db);
        let mb = drained * size as f64 / 1e6;
        ctx.progress.log(format!(
            "W6 {size}-byte payloads: {drained:.0}/s, {mb:.1} MB/s, relay peak RSS {rss:.1} MiB"
        ));
        points.push((size, drained, mb, rss));
    }
    let Some(&(smallest, base_rate, base_mb, _)) = points.iter().min_by_key(|p| p.0) else {
        return Ok(());
    };
    let baseline = format!("{smallest} B payloads");
    for &(size, drained, mb, rss) in &points {
        let case = format!("{size} B payloads");
        report.rows.push(
            Row::throughput(&case, drained, baseline.clone(), base_rate, None)
                .with_metric("drain rate")
                .with_unit("rows/s"),
        );
        report.rows.push(
            Row::throughput(&case, mb, baseline.clone(), base_mb, None)
                .with_metric("drain rate")
                .with_unit("MB/s"),
        );
        report.rows.push(Row::lower_is_better(
            &case,
            "relay peak RSS",
            "MiB",
            Some(rss),
            None,
            Some(RSS_TARGET_MIB),
        ));
    }
    report.notes.push(format!(
        "Payload sizes: the relay started on an empty outbox; {} rows of each size written in one \
         statement; clock from the commit to the last publish. MB/s counts payload bytes (10^6 \
         bytes), not the CloudEvents around them. The pad is one repeated character, as in the \
         other workloads: PostgreSQL compresses large payloads in its storage, the relay and the \
         broker carry them whole.",
        number(n as f64)
    ));
    plot(
        setup,
        report,
        "w6_payload.png",
        &Axes {
            title: "W6: drain rate against payload size (one relay process, Kafka)",
            x_desc: "payload bytes",
            y_desc: "rows/s and MB/s",
            log_x: true,
            log_y: true,
        },
        &[
            Curve {
                label: "rows/s".into(),
                points: points.iter().map(|p| (p.0 as f64, p.1)).collect(),
            },
            Curve {
                label: "MB/s (payload bytes)".into(),
                points: points.iter().map(|p| (p.0 as f64, p.2)).collect(),
            },
        ],
    )
}

/// Draws one curve's PNG into the output directory and lists it.
fn plot(
    setup: &Setup<'_>,
    report: &mut WorkloadReport,
    file: &str,
    axes: &Axes<'_>,
    curves: &[Curve],
) -> Result<()> {
    cost_curves(&setup.ctx.out.join(file), axes, curves)?;
    report.plots.push(file.to_owned());
    Ok(())
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "–".into(), number)
}
