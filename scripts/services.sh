# Starts the services the test suite needs, installing them first on a fresh
# Debian/Ubuntu machine (run as root). Sourced by scripts/test; safe to re-run.
# Exports DATABASE_URL, MYSQL_URL, AMQP_URL, KAFKA_BROKERS and SQS_ENDPOINT (with
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION defaults for it), and
# installs the Python packages of the CloudEvents interoperability suite.

TANSU_VERSION=0.6.0

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds name
  for _ in $(seq 1 "$2"); do port_open "$1" && return 0; sleep 1; done
  echo "error: $3 did not come up on 127.0.0.1:$1" >&2; return 1
}

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "error: $* missing and not root; install it or set the service URL variables" >&2; return 1
  fi
  [ -n "${APT_UPDATED:-}" ] || { apt-get update -qq; APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
  port_open 5432 && return 0
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  local version; version=$(ls /etc/postgresql | sort -V | tail -1)
  # Trust loopback connections: the suite connects as postgres without a password.
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  grep -q "eventbus-test" "$hba" || sed -i "1i host all all 127.0.0.1/32 trust # eventbus-test" "$hba"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_port 5432 30 PostgreSQL
}

ensure_rabbitmq() {
  export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
  port_open 5672 && return 0
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  rabbitmq-server -detached
  wait_port 5672 90 RabbitMQ
}

ensure_kafka() {
  export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"
  port_open 9092 && return 0
  local tansu="$HOME/.cargo/bin/tansu"
  if ! "$tansu" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    echo "installing the Kafka-protocol broker tansu $TANSU_VERSION (once; cached in ~/.cargo/bin)" >&2
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore --quiet
  fi
  setsid nohup "$tansu" broker --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/ \
    >"${TMPDIR:-/tmp}/eventbus-tansu.log" 2>&1 < /dev/null &
  wait_port 9092 30 tansu
}

# A local SQS-compatible server: moto in server mode (PyPI) on loopback,
# started through scripts/moto_sqs.py, which fixes races and a busy loop of
# its queues.
ensure_sqs() {
  export SQS_ENDPOINT="${SQS_ENDPOINT:-http://127.0.0.1:4566}"
  # moto accepts any credentials; the AWS SDK still wants some to sign with.
  export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
  export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
  export AWS_REGION="${AWS_REGION:-us-east-1}"
  port_open 4566 && return 0
  if ! python3 -c "import moto.server, flask" 2>/dev/null; then
    echo "installing the SQS-compatible test server moto (once)" >&2
    python3 -m pip install -q "moto[server]"
  fi
  # setsid: the server outlives this shell and ignores its job control.
  setsid nohup python3 "$(dirname "${BASH_SOURCE[0]}")/moto_sqs.py" -H 127.0.0.1 -p 4566 \
    >"${TMPDIR:-/tmp}/eventbus-moto.log" 2>&1 < /dev/null &
  wait_port 4566 30 "moto (SQS)"
}

# The CloudEvents interoperability suite (tests/tests/cloudevents_interop.rs)
# runs the official CloudEvents Python SDK with the Kafka and RabbitMQ
# clients (tests/interop/), installed into the system python3 like moto.
INTEROP_PACKAGES=("cloudevents>=2.2,<3" "confluent-kafka>=2.3" "pika>=1.3")
ensure_python_interop() {
  python3 -c "import cloudevents.core.bindings.kafka, cloudevents.core.bindings.amqp, confluent_kafka, pika" \
    2>/dev/null && return 0
  command -v python3 >/dev/null || apt_install python3
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  echo "installing the CloudEvents Python SDK, confluent-kafka and pika (once)" >&2
  # A Debian-managed python3 refuses plain pip installs (PEP 668).
  python3 -m pip install -q "${INTEROP_PACKAGES[@]}" \
    || python3 -m pip install -q --break-system-packages "${INTEROP_PACKAGES[@]}"
}

ensure_mysql() {
  export MYSQL_URL="${MYSQL_URL:-mysql://root@127.0.0.1:3306}"
  port_open 3306 && return 0
  command -v mariadbd >/dev/null || apt_install mariadb-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  wait_port 3306 60 MariaDB
}

# librdkafka is built with TLS (eventbus feature `kafka-ssl`), linked to the
# system's OpenSSL.
ensure_build_deps() {
  pkg-config --exists openssl 2>/dev/null && return 0
  command -v pkg-config >/dev/null && dpkg -s libssl-dev >/dev/null 2>&1 && return 0
  apt_install libssl-dev pkg-config
}

# The soak starts its own PostgreSQL cluster and RabbitMQ node.
ensure_server_binaries() {
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || apt_install rabbitmq-server
}

ensure_services() {
  ensure_postgres && ensure_rabbitmq && ensure_kafka && ensure_mysql && ensure_sqs \
    && ensure_python_interop
}
