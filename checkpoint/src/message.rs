//! A consumed Kafka message, its checksum, and the metadata of one delivery attempt.

use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use serde::Serialize;

/// One Kafka header, byte for byte (Kafka does not require names to be UTF-8); a header may
/// have no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name bytes.
    pub key: Vec<u8>,
    /// Header value bytes, if any.
    pub value: Option<Vec<u8>>,
}

impl Header {
    /// The name as text, when it is UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.key).ok()
    }
}

/// A Kafka message as the engine sees it: where it came from and its exact bytes.
///
/// A tombstone (null payload) is an empty `payload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Message key, if any.
    pub key: Option<Vec<u8>>,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Headers, in order.
    pub headers: Vec<Header>,
    /// Producer or broker timestamp, if the message carries one.
    pub timestamp: Option<DateTime<Utc>>,
}

impl Message {
    /// A message with no key, headers or timestamp.
    pub fn new(
        topic: impl Into<String>,
        partition: i32,
        offset: i64,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            topic: topic.into(),
            partition,
            offset,
            key: None,
            payload: payload.into(),
            headers: Vec::new(),
            timestamp: None,
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Appends a header.
    pub fn with_header(mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header {
            key: key.into(),
            value: Some(value.into()),
        });
        self
    }

    /// Sets the timestamp.
    pub fn with_timestamp(mut self, timestamp: DateTime<Utc>) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// Lowercase hex MD5 of the payload bytes.
    pub fn checksum(&self) -> String {
        checksum(&self.payload)
    }
}

/// Lowercase hex MD5 of `bytes`: the default duplicate key of a message.
pub fn checksum(bytes: &[u8]) -> String {
    let digest = Md5::digest(bytes);
    let mut out = String::with_capacity(32);
    for byte in digest {
        out.push(HEX[usize::from(byte >> 4)]);
        out.push(HEX[usize::from(byte & 0x0f)]);
    }
    out
}

const HEX: [char; 16] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c', 'd', 'e', 'f',
];

/// Who is consuming a message: the consumer group and the listener within the process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// Kafka consumer group.
    pub group_id: String,
    /// Listener identifier (unique per listener in a process).
    pub listener_id: String,
}

impl Origin {
    /// An origin for `group_id`, with the listener id set to the group id.
    pub fn new(group_id: impl Into<String>) -> Self {
        let group_id = group_id.into();
        Self {
            listener_id: group_id.clone(),
            group_id,
        }
    }

    /// Sets the listener id.
    pub fn with_listener_id(mut self, listener_id: impl Into<String>) -> Self {
        self.listener_id = listener_id.into();
        self
    }
}

/// What a handler knows about the current delivery attempt of a message; also the payload of
/// every notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metadata {
    /// Listener identifier.
    pub listener_id: String,
    /// Consumer group.
    pub group_id: String,
    /// Registered name of the handler.
    pub handler: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key, as text when it is UTF-8 (lossy otherwise).
    pub key: Option<String>,
    /// Attempts made before this one (0 on the first delivery).
    pub retry_count: u32,
    /// The duplicate key of the message (checksum or `dedup_key`).
    pub checksum: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_lowercase_hex_md5_of_the_exact_bytes() {
        assert_eq!(checksum(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(
            checksum(br#"{"a":"b"}"#),
            "92eff9dda44cb8003ee13990782580ff"
        );
        assert_eq!(checksum(b"data"), "8d777f385d3dfec8815d20f7496026dc");
        assert_eq!(
            checksum(&[0xff, 0x00, 0xfe]),
            "13a18f27d9e54107c1d22c7d67f55018"
        );
    }
}
