//! Unit tests of `config`: layers, secret files, the TOML file.

use clap::Parser as _;

use super::*;
use crate::http::HttpArgs;

fn no_broker_args() -> BrokerArgs {
    BrokerArgs {
        broker_file: None,
        broker_ca_file: None,
        broker_client_identity: None,
        broker_client_identity_password_file: None,
        producer_set_file: Vec::new(),
    }
}

/// No `--database-url`, `--outbox-table` or `--config` given.
fn no_common_flags() -> Common {
    Common {
        database_url: None,
        database_url_file: None,
        outbox_table: None,
        config: None,
    }
}

fn temp_file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn urls_and_secrets_come_from_files_without_the_newline() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = temp_file(&dir, "broker", "amqps://relay:s3cret@rabbit:5671/%2f\n");
    let password = temp_file(&dir, "sasl", "kafka-pw\n");
    let args = BrokerArgs {
        broker_file: Some(url),
        producer_set_file: vec![format!("sasl.password={}", password.display())],
        ..no_broker_args()
    };
    let broker = broker(None, &args, &FileConfig::default(), Vec::new()).expect("resolves");
    assert_eq!(broker.url.expose(), "amqps://relay:s3cret@rabbit:5671/%2f");
    assert_eq!(
        broker.properties.0,
        vec![("sasl.password".to_owned(), "kafka-pw".to_owned())]
    );
    let shown = format!("{broker:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(!shown.contains("kafka-pw"), "{shown}");
    assert!(shown.contains("relay:***@rabbit"), "{shown}");
}

#[test]
fn a_value_and_its_file_together_or_an_empty_file_are_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = temp_file(&dir, "db", "postgres://db\n");
    let common = Common {
        database_url: Some("postgres://other".into()),
        database_url_file: Some(url),
        outbox_table: None,
        config: None,
    };
    let err = database_url(&common, &FileConfig::default()).expect_err("both given");
    assert!(err.to_string().contains("keep one"), "{err}");

    let empty = temp_file(&dir, "empty", "\n");
    let args = BrokerArgs {
        broker_file: Some(empty),
        ..no_broker_args()
    };
    let err = broker(None, &args, &FileConfig::default(), Vec::new()).expect_err("empty");
    assert!(err.to_string().contains("is empty"), "{err}");

    let args = BrokerArgs {
        broker_file: Some(PathBuf::from("/nonexistent/broker-url")),
        ..no_broker_args()
    };
    let err = broker(None, &args, &FileConfig::default(), Vec::new()).expect_err("missing");
    assert!(err.to_string().contains("/nonexistent/broker-url"), "{err}");

    let args = BrokerArgs {
        broker_file: Some(PathBuf::from("/dev/zero")),
        ..no_broker_args()
    };
    let err = broker(None, &args, &FileConfig::default(), Vec::new()).expect_err("endless");
    assert!(err.to_string().contains("larger than"), "{err}");
}

#[test]
fn flags_beat_the_file_layer_for_urls() {
    let file = FileConfig::parse("database_url_file = \"/nonexistent\"\n").expect("valid");
    let common = Common {
        database_url: Some("postgres://flag".into()),
        database_url_file: None,
        outbox_table: None,
        config: None,
    };
    let url = database_url(&common, &file).expect("the flag wins; the file is not read");
    assert_eq!(url.expose(), "postgres://flag");
}

#[test]
fn unknown_keys_in_the_file_are_errors() {
    let err = FileConfig::parse("batch_sise = 10").expect_err("typo must fail");
    assert!(err.to_string().contains("batch_sise"), "{err}");
}

#[test]
fn file_values_fill_what_flags_leave_open() {
    let file = FileConfig::parse(
        "database_url = \"postgres://db\"\nbroker = \"kafka://k:9092\"\nbatch_size = 50\nclaim_bytes = 4096\n\
         [destinations]\norders = \"shop.orders\"\n[producer]\n\"linger.ms\" = \"5\"\n",
    )
    .expect("valid");
    let common = no_common_flags();
    let run = RunArgs {
        broker: None,
        broker_options: no_broker_args(),
        http: HttpArgs::default(),
        source: None,
        name: None,
        batch_size: Some(7),
        claim_bytes: None,
        pipeline: Some(false),
        poll_interval_ms: None,
        lease_ttl_ms: None,
        max_attempts: None,
        retry_initial_ms: None,
        max_message_bytes: None,
        keep_published_secs: None,
        destination_prefix: None,
        no_create_destinations: false,
        producer_set: vec!["acks=all".into()],
        destinations: DestinationArgs::default(),
    };
    let r = resolve(&common, &run, file).expect("resolves");
    assert_eq!(r.database_url.expose(), "postgres://db");
    assert_eq!(r.relay.batch_size, 7, "flag beats file");
    assert_eq!(r.relay.claim_bytes, 4096, "from the file");
    assert!(!r.relay.pipeline, "flag beats the default");
    assert_eq!(r.relay.broker_destination("orders"), "shop.orders");
    let properties = &r.broker.properties.0;
    assert!(properties.contains(&("linger.ms".into(), "5".into())));
    assert!(properties.contains(&("acks".into(), "all".into())));
}

#[derive(Debug, clap::Parser)]
struct RunCli {
    #[command(flatten)]
    run: RunArgs,
}

fn run_args(flags: &[&str]) -> RunArgs {
    RunCli::try_parse_from([&["run"][..], flags].concat())
        .expect("flags parse")
        .run
}

#[test]
fn durations_take_human_forms_and_the_old_bare_numbers() {
    let file = FileConfig::parse(
        "database_url = \"postgres://db\"\nbroker = \"kafka://k:9092\"\n\
         lease_ttl_ms = 4000\nretry_initial = \"1s\"\nkeep_published = \"2h\"\n\
         http_read_timeout = \"3s\"\nhttp_max_connections = 64\n",
    )
    .expect("valid");
    let common = no_common_flags();
    let run = run_args(&["--poll-interval", "250ms", "--http-request-timeout", "2"]);
    let r = resolve(&common, &run, file).expect("resolves");
    assert_eq!(r.relay.poll_interval, Duration::from_millis(250));
    assert_eq!(r.relay.lease_ttl, Duration::from_millis(4000), "bare: ms");
    assert_eq!(r.relay.retry_initial, Duration::from_secs(1));
    assert_eq!(
        r.relay.retention,
        Retention::Keep(Duration::from_secs(7200))
    );
    assert_eq!(r.http.read_timeout, Duration::from_secs(3));
    assert_eq!(r.http.request_timeout, Duration::from_secs(2), "bare: s");
    assert_eq!(r.http.max_connections, 64);
    assert_eq!(r.http.addr, crate::http::DEFAULT_ADDR);

    let old = run_args(&["--poll-interval-ms", "200", "--keep-published-secs", "60"]);
    assert_eq!(old.poll_interval_ms, Some(Duration::from_millis(200)));
    assert_eq!(old.keep_published_secs, Some(Duration::from_secs(60)));
    let err = RunCli::try_parse_from(["run", "--lease-ttl", "soon"]).expect_err("invalid");
    assert!(err.to_string().contains("invalid duration `soon`"), "{err}");
    let err = FileConfig::parse("poll_interval_ms = \"fast\"").expect_err("invalid");
    assert!(err.to_string().contains("fast"), "{err}");
}
