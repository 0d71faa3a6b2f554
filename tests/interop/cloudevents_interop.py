#!/usr/bin/env python3
"""The other side of the CloudEvents interoperability suite
(tests/tests/cloudevents_interop.rs): the official CloudEvents Python SDK
(`cloudevents` on PyPI) reading what eventbus published, and publishing
events for eventbus to read, over the real brokers.

Commands (events are JSON lines, see `event_to_json` and `event_from_json`):

  check                                      the SDK and clients are importable
  read-kafka BROKERS TOPIC COUNT             decode COUNT messages of TOPIC
                                             (partition 0, from the start),
                                             print one event per line
  read-rabbitmq AMQP_URL QUEUE COUNT         decode COUNT messages got from QUEUE
  publish-kafka BROKERS TOPIC MODE           publish the events on stdin;
                                             MODE: binary | structured
  publish-rabbitmq AMQP_URL EXCHANGE MODE    publish the events on stdin, each
                                             with its type as routing key; MODE:
                                             binary | structured (the SDK's
                                             RabbitMQ binding), amqp-binary |
                                             amqp-binary-colon | amqp-structured
                                             (its AMQP binding; -colon renames
                                             the `cloudEvents_` prefix it writes
                                             to the binding's `cloudEvents:`)
  publish-raw-kafka BROKERS TOPIC CONTENT_TYPE      publish each stdin line as
  publish-raw-rabbitmq AMQP_URL EXCHANGE ROUTING_KEY CONTENT_TYPE
                                             it is (malformed events), with
                                             this content type

Exit status 3 when the SDK or a client library is missing.
"""

import json
import sys
import time

MISSING = 3

try:
    import confluent_kafka
    import pika
    from cloudevents.core.bindings import amqp, kafka, rabbitmq
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent
    from dateutil.parser import isoparse
except ImportError as e:
    sys.stderr.write(
        f"the CloudEvents Python SDK or a broker client is missing ({e}) for "
        f"{sys.executable}: `python3 -m pip install cloudevents confluent-kafka pika` "
        "installs them\n"
    )
    sys.exit(MISSING)

FORMAT = JSONFormat()
TIMEOUT_S = 60


def event_to_json(event, mode):
    """One decoded event as JSON: attributes as strings (`time` in ISO 8601),
    data as {"json": value}, {"text": str} or {"hex": str}, and the content
    mode the message was in."""
    attributes = {}
    for name, value in event.get_attributes().items():
        attributes[name] = value.isoformat() if name == "time" else str(value)
    data = event.get_data()
    if data is None:
        encoded = None
    elif isinstance(data, (bytes, bytearray)):
        encoded = {"hex": bytes(data).hex()}
    elif isinstance(data, str):
        encoded = {"text": data}
    else:
        encoded = {"json": data}
    return json.dumps({"mode": mode, "attributes": attributes, "data": encoded})


def event_from_json(line):
    """An SDK CloudEvent from the JSON form `event_to_json` writes."""
    spec = json.loads(line)
    attributes = dict(spec["attributes"])
    if "time" in attributes:
        attributes["time"] = isoparse(attributes["time"])
    data = spec.get("data")
    if data is None:
        payload = None
    elif "json" in data:
        payload = data["json"]
    elif "text" in data:
        payload = data["text"]
    else:
        payload = bytes.fromhex(data["hex"])
    return CloudEvent(attributes=attributes, data=payload)


def is_structured(content_type):
    return (content_type or "").lower().startswith("application/cloudevents")


def read_kafka(brokers, topic, count):
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"cloudevents-interop-{time.time_ns()}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign(
        [confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)]
    )
    deadline = time.monotonic() + TIMEOUT_S
    read = 0
    while read < count:
        if time.monotonic() > deadline:
            sys.exit(f"read {read} of {count} messages of Kafka topic {topic} in {TIMEOUT_S} s")
        message = consumer.poll(1.0)
        if message is None:
            continue
        if message.error():
            sys.exit(f"reading Kafka topic {topic}: {message.error()}")
        headers = dict(message.headers() or [])
        decoded = kafka.KafkaMessage(
            headers=headers, key=message.key(), value=message.value() or b""
        )
        content_type = headers.get("content-type", b"").decode("utf-8")
        mode = "structured" if is_structured(content_type) else "binary"
        print(event_to_json(kafka.from_kafka(decoded, FORMAT, CloudEvent), mode), flush=True)
        read += 1
    consumer.close()


