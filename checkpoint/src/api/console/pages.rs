//! The console's pages, as maud templates: every interpolated value is escaped.

use axum::http::StatusCode;
use base64::Engine as _;
use chrono::NaiveDateTime;
use maud::{DOCTYPE, Markup, html};

use super::super::ApiState;
use super::super::bodies::ListenerBody;
use crate::store::{Event, Failure, FailureMetadata, ListQuery, StoreResult};

/// Failures the overview lists.
const NEWEST_FAILURES: i64 = 5;

/// What the overview shows and refreshes.
pub(super) struct Live {
    listeners: Vec<ListenerBody>,
    failures: Vec<Failure>,
    failure_count: i64,
}

impl Live {
    pub(super) async fn load(state: &ApiState) -> StoreResult<Self> {
        let query = ListQuery {
            limit: NEWEST_FAILURES,
            ..ListQuery::default()
        };
        Ok(Self {
            listeners: super::listeners::listeners(state),
            failures: state.store.list_failures(&query).await?,
            failure_count: state.store.count_failures(&ListQuery::default()).await?,
        })
    }
}

fn time(t: Option<NaiveDateTime>) -> String {
    t.map_or_else(
        || "—".to_owned(),
        |t| t.and_utc().format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string(),
    )
}

fn opt(value: Option<&str>) -> &str {
    value.unwrap_or("—")
}

