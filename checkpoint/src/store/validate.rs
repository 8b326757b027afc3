//! What every backend can hold: the limits a row is checked against before it is written, so
//! that no backend truncates a value or refuses it mid-transaction.

use super::models::{NewEvent, NewFailure};
use super::{StoreError, StoreResult};

/// Longest value of the indexed text columns (topic, group_id, checksum, entity_id,
/// event_type, event_version) on every backend.
pub const MAX_TEXT_LEN: usize = 255;

/// Checks that `value` fits a checkpoint text column: at most [`MAX_TEXT_LEN`] characters and
/// no NUL (PostgreSQL text cannot hold one).
pub fn check_text(field: &'static str, value: Option<&str>) -> StoreResult<()> {
    match value {
        Some(v) if v.chars().count() > MAX_TEXT_LEN => Err(StoreError::FieldTooLong {
            field,
            len: v.chars().count(),
            max: MAX_TEXT_LEN,
        }),
        Some(v) if v.contains('\0') => Err(StoreError::FieldInvalid {
            field,
            reason: "contains a NUL character",
        }),
        _ => Ok(()),
    }
}

/// Checks that `value` fits a checkpoint time column on every backend: the years 1000 to 9999
/// (MySQL's DATETIME range).
pub fn check_time(field: &'static str, value: Option<chrono::NaiveDateTime>) -> StoreResult<()> {
    use chrono::Datelike as _;
    match value {
        Some(t) if !(1000..=9999).contains(&t.year()) => Err(StoreError::FieldInvalid {
            field,
            reason: "is outside the years 1000 to 9999",
        }),
        _ => Ok(()),
    }
}

/// Free text as every backend can hold it: a NUL (which PostgreSQL refuses in text) becomes
/// U+FFFD. For error messages, which are told, not matched.
pub(super) fn storable_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Rejects values that a backend would otherwise truncate or refuse mid-transaction: the
/// text columns events and failures share, in column order.
fn validate_texts(
    topic: &str,
    group_id: &str,
    checksum: &str,
    entity_id: Option<&str>,
    event_type: Option<&str>,
    event_version: Option<&str>,
) -> StoreResult<()> {
    check_text("topic", Some(topic))?;
    check_text("group_id", Some(group_id))?;
    check_text("checksum", Some(checksum))?;
    check_text("entity_id", entity_id)?;
    check_text("event_type", event_type)?;
    check_text("event_version", event_version)
}

pub(crate) fn validate_event(r: &NewEvent<'_>) -> StoreResult<()> {
    check_time("event_time", r.event_time)?;
    validate_texts(
        r.topic,
        r.group_id,
        r.checksum,
        r.entity_id,
        r.event_type,
        r.event_version,
    )
}

pub(super) fn validate_failure(r: &NewFailure<'_>) -> StoreResult<()> {
    check_time("event_time", r.event_time)?;
    validate_texts(
        r.topic,
        r.group_id,
        r.checksum,
        r.entity_id,
        r.event_type,
        r.event_version,
    )
}
