# Starts the services the test suite needs, installing them first on a fresh
# Debian/Ubuntu machine (run as root). Sourced by scripts/test; safe to re-run.
# Exports DATABASE_URL, AMQP_URL and KAFKA_BROKERS.

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
  nohup "$tansu" broker --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/ \
    >"${TMPDIR:-/tmp}/eventbus-tansu.log" 2>&1 &
  wait_port 9092 30 tansu
}

ensure_services() {
  ensure_postgres && ensure_rabbitmq && ensure_kafka
}
