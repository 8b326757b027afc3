//! The HTTP API on every backend, in-process through `oneshot`: listing, filters, ordering,
//! not-found and parameter errors, the bearer token, retries and their side effects, payloads
//! of any shape, metrics and the OpenAPI document; plus one request over a real socket.

use std::sync::Arc;

use crate::support::TestDb;
use crate::support::handlers::{Scripted, Step};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use checkpoint::api::{self, ApiState, Handlers, ListenerProbe};
use checkpoint::handler::Handler;
use checkpoint::store::{ListQuery, NewEvent, NewFailure};
use checkpoint::{Disposition, Engine, Message, Origin};
use chrono::{Duration, NaiveDateTime, Utc};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "s3cret";

/// Whole milliseconds, `secs` seconds ago.
fn at(secs: i64) -> NaiveDateTime {
    let now = Utc::now().naive_utc() - Duration::seconds(secs);
    now - Duration::nanoseconds(i64::from(
        now.and_utc().timestamp_subsec_nanos() % 1_000_000,
    ))
}

#[derive(Clone, Copy)]
struct Row<'a> {
    topic: &'a str,
    group_id: &'a str,
    checksum: &'a str,
    entity_id: Option<&'a str>,
    event_type: Option<&'a str>,
    event_time: Option<NaiveDateTime>,
    created_at: Option<NaiveDateTime>,
    payload: &'a [u8],
    key: Option<&'a [u8]>,
}

impl<'a> Row<'a> {
    fn new(checksum: &'a str) -> Self {
        Self {
            topic: "orders",
            group_id: "billing",
            checksum,
            entity_id: None,
            event_type: None,
            event_time: None,
            created_at: Some(at(0)),
            payload: br#"{"a":"b"}"#,
            key: None,
        }
    }

    fn event(&self) -> NewEvent<'a> {
        NewEvent {
            topic: self.topic,
            group_id: self.group_id,
            partition: 0,
            offset: 3,
            key: self.key,
            checksum: self.checksum,
            entity_id: self.entity_id,
            event_time: self.event_time,
            event_type: self.event_type,
            event_version: None,
            payload: self.payload,
            created_at: self.created_at,
        }
    }

    fn failure(&self) -> NewFailure<'a> {
        NewFailure {
            created_at: self.created_at,
            topic: self.topic,
            group_id: self.group_id,
            partition: 1,
            offset: 7,
            key: self.key,
            checksum: self.checksum,
            entity_id: self.entity_id,
            event_time: self.event_time,
            event_type: self.event_type,
            event_version: None,
            payload: self.payload,
            metadata: r#"{"handler":"scripted","retry_count":0}"#,
            error_class: "app::Boom",
            error_message: "boom",
            error_backtrace: r#"["boom","caused by: io"]"#,
            attempts: 1,
        }
    }
}

async fn insert_event(db: &TestDb, row: Row<'_>) -> i64 {
    assert!(db.store.insert_event(&row.event()).await.expect("insert"));
    let all = db
        .store
        .list_events(&ListQuery {
            limit: 1000,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    all.iter()
        .find(|e| e.checksum == row.checksum)
        .expect("inserted")
        .id
}

async fn insert_failure(db: &TestDb, row: Row<'_>) -> i64 {
    db.store
        .record_failure(&row.failure())
        .await
        .expect("record")
}

fn state(db: &TestDb) -> ApiState {
    ApiState::new(Engine::new(db.store.clone()))
}

fn plain(db: &TestDb) -> Router {
    api::router(state(db))
}

/// Sends one request; returns the status and the body (JSON when it parses, else a string).
pub(crate) async fn send(
    router: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Body::empty()).expect("request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}

async fn get(router: &Router, uri: &str) -> (StatusCode, Value) {
    send(router, "GET", uri, None).await
}

fn error_body(message: &str) -> Value {
    json!({"error": true, "message": message})
}

fn checksums(body: &Value) -> Vec<String> {
    body.as_array()
        .unwrap_or_else(|| panic!("not an array: {body}"))
        .iter()
        .map(|e| e["checksum"].as_str().expect("checksum").to_owned())
        .collect()
}

fn origin() -> Origin {
    Origin::new("billing").with_listener_id("listener-1")
}

/// A failure stored by the engine: `payload` on `orders`/`billing`, handler failing for good.
async fn engine_failure(db: &TestDb, offset: i64, payload: &str) -> i64 {
    let engine = Engine::new(db.store.clone());
    let handler = Scripted::new(Step::FailPermanent);
    let message = Message::new("orders", 0, offset, payload.to_owned()).with_key("k");
    match engine
        .process(&handler, &message, &origin(), 0)
        .await
        .expect("process")
    {
        Disposition::Failed { failure_id, .. } => failure_id,
        other => panic!("expected a failure, got {other:?}"),
    }
}

async fn ping_answers_pong(db: TestDb) {
    let router = plain(&db);
    let (status, body) = get(&router, "/ping").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, Value::String("PONG".into()));
    db.cleanup().await;
}

/// Readiness is the database and every listener's membership: a listener that has not
/// joined its group makes it 503 and is named; live answers regardless.
async fn readiness_names_what_is_not_ready(db: TestDb) {
    let (status, body) = get(&plain(&db), "/health/ready").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"ready": true, "database": {"ok": true}, "listeners": []})
    );
    let waiting = api::router(state(&db).listeners([ListenerProbe {
        listener_id: "billing/orders".to_owned(),
        stats: Arc::default(),
        control: Arc::default(),
        settings: None,
    }]));
    let (status, body) = get(&waiting, "/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        body["listeners"],
        json!([{"listener_id": "billing/orders", "joined": false, "assigned_partitions": 0,
            "kafka_error": null}])
    );
    assert_eq!(body["ready"], json!(false));
    let (status, body) = get(&waiting, "/health/live").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"live": true})));

    // The listener routes: the list, and what pause and resume refuse.
    let (status, body) = get(&waiting, "/v1/listeners").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body[0]["listener_id"], "billing/orders", "{body}");
    assert_eq!(body[0]["joined"], false, "{body}");
    assert_eq!(body[0]["partitions"], json!([]), "{body}");
    assert_eq!(body[0]["counters"]["received"], 0, "{body}");
    let pause = |path: &str| format!("/v1/listeners/{path}/pause");
    let (status, body) = send(
        &waiting,
        "POST",
        &pause("billing%2Forders/partitions/3"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        body,
        error_body("partition 3 is not assigned to listener `billing/orders` in this process")
    );
    let (status, body) = send(&waiting, "POST", &pause("nobody/partitions/3"), None).await;
    assert_eq!(
        (status, body),
        (StatusCode::NOT_FOUND, error_body("listener not found"))
    );
    for bad in ["-1", "x", "2147483648", "+1"] {
        let uri = pause(&format!("billing%2Forders/partitions/{bad}"));
        let (status, body) = send(&waiting, "POST", &uri, None).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::BAD_REQUEST,
                error_body("invalid partition: must be a non-negative 32-bit integer")
            ),
            "{bad}"
        );
    }
    let (status, body) = send(
        &waiting,
        "POST",
        "/v1/listeners/billing%2Forders/partitions/3/resume",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"listener_id": "billing/orders", "partition": 3, "paused_by_operator": false,
               "changed": false})
    );
    let (status, _) = get(
        &waiting,
        "/v1/listeners/billing%2Forders/partitions/3/pause",
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    db.cleanup().await;
}

