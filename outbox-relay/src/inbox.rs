//! `outbox-relay inbox cleanup`: deletes one consumer group's inbox rows older
//! than a window, once, on any of the three databases — what a consumer's
//! `inbox_retention` option does in the background.

use std::time::Duration;

use clap::Subcommand;
use eventbus::backend::{connect, Create};
use eventbus::{Inbox, Result};

use crate::config::{self, Common, FileConfig};

/// `outbox-relay inbox …`.
#[derive(Debug, Subcommand)]
pub(crate) enum InboxAction {
    /// Delete the inbox rows of one consumer group received more than
    /// `--older-than` seconds ago, in batches, and print how many. Keep the
    /// window longer than any message can still be redelivered (broker
    /// retention, consumer offset expiry, dead-letter replays): a
    /// redelivery that finds no inbox row is handled again. `--older-than 0`
    /// empties the group's inbox (a group being retired).
    Cleanup {
        /// Consumer group whose rows are deleted (the inbox's `consumer` column).
        #[arg(long)]
        consumer: String,
        /// Delete rows received more than this many seconds ago.
        #[arg(long, value_name = "SECS")]
        older_than: u64,
        /// Inbox table name.
        #[arg(long, env = "EVENTBUS_INBOX_TABLE", default_value = eventbus::inbox::DEFAULT_TABLE)]
        inbox_table: String,
        /// Rows deleted per statement.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..))]
        batch: i64,
    },
}

/// Runs `action` against the database of `common` / `file`.
pub(crate) async fn run(action: InboxAction, common: &Common, file: &FileConfig) -> Result<()> {
    match action {
        InboxAction::Cleanup {
            consumer,
            older_than,
            inbox_table,
            batch,
        } => {
            let inbox = Inbox::new(consumer.as_str()).table(&inbox_table)?;
            let url = config::database_url(common, file)?;
            let db = connect(url.expose(), Create::AsUrlSays).await?;
            let window = Duration::from_secs(older_than);
            let deleted = db.cleanup_inbox(&inbox, window, batch).await?;
            println!(
                "{deleted} inbox rows of consumer `{consumer}` older than {older_than}s deleted"
            );
            Ok(())
        }
    }
}
