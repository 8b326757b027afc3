//! The README's "Connecting to managed services" snippets are real configuration: each parses,
//! its database URL is accepted, and librdkafka accepts its `[kafka]` table.

use checkpoint::config::Config;
use checkpoint::store::DatabaseUrl;
use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;

const README: &str = include_str!("../../README.md");

/// The ```toml blocks of the README section `heading`.
fn toml_blocks(heading: &str) -> Vec<&'static str> {
    let start = README
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README has no section `{heading}`"));
    let section = &README[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    section
        .split("```toml\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap_or_default())
        .collect()
}

/// Every `${VAR}` resolves to a placeholder value, as a deployment's environment would.
fn parse(snippet: &str) -> Config {
    Config::parse_with_env(snippet, "README.md", &|name| {
        Some(match name {
            "DATABASE_URL" => "postgres://app@db.internal:5432/app?sslrootcert=system".to_owned(),
            other => format!("value-of-{other}"),
        })
    })
    .unwrap_or_else(|e| panic!("{e}\n{snippet}"))
}

/// Real files for the snippets' `ssl.*.location` paths, which librdkafka reads when the client
/// is created: a self-signed certificate as CA and as client certificate, and its key.
fn certificate_files(dir: &std::path::Path) -> impl Fn(&str, &str) -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["client.internal".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).expect("write certificate");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");
    move |property: &str, value: &str| match property {
        "ssl.ca.location" | "ssl.certificate.location" => cert_file.display().to_string(),
        "ssl.key.location" => key_file.display().to_string(),
        _ => value.to_owned(),
    }
}

#[test]
fn every_managed_service_snippet_is_a_valid_configuration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let local = certificate_files(dir.path());
    let blocks = toml_blocks("Connecting to managed services");
    assert!(blocks.len() >= 4, "found {} snippets", blocks.len());
    let mut kafka_tables = 0;
    for snippet in blocks {
        let config = parse(snippet);
        DatabaseUrl::parse(&config.database.url).expect("database URL");
        if config.kafka.is_empty() {
            continue;
        }
        kafka_tables += 1;
        // librdkafka checks every property name and value when the client is created; no
        // connection is made yet.
        let mut client = ClientConfig::new();
        for (key, value) in &config.kafka {
            client.set(key, local(key, value));
        }
        client
            .set("group.id", "readme")
            .create::<BaseConsumer>()
            .unwrap_or_else(|e| panic!("librdkafka refused the snippet: {e}\n{snippet}"));
    }
    assert!(kafka_tables >= 3, "{kafka_tables} snippets with [kafka]");
}

#[test]
fn the_snippets_say_what_they_claim() {
    let blocks = toml_blocks("Connecting to managed services");
    let find = |needle: &str| {
        blocks
            .iter()
            .map(|s| parse(s))
            .find(|c| c.kafka.values().any(|v| v == needle) || c.database.url.contains(needle))
            .unwrap_or_else(|| panic!("no snippet with {needle}"))
    };
    let confluent = find("PLAIN");
    assert_eq!(confluent.kafka["security.protocol"], "SASL_SSL");
    assert_eq!(
        confluent.kafka["sasl.password"],
        "value-of-CONFLUENT_API_SECRET"
    );
    let msk = find("SCRAM-SHA-512");
    assert_eq!(msk.kafka["security.protocol"], "SASL_SSL");
    let rds = find("sslmode=verify-full&sslrootcert=/etc/ssl/rds/global-bundle.pem");
    assert!(rds.database.url.contains("rds.amazonaws.com"));
    assert!(!format!("{rds:?}").contains("value-of-DB_PASSWORD"));
    assert!(!format!("{confluent:?}").contains("value-of-CONFLUENT_API_SECRET"));
}
