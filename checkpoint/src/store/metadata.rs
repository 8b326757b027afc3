//! The `metadata` column of a failure row: where the message came from and how it was
//! handled. The engine writes it; operator retries read its headers back; the API serves it.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::message::Header;

/// Bytes in JSON: the text when they are UTF-8, else `{"base64": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JsonBytes {
    /// UTF-8 bytes, as text.
    Text(String),
    /// Other bytes, in standard base64.
    Binary {
        /// The bytes in standard base64 with padding.
        base64: String,
    },
}

impl JsonBytes {
    /// `bytes` as text when they are UTF-8, else as base64.
    pub fn of(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Self::Text(text.to_owned()),
            Err(_) => Self::Binary {
                base64: base64::engine::general_purpose::STANDARD.encode(bytes),
            },
        }
    }

    /// The bytes back; `None` when the base64 does not decode.
    pub fn into_bytes(self) -> Option<Vec<u8>> {
        match self {
            Self::Text(text) => Some(text.into_bytes()),
            Self::Binary { base64 } => base64::engine::general_purpose::STANDARD
                .decode(base64)
                .ok(),
        }
    }
}

/// One Kafka header of the failed message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataHeader {
    /// The header's key.
    pub key: JsonBytes,
    /// Its value; `None` for a null header.
    pub value: Option<JsonBytes>,
}

/// The `metadata` column of a failure row, as the engine writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FailureMetadata {
    /// The listener that consumed the message (`api/retry` for an operator's retry).
    pub listener_id: String,
    /// The handler's name.
    pub handler: String,
    /// The consumer group.
    pub group_id: String,
    /// The message's topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key.
    pub key: Option<JsonBytes>,
    /// Its headers, in order.
    #[serde(default)]
    pub headers: Vec<MetadataHeader>,
    /// Its Kafka timestamp, RFC 3339.
    pub timestamp: Option<String>,
    /// Retries before the attempt that failed for good.
    pub retry_count: u32,
    /// Extractor values the failure row could not hold, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub omitted: Vec<String>,
}

impl FailureMetadata {
    /// Parses a stored `metadata` column; `None` when it is not this shape (a row written by
    /// hand or by another tool).
    pub fn parse(stored: &str) -> Option<Self> {
        serde_json::from_str(stored).ok()
    }

    /// The column's text.
    pub fn to_json(&self) -> String {
        // A struct of strings, integers and vectors always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The message's headers as they were consumed; a header whose base64 does not decode is
    /// left out.
    pub fn headers(&self) -> Vec<Header> {
        self.headers
            .iter()
            .filter_map(|h| {
                Some(Header {
                    key: h.key.clone().into_bytes()?,
                    value: h.value.clone().and_then(JsonBytes::into_bytes),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_bytes_round_trip_through_json() {
        let binary = JsonBytes::of(&[0xff, 0x00]);
        assert!(matches!(binary, JsonBytes::Binary { .. }));
        let text = serde_json::to_string(&binary).expect("json");
        let back: JsonBytes = serde_json::from_str(&text).expect("parse");
        assert_eq!(back.into_bytes(), Some(vec![0xff, 0x00]));
        assert_eq!(JsonBytes::of(b"text").into_bytes(), Some(b"text".to_vec()));
    }

    #[test]
    fn metadata_round_trips_and_rejects_other_shapes() {
        let metadata = FailureMetadata {
            listener_id: "l".into(),
            handler: "h".into(),
            group_id: "g".into(),
            topic: "t".into(),
            partition: 1,
            offset: 2,
            key: Some(JsonBytes::of(b"k")),
            headers: vec![MetadataHeader {
                key: JsonBytes::of(b"trace"),
                value: Some(JsonBytes::of(&[0xff])),
            }],
            timestamp: None,
            retry_count: 3,
            omitted: Vec::new(),
        };
        let back = FailureMetadata::parse(&metadata.to_json()).expect("parses");
        assert_eq!(back, metadata);
        assert_eq!(
            back.headers(),
            vec![Header {
                key: b"trace".to_vec(),
                value: Some(vec![0xff]),
            }]
        );
        assert_eq!(FailureMetadata::parse(r#"{"handler":"x"}"#), None);
    }
}