/// The page frame: navigation, the token bar, and `body`.
pub(super) fn layout(state: &ApiState, title: &str, active: &str, body: Markup) -> Markup {
    let token_required = state.token.is_some();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · checkpoint" }
                link rel="stylesheet" href="/ui/assets/console.css";
                script src="/ui/assets/console.js" defer {}
            }
            body data-token-required=(token_required) {
                header {
                    nav aria-label="console" {
                        a.brand href="/ui" { "checkpoint" }
                        @for (href, name) in [("/ui", "Overview"), ("/ui/events", "Events"), ("/ui/failures", "Failures"), ("/ui/consumers", "Consumers")] {
                            @if name == active {
                                a href=(href) aria-current="page" { (name) }
                            } @else {
                                a href=(href) { (name) }
                            }
                        }
                    }
                    div #token-bar {
                        @if token_required {
                            form #token-form {
                                label for="token-input" { "API token" }
                                input #token-input type="password" autocomplete="off" placeholder="bearer token";
                                button type="submit" { "Use token" }
                                button #token-forget type="button" { "Forget" }
                            }
                            p #token-status role="status" { "Retry, delete, pause and resume need the API token: enter it once for this tab." }
                        } @else {
                            p #token-status role="status" { "No API token is configured: anyone who can reach this address may retry, delete, pause and resume." }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// `/ui`.
pub(super) fn overview(state: &ApiState, live_data: &Live) -> Markup {
    layout(
        state,
        "Overview",
        "Overview",
        html! {
            @if state.listeners.is_empty() {
                p.note #standalone {
                    "No listener runs in this process (the standalone API, `checkpoint api`): \
                     this page shows what the database knows."
                }
            }
            div #live data-refresh="/ui/live" { (live(live_data)) }
        },
    )
}

/// The overview's refreshed part.
pub(super) fn live(data: &Live) -> Markup {
    html! {
        @if !data.listeners.is_empty() {
            section aria-labelledby="listeners-title" {
                h2 #listeners-title { "Listeners" }
                (super::listeners::cards(&data.listeners))
            }
        }
        section aria-labelledby="failures-title" {
            h2 #failures-title { "Newest failures (" (data.failure_count) " in all)" }
            @if data.failures.is_empty() {
                p { "No failures." }
            } @else {
                (failure_table(&data.failures))
            }
        }
    }
}

/// The filter form of the events and failures lists.
fn filters(action: &str, query: &ListQuery) -> Markup {
    let field = |name: &str, value: &Option<String>| {
        html! {
            label {
                span { (name) }
                input type="text" name=(name) value=(value.as_deref().unwrap_or(""));
            }
        }
    };
    let instant = |name: &str, label: &str, value: Option<NaiveDateTime>| {
        let value = value.map(|t| t.format("%Y-%m-%dT%H:%M").to_string());
        html! {
            label {
                span { (label) }
                input type="datetime-local" name=(name) value=(value.unwrap_or_default());
            }
        }
    };
    html! {
        form.filters method="get" action=(action) role="search" {
            (field("topic", &query.topic))
            (field("group_id", &query.group_id))
            (field("entity_id", &query.entity_id))
            (field("event_type", &query.event_type))
            (field("checksum", &query.checksum))
            (instant("created_from", "created from (UTC)", query.created_from))
            (instant("created_until", "created before (UTC)", query.created_until))
            button type="submit" { "Filter" }
            a href=(action) { "Clear" }
        }
    }
}

/// The query string of `query`'s filters with this `limit` and `offset`.
fn query_string(query: &ListQuery, limit: i64, offset: i64) -> String {
    {
        let mut pairs = vec![
            ("limit".to_owned(), limit.to_string()),
            ("offset".to_owned(), offset.to_string()),
        ];
        for (name, value) in [
            ("topic", &query.topic),
            ("group_id", &query.group_id),
            ("entity_id", &query.entity_id),
            ("event_type", &query.event_type),
            ("checksum", &query.checksum),
        ] {
            if let Some(value) = value {
                pairs.push((name.to_owned(), value.clone()));
            }
        }
        for (name, value) in [
            ("created_from", query.created_from),
            ("created_until", query.created_until),
        ] {
            if let Some(value) = value {
                let rfc3339 = value
                    .and_utc()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                pairs.push((name.to_owned(), rfc3339));
            }
        }
        let encoded: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        encoded.join("&")
    }
}

/// Previous and next page links, keeping the filters.
fn paging(base: &str, query: &ListQuery, shown: usize) -> Markup {
    let link = |offset: i64| format!("{base}?{}", query_string(query, query.limit, offset));
    let more = i64::try_from(shown).unwrap_or(i64::MAX) >= query.limit;
    html! {
        nav.paging aria-label="pages" {
            @if query.offset > 0 {
                a href=(link((query.offset - query.limit).max(0))) { "← newer" }
            }
            span { "rows " (query.offset + 1) "–" (query.offset + i64::try_from(shown).unwrap_or(0)) }
            @if more {
                a href=(link(query.offset + query.limit)) { "older →" }
            }
        }
    }
}

/// Percent-encodes a query component.
pub(super) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/ui/events`.
pub(super) fn events(state: &ApiState, query: &ListQuery, rows: &[Event]) -> Markup {
    layout(
        state,
        "Events",
        "Events",
        html! {
            (filters("/ui/events", query))
            @if rows.is_empty() {
                p { "No events match." }
            } @else {
                table #events {
                    thead { tr { th { "id" } th { "topic" } th { "group" } th { "partition" } th { "offset" } th { "entity_id" } th { "event_type" } th { "event_time" } th { "created_at" } } }
                    tbody {
                        @for e in rows {
                            tr data-id=(e.id) {
                                td { a href={"/ui/events/" (e.id)} { (e.id) } }
                                td { (e.topic) } td { (e.group_id) } td { (e.partition) } td { (e.offset) }
                                td.entity { (opt(e.entity_id.as_deref())) } td { (opt(e.event_type.as_deref())) }
                                td { (time(e.event_time)) } td { (time(e.created_at)) }
                            }
                        }
                    }
                }
            }
            (paging("/ui/events", query, rows.len()))
        },
    )
}

/// Key, time and extractor columns shared by an event and a failure.
#[allow(clippy::too_many_arguments)]
fn message_fields(
    topic: &str,
    group_id: &str,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    checksum: &str,
    entity_id: Option<&str>,
    event_type: Option<&str>,
    event_version: Option<&str>,
    event_time: Option<NaiveDateTime>,
    created_at: Option<NaiveDateTime>,
) -> Markup {
    let key = key.map(|k| match std::str::from_utf8(k) {
        Ok(text) => text.to_owned(),
        Err(_) => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(k)
        ),
    });
    html! {
        dl.fields {
            dt { "topic" } dd { (topic) }
            dt { "group_id" } dd { (group_id) }
            dt { "partition" } dd { (partition) }
            dt { "offset" } dd { (offset) }
            dt { "key" } dd { (opt(key.as_deref())) }
            dt { "checksum" } dd { code { (checksum) } }
            dt { "entity_id" } dd { (opt(entity_id)) }
            dt { "event_type" } dd { (opt(event_type)) }
            dt { "event_version" } dd { (opt(event_version)) }
            dt { "event_time" } dd { (time(event_time)) }
            dt { "created_at" } dd { (time(created_at)) }
        }
    }
}

/// The payload: pretty JSON when pretty-printing loses nothing, else the stored text, else a
/// hex dump and base64; and a link to the exact bytes.
fn payload(bytes: &[u8], download: &str) -> Markup {
    let shown = match std::str::from_utf8(bytes) {
        Ok(text) => match serde_json::from_str::<serde_json::Value>(text) {
            // Pretty-printed only when the value round-trips exactly (no big integer, no
            // duplicate key, no reordering).
            Ok(value) if serde_json::to_string(&value).ok().as_deref() == Some(text) => {
                let pretty =
                    serde_json::to_string_pretty(&value).unwrap_or_else(|_| text.to_owned());
                html! { p.kind { "JSON" } pre.payload { (pretty) } }
            }
            Ok(_) => html! { p.kind { "JSON, as stored" } pre.payload { (text) } },
            Err(_) => html! { p.kind { "text (UTF-8)" } pre.payload { (text) } },
        },
        Err(_) => html! {
            p.kind { "binary, " (bytes.len()) " bytes" }
            pre.payload.hex { (hex_dump(bytes)) }
            p { "base64" }
            pre.payload { (base64::engine::general_purpose::STANDARD.encode(bytes)) }
        },
    };
    html! {
        section aria-labelledby="payload-title" {
            h2 #payload-title { "Payload" }
            (shown)
            p { a href=(download) download { "Download the exact bytes" } }
        }
    }
}

/// Offset, 16 bytes in hex, and their printable ASCII, per line.
fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = chunk
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    char::from(b)
                } else {
                    '.'
                }
            })
            .collect();
        out.push_str(&format!("{:08x}  {:<47}  {ascii}\n", i * 16, hex.join(" ")));
    }
    out
}

/// `/ui/events/{id}`.
pub(super) fn event(state: &ApiState, e: &Event) -> Markup {
    layout(
        state,
        &format!("Event {}", e.id),
        "Events",
        html! {
            (message_fields(&e.topic, &e.group_id, e.partition, e.offset, e.key.as_deref(), &e.checksum,
                e.entity_id.as_deref(), e.event_type.as_deref(), e.event_version.as_deref(), e.event_time, e.created_at))
            (payload(&e.payload, &format!("/ui/events/{}/payload", e.id)))
        },
    )
}

fn failure_table(rows: &[Failure]) -> Markup {
    html! {
        table #failures {
            thead { tr { th { "id" } th { "topic" } th { "group" } th { "partition" } th { "offset" } th { "entity_id" } th { "error" } th { "attempts" } th { "created_at" } } }
            tbody {
                @for f in rows {
                    tr data-id=(f.id) {
                        td { a href={"/ui/failures/" (f.id)} { (f.id) } }
                        td { (f.topic) } td { (f.group_id) } td { (f.partition) } td { (f.offset) }
                        td.entity { (opt(f.entity_id.as_deref())) }
                        td { code { (f.error_class) } " " (f.error_message) }
                        td { (f.attempts) } td { (time(f.created_at)) }
                    }
                }
            }
        }
    }
}

/// `/ui/failures`.
pub(super) fn failures(
    state: &ApiState,
    query: &ListQuery,
    rows: &[Failure],
    total: i64,
) -> Markup {
    layout(
        state,
        "Failures",
        "Failures",
        html! {
            (filters("/ui/failures", query))
            p { (total) " failure(s) match." }
            @if total > 0 {
                (bulk_actions(query, total))
            }
            @if !rows.is_empty() { (failure_table(rows)) }
            (paging("/ui/failures", query, rows.len()))
        },
    )
}

/// Retry or delete every failure the filters match, after a confirmation that names how many;
/// one press takes at most `MAX_LIMIT` of them.
fn bulk_actions(query: &ListQuery, total: i64) -> Markup {
    let limit = super::super::MAX_LIMIT;
    let filters = query_string(query, limit, 0);
    let back = format!("/ui/failures?{}", query_string(query, query.limit, 0));
    let most = if total > limit {
        format!(" (the oldest {limit} of them with this press)")
    } else {
        String::new()
    };
    html! {
        div.actions.bulk {
            button.action #bulk-retry type="button" data-method="POST" data-url={"/v1/failures/bulk/retry?" (filters)}
                data-confirm={"Retry all " (total) " failures matching these filters" (most) "?"} disabled { "Retry all " (total) }
            button.action.danger #bulk-delete type="button" data-method="POST" data-url={"/v1/failures/bulk/delete?" (filters)}
                data-confirm={"Delete all " (total) " failures matching these filters" (most) "? Their messages will not be consumed again."}
                data-after=(back) disabled { "Delete all " (total) }
            p #answer role="status" aria-live="polite" {}
        }
    }
}

/// The buttons that change a failure; the script enables them once it has what they need.
fn actions(id: i64) -> Markup {
    html! {
        div.actions {
            button.action #retry type="button" data-method="POST" data-url={"/v1/failures/" (id) "/retry"} disabled { "Retry" }
            button.action.danger #delete type="button" data-method="DELETE" data-url={"/v1/failures/" (id)} data-confirm="Delete this failure? Its message will not be consumed again." data-after="/ui/failures" disabled { "Delete" }
            p #answer role="status" aria-live="polite" {}
        }
    }
}

/// `/ui/failures/{id}`.
pub(super) fn failure(state: &ApiState, f: &Failure) -> Markup {
    let metadata = FailureMetadata::parse(&f.metadata);
    let backtrace: Vec<String> = serde_json::from_str(&f.error_backtrace)
        .unwrap_or_else(|_| vec![f.error_backtrace.clone()]);
    html! {
        (layout(
            state,
            &format!("Failure {}", f.id),
            "Failures",
            html! {
                (actions(f.id))
                section aria-labelledby="error-title" {
                    h2 #error-title { "Error" }
                    dl.fields {
                        dt { "class" } dd { code #error-class { (f.error_class) } }
                        dt { "message" } dd #error-message { (f.error_message) }
                        dt { "attempts" } dd #attempts { (f.attempts) }
                    }
                    @if !backtrace.is_empty() {
                        h3 { "Source chain" }
                        ol.chain { @for line in &backtrace { li { (line) } } }
                    }
                }
                (message_fields(&f.topic, &f.group_id, f.partition, f.offset, f.key.as_deref(), &f.checksum,
                    f.entity_id.as_deref(), f.event_type.as_deref(), f.event_version.as_deref(), f.event_time, f.created_at))
                section aria-labelledby="metadata-title" {
                    h2 #metadata-title { "Metadata" }
                    @match &metadata {
                        Some(m) => {
                            dl.fields {
                                dt { "listener" } dd { (m.listener_id) }
                                dt { "handler" } dd { (m.handler) }
                                dt { "timestamp" } dd { (opt(m.timestamp.as_deref())) }
                                dt { "retries before" } dd { (m.retry_count) }
                                @for omitted in &m.omitted { dt { "omitted" } dd { (omitted) } }
                            }
                            h3 { "Headers" }
                            @if m.headers.is_empty() {
                                p { "None." }
                            } @else {
                                table {
                                    thead { tr { th { "key" } th { "value" } } }
                                    tbody {
                                        @for h in &m.headers {
                                            tr {
                                                td { (serde_json::to_string(&h.key).unwrap_or_default()) }
                                                td { (h.value.as_ref().map_or_else(|| "null".to_owned(), |v| serde_json::to_string(v).unwrap_or_default())) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        None => pre.payload { (f.metadata) }
                    }
                }
                (payload(&f.payload, &format!("/ui/failures/{}/payload", f.id)))
            },
        ))
    }
}

/// A page for an error.
pub(super) fn error(status: StatusCode, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (status.as_u16()) " · checkpoint" }
                link rel="stylesheet" href="/ui/assets/console.css";
            }
            body {
                main {
                    h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                    p #error { (message) }
                    p { a href="/ui" { "Back to the overview" } }
                }
            }
        }
    }
}