async fn event_renders_every_field(db: TestDb) {
    let engine = Engine::new(db.store.clone());
    let handler = Scripted::new(Step::Ack);
    let message = Message::new("orders", 2, 41, r#"{"id":"o-1","n":[1,2]}"#).with_key("order-key");
    engine
        .process(&handler, &message, &origin(), 0)
        .await
        .expect("process");
    let router = plain(&db);
    let (status, list) = get(&router, "/v1/events").await;
    assert_eq!(status, StatusCode::OK);
    let id = list[0]["id"].as_i64().expect("id");
    let (status, event) = get(&router, &format!("/v1/events/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event, list[0]);
    assert_eq!(event["topic"], "orders");
    assert_eq!(event["group_id"], "billing");
    assert_eq!(event["partition"], 2);
    assert_eq!(event["offset"], 41);
    assert_eq!(event["key"], "order-key");
    assert!(event.get("key_encoding").is_none());
    assert_eq!(event["entity_id"], "entity-41");
    assert_eq!(event["event_time"], "2026-11-27T12:30:45.123Z");
    assert_eq!(event["event_type"], "created");
    assert_eq!(event["event_version"], "v1");
    assert_eq!(event["checksum"], message.checksum());
    assert_eq!(event["payload"], json!({"id": "o-1", "n": [1, 2]}));
    assert_eq!(event["payload_encoding"], "json");
    let created = event["created_at"].as_str().expect("created_at");
    assert!(
        created.len() == 24 && created.ends_with('Z') && created.as_bytes()[19] == b'.',
        "{created}"
    );
    db.cleanup().await;
}

async fn list_limit_offset_and_filters(db: TestDb) {
    for (i, checksum) in ["c0", "c1", "c2", "c3", "c4"].into_iter().enumerate() {
        let i = i64::try_from(i).expect("small");
        let mut row = Row::new(checksum);
        // c4 is the most recent.
        row.event_time = Some(at(100 - i));
        row.entity_id = Some(if i % 2 == 0 { "even" } else { "odd" });
        row.event_type = Some(if i < 2 { "old" } else { "new" });
        row.topic = if i == 0 { "other-topic" } else { "orders" };
        row.group_id = if i == 1 { "other-group" } else { "billing" };
        // c0 was written 500 s ago, c4 100 s ago.
        row.created_at = Some(at(500 - 100 * i));
        insert_event(&db, row).await;
        let mut f = Row::new(checksum);
        f.created_at = row.created_at;
        f.event_time = Some(at(100 - i));
        f.entity_id = row.entity_id;
        f.event_type = row.event_type;
        f.topic = row.topic;
        f.group_id = row.group_id;
        insert_failure(&db, f).await;
    }
    let router = plain(&db);
    let rfc3339 = |t: NaiveDateTime| t.and_utc().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let from = format!("?created_from={}", rfc3339(at(250)));
    let until = format!("?created_until={}", rfc3339(at(350)));
    let window = format!(
        "?created_from={}&created_until={}",
        rfc3339(at(450)),
        rfc3339(at(150))
    );
    for base in ["/v1/events", "/v1/failures"] {
        let cases: [(&str, &[&str]); 13] = [
            ("", &["c4", "c3", "c2", "c1", "c0"]),
            ("?limit=2", &["c4", "c3"]),
            ("?limit=2&offset=2", &["c2", "c1"]),
            ("?offset=4", &["c0"]),
            ("?limit=0", &[]),
            ("?entity_id=even", &["c4", "c2", "c0"]),
            ("?topic=other-topic", &["c0"]),
            ("?group_id=other-group", &["c1"]),
            ("?event_type=old&entity_id=odd", &["c1"]),
            ("?checksum=c2", &["c2"]),
            (&from, &["c4", "c3"]),
            (&until, &["c1", "c0"]),
            (&window, &["c3", "c2", "c1"]),
        ];
        for (query, expected) in cases {
            let (status, body) = get(&router, &format!("{base}{query}")).await;
            assert_eq!(status, StatusCode::OK, "{base}{query}: {body}");
            assert_eq!(checksums(&body), expected, "{base}{query}");
        }
        let long = format!("group_id={}", "x".repeat(300));
        for query in [
            "topic=nope",
            "topic=",
            "entity_id=%F0%9F%98%80",
            long.as_str(),
        ] {
            let (status, none) = get(&router, &format!("{base}?{query}")).await;
            assert_eq!(status, StatusCode::OK, "{base}?{query}: {none}");
            assert_eq!(none, json!([]), "{base}?{query}");
        }
    }
    for (query, count) in [
        ("", 5),
        ("?entity_id=odd", 2),
        ("?topic=orders", 4),
        ("?group_id=billing", 4),
        ("?event_type=new", 3),
        ("?event_type=new&entity_id=even", 2),
        ("?topic=nope", 0),
    ] {
        let (status, body) = get(&router, &format!("/v1/failures/count{query}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({ "count": count }), "count{query}");
    }
    db.cleanup().await;
}

async fn default_limit_is_twenty(db: TestDb) {
    let checksums: Vec<String> = (0..25).map(|i| format!("d{i:02}")).collect();
    let rows: Vec<NewEvent<'_>> = checksums.iter().map(|c| Row::new(c).event()).collect();
    db.store.insert_events(&rows).await.expect("insert");
    let router = plain(&db);
    let (_, body) = get(&router, "/v1/events").await;
    assert_eq!(body.as_array().expect("array").len(), 20);
    let (_, body) = get(&router, "/v1/events?limit=1000").await;
    assert_eq!(body.as_array().expect("array").len(), 25);
    db.cleanup().await;
}

async fn ordering_puts_nulls_last(db: TestDb) {
    let rows = [
        ("no-time-old", None, Some(at(50))),
        ("no-time-new", None, Some(at(10))),
        ("no-times", None, None),
        ("old", Some(at(1000)), Some(at(5))),
        ("new", Some(at(500)), Some(at(900))),
    ];
    for (checksum, event_time, created_at) in rows {
        let mut row = Row::new(checksum);
        row.event_time = event_time;
        row.created_at = created_at;
        insert_event(&db, row).await;
        let mut f = Row::new(checksum);
        f.event_time = event_time;
        f.created_at = created_at;
        insert_failure(&db, f).await;
    }
    let router = plain(&db);
    for base in ["/v1/events", "/v1/failures"] {
        let (_, body) = get(&router, base).await;
        assert_eq!(
            checksums(&body),
            ["new", "old", "no-time-new", "no-time-old", "no-times"],
            "{base}"
        );
        let no_times = &body[4];
        assert_eq!(no_times["event_time"], Value::Null);
        assert_eq!(no_times["created_at"], Value::Null);
    }
    db.cleanup().await;
}

async fn failure_renders_and_deletes(db: TestDb) {
    let id = engine_failure(&db, 9, r#"{"order":1}"#).await;
    let router = plain(&db);
    let (status, failure) = get(&router, &format!("/v1/failures/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{failure}");
    assert_eq!(failure["id"], id);
    assert_eq!(failure["payload"], json!({"order": 1}));
    assert_eq!(failure["payload_encoding"], "json");
    assert_eq!(failure["key"], "k");
    assert!(failure["metadata"].is_object(), "{failure}");
    assert_eq!(failure["metadata"]["group_id"], "billing");
    assert!(
        failure["error_class"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );
    assert_eq!(
        failure["error_message"],
        "downstream service refused the order"
    );
    assert!(failure["error_backtrace"].is_array());
    assert_eq!(failure["attempts"], 1);
    let (_, list) = get(&router, "/v1/failures").await;
    assert_eq!(list[0], failure);

    let (status, body) = send(&router, "DELETE", &format!("/v1/failures/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"acknowledged": true}));
    assert!(db.store.get_failure(id).await.expect("get").is_none());
    let (status, body) = send(&router, "DELETE", &format!("/v1/failures/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, error_body("failure not found"));
    db.cleanup().await;
}

async fn not_found_bodies(db: TestDb) {
    let router = plain(&db);
    let cases = [
        ("GET", "/v1/events/999999", "event not found"),
        ("POST", "/v1/events/999999/retry", "event not found"),
        ("GET", "/v1/failures/999999", "failure not found"),
        ("DELETE", "/v1/failures/999999", "failure not found"),
        ("POST", "/v1/failures/999999/retry", "failure not found"),
        ("GET", "/nope", "not found"),
        ("GET", "/v1", "not found"),
        ("GET", "/v1/events/1/nope", "not found"),
        ("POST", "/v1/nope", "not found"),
    ];
    for (method, uri, message) in cases {
        let (status, body) = send(&router, method, uri, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}: {body}");
        assert_eq!(body, error_body(message), "{method} {uri}");
    }
    db.cleanup().await;
}

/// A path that exists with a method it does not serve answers 405 with `Allow` and the JSON
/// error body, not 404.
async fn wrong_method_is_405_with_allow(db: TestDb) {
    let router = plain(&db);
    let cases = [
        ("PUT", "/v1/events", "GET,HEAD"),
        ("DELETE", "/v1/events/1", "GET,HEAD"),
        ("GET", "/v1/failures/1/retry", "POST"),
        ("POST", "/health/ready", "GET,HEAD"),
        ("PATCH", "/v1/failures/1", "GET,HEAD,DELETE"),
    ];
    for (method, uri, allow) in cases {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        let response = router.clone().oneshot(request).await.expect("infallible");
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}"
        );
        let allowed = response
            .headers()
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.replace(' ', ""));
        assert_eq!(allowed.as_deref(), Some(allow), "{method} {uri}");
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body: Value = serde_json::from_slice(&bytes).expect("json body");
        assert_eq!(body, error_body("method not allowed"), "{method} {uri}");
    }
    db.cleanup().await;
}

async fn bad_parameters_are_400(db: TestDb) {
    let router = plain(&db);
    for base in ["/v1/events", "/v1/failures", "/v1/failures/count"] {
        for (query, parameter) in [
            ("limit=-1", "limit"),
            ("limit=abc", "limit"),
            ("limit=1001", "limit"),
            ("limit=", "limit"),
            ("limit=2x", "limit"),
            ("limit=99999999999999999999999", "limit"),
            ("offset=-1", "offset"),
            ("offset=x", "offset"),
            ("offset=1.5", "offset"),
            ("topic=a%00b", "topic"),
            ("entity_id=%00", "entity_id"),
            ("checksum=%00", "checksum"),
            ("created_from=yesterday", "created_from"),
            ("created_until=2026-13-01T00:00:00Z", "created_until"),
        ] {
            let uri = format!("{base}?{query}");
            let (status, body) = get(&router, &uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
            assert_eq!(body["error"], true, "{uri}");
            let message = body["message"].as_str().expect("message");
            assert!(message.contains(parameter), "{uri}: {message}");
        }
    }
    for (method, uri) in [
        ("GET", "/v1/events/abc"),
        ("GET", "/v1/events/-1"),
        ("GET", "/v1/events/1.5"),
        ("POST", "/v1/events/abc/retry"),
        ("GET", "/v1/failures/abc"),
        ("GET", "/v1/failures/99999999999999999999999"),
        ("DELETE", "/v1/failures/abc"),
        ("POST", "/v1/failures/abc/retry"),
    ] {
        let (status, body) = send(&router, method, uri, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri}: {body}");
        let message = body["message"].as_str().expect("message");
        assert!(message.contains("id"), "{uri}: {message}");
    }
    let long = format!("/v1/events?topic={}", "x".repeat(5000));
    let (status, body) = get(&router, &long).await;
    assert_eq!(status, StatusCode::URI_TOO_LONG);
    assert_eq!(body["error"], true);
    db.cleanup().await;
}

async fn token_guards_mutating_routes(db: TestDb) {
    let a = engine_failure(&db, 1, "one").await;
    let b = engine_failure(&db, 2, "two").await;
    let c = engine_failure(&db, 3, "three").await;
    let guarded = api::router(state(&db).token(Some(TOKEN.into())));
    for token in [None, Some("wrong"), Some("")] {
        for (method, uri) in [
            ("DELETE", format!("/v1/failures/{a}")),
            ("POST", format!("/v1/failures/{a}/retry")),
            ("POST", "/v1/events/1/retry".to_owned()),
            ("POST", "/v1/failures/bulk/retry".to_owned()),
            ("POST", "/v1/failures/bulk/delete".to_owned()),
            ("POST", "/v1/listeners/g%2Ft/partitions/0/pause".to_owned()),
            ("POST", "/v1/listeners/g%2Ft/partitions/0/resume".to_owned()),
        ] {
            let (status, body) = send(&guarded, method, &uri, token).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri} {token:?}");
            assert_eq!(body, error_body("missing or invalid bearer token"));
        }
    }
    assert!(db.store.get_failure(a).await.expect("get").is_some());
    // Reads need no token.
    let (status, _) = get(&guarded, &format!("/v1/failures/{a}")).await;
    assert_eq!(status, StatusCode::OK);
    // The scheme is case-insensitive.
    let request = Request::builder()
        .method("DELETE")
        .uri(format!("/v1/failures/{a}"))
        .header(header::AUTHORIZATION, format!("bearer {TOKEN}"))
        .body(Body::empty())
        .expect("request");
    let response = guarded.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(db.store.get_failure(a).await.expect("get").is_none());
    let (status, body) = send(
        &guarded,
        "POST",
        &format!("/v1/failures/{c}/retry"),
        Some(TOKEN),
    )
    .await;
    // Authorized, but no handler is registered.
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // Without a configured token, nothing is required.
    let open = plain(&db);
    let (status, _) = send(&open, "DELETE", &format!("/v1/failures/{b}"), None).await;
    assert_eq!(status, StatusCode::OK);
    db.cleanup().await;
}

fn with_handler(db: &TestDb, handler: Arc<dyn Handler>) -> Router {
    api::router(state(db).handlers(Handlers::new().register("orders", "billing", handler)))
}

/// Bulk retry and delete take the failures the filters match, at most `limit` of them, and
/// tally what each did.
async fn bulk_actions_take_the_filtered_set(db: TestDb) {
    let first = engine_failure(&db, 1, r#"{"id":"o-1"}"#).await;
    engine_failure(&db, 2, r#"{"id":"o-2"}"#).await;
    engine_failure(&db, 3, r#"{"id":"o-3"}"#).await;
    let handler = Arc::new(Scripted::new(Step::Ack).script(&[Step::Fail]));
    let router = with_handler(&db, handler.clone());
    let checksum = db
        .store
        .get_failure(first)
        .await
        .expect("get")
        .expect("row")
        .checksum;
    let uri = format!("/v1/failures/bulk/retry?checksum={checksum}");
    let (status, body) = send(&router, "POST", &uri, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"matched": 1, "processed": 1, "acknowledged": 0, "settled_otherwise": 0,
               "failed": 1, "conflicts": 0, "deleted": 0, "vanished": 0})
    );
    let kept = db
        .store
        .get_failure(first)
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(kept.attempts, 2);

    let (status, body) = send(&router, "POST", "/v1/failures/bulk/retry?limit=2", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["matched"], &body["processed"], &body["acknowledged"]),
        (&json!(3), &json!(2), &json!(2)),
        "{body}"
    );
    assert_eq!(db.event_count().await, 2);
    assert_eq!(handler.calls(), 3);
    let (_, left) = get(&router, "/v1/failures/count").await;
    assert_eq!(left, json!({"count": 1}));
    // The oldest two were taken, in the order they failed: the newest is left.
    let (_, left) = get(&router, "/v1/failures").await;
    assert_eq!(left[0]["payload"], json!({"id": "o-3"}), "{left}");

    // Without a handler for their topic and group, failures are kept and counted as conflicts.
    let bare = plain(&db);
    let (status, body) = send(&bare, "POST", "/v1/failures/bulk/retry", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["conflicts"], 1, "{body}");

    let (status, body) = send(
        &router,
        "POST",
        "/v1/failures/bulk/delete?topic=other",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((&body["matched"], &body["deleted"]), (&json!(0), &json!(0)));
    let (status, body) = send(&router, "POST", "/v1/failures/bulk/delete", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["matched"], &body["processed"], &body["deleted"]),
        (&json!(1), &json!(1), &json!(1)),
        "{body}"
    );
    let (_, left) = get(&router, "/v1/failures/count").await;
    assert_eq!(left, json!({"count": 0}));
    db.cleanup().await;
}

async fn retry_failure_outcomes(db: TestDb) {
    // Error, then ack.
    let id = engine_failure(&db, 5, r#"{"id":"o-5"}"#).await;
    let handler = Arc::new(Scripted::new(Step::Ack).script(&[Step::Fail]));
    let router = with_handler(&db, handler.clone());
    let (status, body) = send(&router, "POST", &format!("/v1/failures/{id}/retry"), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body, error_body("downstream service refused the order"));
    let kept = db.store.get_failure(id).await.expect("get").expect("kept");
    assert_eq!(kept.attempts, 2);
    assert_eq!(db.event_count().await, 0);

    let (status, body) = send(&router, "POST", &format!("/v1/failures/{id}/retry"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"acknowledged": true}));
    assert!(db.store.get_failure(id).await.expect("get").is_none());
    assert_eq!(db.event_count().await, 1);
    assert_eq!(handler.calls(), 2);

    // Skip.
    let id = engine_failure(&db, 6, r#"{"id":"o-6"}"#).await;
    let router = with_handler(&db, Arc::new(Scripted::new(Step::Skip)));
    let (status, body) = send(&router, "POST", &format!("/v1/failures/{id}/retry"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"acknowledged": false}));
    assert!(db.store.get_failure(id).await.expect("get").is_none());
    assert_eq!(db.event_count().await, 1);

    // Already consumed: the same payload as the acked one.
    let payload: &[u8] = br#"{"id":"o-5"}"#;
    let checksum = checkpoint::checksum(payload);
    let mut row = Row::new(&checksum);
    row.payload = payload;
    let id = insert_failure(&db, row).await;
    let never = Arc::new(Scripted::new(Step::Ack));
    let router = with_handler(&db, never.clone());
    let (status, body) = send(&router, "POST", &format!("/v1/failures/{id}/retry"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"acknowledged": false}));
    assert_eq!(never.calls(), 0);
    assert!(db.store.get_failure(id).await.expect("get").is_none());
    db.cleanup().await;
}

async fn retry_event_reports_already_consumed(db: TestDb) {
    let id = insert_event(&db, Row::new(&checkpoint::checksum(br#"{"a":"b"}"#))).await;
    let handler = Arc::new(Scripted::new(Step::Ack));
    let router = with_handler(&db, handler.clone());
    let (status, body) = send(&router, "POST", &format!("/v1/events/{id}/retry"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"acknowledged": false}));
    assert_eq!(handler.calls(), 0);
    assert_eq!(db.event_count().await, 1);
    db.cleanup().await;
}

async fn app_handlers_serve_retries(db: TestDb) {
    let text = format!(
        r#"
[database]
url = "{}"

[[listeners]]
handler = "scripted"
topic = "orders"
group_id = "billing"
"#,
        db.url
    );
    let config = checkpoint::config::Config::parse(&text, "app.toml").expect("config");
    let app = checkpoint::App::builder()
        .handler(Scripted::new(Step::Ack))
        .config(config.clone())
        .build()
        .await
        .expect("app");
    let id = engine_failure(&db, 4, r#"{"id":"o-4"}"#).await;
    let router =
        api::router(ApiState::new(app.engine().clone()).handlers(Handlers::for_app(&app, &config)));
    let (status, body) = send(&router, "POST", &format!("/v1/failures/{id}/retry"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"acknowledged": true}));
    assert_eq!(db.event_count().await, 1);
    db.cleanup().await;
}

async fn retry_without_handler_is_409(db: TestDb) {
    let failure = engine_failure(&db, 1, "x").await;
    let event = insert_event(&db, Row::new("e")).await;
    // A handler for another group does not count.
    let router = api::router(state(&db).handlers(Handlers::new().register(
        "orders",
        "another-group",
        Arc::new(Scripted::new(Step::Ack)) as Arc<dyn Handler>,
    )));
    for uri in [
        format!("/v1/failures/{failure}/retry"),
        format!("/v1/events/{event}/retry"),
    ] {
        let (status, body) = send(&router, "POST", &uri, None).await;
        assert_eq!(status, StatusCode::CONFLICT, "{uri}: {body}");
        assert_eq!(
            body,
            error_body(
                "no handler for topic `orders` and group `billing` is registered in this process"
            )
        );
    }
    let kept = db
        .store
        .get_failure(failure)
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(kept.attempts, 1);
    db.cleanup().await;
}

async fn any_payload_renders(db: TestDb) {
    let binary: &[u8] = &[0xff, 0xfe, 0x00, 0x80];
    let cases: [(&str, &[u8], Value, &str); 6] = [
        ("text", b"not json at all", json!("not json at all"), "utf8"),
        ("binary", binary, json!("//4AgA=="), "base64"),
        ("empty", b"", json!(""), "utf8"),
        ("scalar", b"42", json!(42), "json"),
        ("array", b"[1,\"x\"]", json!([1, "x"]), "json"),
        // Valid as raw JSON text, but no client parser accepts the lone surrogate: text.
        (
            "lone-surrogate",
            br#""\ud800""#,
            json!(r#""\ud800""#),
            "utf8",
        ),
    ];
    let router = plain(&db);
    for (checksum, payload, expected, encoding) in cases {
        let mut row = Row::new(checksum);
        row.payload = payload;
        row.key = Some(binary);
        let event = insert_event(&db, row).await;
        let mut row = Row::new(checksum);
        row.payload = payload;
        row.key = Some(b"plain key");
        let failure = insert_failure(&db, row).await;
        let (status, body) = get(&router, &format!("/v1/events/{event}")).await;
        assert_eq!(status, StatusCode::OK, "{checksum}: {body}");
        assert_eq!(body["payload"], expected, "{checksum}");
        assert_eq!(body["payload_encoding"], encoding, "{checksum}");
        assert_eq!(body["key"], "//4AgA==");
        assert_eq!(body["key_encoding"], "base64");
        let (status, body) = get(&router, &format!("/v1/failures/{failure}")).await;
        assert_eq!(status, StatusCode::OK, "{checksum}: {body}");
        assert_eq!(body["payload"], expected, "{checksum}");
        assert_eq!(body["payload_encoding"], encoding, "{checksum}");
        assert_eq!(body["key"], "plain key");
        assert!(body.get("key_encoding").is_none());
    }
    for base in ["/v1/events", "/v1/failures"] {
        let (status, body) = get(&router, base).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body.as_array().expect("array").len(), 6);
    }
    db.cleanup().await;
}

/// Sends a GET and returns the raw body text, for checks the parsed `Value` would blur.
async fn get_text(router: &Router, uri: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .uri(uri)
        .body(Body::empty())
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// A JSON payload is embedded as the stored text, so big integers, `-0`, exponents, key order
/// and duplicate keys survive, and a client can check the bytes against their `checksum`.
async fn json_payloads_come_back_as_stored(db: TestDb) {
    let cases: [&str; 6] = [
        r#"{"n":123456789012345678901234567890}"#,
        "-0",
        "1e2",
        r#"{"b":1,"a":2}"#,
        r#"{"a":1,"a":2}"#,
        r#"[1.0,  "\u00e9",{"z" : null}]"#,
    ];
    let router = plain(&db);
    for (i, payload) in cases.into_iter().enumerate() {
        let checksum = checkpoint::checksum(payload.as_bytes());
        let mut row = Row::new(&checksum);
        row.payload = payload.as_bytes();
        let event = insert_event(&db, row).await;
        let failure = insert_failure(&db, row).await;
        for uri in [
            format!("/v1/events/{event}"),
            format!("/v1/failures/{failure}"),
        ] {
            let (status, text) = get_text(&router, &uri).await;
            assert_eq!(status, StatusCode::OK, "{uri}: {text}");
            let expected = format!(r#""payload":{payload},"payload_encoding":"json""#);
            assert!(
                text.contains(&expected),
                "case {i} {uri}: payload not as stored: {text}"
            );
        }
    }
    db.cleanup().await;
}

async fn metrics_show_checkpoint_counters(db: TestDb) {
    let handle = api::prometheus();
    let topic = format!("metrics-{}", db.store.backend());
    let engine = Engine::new(db.store.clone());
    let handler = Scripted::new(Step::Ack);
    engine
        .process(
            &handler,
            &Message::new(topic.clone(), 0, 1, "m"),
            &origin(),
            0,
        )
        .await
        .expect("process");
    let router = api::router(state(&db).metrics(handle));
    let (status, _) = get(&router, "/ping").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = get(&router, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().expect("text");
    for name in [
        "db_checkpoint_event_acknowledged_total",
        "db_checkpoint_around_consume_total",
        "db_checkpoint_event_already_exists_check_total",
        "db_checkpoint_event_action_total",
    ] {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with(name)
                    && l.contains(&format!("topic=\"{topic}\""))
                    && l.contains("group_id=\"billing\"")
            })
            .unwrap_or_else(|| panic!("no {name} for {topic} in:\n{text}"));
        assert!(line.ends_with(" 1"), "{line}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("checkpoint_api_requests_total")
                && l.contains("route=\"/ping\"")
                && l.contains("method=\"GET\"")
                && l.contains("status=\"200\"")),
        "{text}"
    );
    // Without a handle, /metrics is not served.
    let (status, body) = get(&plain(&db), "/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, error_body("not found"));
    db.cleanup().await;
}

async fn openapi_agrees_with_routes(db: TestDb) {
    let failure = engine_failure(&db, 1, "x").await;
    let event = insert_event(&db, Row::new("e")).await;
    let router = api::router(state(&db).token(Some(TOKEN.into())));
    let (status, doc) = get(&router, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc, api::openapi_document());
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.0"))
    );
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented: Vec<String> = Vec::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("path item") {
            documented.push(format!("{} {path}", method.to_uppercase()));
            let statuses = operation["responses"].as_object().expect("responses");
            let id = if path.starts_with("/v1/events") {
                event
            } else {
                failure
            };
            let mut concrete = path
                .replace("{id}", &id.to_string())
                .replace("{listener_id}", "billing%2Forders")
                .replace("{partition}", "0");
            if path.contains("/bulk/") {
                // Matches nothing: the rows the other routes need stay.
                concrete.push_str("?entity_id=no-such-entity");
            }
            let (status, body) =
                send(&router, &method.to_uppercase(), &concrete, Some(TOKEN)).await;
            assert!(
                statuses.contains_key(status.as_str()),
                "{method} {path} answered {status}, documented {:?}: {body}",
                statuses.keys().collect::<Vec<_>>()
            );
            if path.contains("{id}") {
                let bad = path.replace("{id}", "abc");
                let (status, _) = send(&router, &method.to_uppercase(), &bad, Some(TOKEN)).await;
                assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {bad}");
                assert!(statuses.contains_key("400"), "{method} {path} lacks 400");
            }
            if method != "get" {
                let (status, _) = send(&router, &method.to_uppercase(), &concrete, None).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
                assert!(statuses.contains_key("401"), "{method} {path} lacks 401");
            }
        }
    }
    documented.sort();
    let mut expected = vec![
        "GET /ping",
        "GET /health/live",
        "GET /health/ready",
        "GET /metrics",
        "GET /openapi.json",
        "GET /v1/events",
        "GET /v1/events/{id}",
        "POST /v1/events/{id}/retry",
        "GET /v1/failures",
        "GET /v1/failures/count",
        "GET /v1/failures/{id}",
        "DELETE /v1/failures/{id}",
        "POST /v1/failures/{id}/retry",
        "POST /v1/failures/bulk/retry",
        "POST /v1/failures/bulk/delete",
        "GET /v1/listeners",
        "POST /v1/listeners/{listener_id}/partitions/{partition}/pause",
        "POST /v1/listeners/{listener_id}/partitions/{partition}/resume",
    ];
    expected.sort();
    assert_eq!(documented, expected);
    db.cleanup().await;
}

on_every_backend!(
    ping_answers_pong,
    readiness_names_what_is_not_ready,
    event_renders_every_field,
    list_limit_offset_and_filters,
    default_limit_is_twenty,
    ordering_puts_nulls_last,
    failure_renders_and_deletes,
    not_found_bodies,
    wrong_method_is_405_with_allow,
    bad_parameters_are_400,
    token_guards_mutating_routes,
    retry_failure_outcomes,
    bulk_actions_take_the_filtered_set,
    retry_event_reports_already_consumed,
    retry_without_handler_is_409,
    app_handlers_serve_retries,
    any_payload_renders,
    json_payloads_come_back_as_stored,
    metrics_show_checkpoint_counters,
    openapi_agrees_with_routes,
);

#[tokio::test]
async fn unreachable_database_is_503() {
    let store = checkpoint::Store::connect("postgres://postgres@127.0.0.1:1/none").expect("store");
    let router = api::router(ApiState::new(Engine::new(store)));
    for uri in ["/v1/events", "/v1/failures/1", "/v1/failures/count"] {
        let (status, body) = get(&router, uri).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {body}");
        assert_eq!(body, error_body("database unavailable"));
    }
    let (status, body) = get(&router, "/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["database"]["ok"], json!(false), "{body}");
    assert!(body["database"]["error"].is_string(), "{body}");
    let (status, _) = get(&router, "/health/live").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn oversized_body_is_413() {
    let db = TestDb::sqlite().await;
    let router = plain(&db);
    let request = Request::builder()
        .method("DELETE")
        .uri("/v1/failures/1")
        .header(
            header::CONTENT_LENGTH,
            (api::MAX_BODY_BYTES + 1).to_string(),
        )
        .body(Body::from(vec![b'x'; api::MAX_BODY_BYTES + 1]))
        .expect("request");
    let response = router.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(body["error"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_over_a_real_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let db = TestDb::sqlite().await;
    let id = insert_event(&db, Row::new("socket")).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(listener, plain(&db), async move {
        let _ = stopped.await;
    }));

    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request =
        format!("GET /v1/events/{id} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let raw = String::from_utf8(raw).expect("utf-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let event: Value = serde_json::from_str(body).expect("json body");
    assert_eq!(event["id"], id);
    assert_eq!(event["checksum"], "socket");

    stop.send(()).expect("server running");
    server.await.expect("join").expect("serve");
    db.cleanup().await;
}

/// What the HTTP stack answers before the router, as the README lists it: a malformed request
/// line is 400 and a header block beyond hyper's buffer is 431, both with an empty body (not
/// the JSON error). A query string over the API's own limit is still the router's JSON 414.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_before_the_router_are_as_documented() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let db = TestDb::sqlite().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(listener, plain(&db), async move {
        let _ = stopped.await;
    }));
    let exchange = |request: Vec<u8>| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // The server may answer and close before it has read everything we send.
        let _ = stream.write_all(&request).await;
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
        (head.to_owned(), body.to_owned())
    };

    let (head, body) = exchange(b"NOT A REQUEST LINE\r\n\r\n".to_vec()).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(body, "", "{head}");

    let huge = format!(
        "GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let (head, body) = exchange(huge.into_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    assert_eq!(body, "", "{head}");

    let long_query = format!(
        "GET /v1/events?entity_id={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(api::MAX_QUERY_BYTES + 1)
    );
    let (head, body) = exchange(long_query.into_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 414"), "{head}");
    let body: Value = serde_json::from_str(&body).expect("the router's JSON error");
    assert_eq!(body["error"], true);

    stop.send(()).expect("server running");
    server.await.expect("join").expect("serve");
    db.cleanup().await;
}

/// A browser's mutating request from another site is refused (the console's CSRF guard), the
/// same request from the API's own origin or from a client that names no origin is not; every
/// answer carries the security headers, and the console's pages forbid inline script.
#[tokio::test]
async fn cross_site_mutations_are_refused_and_headers_are_sent() {
    let db = TestDb::sqlite().await;
    let router = plain(&db);
    let request = |origin: Option<&str>, site: Option<&str>| {
        let mut builder = Request::builder()
            .method("DELETE")
            .uri("/v1/failures/424242")
            .header(header::HOST, "127.0.0.1:9292");
        if let Some(origin) = origin {
            builder = builder.header(header::ORIGIN, origin);
        }
        if let Some(site) = site {
            builder = builder.header("sec-fetch-site", site);
        }
        builder.body(Body::empty()).expect("request")
    };
    for (origin, site, expected) in [
        (Some("http://evil.example"), None, StatusCode::FORBIDDEN),
        (None, Some("cross-site"), StatusCode::FORBIDDEN),
        (
            Some("http://127.0.0.1:9292"),
            Some("same-origin"),
            StatusCode::NOT_FOUND,
        ),
        (None, None, StatusCode::NOT_FOUND),
    ] {
        let response = router
            .clone()
            .oneshot(request(origin, site))
            .await
            .expect("infallible");
        assert_eq!(response.status(), expected, "{origin:?} {site:?}");
    }
    let response = router
        .clone()
        .oneshot(
            Request::builder()
                .uri("/ui")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    let csp = headers
        .get(header::CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(
        headers
            .get(header::X_CONTENT_TYPE_OPTIONS)
            .map(|v| v.as_bytes()),
        Some(&b"nosniff"[..])
    );
    let (status, body) = get(&router, "/ui/events").await;
    assert_eq!(status, StatusCode::OK);
    let page = body.as_str().unwrap_or_default();
    assert!(
        page.contains("<form") && !page.contains("<script>") && !page.contains(" style="),
        "no inline script or style"
    );
    db.cleanup().await;
}
