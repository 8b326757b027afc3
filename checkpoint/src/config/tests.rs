use super::*;
use crate::retention::DEFAULT_INTERVAL;

/// Parses with a fixed environment: `DATABASE_URL`, `KAFKA_BROKERS`, `EMPTY`, `INJECT`.
fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse_with_env(text, "checkpoint.toml", &|name| match name {
        "DATABASE_URL" => Some("postgres://app:secret@127.0.0.1:5432/app".to_owned()),
        "KAFKA_BROKERS" => Some("10.0.0.1:9092,10.0.0.2:9092".to_owned()),
        "EMPTY" => Some(String::new()),
        "INJECT" => Some("x\"\n[api]\nbind = \"0.0.0.0:1".to_owned()),
        "MULTILINE" => Some("line one\nline two".to_owned()),
        _ => None,
    })
}

/// The one-line message `text` is rejected with.
fn error(text: &str) -> String {
    let message = parse(text).expect_err("must be rejected").to_string();
    assert!(!message.contains('\n'), "not one line: {message}");
    message
}

const DATABASE: &str = "[database]\nurl = \"sqlite://cp.db\"\n";

/// `DATABASE` and one listener (lines 3 to 6) with `extra` lines appended to it.
fn with_listener(extra: &str) -> String {
    format!("{DATABASE}[[listeners]]\nhandler = \"h\"\ntopic = \"t\"\ngroup_id = \"g\"\n{extra}")
}

