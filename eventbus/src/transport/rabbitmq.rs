//! RabbitMQ transport (lapin).