def read_rabbitmq(url, queue, count):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    deadline = time.monotonic() + TIMEOUT_S
    read = 0
    while read < count:
        if time.monotonic() > deadline:
            sys.exit(f"got {read} of {count} messages from RabbitMQ queue {queue} in {TIMEOUT_S} s")
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            time.sleep(0.2)
            continue
        headers = {
            name: value.decode("utf-8") if isinstance(value, bytes) else value
            for name, value in (properties.headers or {}).items()
        }
        message = rabbitmq.RabbitMQMessage(
            headers=headers, content_type=properties.content_type, body=body
        )
        mode = "structured" if is_structured(properties.content_type) else "binary"
        event = rabbitmq.from_rabbitmq(message, FORMAT, CloudEvent)
        print(event_to_json(event, mode), flush=True)
        read += 1
    connection.close()


def kafka_producer(brokers):
    # One message per record batch, as the Rust suites' publishers do for
    # the Kafka-protocol test broker.
    return confluent_kafka.Producer(
        {"bootstrap.servers": brokers, "linger.ms": 0, "batch.num.messages": 1}
    )


def delivered(error, message):
    if error is not None:
        sys.exit(f"Kafka did not take a message: {error}")


def publish_kafka(brokers, topic, mode):
    producer = kafka_producer(brokers)
    encode = {"binary": kafka.to_binary, "structured": kafka.to_structured}[mode]
    for line in sys.stdin:
        if not line.strip():
            continue
        message = encode(event_from_json(line), FORMAT)
        producer.produce(
            topic,
            value=message.value,
            key=message.key,
            headers=list(message.headers.items()),
            on_delivery=delivered,
        )
        producer.flush(TIMEOUT_S)
    if producer.flush(TIMEOUT_S) != 0:
        sys.exit(f"Kafka did not confirm every message to {topic}")


def rabbitmq_message(event, mode):
    """(headers, content_type, body) of `event` in `mode`."""
    if mode in ("binary", "structured"):
        encode = {"binary": rabbitmq.to_binary, "structured": rabbitmq.to_structured}[mode]
        message = encode(event, FORMAT)
        return message.headers, message.content_type, message.body
    encode = amqp.to_structured if mode == "amqp-structured" else amqp.to_binary
    message = encode(event, FORMAT)
    headers = dict(message.application_properties)
    if mode == "amqp-binary-colon":
        headers = {
            name.replace(amqp.CE_PREFIX_UNDERSCORE, amqp.CE_PREFIX_COLON, 1): value
            for name, value in headers.items()
        }
    content_type = message.properties.get(amqp.CONTENT_TYPE_PROPERTY)
    return headers, content_type, message.application_data


def publish_rabbitmq(url, exchange, mode):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    for line in sys.stdin:
        if not line.strip():
            continue
        event = event_from_json(line)
        headers, content_type, body = rabbitmq_message(event, mode)
        channel.basic_publish(
            exchange,
            event.get_type(),
            body,
            pika.BasicProperties(content_type=content_type, headers=headers, delivery_mode=2),
            mandatory=True,
        )
    connection.close()


def publish_raw_kafka(brokers, topic, content_type):
    producer = kafka_producer(brokers)
    for line in sys.stdin:
        if not line.strip():
            continue
        producer.produce(
            topic,
            value=line.rstrip("\n").encode("utf-8"),
            headers=[("content-type", content_type.encode("utf-8"))],
            on_delivery=delivered,
        )
        producer.flush(TIMEOUT_S)


def publish_raw_rabbitmq(url, exchange, routing_key, content_type):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    for line in sys.stdin:
        if not line.strip():
            continue
        channel.basic_publish(
            exchange,
            routing_key,
            line.rstrip("\n").encode("utf-8"),
            pika.BasicProperties(content_type=content_type, delivery_mode=2),
            mandatory=True,
        )
    connection.close()


def main(argv):
    commands = {
        "check": (lambda: print(f"cloudevents SDK ok; librdkafka {confluent_kafka.libversion()[0]}, pika {pika.__version__}"), 0),
        "read-kafka": (lambda b, t, n: read_kafka(b, t, int(n)), 3),
        "read-rabbitmq": (lambda u, q, n: read_rabbitmq(u, q, int(n)), 3),
        "publish-kafka": (publish_kafka, 3),
        "publish-rabbitmq": (publish_rabbitmq, 3),
        "publish-raw-kafka": (publish_raw_kafka, 3),
        "publish-raw-rabbitmq": (publish_raw_rabbitmq, 4),
    }
    if len(argv) < 2 or argv[1] not in commands:
        sys.exit(__doc__)
    command, arity = commands[argv[1]]
    if len(argv) - 2 != arity:
        sys.exit(f"{argv[1]} takes {arity} arguments\n{__doc__}")
    command(*argv[2:])


if __name__ == "__main__":
    main(sys.argv)
