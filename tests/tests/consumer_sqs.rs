//! The consumer over a real SQS-compatible server (moto) and PostgreSQL: the
//! scenarios shared with the Kafka and RabbitMQ suites
//! (`eventbus_tests::consumer`), on FIFO queues (message group = partition
//! key) — effectively once under redeliveries and a crash of the worker
//! process, what the weaker modes cost under a crash, dead letters and
//! re-driving, the in-flight bound, point-to-point versus publish-subscribe
//! (a queue per group), batch handlers and the rate limit. Event counts are
//! scaled down where the scenario says so: moto is slow.

// The shared scenarios this binary runs: its row in `tests/src/matrix.rs`.
eventbus_tests::matrix!(consumer_sqs);
