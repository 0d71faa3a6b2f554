//! `outbox-relay dlq …`: consumers' dead letters. Those kept in a group's
//! parked table (`<inbox>_parked`) are listed, shown and replayed to that
//! group only; those on the broker (`<destination>.<group>.dlq`) are imported
//! into the table first, or re-driven to their origin (every group).

use std::time::Duration;

use clap::Subcommand;
use eventbus::backend::{connect, Backend, Create};
use eventbus::consumer::dead_letter;
use eventbus::inbox::{ParkRequest, ParkedState};
use eventbus::{Error, Result, TableName};

use crate::config::{self, BrokerArgs, Common, FileConfig};

/// `outbox-relay dlq …`.
#[derive(Debug, Subcommand)]
pub(crate) enum DlqAction {
    /// List dead letters kept in the parked table, oldest first (with
    /// `--state`, parked messages of another state).
    List {
        /// Only this consumer group's.
        #[arg(long)]
        consumer: Option<String>,
        /// `dead` (default), `retry`, `newer`, `waiting`, or `all`.
        #[arg(long, default_value = "dead")]
        state: String,
        /// At most this many.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
        #[command(flatten)]
        table: InboxTable,
    },
    /// Show one parked message: its group, key, state, attempts, reason and
    /// the event.
    Show {
        /// Its id (from `dlq list`).
        id: i64,
        #[command(flatten)]
        table: InboxTable,
    },
    /// Send dead letters back to the consumer group that gave up on them,
    /// and to no other group: they are handled again by that group's
    /// consumers, in key order, with fresh attempts.
    Replay {
        /// The consumer group.
        #[arg(long)]
        consumer: String,
        /// Replay every dead letter of the group.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Ids of the dead letters to replay.
        #[arg(required_unless_present = "all")]
        ids: Vec<i64>,
        #[command(flatten)]
        table: InboxTable,
    },
    /// Move a group's dead letters from its broker dead-letter destination
    /// (`DESTINATION.GROUP.dlq`) into its parked table, as dead, until none
    /// arrives for `--idle-ms`; then `dlq replay` sends them to that group.
    Import {
        /// The original destination.
        destination: String,
        /// The consumer group whose dead letters these are.
        #[arg(long)]
        consumer: String,
        /// Broker URL, as for `run`.
        #[arg(long, env = "EVENTBUS_BROKER", hide_env_values = true)]
        broker: Option<String>,
        #[command(flatten)]
        broker_options: BrokerArgs,
        /// Stop after this long without a dead letter.
        #[arg(long, default_value_t = 5000)]
        idle_ms: u64,
        #[command(flatten)]
        table: InboxTable,
    },
    /// Publish the dead letters of DESTINATION's group GROUP back to
    /// DESTINATION itself, until none arrives for `--idle-ms`. Every group
    /// subscribed to DESTINATION receives them again (each group's inbox
    /// skips what it handled); to reach one group only, use `import` and
    /// `replay`.
    Redrive {
        /// The original destination.
        destination: String,
        /// The consumer group whose dead letters are read
        /// (`DESTINATION.GROUP.dlq`).
        #[arg(long)]
        consumer: String,
        /// Broker URL, as for `run`.
        #[arg(long, env = "EVENTBUS_BROKER", hide_env_values = true)]
        broker: Option<String>,
        #[command(flatten)]
        broker_options: BrokerArgs,
        /// Consumer group (Kafka group id) reading the dead letters; on
        /// RabbitMQ by default the dead-letter queue itself, elsewhere
        /// `<GROUP>.dlq-redrive`.
        #[arg(long)]
        reader: Option<String>,
        /// Stop after this long without a dead letter.
        #[arg(long, default_value_t = 5000)]
        idle_ms: u64,
    },
}

/// The inbox table whose parked table is meant.
#[derive(Debug, clap::Args)]
pub(crate) struct InboxTable {
    /// Inbox table name (the parked table is `<inbox>_parked`).
    #[arg(long, env = "EVENTBUS_INBOX_TABLE", default_value = eventbus::inbox::DEFAULT_TABLE)]
    inbox_table: String,
}

impl InboxTable {
    fn parse(&self) -> Result<TableName> {
        TableName::parse(&self.inbox_table)
    }
}

