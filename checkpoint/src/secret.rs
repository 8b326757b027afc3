//! Secrets among librdkafka properties: which ones hold one, and how they are kept out of
//! `Debug` output, error messages and logs.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::error::KafkaError;

/// What a masked value shows.
const MASK: &str = "***";

/// Parts of a librdkafka property name that mark its value as a secret: `sasl.password`,
/// `ssl.key.password`, `ssl.keystore.password`, `sasl.oauthbearer.client.secret`, a key's
/// passphrase, inline private keys (`ssl.key.pem`, `….private.key.pem`) and
/// `sasl.oauthbearer.config`, which may carry credentials.
const SECRET_MARKS: [&str; 5] = [
    "password",
    "secret",
    "passphrase",
    "key.pem",
    "sasl.oauthbearer.config",
];

/// Shortest value masked inside free text: a shorter "secret" would blank out ordinary
/// words of an error message and hide nothing.
const MIN_REDACTED_LEN: usize = 4;

/// True when the value of librdkafka property `key` is a secret. checkpoint masks such values
/// in `Debug` output, errors and logs.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_MARKS.iter().any(|mark| key.contains(mark))
}

/// A copy of `properties` with every secret value masked.
pub(crate) fn masked(properties: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    properties
        .iter()
        .map(|(key, value)| {
            let shown = if is_secret_property(key) {
                MASK.to_owned()
            } else {
                value.clone()
            };
            (key.clone(), shown)
        })
        .collect()
}

/// A property map shown with every secret value masked.
pub(crate) struct Masked<'a>(pub(crate) &'a BTreeMap<String, String>);

impl fmt::Debug for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(key, value)| {
                let shown = if is_secret_property(key) {
                    MASK
                } else {
                    value.as_str()
                };
                (key, shown)
            }))
            .finish()
    }
}

/// The secret values of one client's properties, to strip from anything said about it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Secrets(Vec<String>);

impl Secrets {
    /// The secrets among `properties`.
    pub(crate) fn of(properties: &BTreeMap<String, String>) -> Self {
        let mut values: Vec<String> = properties
            .iter()
            .filter(|(key, value)| is_secret_property(key) && value.len() >= MIN_REDACTED_LEN)
            .map(|(_, value)| value.clone())
            .collect();
        // Longest first, so a secret that contains another is masked whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        Self(values)
    }

    /// `text` with every secret value replaced by `***`.
    pub(crate) fn redact(&self, text: &str) -> String {
        self.0.iter().fold(text.to_owned(), |text, secret| {
            text.replace(secret.as_str(), MASK)
        })
    }

    /// `error` without secrets. A configuration error names the property and librdkafka's
    /// reason; its value is always masked, whatever the key: a misspelt `sasl.pasword` is
    /// not recognised as a secret by name, and librdkafka would echo it.
    pub(crate) fn redact_error(&self, error: KafkaError) -> KafkaError {
        match error {
            KafkaError::ClientConfig(code, description, key, _value) => {
                KafkaError::ClientConfig(code, self.redact(&description), key, MASK.to_owned())
            }
            KafkaError::ClientCreation(text) => KafkaError::ClientCreation(self.redact(&text)),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn properties() -> BTreeMap<String, String> {
        [
            ("bootstrap.servers", "broker:9093"),
            ("sasl.username", "alice"),
            ("sasl.password", "pa55-word"),
            ("ssl.key.password", "k3y-pass"),
            ("sasl.oauthbearer.client.secret", "client-s3cret"),
            ("ssl.key.pem", "-----BEGIN PRIVATE KEY-----abc"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn secret_properties_are_recognised_by_name() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "sasl.oauthbearer.client.secret",
            "ssl.key.pem",
            "sasl.oauthbearer.assertion.private.key.passphrase",
            "sasl.oauthbearer.config",
            "SASL.PASSWORD",
        ] {
            assert!(is_secret_property(key), "{key}");
        }
        for key in [
            "sasl.username",
            "ssl.ca.location",
            "ssl.certificate.location",
        ] {
            assert!(!is_secret_property(key), "{key}");
        }
    }

    #[test]
    fn debug_masks_every_secret_and_keeps_the_rest() {
        let shown = format!("{:?}", Masked(&properties()));
        for secret in [
            "pa55-word",
            "k3y-pass",
            "client-s3cret",
            "BEGIN PRIVATE KEY",
        ] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("\"sasl.username\": \"alice\""), "{shown}");
        assert!(shown.contains("\"sasl.password\": \"***\""), "{shown}");
    }

    #[test]
    fn errors_lose_secret_values() {
        let secrets = Secrets::of(&properties());
        let error = secrets.redact_error(KafkaError::ClientCreation(
            "auth failed for alice with pa55-word".to_owned(),
        ));
        assert_eq!(
            error.to_string(),
            "Client creation error: auth failed for alice with ***"
        );
        let error = secrets.redact_error(KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN,
            "No such configuration property: \"sasl.pasword\"".to_owned(),
            "sasl.pasword".to_owned(),
            "typo-s3cret".to_owned(),
        ));
        assert!(!error.to_string().contains("typo-s3cret"), "{error}");
        assert!(error.to_string().contains("sasl.pasword"), "{error}");
    }
}
