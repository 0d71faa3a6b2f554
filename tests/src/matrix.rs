//! Which shared scenarios run on which database and broker: the one table of
//! the suites' instantiations. Each test binary below is one line,
//! `eventbus_tests::matrix!(<binary>);`, which expands to its `#[tokio::test]`
//! functions here (its backend-specific tests stay in its own file).
//!
//! | binary (`tests/tests/…`) | suite | database | broker |
//! | --- | --- | --- | --- |
//! | `outbox_postgres`, `outbox_mysql`, `outbox_sqlite` | [`suites::outbox`](crate::suites::outbox) (`@outbox`: the part every database runs) | PostgreSQL, MySQL, SQLite | — |
//! | `inbox_postgres`, `inbox_mysql`, `inbox_sqlite` | [`suites::inbox`](crate::suites::inbox) (`@inbox`) | PostgreSQL, MySQL, SQLite | — |
//! | `relay_kafka`, `relay_rabbitmq`, `relay_sqs` | [`suites::relay`](crate::suites::relay), [`suites::commit_order`](crate::suites::commit_order), [`suites::scheduled`](crate::suites::scheduled) (RabbitMQ) | PostgreSQL | Kafka, RabbitMQ, SQS |
//! | `relay_mysql` | the same | MySQL | Kafka, RabbitMQ, SQS |
//! | `relay_sqlite` | the same | SQLite | RabbitMQ, SQS (Kafka: the killed pipelined relay) |
//! | `consumer_kafka`, `consumer_rabbitmq`, `consumer_sqs` | the [`consumer`](crate::consumer) scenarios over a [`Broker`](crate::consumer::Broker), [`suites::consumer`](crate::suites::consumer) | PostgreSQL | Kafka, RabbitMQ, SQS |
//! | `consumer_mysql` | the same | MySQL | RabbitMQ, Kafka |
//! | `consumer_sqlite` | [`suites::consumer`](crate::suites::consumer) | SQLite | RabbitMQ |
//! | `saga_postgres`, `saga_mysql`, `saga_sqlite` | [`suites::saga`](crate::suites::saga) (`@saga`) | PostgreSQL, MySQL, SQLite | Kafka, RabbitMQ |
//!
//! A scenario is generic over [`TestDatabase`](crate::TestDatabase) and, for
//! the consumer, takes a [`Broker`](crate::consumer::Broker); an entry here
//! names the test, its runtime (`mt`: multi-threaded with 4 workers, `ct`:
//! current thread) and the call, with any figure it prints or bound it checks
//! on that pair. To run a scenario on another database, add an entry (or an
//! arm for a new binary and a file `tests/tests/<binary>.rs` holding the one
//! line); to add a database, implement [`TestDatabase`](crate::TestDatabase)
//! for it and give it the `@outbox` and `@inbox` arms and what else applies;
//! to add a broker, add a [`Broker`](crate::consumer::Broker) variant and an
//! arm listing the scenarios it runs.