/// Runs `action` against the database of `common` / `file`.
pub(crate) async fn run(action: DlqAction, common: &Common, file: &FileConfig) -> Result<()> {
    if let DlqAction::Redrive {
        destination,
        consumer,
        broker,
        broker_options,
        reader,
        idle_ms,
    } = action
    {
        return redrive(
            file,
            &destination,
            &consumer,
            broker.as_ref(),
            &broker_options,
            reader.as_deref(),
            idle_ms,
        )
        .await;
    }
    let url = config::database_url(common, file)?;
    let db = connect(url.expose(), Create::AsUrlSays).await?;
    match action {
        DlqAction::List {
            consumer,
            state,
            limit,
            table,
        } => {
            let state = match state.as_str() {
                "all" => None,
                name => Some(ParkedState::parse(name).ok_or_else(|| {
                    Error::Config(format!(
                        "unknown state `{name}`: use dead, retry, newer, waiting or all"
                    ))
                })?),
            };
            let inbox = table.parse()?;
            let rows = db
                .list_parked(&inbox, consumer.as_deref(), state, limit)
                .await?;
            println!("id\tconsumer\tstate\tattempts\tparked_at\tkey\ttype\treason");
            for row in &rows {
                let event_type = row
                    .envelope()
                    .map_or_else(|_| "?".to_owned(), |e| e.event_type);
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    row.id,
                    row.consumer,
                    row.state.as_str(),
                    row.attempts,
                    row.parked_at.to_rfc3339(),
                    row.key,
                    event_type,
                    row.reason.as_deref().unwrap_or("")
                );
            }
            Ok(())
        }
        DlqAction::Show { id, table } => {
            let inbox = table.parse()?;
            let row = db
                .parked_by_id(&inbox, id)
                .await?
                .ok_or_else(|| Error::Config(format!("no parked message with id {id}")))?;
            println!("id:        {}", row.id);
            println!("consumer:  {}", row.consumer);
            println!("state:     {}", row.state.as_str());
            println!("holds key: {}", row.holds_key);
            println!("key:       {}", row.key);
            println!("origin:    {}", row.origin);
            println!("attempts:  {}", row.attempts);
            println!("parked at: {}", row.parked_at.to_rfc3339());
            println!("due at:    {}", row.due_at.to_rfc3339());
            println!("reason:    {}", row.reason.as_deref().unwrap_or(""));
            println!("event:     {}", row.event);
            Ok(())
        }
        DlqAction::Replay {
            consumer,
            all,
            ids,
            table,
        } => {
            let inbox = table.parse()?;
            let chosen = (!all).then_some(ids.as_slice());
            let n = db
                .replay_dead(&inbox, &consumer, chosen, chrono::Utc::now())
                .await?;
            println!("{n} dead letters of consumer `{consumer}` replayed to it");
            Ok(())
        }
        DlqAction::Import {
            destination,
            consumer,
            broker,
            broker_options,
            idle_ms,
            table,
        } => {
            let inbox = table.parse()?;
            let broker = config::broker(
                broker.as_ref(),
                &broker_options,
                file,
                connection_properties(file),
            )?;
            let dead = dead_letter::destination_of(&destination, &consumer);
            let reader = reader_of(&broker, &dead, &format!("{consumer}.dlq-import"));
            let mut subscriber = crate::broker::subscribe(&broker, &reader, &dead).await?;
            let idle = Duration::from_millis(idle_ms);
            let imported =
                import(db.as_ref(), &inbox, &consumer, subscriber.as_mut(), idle).await?;
            subscriber.close().await?;
            println!("{imported} dead letters imported from {dead} into consumer `{consumer}`'s parked table");
            Ok(())
        }
        DlqAction::Redrive { .. } => Ok(()),
    }
}

/// The group that reads the dead letters of `dead`. On RabbitMQ, the queue
/// the consumer declared under the dead-letter destination's own name: a queue
/// of another name would get only the letters sent after it was declared (and
/// keep copies of later ones). Elsewhere `other` (a Kafka group starts at the
/// earliest letter).
fn reader_of(broker: &config::Broker, dead: &str, other: &str) -> String {
    match broker.url.expose().split_once("://") {
        Some(("amqp" | "amqps", _)) => dead.to_owned(),
        _ => other.to_owned(),
    }
}

/// The `[producer]` properties of the configuration file: the connection
/// settings (TLS, SASL) the dead-letter commands' clients need too.
fn connection_properties(file: &FileConfig) -> Vec<(String, String)> {
    file.producer
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Parks each dead letter `subscriber` yields as a dead row of `consumer`,
/// then acknowledges it, until none arrives for `idle`. What is not a dead
/// letter of ours is given back at the end, untouched.
async fn import(
    db: &dyn Backend,
    inbox: &TableName,
    consumer: &str,
    subscriber: &mut dyn eventbus::transport::Subscriber,
    idle: Duration,
) -> Result<u64> {
    let mut imported = 0;
    let mut held = Vec::new();
    let result = loop {
        let message = match tokio::time::timeout(idle, subscriber.next()).await {
            Err(_) | Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => break Err(e),
            Ok(Some(Ok(m))) => m,
        };
        let letter = message.envelope.as_ref().ok();
        let Some((origin, original)) = letter.and_then(dead_letter::original) else {
            held.push(message.settle);
            continue;
        };
        let extension = |name: &str| letter.and_then(|l| l.extensions.get(name)).cloned();
        let attempts = extension(dead_letter::ATTEMPTS)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let reason = extension(dead_letter::REASON);
        let request = ParkRequest {
            consumer,
            envelope: &original,
            origin: &origin,
            state: ParkedState::Dead,
            holds_key: false,
            attempts,
            due_at: chrono::Utc::now(),
            reason: reason.as_deref(),
        };
        if let Err(e) = db.park(inbox, &request).await {
            held.push(message.settle);
            break Err(e);
        }
        message.settle.ack().await?;
        imported += 1;
    };
    for settle in held {
        settle.release().await?;
    }
    result.map(|()| imported)
}

async fn redrive(
    file: &FileConfig,
    destination: &str,
    consumer: &str,
    broker: Option<&String>,
    broker_options: &BrokerArgs,
    reader: Option<&str>,
    idle_ms: u64,
) -> Result<()> {
    let broker = config::broker(broker, broker_options, file, connection_properties(file))?;
    let dead = dead_letter::destination_of(destination, consumer);
    let reader = match reader {
        Some(reader) => reader.to_owned(),
        None => reader_of(&broker, &dead, &format!("{consumer}.dlq-redrive")),
    };
    let publisher = crate::broker::connect(&broker).await?;
    let mut subscriber = crate::broker::subscribe(&broker, &reader, &dead).await?;
    let (redriven, skipped) = dead_letter::redrive(
        subscriber.as_mut(),
        publisher.as_ref(),
        Duration::from_millis(idle_ms),
    )
    .await?;
    println!("{redriven} re-driven to {destination}, {skipped} left in {dead}");
    Ok(())
}
