//! Kafka transport (rdkafka).