#[test]
fn fault_limits_are_read_and_checked() {
    let text = with_listener(
        "handler_timeout_ms = 2500\nmax_queued_bytes = 1048576\nshutdown_timeout_ms = 5000\n",
    );
    let listener = &parse(&text).expect("valid").listeners[0];
    assert_eq!(listener.handler_timeout, Some(Duration::from_millis(2500)));
    assert_eq!(listener.max_queued_bytes, 1 << 20);
    assert_eq!(listener.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(
        error(&with_listener("handler_timeout_ms = 0\n")),
        "checkpoint.toml: listeners[0].handler_timeout_ms: must be at least 1, not 0"
    );
    assert_eq!(
        error(&with_listener("max_queued_bytes = -1\n")),
        "checkpoint.toml: listeners[0].max_queued_bytes: must be at least 1, not -1"
    );
    assert_eq!(
        error(&format!(
            "[kafka]\n\"max.poll.interval.ms\" = 5000\n{}",
            with_listener("revoke_timeout_ms = 5000\n")
        )),
        "checkpoint.toml: listeners[0].revoke_timeout_ms: (5000 ms) must be below \
         kafka.\"max.poll.interval.ms\" (5000 ms): the consumer does not poll while a \
         revocation waits"
    );
}

#[test]
fn the_example_parses_with_and_without_the_environment() {
    let config = Config::parse_with_env(example(), "example", &|_| None).expect("example parses");
    assert_eq!(config.kafka["bootstrap.servers"], "127.0.0.1:9092");
    assert_eq!(config.kafka["session.timeout.ms"], "6000");
    assert_eq!(config.database.url, "sqlite://checkpoint.db");
    assert_eq!(config.database.pool_size, 10);
    assert_eq!(config.db_checkpoint.max_retries, Some(3));
    assert_eq!(config.api, ApiConfig::default());
    assert_eq!(
        config.listeners,
        vec![ListenerConfig {
            handler: "orders".to_owned(),
            topic: "orders".to_owned(),
            group_id: "billing".to_owned(),
            max_concurrency: 3,
            start_from_beginning: true,
            batch_size: 1,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            handler_timeout: None,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            revoke_timeout: DEFAULT_REVOKE_TIMEOUT,
        }]
    );
    assert_eq!(config.source, "example");

    let config = parse(example()).expect("example parses");
    assert_eq!(
        config.database.url,
        "postgres://app:secret@127.0.0.1:5432/app"
    );
    assert_eq!(
        config.kafka["bootstrap.servers"],
        "10.0.0.1:9092,10.0.0.2:9092"
    );
}

#[test]
fn retention_ages_are_parsed_and_mistakes_name_their_key() {
    let config = parse(&format!(
        "{DATABASE}\n[retention]\nevents_older_than = \"30d\"\nbatch_size = 500\n"
    ))
    .expect("valid");
    assert_eq!(
        config.retention,
        Some(Retention {
            events_older_than: Some(Duration::from_secs(30 * 86_400)),
            failures_older_than: None,
            interval: DEFAULT_INTERVAL,
            batch_size: 500,
        })
    );
    for (table, key) in [
        ("events_older_than = \"30\"", "retention.events_older_than"),
        (
            "failures_older_than = \"3y\"",
            "retention.failures_older_than",
        ),
        (
            "events_older_than = \"1d\"\ninterval = \"0s\"",
            "retention.interval",
        ),
        (
            "events_older_than = \"1d\"\nbatch_size = 0",
            "retention.batch_size",
        ),
        ("interval = \"1h\"", "retention"),
    ] {
        let error =
            parse(&format!("{DATABASE}\n[retention]\n{table}\n")).expect_err("invalid retention");
        assert!(
            error
                .to_string()
                .starts_with(&format!("checkpoint.toml: {key}: ")),
            "{table}: {error}"
        );
    }
}

#[test]
fn only_the_database_url_is_required_and_everything_else_has_defaults() {
    let config = parse(DATABASE).expect("valid");
    assert_eq!(
        config,
        Config {
            kafka: BTreeMap::new(),
            database: DatabaseConfig {
                url: "sqlite://cp.db".to_owned(),
                pool_size: 10
            },
            db_checkpoint: DbCheckpointConfig { max_retries: None },
            api: ApiConfig {
                enabled: true,
                bind: "127.0.0.1:9292".parse().expect("address"),
                token: None
            },
            retention: None,
            listeners: Vec::new(),
            source: "checkpoint.toml".to_owned(),
        }
    );
    let listener = &parse(&with_listener("")).expect("valid").listeners[0];
    assert_eq!(
        (
            listener.max_concurrency,
            listener.start_from_beginning,
            listener.batch_size
        ),
        (1, true, 1)
    );
    assert_eq!(listener.backoff, Backoff::default());
}

#[test]
fn every_key_is_read() {
    let config = parse(
        r#"
[kafka]
"bootstrap.servers" = "${KAFKA_BROKERS}"
"session.timeout.ms" = 6000
"enable.auto.commit" = false
"retry.backoff.ms" = 100.5
[database]
url = "${DATABASE_URL:-sqlite://fallback.db}"
pool_size = 1000
[db_checkpoint]
max_retries = 0
[api]
bind = "[::1]:8080"
token = "s3cret"
[[listeners]]
handler = "orders"
topic = "orders.v1_eu-west"
group_id = "billing"
max_concurrency = 12
start_from_beginning = false
batch_size = 50
backoff = { min_ms = 1, max_ms = 1 }
[[listeners]]
handler = "orders"
topic = "orders.v1_eu-west"
group_id = "audit"
[listeners.backoff]
max_ms = 2000
"#,
    )
    .expect("valid");
    assert_eq!(
        config.kafka,
        BTreeMap::from(
            [
                ("bootstrap.servers", "10.0.0.1:9092,10.0.0.2:9092"),
                ("session.timeout.ms", "6000"),
                ("enable.auto.commit", "false"),
                ("retry.backoff.ms", "100.5"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        )
    );
    assert_eq!(
        config.database.url,
        "postgres://app:secret@127.0.0.1:5432/app"
    );
    assert_eq!(config.database.pool_size, 1000);
    assert_eq!(config.db_checkpoint.max_retries, Some(0));
    assert_eq!(config.api.bind.to_string(), "[::1]:8080");
    assert_eq!(config.api.token.as_deref(), Some("s3cret"));
    let [first, second] = &config.listeners[..] else {
        panic!("two listeners: {:?}", config.listeners)
    };
    assert_eq!(
        (
            first.max_concurrency,
            first.start_from_beginning,
            first.batch_size
        ),
        (12, false, 50)
    );
    assert_eq!(
        first.backoff,
        Backoff::new(Duration::from_millis(1), Duration::from_millis(1))
    );
    assert_eq!(second.group_id, "audit");
    assert_eq!(
        second.backoff,
        Backoff::new(Duration::from_secs(1), Duration::from_secs(2))
    );
}

#[test]
fn variables_are_expanded_in_string_values_only_once_and_never_parsed_as_toml() {
    let config = parse(
        r#"
[kafka]
"client.id" = "a$$b-${EMPTY}-${UNSET:-}-${UNSET:-x:-y}-$HOME-$"
"sasl.password" = "${INJECT}"
[database]
url = "${UNSET:-sqlite://${EMPTY}x.db}"
[api]
token = "${EMPTY:-from-default}"
"#,
    )
    .expect("valid");
    assert_eq!(config.kafka["client.id"], "a$b---x:-y-$HOME-$");
    // The value is kept verbatim: it did not add an `[api]` table.
    assert_eq!(
        config.kafka["sasl.password"],
        "x\"\n[api]\nbind = \"0.0.0.0:1"
    );
    assert_eq!(config.api.bind, ApiConfig::default().bind);
    assert_eq!(
        config.api.token.as_deref(),
        Some("from-default"),
        "empty = unset for `:-`"
    );
    // `}` ends the reference: the default is `sqlite://${EMPTY`, and the rest is literal.
    assert_eq!(config.database.url, "sqlite://${EMPTYx.db}");
    let token = parse(&format!("{DATABASE}[api]\ntoken = \"${{UNSET:-}}\"\n")).expect("valid");
    assert_eq!(token.api.token, None);
}

#[test]
fn an_unset_variable_without_default_is_named_with_its_key() {
    assert_eq!(
        error("[database]\nurl = \"${NOPE}\"\n"),
        "checkpoint.toml: database.url: environment variable `NOPE` is not set and has no \
         default (write `${NOPE:-default}` to give one)"
    );
    assert_eq!(
        error(&format!(
            "[kafka]\n\"bootstrap.servers\" = \"${{KAFKA}}\"\n{DATABASE}"
        )),
        "checkpoint.toml: kafka.\"bootstrap.servers\": environment variable `KAFKA` is not \
         set and has no default (write `${KAFKA:-default}` to give one)"
    );
    let second = "[[listeners]]\nhandler = \"h\"\ntopic = \"${TOPIC}\"\ngroup_id = \"g\"\n";
    assert!(
        error(&format!("{}{second}", with_listener(""))).starts_with(
            "checkpoint.toml: listeners[1].topic: environment variable `TOPIC` is not set"
        )
    );
}

#[test]
fn a_value_with_a_newline_stays_on_one_line_in_an_error() {
    assert_eq!(
        error("[database]\nurl = \"sqlite://x\"\n[api]\nbind = \"${MULTILINE}\"\n"),
        "checkpoint.toml: api.bind: `line one\\nline two` is not a socket address like \
         127.0.0.1:9292 or [::1]:9292"
    );
}

#[test]
fn malformed_references_are_rejected() {
    assert_eq!(
        error("[database]\nurl = \"sqlite://${DIR\"\n"),
        "checkpoint.toml: database.url: `${` without a closing `}` (write `$$` for a literal \
         `$`)"
    );
    assert_eq!(
        error("[database]\nurl = \"sqlite://${DIR NAME}\"\n"),
        "checkpoint.toml: database.url: `${DIR NAME}` is not a variable reference: use \
         `${NAME}` or `${NAME:-default}`, NAME of A-Z a-z 0-9 _"
    );
    assert!(
        error("[database]\nurl = \"${:-x}\"\n").contains("`${:-x}` is not a variable reference")
    );
}

#[test]
fn unknown_keys_are_named_with_the_valid_ones() {
    assert_eq!(
        error(&format!("{DATABASE}[api]\nport = 1\n")),
        "checkpoint.toml: api.port: unknown key `port`, expected one of `enabled`, `bind`, \
         `token` (line 4)"
    );
    assert_eq!(
        error(&format!("{DATABASE}[listener]\nhandler = \"h\"\n")),
        "checkpoint.toml: listener: unknown key `listener`, expected one of `kafka`, \
         `database`, `db_checkpoint`, `api`, `retention`, `listeners` (line 3)"
    );
    assert_eq!(
        error("[database]\nurl = \"sqlite://cp.db\"\n\"pool.size\" = 3\n"),
        "checkpoint.toml: database.\"pool.size\": unknown key `pool.size`, expected `url` or \
         `pool_size` (line 3)"
    );
    assert_eq!(
        error(&format!("{DATABASE}[db_checkpoint]\nmax_retry = 3\n")),
        "checkpoint.toml: db_checkpoint.max_retry: unknown key `max_retry`, expected \
         `max_retries` (line 4)"
    );
    assert_eq!(
        error(&with_listener("retries = 3\n")),
        "checkpoint.toml: listeners[0].retries: unknown key `retries`, expected one of \
         `handler`, `topic`, `group_id`, `max_concurrency`, `start_from_beginning`, \
         `batch_size`, `backoff`, `handler_timeout_ms`, `max_queued_bytes`, \
         `shutdown_timeout_ms`, `revoke_timeout_ms` (line 7)"
    );
    assert_eq!(
        error(&format!(
            "{}[[listeners]]\nhandler = \"h\"\ntopic = \"u\"\ngroup_id = \"g\"\n\
             backoff = {{ min_ms = 1, max = 5 }}\n",
            with_listener("")
        )),
        "checkpoint.toml: listeners[1].backoff.max: unknown key `max`, expected `min_ms` or \
         `max_ms` (line 11)"
    );
}

#[test]
fn missing_required_keys_are_named() {
    assert_eq!(
        error("[database]\npool_size = 3\n"),
        "checkpoint.toml: database.url: required key is missing (from the table at line 1)"
    );
    assert_eq!(
        error("[api]\nbind = \"127.0.0.1:1\"\n"),
        "checkpoint.toml: database: required table `[database]` is missing"
    );
    assert_eq!(
        error(""),
        "checkpoint.toml: database: required table `[database]` is missing"
    );
    for (i, field) in ["handler", "topic", "group_id"].into_iter().enumerate() {
        let mut listener: Vec<String> = ["handler = \"h\"", "topic = \"t2\"", "group_id = \"g\""]
            .map(str::to_owned)
            .to_vec();
        listener.remove(i);
        let text = format!(
            "{}[[listeners]]\n{}\n",
            with_listener(""),
            listener.join("\n")
        );
        assert_eq!(
            error(&text),
            format!(
                "checkpoint.toml: listeners[1].{field}: required key is missing (from the \
                 table at line 7)"
            )
        );
    }
}

#[test]
fn wrong_types_are_named_with_what_was_expected() {
    assert_eq!(
        error(&with_listener("max_concurrency = \"three\"\n")),
        "checkpoint.toml: listeners[0].max_concurrency: expected an integer, found string \
         \"three\" (line 7)"
    );
    assert_eq!(
        error(&with_listener("start_from_beginning = \"yes\"\n")),
        "checkpoint.toml: listeners[0].start_from_beginning: expected a boolean (true or \
         false), found string \"yes\" (line 7)"
    );
    assert_eq!(
        error("[database]\nurl = 5\n"),
        "checkpoint.toml: database.url: expected a string, found integer `5` (line 2)"
    );
    assert_eq!(
        error(&format!("{DATABASE}[db_checkpoint]\nmax_retries = 2.5\n")),
        "checkpoint.toml: db_checkpoint.max_retries: expected an integer, found floating \
         point `2.5` (line 4)"
    );
    assert_eq!(
        error(&format!("{DATABASE}[listeners]\nhandler = \"h\"\n")),
        "checkpoint.toml: listeners: expected an array, found a table (line 3)"
    );
    assert_eq!(
        error("[database]\nurl = 1979-05-27\n"),
        "checkpoint.toml: database.url: expected a string, found a date-time (line 2)"
    );
    assert_eq!(
        error(&format!("api = \"127.0.0.1:1\"\n{DATABASE}")),
        "checkpoint.toml: api: expected a table, found string \"127.0.0.1:1\" (line 1)"
    );
    assert_eq!(
        error(&with_listener("backoff = 5\n")),
        "checkpoint.toml: listeners[0].backoff: expected a table, found integer `5` (line 7)"
    );
    assert_eq!(
        error(&format!("{DATABASE}pool_size = 99999999999999999999\n")),
        "checkpoint.toml: database.pool_size: integer `99999999999999999999` is out of range \
         (line 3)"
    );
    assert_eq!(
        error(&format!("{DATABASE}[kafka]\n\"a\" = [1]\n")),
        "checkpoint.toml: kafka.a: must be a string, integer, float or boolean, not an array"
    );
    assert_eq!(
        error(&format!("{DATABASE}[kafka]\n\"x.y\" = {{ z = 1 }}\n")),
        "checkpoint.toml: kafka.\"x.y\": must be a string, integer, float or boolean, not a \
         table"
    );
}

#[test]
fn numbers_out_of_range_are_rejected() {
    assert_eq!(
        error("[database]\nurl = \"sqlite://x\"\npool_size = 0\n"),
        "checkpoint.toml: database.pool_size: must be between 1 and 1000, not 0"
    );
    assert_eq!(
        error("[database]\nurl = \"sqlite://x\"\npool_size = 1001\n"),
        "checkpoint.toml: database.pool_size: must be between 1 and 1000, not 1001"
    );
    assert_eq!(
        error(&with_listener("max_concurrency = 0\n")),
        "checkpoint.toml: listeners[0].max_concurrency: must be at least 1, not 0"
    );
    assert_eq!(
        error(&with_listener("batch_size = 0\n")),
        "checkpoint.toml: listeners[0].batch_size: must be at least 1, not 0"
    );
    assert_eq!(
        error(&with_listener("batch_size = -4\n")),
        "checkpoint.toml: listeners[0].batch_size: must be at least 1, not -4"
    );
    assert_eq!(
        error(&format!("{DATABASE}[db_checkpoint]\nmax_retries = -1\n")),
        "checkpoint.toml: db_checkpoint.max_retries: must be between 0 and 4294967295, not -1"
    );
    assert_eq!(
        error(&format!(
            "{DATABASE}[db_checkpoint]\nmax_retries = 4294967296\n"
        )),
        "checkpoint.toml: db_checkpoint.max_retries: must be between 0 and 4294967295, not \
         4294967296"
    );
}

#[test]
fn backoff_bounds_are_checked() {
    let err = parse(&with_listener(
        "backoff = { min_ms = 5000, max_ms = 100 }\n",
    ));
    let Err(ConfigError::Invalid { file, key, reason }) = err else {
        panic!("expected Invalid, got {err:?}")
    };
    assert_eq!(
        (file.as_str(), key.as_str(), reason.as_str()),
        (
            "checkpoint.toml",
            "listeners[0].backoff",
            "min_ms (5000) is greater than max_ms (100)"
        )
    );
    assert_eq!(
        error(&with_listener(
            "backoff = { min_ms = 5000, max_ms = 100 }\n"
        )),
        "checkpoint.toml: listeners[0].backoff: min_ms (5000) is greater than max_ms (100)"
    );
    assert_eq!(
        error(&with_listener("backoff = { max_ms = 100 }\n")),
        "checkpoint.toml: listeners[0].backoff: min_ms (1000) is greater than max_ms (100)"
    );
    assert_eq!(
        error(&with_listener("backoff = { min_ms = 0 }\n")),
        "checkpoint.toml: listeners[0].backoff.min_ms: must be at least 1, not 0"
    );
}

#[test]
fn topic_names_follow_kafka_rules() {
    let topic = |name: &str| {
        error(&with_listener("").replace("topic = \"t\"", &format!("topic = \"{name}\"")))
    };
    assert_eq!(
        topic("bad topic"),
        "checkpoint.toml: listeners[0].topic: `bad topic` is not a valid Kafka topic name: \
         only A-Z a-z 0-9 . _ - are allowed"
    );
    assert_eq!(
        topic(""),
        "checkpoint.toml: listeners[0].topic: `` is not a valid Kafka topic name: it is empty"
    );
    assert_eq!(
        topic(".."),
        "checkpoint.toml: listeners[0].topic: `..` is not a valid Kafka topic name: `.` and \
         `..` are reserved"
    );
    assert!(topic("ordrés").ends_with("only A-Z a-z 0-9 . _ - are allowed"));
    assert!(topic(&"a".repeat(250)).ends_with("it is longer than 249 characters"));
    let longest = "a".repeat(249);
    let config =
        parse(&with_listener("").replace("topic = \"t\"", &format!("topic = \"{longest}\"")));
    assert_eq!(
        config.expect("249 characters are fine").listeners[0].topic,
        longest
    );
}

#[test]
fn group_ids_and_handler_names_are_checked() {
    let group = |id: &str| {
        parse(&with_listener("").replace("group_id = \"g\"", &format!("group_id = \"{id}\"")))
    };
    assert_eq!(
        group("").expect_err("empty").to_string(),
        "checkpoint.toml: listeners[0].group_id: must not be empty"
    );
    assert_eq!(
        group(&"é".repeat(256)).expect_err("too long").to_string(),
        "checkpoint.toml: listeners[0].group_id: is 256 characters long; at most 255 are \
         allowed"
    );
    assert_eq!(
        group(&"é".repeat(255)).expect("fits").listeners[0]
            .group_id
            .chars()
            .count(),
        255
    );
    assert_eq!(
        error(&with_listener("").replace("handler = \"h\"", "handler = \"\"")),
        "checkpoint.toml: listeners[0].handler: must not be empty"
    );
}

#[test]
fn the_same_topic_and_group_twice_is_rejected() {
    let text = format!(
        "{}[[listeners]]\nhandler = \"other\"\ntopic = \"t\"\ngroup_id = \"g\"\n",
        with_listener("")
    );
    assert_eq!(
        error(&text),
        "checkpoint.toml: listeners[1]: topic `t` in group `g` is already consumed by \
         listeners[0]"
    );
    let other_group = text.replace("group_id = \"g\"\n[[", "group_id = \"g2\"\n[[");
    assert_eq!(
        parse(&other_group)
            .expect("different groups")
            .listeners
            .len(),
        2
    );
}

#[test]
fn bad_addresses_and_database_urls_are_rejected() {
    assert_eq!(
        error(&format!("{DATABASE}[api]\nbind = \"localhost\"\n")),
        "checkpoint.toml: api.bind: `localhost` is not a socket address like 127.0.0.1:9292 \
         or [::1]:9292"
    );
    assert!(
        error(&format!("{DATABASE}[api]\nbind = \"127.0.0.1:99999\"\n"))
            .starts_with("checkpoint.toml: api.bind: `127.0.0.1:99999` is not")
    );
    assert_eq!(
        error("[database]\nurl = \"oracle://db\"\n"),
        "checkpoint.toml: database.url: invalid database URL `oracle://db`: expected \
         sqlite://PATH, sqlite::memory:, postgres://… or mysql://…"
    );
    assert_eq!(
        error("[database]\nurl = \"${EMPTY}\"\n"),
        "checkpoint.toml: database.url: must not be empty"
    );
}

#[test]
fn syntax_errors_carry_line_and_column() {
    assert_eq!(
        error("[database\nurl = 1\n"),
        "checkpoint.toml: <syntax>: line 1, column 10: unclosed table, expected `]`"
    );
    let duplicate = error("[database]\nurl = \"sqlite://a\"\nurl = \"sqlite://b\"\n");
    assert!(
        duplicate.starts_with("checkpoint.toml: <syntax>: line 3, column 1: "),
        "{duplicate}"
    );
    assert!(duplicate.contains("duplicate key"), "{duplicate}");
}

#[test]
fn unregistered_handlers_are_named_with_the_registered_ones() {
    let text = format!(
        "{}[[listeners]]\nhandler = \"orders\"\ntopic = \"t\"\ngroup_id = \"g2\"\n",
        with_listener("").replace("handler = \"h\"", "handler = \"payments\"")
    );
    let config = parse(&text).expect("valid");
    assert_eq!(
        config
            .check_handlers(["payments", "audit", "payments"])
            .expect_err("unknown")
            .to_string(),
        "checkpoint.toml: listeners[1].handler: no handler named `orders` is registered \
         (registered: `audit`, `payments`)"
    );
    assert_eq!(
        config.check_handlers([]).expect_err("none").to_string(),
        "checkpoint.toml: listeners[0].handler: no handler named `payments` is registered \
         (no handlers are registered)"
    );
    assert!(config.check_handlers(["orders", "payments"]).is_ok());
    assert!(parse(DATABASE).expect("valid").check_handlers([]).is_ok());
}

#[test]
fn load_reads_a_file_and_names_a_missing_one() {
    let err = Config::load("definitely/missing/checkpoint.toml").expect_err("missing");
    let ConfigError::Read { path, source } = &err else {
        panic!("expected Read, got {err:?}")
    };
    assert_eq!(path, "definitely/missing/checkpoint.toml");
    assert_eq!(source.kind(), io::ErrorKind::NotFound);
    assert!(
        err.to_string().starts_with(
            "definitely/missing/checkpoint.toml: cannot read the configuration file: "
        ),
        "{err}"
    );
    assert!(std::error::Error::source(&err).is_some());

    let path = std::env::temp_dir().join(format!(
        "checkpoint-config-test-{}.toml",
        std::process::id()
    ));
    std::fs::write(
        &path,
        "[database]\nurl = \"sqlite://loaded.db\"\npool_size = 2\n",
    )
    .expect("write");
    let loaded = Config::load(&path);
    std::fs::remove_file(&path).expect("remove");
    let config = loaded.expect("valid");
    assert_eq!(
        (config.database.url.as_str(), config.database.pool_size),
        ("sqlite://loaded.db", 2)
    );
    assert_eq!(config.source, path.display().to_string());
}

#[test]
fn parse_names_the_source_and_reads_the_process_environment() {
    let err = Config::parse("[database]\nurl = 1\n", "<string>").expect_err("invalid");
    assert!(
        err.to_string().starts_with("<string>: database.url: "),
        "{err}"
    );
    // PATH is set in any process environment that runs tests.
    let config = Config::parse(
        "[database]\nurl = \"sqlite://x.db\"\n[kafka]\npath = \"${PATH}\"\n",
        "<string>",
    )
    .expect("valid");
    assert_eq!(
        config.kafka["path"],
        std::env::var("PATH").expect("PATH is set")
    );
    assert_eq!(config.source, "<string>");
}

#[test]
fn debug_output_hides_secrets() {
    let config = parse(
        "[database]\nurl = \"${DATABASE_URL}\"\n[api]\ntoken = \"s3cret\"\n[kafka]\n\
         \"sasl.username\" = \"alice\"\n\"sasl.password\" = \"kafka-s3cret\"\n\
         \"ssl.key.password\" = \"key-s3cret\"\n",
    )
    .expect("valid");
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("secret") && !debug.contains("s3cret"),
        "{debug}"
    );
    assert!(
        debug.contains("postgres://app:***@127.0.0.1:5432/app"),
        "{debug}"
    );
    assert!(debug.contains("token: Some(\"***\")"), "{debug}");
    assert!(debug.contains("\"sasl.password\": \"***\""), "{debug}");
    assert!(debug.contains("\"sasl.username\": \"alice\""), "{debug}");
}