/// Expands entries `mt|ct name { body }` (with their doc comments) to
/// `#[tokio::test]` functions; what [`matrix!`] is made of.
#[doc(hidden)]
#[macro_export]
macro_rules! __matrix_tests {
    (@one mt $(#[$attr:meta])* $name:ident $body:block) => {
        $(#[$attr])*
        #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() $body
    };
    (@one ct $(#[$attr:meta])* $name:ident $body:block) => {
        $(#[$attr])*
        #[::tokio::test]
        async fn $name() $body
    };
    ($($(#[$attr:meta])* $flavor:ident $name:ident $body:block)*) => {
        $($crate::__matrix_tests!(@one $flavor $(#[$attr])* $name $body);)*
    };
}

/// The shared scenarios of one test binary (see the [table](mod@crate::matrix)):
/// `eventbus_tests::matrix!(relay_mysql);` in `tests/tests/relay_mysql.rs`.
#[macro_export]
macro_rules! matrix {
    // The outbox suite as every database runs it.
    (@outbox $db:ty) => {
        $crate::__matrix_tests! {
            ct commit_writes_business_row_and_outbox_row_together {
                $crate::suites::outbox::commit_writes_business_row_and_outbox_row_together::<$db>().await;
            }
            ct rollback_writes_neither_business_row_nor_outbox_row {
                $crate::suites::outbox::rollback_writes_neither_business_row_nor_outbox_row::<$db>().await;
            }
            ct publish_all_writes_ten_thousand_events_in_order_atomically {
                $crate::suites::outbox::publish_all_writes_ten_thousand_events_in_order_atomically::<$db>().await;
            }
            ct plain_sql_inserts_are_valid_cloudevents {
                $crate::suites::outbox::plain_sql_inserts_are_valid_cloudevents::<$db>().await;
            }
            ct oversized_event_is_rejected_and_nothing_is_written {
                $crate::suites::outbox::oversized_event_is_rejected_and_nothing_is_written::<$db>().await;
            }
            ct using_tables_before_migration_says_to_migrate {
                $crate::suites::outbox::using_tables_before_migration_says_to_migrate::<$db>().await;
            }
        }
    };
    // The inbox suite as every database runs it.
    (@inbox $db:ty) => {
        $crate::__matrix_tests! {
            mt concurrent_duplicates_are_processed_exactly_once {
                $crate::suites::inbox::concurrent_duplicates_are_processed_exactly_once::<$db>().await;
            }
            ct handler_failure_rolls_back_and_a_redelivery_is_processed {
                $crate::suites::inbox::handler_failure_rolls_back_and_a_redelivery_is_processed::<$db>().await;
            }
            ct begin_without_commit_leaves_no_trace {
                $crate::suites::inbox::begin_without_commit_leaves_no_trace::<$db>().await;
            }
            mt a_waiting_delivery_takes_over_when_the_first_rolls_back {
                $crate::suites::inbox::a_waiting_delivery_takes_over_when_the_first_rolls_back::<$db>().await;
            }
            ct each_consumer_processes_a_message_once {
                $crate::suites::inbox::each_consumer_processes_a_message_once::<$db>().await;
            }
            ct a_batch_is_recorded_with_one_flag_per_message {
                $crate::suites::inbox::a_batch_is_recorded_with_one_flag_per_message::<$db>().await;
            }
            ct cleanup_deletes_old_entries_of_one_consumer_in_batches {
                $crate::suites::inbox::cleanup_deletes_old_entries_of_one_consumer_in_batches::<$db>().await;
            }
            ct processing_before_migration_says_to_migrate {
                $crate::suites::inbox::processing_before_migration_says_to_migrate::<$db>().await;
            }
        }
    };
    (outbox_postgres) => {
        $crate::matrix!(@outbox $crate::TestDb);
        $crate::__matrix_tests! {
            ct rows_the_relay_could_not_read_are_refused_at_insert {
                $crate::suites::outbox::rows_the_relay_could_not_read_are_refused_at_insert::<$crate::TestDb>().await;
            }
        }
    };
    (outbox_mysql) => {
        $crate::matrix!(@outbox $crate::mysql::TestMySql);
        $crate::__matrix_tests! {
            ct rows_the_relay_could_not_read_are_refused_at_insert {
                $crate::suites::outbox::rows_the_relay_could_not_read_are_refused_at_insert::<$crate::mysql::TestMySql>().await;
            }
            mt concurrent_migrations_are_idempotent {
                $crate::suites::outbox::concurrent_migrations_are_idempotent::<$crate::mysql::TestMySql>().await;
            }
        }
    };
    (outbox_sqlite) => {
        $crate::matrix!(@outbox $crate::sqlite::TestSqlite);
    };
    (inbox_postgres) => {
        $crate::matrix!(@inbox $crate::TestDb);
    };
    (inbox_mysql) => {
        $crate::matrix!(@inbox $crate::mysql::TestMySql);
    };
    (inbox_sqlite) => {
        $crate::matrix!(@inbox $crate::sqlite::TestSqlite);
    };
    (relay_kafka) => {
        $crate::__matrix_tests! {
            /// A pipelined relay killed mid-drain (20_000 events over 200 keys,
            /// batches of 500) and replaced: nothing lost, per key in order, at
            /// most two batches twice.
            mt a_pipelined_relay_killed_mid_drain_loses_nothing_kafka {
                let run = $crate::suites::relay::a_relay_killed_mid_drain_loses_nothing::<$crate::TestDb>($crate::suites::relay::Sink::Kafka, 20_000, 200, 500).await;
                println!("PostgreSQL → Kafka, relay killed mid-drain: {run:?}");
            }
            mt relays_100k_events_over_1000_keys_in_order {
                let took = $crate::suites::relay::volume_over_kafka::<$crate::TestDb>(100_000, 1_000).await;
                println!("PostgreSQL → Kafka: 100,000 events relayed in {took:?}");
            }
            mt an_older_transaction_committing_last_is_still_delivered_first {
                $crate::suites::relay::an_older_transaction_committing_last_is_still_delivered_first::<$crate::TestDb>().await;
            }
            mt a_poisoned_event_is_parked_and_blocks_only_its_key {
                $crate::suites::relay::a_poisoned_event_is_parked_and_blocks_only_its_key::<$crate::TestDb>().await;
            }
            mt metrics_and_status_report_the_backlog_falling_to_zero {
                $crate::suites::relay::metrics_and_status_report_the_backlog_falling_to_zero::<$crate::TestDb>().await;
            }
            mt a_row_inserted_by_plain_sql_is_relayed_with_the_configured_source {
                $crate::suites::relay::a_row_inserted_by_plain_sql_is_relayed_with_the_configured_source::<$crate::TestDb>().await;
            }
            mt retention_mode_keeps_published_rows_then_cleans_them_up {
                $crate::suites::relay::retention_mode_keeps_published_rows_then_cleans_them_up::<$crate::TestDb>().await;
            }
        }
    };
    (relay_rabbitmq) => {
        $crate::__matrix_tests! {
            mt a_scheduled_event_waits_for_its_time_and_goes_once {
                $crate::suites::scheduled::a_scheduled_event_waits_for_its_time_and_goes_once::<$crate::TestDb>().await;
            }
            mt ten_thousand_events_due_at_the_same_second_all_arrive {
                $crate::suites::scheduled::ten_thousand_events_due_at_the_same_second_all_arrive::<$crate::TestDb>().await;
            }
            mt cancelling_while_events_move_never_publishes_a_cancelled_one {
                $crate::suites::scheduled::cancelling_while_events_move_never_publishes_a_cancelled_one::<$crate::TestDb>().await;
            }
            mt relays_100k_events_over_1000_keys_in_order {
                let took = $crate::suites::relay::volume_over_rabbitmq::<$crate::TestDb>(100_000, 1_000, 10_000).await;
                println!("PostgreSQL → RabbitMQ: 100,000 events relayed in {took:?}");
            }
            mt store_claims_in_order_behind_failures_and_fences_every_write {
                $crate::suites::relay::store_claims_in_order_behind_failures_and_fences_every_write::<$crate::TestDb>().await;
            }
            mt three_relays_one_killed_lose_nothing_and_keep_order {
                let run =
                    $crate::suites::relay::three_relays_one_killed_lose_nothing_and_keep_order::<$crate::TestDb>(30_000, 300).await;
                println!("PostgreSQL, three relays, one killed: {run:?}");
            }
            mt rows_from_other_writers_that_are_not_events_are_parked_with_a_reason {
                $crate::suites::relay::rows_from_other_writers_that_are_not_events_are_parked_with_a_reason::<$crate::TestDb>().await;
            }
            mt an_event_for_a_missing_destination_is_parked_with_the_reason {
                $crate::suites::relay::an_event_for_a_missing_destination_is_parked_with_the_reason::<$crate::TestDb>().await;
            }
            mt rows_the_relay_cannot_decode_are_parked_instead_of_stopping_it {
                $crate::suites::relay::rows_the_relay_cannot_decode_are_parked_instead_of_stopping_it::<$crate::TestDb>().await;
            }
            mt an_early_transaction_id_does_not_let_a_later_event_overtake {
                $crate::suites::commit_order::an_early_transaction_id_does_not_let_a_later_event_overtake::<$crate::TestDb>().await;
            }
            mt random_interleavings_keep_commit_order_per_key {
                $crate::suites::commit_order::random_interleavings_keep_commit_order_per_key::<$crate::TestDb>(5).await;
            }
            mt a_batch_claimed_ahead_holds_back_the_keys_left_pending {
                let run = $crate::suites::pipeline::a_batch_claimed_ahead_holds_back_the_keys_left_pending::<$crate::TestDb>(::eventbus::relay::Defects::default()).await;
                $crate::suites::pipeline::assert_held_back(<$crate::TestDb as $crate::backend::TestDatabase>::NAME, &run);
            }
            mt a_failed_acknowledgement_is_retried_not_resent {
                let (failed, verdict) = $crate::suites::pipeline::a_failed_acknowledgement_is_retried_not_resent::<$crate::TestDb>(::eventbus::relay::Defects::default()).await;
                $crate::suites::pipeline::assert_acknowledged_once(<$crate::TestDb as $crate::backend::TestDatabase>::NAME, &failed, &verdict);
            }
            /// Negative control: with the claimed-ahead rows of a pending key kept.
            mt control_a_batch_claimed_ahead_sending_a_pending_key_is_caught {
                let defects = ::eventbus::relay::Defects { keep_prefetched_rows_of_pending_keys: true, ..Default::default() };
                let run = $crate::suites::pipeline::a_batch_claimed_ahead_holds_back_the_keys_left_pending::<$crate::TestDb>(defects).await;
                $crate::suites::pipeline::assert_caught_ahead(<$crate::TestDb as $crate::backend::TestDatabase>::NAME, &run);
            }
            /// Negative control: with failed acknowledgements forgotten.
            mt control_a_forgotten_acknowledgement_is_caught {
                let defects = ::eventbus::relay::Defects { forget_failed_acknowledgements: true, ..Default::default() };
                let (_, verdict) = $crate::suites::pipeline::a_failed_acknowledgement_is_retried_not_resent::<$crate::TestDb>(defects).await;
                $crate::suites::pipeline::assert_caught_resent(<$crate::TestDb as $crate::backend::TestDatabase>::NAME, &verdict);
            }
            mt a_rejection_reported_late_holds_back_the_rest_of_its_key {
                let failure = ::eventbus::transport::PublishError::Rejected("nacked".into());
                $crate::suites::commit_order::a_failure_reported_late_holds_back_the_rest_of_its_key::<$crate::TestDb>(failure).await;
            }
            mt an_outage_reported_late_holds_back_the_rest_of_its_key {
                let failure = ::eventbus::transport::PublishError::Unavailable("delivery timed out".into());
                $crate::suites::commit_order::a_failure_reported_late_holds_back_the_rest_of_its_key::<$crate::TestDb>(failure).await;
            }
        }
    };
    (relay_sqs) => {
        $crate::__matrix_tests! {
            /// A pipelined relay killed mid-drain (2_000 events over 100 keys,
            /// batches of 100) and replaced: nothing lost, per key in order, at
            /// most two batches twice.
            mt a_pipelined_relay_killed_mid_drain_loses_nothing_sqs {
                let run = $crate::suites::relay::a_relay_killed_mid_drain_loses_nothing::<$crate::TestDb>($crate::suites::relay::Sink::Sqs, 2_000, 100, 100).await;
                println!("PostgreSQL → SQS, relay killed mid-drain: {run:?}");
            }
            /// The shared relay suite's volume run on SQS: 2,000 events over 100 keys
            /// (scaled down from the 100,000 of the Kafka and RabbitMQ runs, for the
            /// local SQS server) into a FIFO queue: each arrives once, per key in order.
            /// The MySQL and SQLite suites run it too.
            mt relays_2k_events_over_100_keys_in_order {
                let took = $crate::suites::relay::volume_over_sqs::<$crate::TestDb>(2_000, 100).await;
                println!("PostgreSQL → SQS: 2,000 events relayed and read in {took:?}");
            }
        }
    };
    (relay_mysql) => {
        $crate::__matrix_tests! {
            /// A pipelined relay killed mid-drain (20_000 events over 200 keys,
            /// batches of 500) and replaced: nothing lost, per key in order, at
            /// most two batches twice.
            mt a_pipelined_relay_killed_mid_drain_loses_nothing_kafka {
                let run = $crate::suites::relay::a_relay_killed_mid_drain_loses_nothing::<$crate::mysql::TestMySql>($crate::suites::relay::Sink::Kafka, 20_000, 200, 500).await;
                println!("MySQL → Kafka, relay killed mid-drain: {run:?}");
            }
            /// A pipelined relay killed mid-drain (1_000 events over 50 keys,
            /// batches of 100) and replaced: nothing lost, per key in order, at
            /// most two batches twice.
            mt a_pipelined_relay_killed_mid_drain_loses_nothing_sqs {
                let run = $crate::suites::relay::a_relay_killed_mid_drain_loses_nothing::<$crate::mysql::TestMySql>($crate::suites::relay::Sink::Sqs, 1_000, 50, 100).await;
                println!("MySQL → SQS, relay killed mid-drain: {run:?}");
            }
            mt a_scheduled_event_waits_for_its_time_and_goes_once {
                $crate::suites::scheduled::a_scheduled_event_waits_for_its_time_and_goes_once::<$crate::mysql::TestMySql>().await;
            }
            mt ten_thousand_events_due_at_the_same_second_all_arrive {
                $crate::suites::scheduled::ten_thousand_events_due_at_the_same_second_all_arrive::<$crate::mysql::TestMySql>().await;
            }
            mt cancelling_while_events_move_never_publishes_a_cancelled_one {
                $crate::suites::scheduled::cancelling_while_events_move_never_publishes_a_cancelled_one::<$crate::mysql::TestMySql>().await;
            }
            mt store_claims_in_order_behind_failures_and_fences_every_write {
                $crate::suites::relay::store_claims_in_order_behind_failures_and_fences_every_write::<$crate::mysql::TestMySql>().await;
            }
            mt relays_1000_events_over_50_keys_in_order_to_sqs {
                let took = $crate::suites::relay::volume_over_sqs::<$crate::mysql::TestMySql>(1_000, 50).await;
                println!("MySQL → SQS: 1,000 events relayed and read in {took:?}");
            }
            mt relays_100k_events_over_1000_keys_in_order_to_rabbitmq {
                let took = $crate::suites::relay::volume_over_rabbitmq::<$crate::mysql::TestMySql>(100_000, 1_000, 10_000).await;
                println!("MySQL → RabbitMQ: 100,000 events relayed in {took:?}");
            }
            mt relays_100k_events_over_1000_keys_in_order_to_kafka {
                let took = $crate::suites::relay::volume_over_kafka::<$crate::mysql::TestMySql>(100_000, 1_000).await;
                println!("MySQL → Kafka: 100,000 events relayed in {took:?}");
            }
            mt an_older_transaction_committing_last_is_still_delivered_first {
                $crate::suites::relay::an_older_transaction_committing_last_is_still_delivered_first::<$crate::mysql::TestMySql>().await;
            }
            mt a_poisoned_event_is_parked_and_blocks_only_its_key {
                $crate::suites::relay::a_poisoned_event_is_parked_and_blocks_only_its_key::<$crate::mysql::TestMySql>().await;
            }
            mt rows_from_other_writers_that_are_not_events_are_parked_with_a_reason {
                $crate::suites::relay::rows_from_other_writers_that_are_not_events_are_parked_with_a_reason::<$crate::mysql::TestMySql>()
                    .await;
            }
            mt an_event_for_a_missing_destination_is_parked_with_the_reason {
                $crate::suites::relay::an_event_for_a_missing_destination_is_parked_with_the_reason::<$crate::mysql::TestMySql>().await;
            }
            mt rows_the_relay_cannot_decode_are_parked_instead_of_stopping_it {
                $crate::suites::relay::rows_the_relay_cannot_decode_are_parked_instead_of_stopping_it::<$crate::mysql::TestMySql>().await;
            }
            mt metrics_and_status_report_the_backlog_falling_to_zero {
                $crate::suites::relay::metrics_and_status_report_the_backlog_falling_to_zero::<$crate::mysql::TestMySql>().await;
            }
            mt a_row_inserted_by_plain_sql_is_relayed_with_the_configured_source {
                $crate::suites::relay::a_row_inserted_by_plain_sql_is_relayed_with_the_configured_source::<$crate::mysql::TestMySql>().await;
            }
            mt retention_mode_keeps_published_rows_then_cleans_them_up {
                $crate::suites::relay::retention_mode_keeps_published_rows_then_cleans_them_up::<$crate::mysql::TestMySql>().await;
            }
            mt three_relays_one_killed_lose_nothing_and_keep_order {
                let run =
                    $crate::suites::relay::three_relays_one_killed_lose_nothing_and_keep_order::<$crate::mysql::TestMySql>(30_000, 300).await;
                println!("MySQL, three relays, one killed: {run:?}");
                assert!(run.took < ::std::time::Duration::from_secs(600));
            }
            mt an_event_published_in_process_is_relayed_without_waiting_for_the_poll {
                let took = $crate::suites::relay::an_event_published_in_process_is_relayed_without_waiting_for_the_poll::<$crate::mysql::TestMySql>(true).await;
                println!("MySQL, in-process wake-up, 10 s poll: relayed {took:?} after commit");
            }
            mt without_in_process_wakeups_an_event_waits_for_the_poll {
                let took = $crate::suites::relay::an_event_published_in_process_is_relayed_without_waiting_for_the_poll::<$crate::mysql::TestMySql>(false).await;
                println!("MySQL, in-process wake-ups off, 10 s poll: relayed {took:?} after commit");
            }
            mt an_early_transaction_id_does_not_let_a_later_event_overtake {
                $crate::suites::commit_order::an_early_transaction_id_does_not_let_a_later_event_overtake::<$crate::mysql::TestMySql>().await;
            }
            mt random_interleavings_keep_commit_order_per_key {
                $crate::suites::commit_order::random_interleavings_keep_commit_order_per_key::<$crate::mysql::TestMySql>(5).await;
            }
            mt a_batch_claimed_ahead_holds_back_the_keys_left_pending {
                let run = $crate::suites::pipeline::a_batch_claimed_ahead_holds_back_the_keys_left_pending::<$crate::mysql::TestMySql>(::eventbus::relay::Defects::default()).await;
                $crate::suites::pipeline::assert_held_back(<$crate::mysql::TestMySql as $crate::backend::TestDatabase>::NAME, &run);
            }
            mt a_failed_acknowledgement_is_retried_not_resent {
                let (failed, verdict) = $crate::suites::pipeline::a_failed_acknowledgement_is_retried_not_resent::<$crate::mysql::TestMySql>(::eventbus::relay::Defects::default()).await;
                $crate::suites::pipeline::assert_acknowledged_once(<$crate::mysql::TestMySql as $crate::backend::TestDatabase>::NAME, &failed, &verdict);
            }
        }
    };
    (relay_sqlite) => {
        $crate::__matrix_tests! {
            /// A pipelined relay killed mid-drain (20_000 events over 200 keys,
            /// batches of 500) and replaced: nothing lost, per key in order, at
            /// most two batches twice.
            mt a_pipelined_relay_killed_mid_drain_loses_nothing_rabbitmq {
                let run = $crate::suites::relay::a_relay_killed_mid_drain_loses_nothing::<$crate::sqlite::TestSqlite>($crate::suites::relay::Sink::RabbitMq, 20_000, 200, 500).await;
                println!("SQLite → RabbitMQ, relay killed mid-drain: {run:?}");
            }
            /// A pipelined relay killed mid-drain (20_000 events over 200 keys,
            /// batches of 500) and replaced: nothing lost, per key in order, at
            /// most two batches twice.
            mt a_pipelined_relay_killed_mid_drain_loses_nothing_kafka {
                let run = $crate::suites::relay::a_relay_killed_mid_drain_loses_nothing::<$crate::sqlite::TestSqlite>($crate::suites::relay::Sink::Kafka, 20_000, 200, 500).await;
                println!("SQLite → Kafka, relay killed mid-drain: {run:?}");
            }
            /// A pipelined relay killed mid-drain (1_000 events over 50 keys,
            /// batches of 100) and replaced: nothing lost, per key in order, at
            /// most two batches twice.
            mt a_pipelined_relay_killed_mid_drain_loses_nothing_sqs {
                let run = $crate::suites::relay::a_relay_killed_mid_drain_loses_nothing::<$crate::sqlite::TestSqlite>($crate::suites::relay::Sink::Sqs, 1_000, 50, 100).await;
                println!("SQLite → SQS, relay killed mid-drain: {run:?}");
            }
            mt a_scheduled_event_waits_for_its_time_and_goes_once {
                $crate::suites::scheduled::a_scheduled_event_waits_for_its_time_and_goes_once::<$crate::sqlite::TestSqlite>().await;
            }
            mt ten_thousand_events_due_at_the_same_second_all_arrive {
                $crate::suites::scheduled::ten_thousand_events_due_at_the_same_second_all_arrive::<$crate::sqlite::TestSqlite>().await;
            }
            mt cancelling_while_events_move_never_publishes_a_cancelled_one {
                $crate::suites::scheduled::cancelling_while_events_move_never_publishes_a_cancelled_one::<$crate::sqlite::TestSqlite>().await;
            }
            ct store_claims_in_order_behind_failures_and_fences_every_write {
                $crate::suites::relay::store_claims_in_order_behind_failures_and_fences_every_write::<$crate::sqlite::TestSqlite>().await;
            }
            mt relays_1000_events_over_50_keys_in_order_to_sqs {
                let took = $crate::suites::relay::volume_over_sqs::<$crate::sqlite::TestSqlite>(1_000, 50).await;
                println!("SQLite → SQS: 1,000 events relayed and read in {took:?}");
            }
            mt relays_5000_events_over_100_keys_in_order {
                let took = $crate::suites::relay::volume_over_rabbitmq::<$crate::sqlite::TestSqlite>(5_000, 100, 500).await;
                println!("SQLite → RabbitMQ: 5,000 events relayed in {took:?}");
            }
            mt rows_from_other_writers_that_are_not_events_are_parked_with_a_reason {
                $crate::suites::relay::rows_from_other_writers_that_are_not_events_are_parked_with_a_reason::<$crate::sqlite::TestSqlite>()
                    .await;
            }
            mt an_event_for_a_missing_destination_is_parked_with_the_reason {
                $crate::suites::relay::an_event_for_a_missing_destination_is_parked_with_the_reason::<$crate::sqlite::TestSqlite>().await;
            }
            mt rows_the_relay_cannot_decode_are_parked_instead_of_stopping_it {
                $crate::suites::relay::rows_the_relay_cannot_decode_are_parked_instead_of_stopping_it::<$crate::sqlite::TestSqlite>().await;
            }
            mt an_event_published_in_process_is_relayed_without_waiting_for_the_poll {
                let took = $crate::suites::relay::an_event_published_in_process_is_relayed_without_waiting_for_the_poll::<$crate::sqlite::TestSqlite>(true).await;
                println!("SQLite, in-process wake-up, 10 s poll: relayed {took:?} after commit");
            }
            mt without_in_process_wakeups_an_event_waits_for_the_poll {
                let took = $crate::suites::relay::an_event_published_in_process_is_relayed_without_waiting_for_the_poll::<$crate::sqlite::TestSqlite>(false).await;
                println!("SQLite, in-process wake-ups off, 10 s poll: relayed {took:?} after commit");
            }
            // `an_early_transaction_id_does_not_let_a_later_event_overtake` needs
            // concurrent writers: not SQLite's.
            mt random_interleavings_keep_commit_order_per_key {
                $crate::suites::commit_order::random_interleavings_keep_commit_order_per_key::<$crate::sqlite::TestSqlite>(3).await;
            }
            mt a_batch_claimed_ahead_holds_back_the_keys_left_pending {
                let run = $crate::suites::pipeline::a_batch_claimed_ahead_holds_back_the_keys_left_pending::<$crate::sqlite::TestSqlite>(::eventbus::relay::Defects::default()).await;
                $crate::suites::pipeline::assert_held_back(<$crate::sqlite::TestSqlite as $crate::backend::TestDatabase>::NAME, &run);
            }
            mt a_failed_acknowledgement_is_retried_not_resent {
                let (failed, verdict) = $crate::suites::pipeline::a_failed_acknowledgement_is_retried_not_resent::<$crate::sqlite::TestSqlite>(::eventbus::relay::Defects::default()).await;
                $crate::suites::pipeline::assert_acknowledged_once(<$crate::sqlite::TestSqlite as $crate::backend::TestDatabase>::NAME, &failed, &verdict);
            }
        }
    };
    (consumer_kafka) => {
        $crate::__matrix_tests! {
            /// 20,000 events over 200 keys on 4 partitions, plus a second copy of every
            /// tenth (same ids, 2,000 redeliveries). The worker process is SIGKILLed when
            /// about a third of the effects exist and started again. Every (key, seq)
            /// ends with exactly one effect and one inbox row: the inbox absorbs the
            /// injected copies and the messages handled but not yet committed before the
            /// crash.
            ///
            /// Observed on tansu: killed at ~6,700 effects; the second worker caught up
            /// (all 22,000 messages committed) ~15 s later, with exactly 20,000 effects.
            mt effectively_once_under_redeliveries_and_a_crash {
                $crate::consumer::effectively_once_scenario::<$crate::TestDb>(&$crate::consumer::Broker::kafka().await, env!("CARGO_BIN_EXE_consumer_worker")).await;
            }
            /// The same with group commit on in the worker: a SIGKILL between a
            /// group's commit and its acknowledgements leaves redeliveries the
            /// inbox absorbs; every (key, seq) takes effect exactly once.
            mt group_commit_effectively_once_under_redeliveries_and_a_crash {
                $crate::consumer::effectively_once_grouped_scenario::<$crate::TestDb>(&$crate::consumer::Broker::kafka().await, env!("CARGO_BIN_EXE_consumer_worker")).await;
            }
            /// At least once with a SIGKILL: nothing is missing, and the messages handled
            /// after the last offset commit before the crash are handled again (offsets
            /// are committed in the background, every second in these tests, so the
            /// second worker starts behind the first one's work).
            ///
            /// Observed on tansu: killed at ~2,050 effects, ~1,100 of 6,000 events got a
            /// second effect (the first worker's last second of work), none was missing.
            mt at_least_once_repeats_but_loses_nothing_under_a_crash {
                $crate::consumer::at_least_once_scenario::<$crate::TestDb>(&$crate::consumer::Broker::kafka().await, env!("CARGO_BIN_EXE_consumer_worker")).await;
            }
            /// At most once with a SIGKILL: each offset is committed before its handler
            /// runs, so the second worker never repeats an event; the ones whose handler
            /// (sleeping 20 ms) was running at the crash are lost — at most one per
            /// partition.
            ///
            /// Observed on tansu: 4 of 1,200 events lost (one per partition), none
            /// repeated. (Before `Settle::ack_durably`, when at-most-once acknowledged by
            /// storing the offset for the next background commit, a crash repeated up to
            /// a commit interval of work.)
            mt at_most_once_loses_but_never_repeats_under_a_crash {
                $crate::consumer::at_most_once_scenario::<$crate::TestDb>(&$crate::consumer::Broker::kafka().await, env!("CARGO_BIN_EXE_consumer_worker")).await;
            }
            /// ~1% poison among 2,000 events: 10 raw bodies that are not CloudEvents and
            /// 10 events whose handler fails until "fixed". The consumer stays up and
            /// handles the other 99%; the 20 land on `<topic>.dlq` with reasons; after the
            /// fix, re-driving handles the failing ones, and the malformed ones stay in
            /// the dead-letter topic (skipped, and skipped again by a second run).
            mt poison_goes_to_the_dead_letter_topic_and_can_be_redriven {
                $crate::consumer::poison_scenario(&$crate::consumer::Broker::kafka().await).await;
            }
            /// With 12 partitions there is room for 12 handlers at once; a bound of 5 —
            /// the consumer's, or the subscriber's — keeps at most 5 messages unsettled.
            mt a_slow_handler_never_holds_more_than_n_unacknowledged {
                $crate::consumer::backpressure_scenario(&$crate::consumer::Broker::kafka().await).await;
            }
            /// Two consumers of one group share the partitions (each handles some; together
            /// every event exactly once); a consumer of another group gets every event.
            mt point_to_point_and_publish_subscribe {
                let took = $crate::consumer::groups_scenario(&$crate::consumer::Broker::kafka().await).await;
                eprintln!("groups on Kafka in {took:?}");
            }
            /// A batch handler on 4 partitions: 2,000 events and 200 injected copies,
            /// one poison event. Every effect exactly once, written by far fewer handler
            /// calls than there are messages, per key in order; the poison event's batch
            /// is split until it stands alone, and only it is dead-lettered, with the
            /// reason. (The scenario, shared with RabbitMQ, says exactly what it checks.)
            mt batch_handler_applies_each_event_once_in_few_transactions_and_splits_out_poison {
                let outcome = $crate::consumer::batch_handler_scenario(&$crate::consumer::Broker::kafka().await).await;
                eprintln!("batch handler on Kafka: {outcome:?}");
            }
            /// `rate_limit(50)`: 100 waiting events are handled over at least 1.8 s.
            mt rate_limit_spreads_a_backlog_over_time {
                let span = $crate::consumer::rate_limit_scenario(&$crate::consumer::Broker::kafka().await).await;
                eprintln!("rate limit 50/s on Kafka: 100 handler calls over {span:?}");
            }
            /// Version gating keeps a key's order: m5 (a newer version) parked, m6 and
            /// m7 parked behind it, other keys handled; the upgraded member handles m5,
            /// m6, m7 in order.
            mt a_newer_version_holds_its_key_not_the_partition {
                $crate::consumer::newer_version_keeps_key_order_scenario(&$crate::consumer::Broker::kafka().await).await;
            }
            /// On a one-partition topic (one lane), a key waiting for its delayed retry
            /// does not hold up 1,000 messages of other keys.
            mt a_delayed_retry_does_not_hold_the_partition {
                $crate::consumer::delayed_retry_scenario(&$crate::consumer::Broker::kafka().await).await;
            }
            /// Group commit: a backlog of 200 steps (and 20 copies) on one lane, three
            /// handlers failing once after writing; only those three run again, every
            /// effect once and per key in order, the copies skipped.
            mt group_commit_retries_only_the_failed_message {
                $crate::consumer::group_commit_failure_scenario(&$crate::consumer::Broker::kafka().await).await;
            }
            /// Group commit with 60 acknowledgements lost after their commit: the
            /// redeliveries are absorbed by the inbox, every effect once.
            mt group_commit_lost_acknowledgements_change_nothing {
                $crate::consumer::group_commit_lost_acks_scenario(&$crate::consumer::Broker::kafka().await).await;
            }
            /// Group commit whose transaction fails at commit (a deferred foreign key
            /// one handler broke): nothing of the group stays, its messages run again
            /// one by one, every effect once and per key in order.
            mt group_commit_a_failed_commit_applies_nothing_twice {
                $crate::consumer::group_commit_failed_commit_scenario(&$crate::consumer::Broker::kafka().await).await;
            }
            /// Keys given back to the broker one after another each wait for their first message.
            mt given_back_keys_keep_their_order {
                $crate::consumer::given_back_keys_keep_order_scenario(&$crate::consumer::Broker::kafka().await).await;
            }
            /// A dead letter larger than the dead-letter topic takes (the original fits)
            /// is kept in the parked table; the partition flows on.
            mt an_oversized_dead_letter_is_kept_in_the_database {
                $crate::consumer::refused_dead_letter_scenario(&$crate::consumer::Broker::kafka().await, $crate::consumer::Refusal::Oversized).await;
            }
        }
    };
    (consumer_rabbitmq) => {
        $crate::__matrix_tests! {
            /// 20,000 events over 200 keys, with a copy of every tenth one published
            /// again (same id: a redelivery), consumed by a worker process that is
            /// SIGKILLed mid-run and started again: every (key, seq) takes effect exactly
            /// once, with one inbox row.
            mt effectively_once_under_redeliveries_and_a_crash {
                $crate::consumer::effectively_once_scenario::<$crate::TestDb>(&$crate::consumer::Broker::rabbitmq().await, env!("CARGO_BIN_EXE_consumer_worker")).await;
            }
            /// The same with group commit on in the worker: a SIGKILL between a
            /// group's commit and its acknowledgements leaves redeliveries the
            /// inbox absorbs; every (key, seq) takes effect exactly once.
            mt group_commit_effectively_once_under_redeliveries_and_a_crash {
                $crate::consumer::effectively_once_grouped_scenario::<$crate::TestDb>(&$crate::consumer::Broker::rabbitmq().await, env!("CARGO_BIN_EXE_consumer_worker")).await;
            }
            /// At least once under a crash: no effect missing (those handled but not yet
            /// acknowledged when the process died, if any, are handled again).
            mt at_least_once_loses_nothing_under_a_crash {
                $crate::consumer::at_least_once_scenario::<$crate::TestDb>(&$crate::consumer::Broker::rabbitmq().await, env!("CARGO_BIN_EXE_consumer_worker")).await;
            }
            /// At most once under a crash: no effect repeated; the handlers running when
            /// the process died had their messages acknowledged already: those are gone.
            mt at_most_once_loses_but_never_repeats_under_a_crash {
                $crate::consumer::at_most_once_scenario::<$crate::TestDb>(&$crate::consumer::Broker::rabbitmq().await, env!("CARGO_BIN_EXE_consumer_worker")).await;
            }
            /// ~1% poison among 2,000 events: raw bodies that are not CloudEvents, and
            /// events whose handler fails until "fixed". The consumer stays up and handles
            /// the other 99%; the poison lands on `<exchange>.dlq` with the reason; after
            /// the fix, re-driving handles the failing ones and skips the malformed ones.
            mt poison_goes_to_the_dead_letter_exchange_and_can_be_redriven {
                $crate::consumer::poison_scenario(&$crate::consumer::Broker::rabbitmq().await).await;
            }
            /// A handler that sleeps 50 ms never has more than 5 messages handed to it and
            /// not acknowledged — whether the bound is the broker's prefetch or the
            /// consumer's `max_in_flight`.
            mt a_slow_handler_never_holds_more_than_n_unacknowledged {
                let runs = $crate::consumer::backpressure_scenario(&$crate::consumer::Broker::rabbitmq().await).await;
                for run in runs {
                    // 240 messages × 50 ms over 5 at a time: about 2.4 s, not 12.
                    assert!(run.took < ::std::time::Duration::from_millis(9_600), "{run:?}");
                }
            }
            /// Two consumers in one group share the work, each event handled once between
            /// them; a second group gets every event too.
            mt point_to_point_and_publish_subscribe {
                let took = $crate::consumer::groups_scenario(&$crate::consumer::Broker::rabbitmq().await).await;
                println!("groups on RabbitMQ in {took:?}");
            }
            /// 200 steps and 50 of them again: 200 handled, 50 duplicates, one effect,
            /// one inbox row and one follow-up in the outbox per step (shared with MySQL
            /// and SQLite).
            mt redelivered_events_change_nothing {
                $crate::suites::consumer::redelivered_events_change_nothing::<$crate::TestDb>().await;
            }
            /// The same with a batch handler.
            mt batch_handlers_skip_redelivered_events {
                $crate::suites::consumer::batch_handlers_skip_redelivered_events::<$crate::TestDb>().await;
            }
            /// A batch handler: 2,000 events over 20 keys and 200 injected copies, one
            /// poison event. Every effect exactly once, written by far fewer handler calls
            /// than there are messages, per key in order within the one consumer; the
            /// poison event's batch is split until it stands alone, and only it is
            /// dead-lettered, with the reason. (The scenario, shared with Kafka, says
            /// exactly what it checks.)
            mt batch_handler_applies_each_event_once_in_few_transactions_and_splits_out_poison {
                let outcome = $crate::consumer::batch_handler_scenario(&$crate::consumer::Broker::rabbitmq().await).await;
                println!("batch handler on RabbitMQ: {outcome:?}");
            }
            /// `rate_limit(50)`: 100 waiting events are handled over at least 1.8 s.
            mt rate_limit_spreads_a_backlog_over_time {
                let span = $crate::consumer::rate_limit_scenario(&$crate::consumer::Broker::rabbitmq().await).await;
                println!("rate limit 50/s on RabbitMQ: 100 handler calls over {span:?}");
            }
            /// Version gating keeps a key's order: m5 (a newer version) parked, m6 and
            /// m7 parked behind it, other keys handled; the upgraded member handles m5,
            /// m6, m7 in order.
            mt a_newer_version_holds_its_key_not_the_queue {
                $crate::consumer::newer_version_keeps_key_order_scenario(&$crate::consumer::Broker::rabbitmq().await).await;
            }
            /// Under a single active consumer (one lane), a key waiting for its delayed
            /// retry does not hold up 1,000 messages of other keys.
            mt a_delayed_retry_does_not_hold_the_lane {
                $crate::consumer::delayed_retry_scenario(&$crate::consumer::Broker::rabbitmq().await).await;
            }
            /// Group commit: a backlog of 200 steps (and 20 copies) on one lane, three
            /// handlers failing once after writing; only those three run again, every
            /// effect once and per key in order, the copies skipped.
            mt group_commit_retries_only_the_failed_message {
                $crate::consumer::group_commit_failure_scenario(&$crate::consumer::Broker::rabbitmq().await).await;
            }
            /// Group commit with 60 acknowledgements lost after their commit: the
            /// redeliveries are absorbed by the inbox, every effect once.
            mt group_commit_lost_acknowledgements_change_nothing {
                $crate::consumer::group_commit_lost_acks_scenario(&$crate::consumer::Broker::rabbitmq().await).await;
            }
            /// Group commit whose transaction fails at commit (a deferred foreign key
            /// one handler broke): nothing of the group stays, its messages run again
            /// one by one, every effect once and per key in order.
            mt group_commit_a_failed_commit_applies_nothing_twice {
                $crate::consumer::group_commit_failed_commit_scenario(&$crate::consumer::Broker::rabbitmq().await).await;
            }
            /// Keys given back to the broker one after another each wait for their first message.
            mt given_back_keys_keep_their_order {
                $crate::consumer::given_back_keys_keep_order_scenario(&$crate::consumer::Broker::rabbitmq().await).await;
            }
            /// The group's dead-letter queue is deleted: the next dead letter routes
            /// nowhere, is kept in the parked table, and the queue (single active
            /// consumer) flows on.
            mt a_dead_letter_with_no_queue_is_kept_in_the_database {
                $crate::consumer::refused_dead_letter_scenario(&$crate::consumer::Broker::rabbitmq().await, $crate::consumer::Refusal::QueueDeleted).await;
            }
        }
    };
    (consumer_sqs) => {
        $crate::__matrix_tests! {
            /// 2,000 events over 200 keys and 200 injected copies, consumed by a worker
            /// process SIGKILLed mid-run and started again: every event takes effect
            /// exactly once, with one inbox row.
            mt effectively_once_under_redeliveries_and_a_crash {
                $crate::consumer::effectively_once_scenario::<$crate::TestDb>(&$crate::consumer::Broker::sqs().await, env!("CARGO_BIN_EXE_consumer_worker")).await;
            }
            /// At least once under a crash: no effect missing (those handled but not yet
            /// acknowledged when the process died, if any, are handled again).
            mt at_least_once_loses_nothing_under_a_crash {
                $crate::consumer::at_least_once_scenario::<$crate::TestDb>(&$crate::consumer::Broker::sqs().await, env!("CARGO_BIN_EXE_consumer_worker")).await;
            }
            /// At most once under a crash: nothing repeated, the handlers in flight lost.
            mt at_most_once_loses_but_never_repeats_under_a_crash {
                $crate::consumer::at_most_once_scenario::<$crate::TestDb>(&$crate::consumer::Broker::sqs().await, env!("CARGO_BIN_EXE_consumer_worker")).await;
            }
            /// 1% poison among 1,000 events goes to the `<destination>.dlq` queue with
            /// reason, attempts, origin and group; re-driving handles the failing ones.
            mt poison_goes_to_the_dead_letter_queue_and_can_be_redriven {
                $crate::consumer::poison_scenario(&$crate::consumer::Broker::sqs().await).await;
            }
            /// A bound of 5, the consumer's or the subscriber's, keeps at most 5
            /// messages unsettled.
            mt a_slow_handler_never_holds_more_than_n_unacknowledged {
                $crate::consumer::backpressure_scenario(&$crate::consumer::Broker::sqs().await).await;
            }
            /// Two consumers of one queue share the work; a second group's queue gets
            /// every event too.
            mt point_to_point_and_publish_subscribe {
                let took = $crate::consumer::groups_scenario(&$crate::consumer::Broker::sqs().await).await;
                println!("groups on SQS in {took:?}");
            }
            /// A batch handler: 2,000 events over 20 keys and 200 injected copies, one
            /// poison event. Every effect exactly once, written by far fewer handler calls
            /// than there are messages, per key in order (FIFO message groups); the
            /// poison event's batch is split until it stands alone, and only it is
            /// dead-lettered, with the reason. (The scenario, shared with Kafka and
            /// RabbitMQ, says exactly what it checks.)
            mt batch_handler_applies_each_event_once_in_few_transactions_and_splits_out_poison {
                let outcome = $crate::consumer::batch_handler_scenario(&$crate::consumer::Broker::sqs().await).await;
                println!("batch handler on SQS: {outcome:?}");
            }
            /// `rate_limit(50)`: 100 waiting events are handled over at least 1.8 s.
            mt rate_limit_spreads_a_backlog_over_time {
                let span = $crate::consumer::rate_limit_scenario(&$crate::consumer::Broker::sqs().await).await;
                println!("rate limit 50/s on SQS: 100 handler calls over {span:?}");
            }
            /// Version gating keeps a key's order: m5 (a newer version) parked, m6 and
            /// m7 parked behind it, other keys handled; the upgraded member handles m5,
            /// m6, m7 in order.
            mt a_newer_version_holds_its_message_group {
                $crate::consumer::newer_version_keeps_key_order_scenario(&$crate::consumer::Broker::sqs().await).await;
            }
            /// A dead letter larger than SQS takes (the original fits) is kept in the
            /// parked table; the queue flows on.
            mt an_oversized_dead_letter_is_kept_in_the_database {
                $crate::consumer::refused_dead_letter_scenario(&$crate::consumer::Broker::sqs().await, $crate::consumer::Refusal::Oversized).await;
            }
            /// The group's dead-letter queue is deleted after its first letter: the next
            /// letter is kept in the parked table; the queue flows on.
            mt a_dead_letter_with_no_queue_is_kept_in_the_database {
                $crate::consumer::refused_dead_letter_scenario(&$crate::consumer::Broker::sqs().await, $crate::consumer::Refusal::QueueDeleted).await;
            }
        }
    };
    (consumer_mysql) => {
        $crate::__matrix_tests! {
            mt redelivered_events_change_nothing {
                $crate::suites::consumer::redelivered_events_change_nothing::<$crate::mysql::TestMySql>().await;
            }
            mt batch_handlers_skip_redelivered_events {
                $crate::suites::consumer::batch_handlers_skip_redelivered_events::<$crate::mysql::TestMySql>().await;
            }
            mt effectively_once_under_redeliveries_and_a_crash {
                $crate::consumer::effectively_once_scenario::<$crate::mysql::TestMySql>(
                    &$crate::consumer::Broker::rabbitmq().await,
                    env!("CARGO_BIN_EXE_consumer_worker"),
                )
                .await;
            }
            mt batch_handler_applies_each_event_once_in_few_transactions_and_splits_out_poison {
                let outcome = $crate::suites::consumer::batch_handler::<$crate::mysql::TestMySql>(&$crate::consumer::Broker::rabbitmq().await).await;
                println!("batch handler on MySQL and RabbitMQ: {outcome:?}");
            }
            mt batch_handler_on_kafka {
                let outcome = $crate::suites::consumer::batch_handler::<$crate::mysql::TestMySql>(&$crate::consumer::Broker::kafka().await).await;
                println!("batch handler on MySQL and Kafka: {outcome:?}");
            }
            mt rate_limit_spreads_a_backlog_over_time {
                let span = $crate::suites::consumer::rate_limit::<$crate::mysql::TestMySql>(&$crate::consumer::Broker::rabbitmq().await).await;
                println!("rate limit 50/s on MySQL and RabbitMQ: 100 handler calls over {span:?}");
            }
        }
    };
    // The saga suite as every database runs it, on Kafka and RabbitMQ.
    (@saga $db:ty) => {
        $crate::__matrix_tests! {
            mt duplicates_of_every_saga_event_change_nothing_on_rabbitmq {
                $crate::suites::saga::duplicates_change_nothing::<$db>(&$crate::consumer::Broker::rabbitmq().await).await;
            }
            mt duplicates_of_every_saga_event_change_nothing_on_kafka {
                $crate::suites::saga::duplicates_change_nothing::<$db>(&$crate::consumer::Broker::kafka().await).await;
            }
            mt saga_timeouts_fire_once_and_never_after_completion_on_rabbitmq {
                $crate::suites::saga::timeouts_fire_once_and_never_after_completion::<$db>(&$crate::consumer::Broker::rabbitmq().await).await;
            }
            mt saga_timeouts_fire_once_and_never_after_completion_on_kafka {
                $crate::suites::saga::timeouts_fire_once_and_never_after_completion::<$db>(&$crate::consumer::Broker::kafka().await).await;
            }
            mt concurrent_steps_of_one_saga_instance_in_two_processes_both_apply_on_rabbitmq {
                $crate::suites::saga::concurrent_steps_of_one_instance_both_apply::<$db>(
                    &$crate::consumer::Broker::rabbitmq().await,
                    env!("CARGO_BIN_EXE_saga_worker"),
                )
                .await;
            }
            mt concurrent_steps_of_one_saga_instance_in_two_processes_both_apply_on_kafka {
                $crate::suites::saga::concurrent_steps_of_one_instance_both_apply::<$db>(
                    &$crate::consumer::Broker::kafka().await,
                    env!("CARGO_BIN_EXE_saga_worker"),
                )
                .await;
            }
            mt a_saga_worker_killed_mid_step_leaves_no_partial_state_on_rabbitmq {
                $crate::suites::saga::killed_mid_step_leaves_no_partial_state::<$db>(
                    &$crate::consumer::Broker::rabbitmq().await,
                    env!("CARGO_BIN_EXE_saga_worker"),
                )
                .await;
            }
            mt a_saga_worker_killed_mid_step_leaves_no_partial_state_on_kafka {
                $crate::suites::saga::killed_mid_step_leaves_no_partial_state::<$db>(
                    &$crate::consumer::Broker::kafka().await,
                    env!("CARGO_BIN_EXE_saga_worker"),
                )
                .await;
            }
        }
    };
    (saga_postgres) => {
        $crate::matrix!(@saga $crate::TestDb);
        $crate::__matrix_tests! {
            /// The negative control of the race: without the saga's lock,
            /// legs are lost, and the suite's check says so.
            mt unlocked_steps_of_one_saga_instance_lose_updates_on_rabbitmq {
                $crate::suites::saga::unlocked_steps_lose_updates::<$crate::TestDb>(
                    &$crate::consumer::Broker::rabbitmq().await,
                    env!("CARGO_BIN_EXE_saga_worker"),
                )
                .await;
            }
        }
    };
    (saga_mysql) => {
        $crate::matrix!(@saga $crate::mysql::TestMySql);
    };
    (saga_sqlite) => {
        $crate::matrix!(@saga $crate::sqlite::TestSqlite);
    };
    (consumer_sqlite) => {
        $crate::__matrix_tests! {
            mt redelivered_events_change_nothing_on_sqlite {
                $crate::suites::consumer::redelivered_events_change_nothing::<$crate::sqlite::TestSqlite>().await;
            }
            mt batch_handlers_skip_redelivered_events_on_sqlite {
                $crate::suites::consumer::batch_handlers_skip_redelivered_events::<$crate::sqlite::TestSqlite>().await;
            }
        }
    };
}
