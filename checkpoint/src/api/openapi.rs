//! The OpenAPI 3.0 document served at `/openapi.json`.

use axum::Json;
use serde_json::{Value, json};

use super::{DEFAULT_LIMIT, MAX_LIMIT};

pub(super) async fn serve_document() -> Json<Value> {
    Json(openapi_document())
}

/// The OpenAPI 3.0 document served at `/openapi.json`.
pub fn openapi_document() -> Value {
    let error = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        })
    };
    let ok = |description: &str, schema: Value| json!({"description": description, "content": {"application/json": {"schema": schema}}});
    let id = json!({
        "name": "id", "in": "path", "required": true,
        "schema": {"type": "integer", "format": "int64", "minimum": 0, "maximum": i64::MAX}
    });
    let filter = |name: &str| {
        json!({"name": name, "in": "query", "required": false,
               "schema": {"type": "string", "pattern": "^[^\\u0000]*$"},
               "description": format!("exact match on {name}; NUL is refused with 400")})
    };
    let paging = [
        json!({"name": "limit", "in": "query", "required": false,
               "schema": {"type": "integer", "minimum": 0, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}}),
        json!({"name": "offset", "in": "query", "required": false,
               "schema": {"type": "integer", "format": "int64", "minimum": 0,
                          "maximum": i64::MAX, "default": 0}}),
    ];
    let instant = |name: &str, description: &str| {
        json!({"name": name, "in": "query", "required": false,
               "schema": {"type": "string", "format": "date-time"},
               "description": description})
    };
    let filters = vec![
        filter("entity_id"),
        filter("topic"),
        filter("group_id"),
        filter("event_type"),
        filter("checksum"),
        instant(
            "created_from",
            "only rows created at or after this RFC 3339 time",
        ),
        instant(
            "created_until",
            "only rows created before this RFC 3339 time",
        ),
    ];
    let list_params: Vec<Value> = paging.iter().chain(&filters).cloned().collect();
    let schema_ref = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    let array_of = |name: &str| json!({"type": "array", "items": schema_ref(name)});
    let auth = json!([{"bearer": []}, {}]);
    let ack = ok("retried or deleted", schema_ref("Acknowledged"));
    let timestamp = json!({"type": "string", "format": "date-time", "nullable": true,
                           "example": "2026-11-27T12:30:45.123Z"});
    let event_properties = json!({
        "id": {"type": "integer", "format": "int64"},
        "topic": {"type": "string"},
        "group_id": {"type": "string"},
        "partition": {"type": "integer", "format": "int32"},
        "offset": {"type": "integer", "format": "int64"},
        "key": {"type": "string", "nullable": true},
        "key_encoding": {"type": "string", "enum": ["base64"],
                         "description": "present when the key is not UTF-8"},
        "entity_id": {"type": "string", "nullable": true},
        "event_time": timestamp,
        "event_type": {"type": "string", "nullable": true},
        "event_version": {"type": "string", "nullable": true},
        "checksum": {"type": "string"},
        "payload": {"description": "the stored JSON text embedded as it is (payload_encoding json), \
                                    or the UTF-8 text, or standard base64"},
        "payload_encoding": {"type": "string", "enum": ["json", "utf8", "base64"]},
        "created_at": timestamp,
    });
    let mut failure_properties = event_properties.clone();
    if let Value::Object(p) = &mut failure_properties {
        p.insert(
            "metadata".into(),
            json!({"type": "object", "description": "where the message came from and how it \
                   was handled: listener_id, handler, group_id, topic, partition, offset, key, \
                   headers, timestamp, retry_count, omitted"}),
        );
        p.insert("error_class".into(), json!({"type": "string"}));
        p.insert("error_message".into(), json!({"type": "string"}));
        p.insert(
            "error_backtrace".into(),
            json!({"type": "array", "items": {"type": "string"}}),
        );
        p.insert("attempts".into(), json!({"type": "integer"}));
    }
    let listener_partition = json!([
        {"name": "listener_id", "in": "path", "required": true, "schema": {"type": "string"},
         "description": "the listener's id, percent-encoded (`group%2Ftopic`)"},
        {"name": "partition", "in": "path", "required": true,
         "schema": {"type": "integer", "format": "int32", "minimum": 0, "maximum": i32::MAX}}
    ]);
    let control = |summary: &str, conflict: Option<&str>| {
        let mut responses = json!({
            "200": ok("the partition's state", schema_ref("PartitionControl")),
            "400": error("invalid partition"),
            "401": error("missing or invalid bearer token"),
            "404": error("listener not found")
        });
        if let (Some(text), Value::Object(map)) = (conflict, &mut responses) {
            map.insert("409".into(), error(text));
        }
        json!({"post": {"summary": summary, "parameters": listener_partition.clone(),
                        "security": auth.clone(), "responses": responses}})
    };
    let nullable_int = json!({"type": "integer", "format": "int64", "nullable": true});
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "checkpoint API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Events and failures checkpointed by checkpoint. Every error is \
                            {\"error\":true,\"message\":\"…\"}."
        },
        "paths": {
            "/health/live": {"get": {
                "summary": "liveness: the process answers",
                "responses": {"200": {"description": "alive",
                    "content": {"application/json": {"schema": {"type": "object",
                        "properties": {"live": {"type": "boolean"}}}}}}}
            }},
            "/health/ready": {"get": {
                "summary": "readiness: the database answers and every listener has joined its group",
                "responses": {
                    "200": {"description": "ready", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}},
                    "503": {"description": "not ready; the body says which check failed", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}}
                }
            }},
            "/ping": {"get": {
                "summary": "liveness",
                "responses": {"200": {"description": "PONG",
                    "content": {"text/plain": {"schema": {"type": "string", "example": "PONG"}}}}}
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "Prometheus text exposition",
                        "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "404": error("metrics are not enabled")
                }
            }},
            "/openapi.json": {"get": {
                "summary": "this document",
                "responses": {"200": ok("OpenAPI 3.0 document", json!({"type": "object"}))}
            }},
            "/v1/events": {"get": {
                "summary": "list events, newest event_time first (NULLs last)",
                "parameters": list_params,
                "responses": {
                    "200": ok("events", array_of("Event")),
                    "400": error("invalid parameter"),
                    "503": error("database unavailable")
                }
            }},
            "/v1/events/{id}": {"get": {
                "summary": "one event",
                "parameters": [id],
                "responses": {
                    "200": ok("the event", schema_ref("Event")),
                    "400": error("invalid id"),
                    "404": error("event not found"),
                    "503": error("database unavailable")
                }
            }},
            "/v1/events/{id}/retry": {"post": {
                "summary": "re-run a stored event through its registered handler",
                "parameters": [id],
                "security": auth,
                "responses": {
                    "200": ack,
                    "400": error("invalid id"),
                    "401": error("missing or invalid bearer token"),
                    "404": error("event not found"),
                    "409": error("no handler for the event's topic and group in this process"),
                    "422": error("the handler failed"),
                    "503": error("database unavailable")
                }
            }},
            "/v1/failures": {"get": {
                "summary": "list failures, newest event_time first (NULLs last)",
                "parameters": list_params,
                "responses": {
                    "200": ok("failures", array_of("Failure")),
                    "400": error("invalid parameter"),
                    "503": error("database unavailable")
                }
            }},
            "/v1/failures/count": {"get": {
                "summary": "number of failures matching the filters",
                "parameters": filters,
                "responses": {
                    "200": ok("the count", json!({"type": "object",
                        "properties": {"count": {"type": "integer"}}, "required": ["count"]})),
                    "400": error("invalid parameter"),
                    "503": error("database unavailable")
                }
            }},
            "/v1/failures/{id}": {
                "get": {
                    "summary": "one failure",
                    "parameters": [id],
                    "responses": {
                        "200": ok("the failure", schema_ref("Failure")),
                        "400": error("invalid id"),
                        "404": error("failure not found"),
                        "503": error("database unavailable")
                    }
                },
                "delete": {
                    "summary": "delete a failure",
                    "parameters": [id],
                    "security": auth,
                    "responses": {
                        "200": ok("deleted", schema_ref("Acknowledged")),
                        "400": error("invalid id"),
                        "401": error("missing or invalid bearer token"),
                        "404": error("failure not found"),
                        "503": error("database unavailable")
                    }
                }
            },
            "/v1/failures/bulk/retry": {"post": {
                "summary": "retry the failures matching the filters: the oldest `limit` of them \
                            (`offset` does not apply), oldest first, one after another; the \
                            answer tallies the outcomes; one bulk retry at a time",
                "parameters": list_params.clone(),
                "security": auth.clone(),
                "responses": {
                    "200": ok("what the retries did", schema_ref("BulkOutcome")),
                    "400": error("invalid parameter"),
                    "401": error("missing or invalid bearer token"),
                    "409": error("a bulk retry is already running in this process"),
                    "503": error("database unavailable")
                }
            }},
            "/v1/failures/bulk/delete": {"post": {
                "summary": "delete the failures matching the filters: the oldest `limit` of them \
                            (`offset` does not apply)",
                "parameters": list_params.clone(),
                "security": auth.clone(),
                "responses": {
                    "200": ok("what was deleted", schema_ref("BulkOutcome")),
                    "400": error("invalid parameter"),
                    "401": error("missing or invalid bearer token"),
                    "503": error("database unavailable")
                }
            }},
            "/v1/listeners": {"get": {
                "summary": "the listeners running in this process (none in standalone \
                            `checkpoint api`): settings, counters, partitions, throughput",
                "responses": {"200": ok("listeners", array_of("Listener"))}
            }},
            "/v1/listeners/{listener_id}/partitions/{partition}/pause": control(
                "pause an assigned partition of this instance: nothing more is fetched; what \
                 was received is still handled; it stays paused until resumed",
                Some("the partition is not assigned to this listener in this process")),
            "/v1/listeners/{listener_id}/partitions/{partition}/resume": control(
                "resume a partition paused by an operator", None),
            "/v1/failures/{id}/retry": {"post": {
                "summary": "re-run a failure through its registered handler: ack stores the \
                            event and deletes the failure; skip deletes it; an error keeps it \
                            with one more attempt",
                "parameters": [id],
                "security": auth,
                "responses": {
                    "200": ack,
                    "400": error("invalid id"),
                    "401": error("missing or invalid bearer token"),
                    "404": error("failure not found"),
                    "409": error("no handler for the failure's topic and group in this process"),
                    "422": error("the handler failed; the failure is kept"),
                    "503": error("database unavailable")
                }
            }}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "required on POST and DELETE when a token is configured"}},
            "schemas": {
                "Readiness": {"type": "object", "required": ["ready", "database", "listeners"], "properties": {
                    "ready": {"type": "boolean"},
                    "database": {"type": "object", "properties": {
                        "ok": {"type": "boolean"}, "error": {"type": "string"}}},
                    "listeners": {"type": "array", "items": {"type": "object", "properties": {
                        "listener_id": {"type": "string"},
                        "joined": {"type": "boolean"},
                        "assigned_partitions": {"type": "integer"},
                        "kafka_error": {"type": ["string", "null"],
                            "description": "the last error librdkafka reported since the last assignment (secrets masked)"}}}}
                }},
                "Error": {"type": "object", "required": ["error", "message"], "properties": {
                    "error": {"type": "boolean", "enum": [true]},
                    "message": {"type": "string"}
                }},
                "Acknowledged": {"type": "object", "required": ["acknowledged"], "properties": {
                    "acknowledged": {"type": "boolean"}
                }},
                "Event": {"type": "object", "properties": event_properties},
                "Listener": {"type": "object", "properties": {
                    "listener_id": {"type": "string"},
                    "settings": {"type": "object", "description": "handler, topic, group_id, \
                        max_concurrency, batch_size, start_from_beginning, default_max_retries, \
                        handler_timeout_ms, max_queued_bytes, shutdown_timeout_ms, \
                        revoke_timeout_ms, kafka (librdkafka properties, secrets masked)"},
                    "joined": {"type": "boolean"},
                    "kafka_error": {"type": "string", "nullable": true},
                    "counters": {"type": "object", "properties": {
                        "received": {"type": "integer"}, "acknowledged": {"type": "integer"},
                        "skipped": {"type": "integer"}, "duplicates": {"type": "integer"},
                        "failed": {"type": "integer"}, "retries": {"type": "integer"},
                        "queued_bytes": {"type": "integer"},
                        "assigned_partitions": {"type": "integer"}}},
                    "partitions": {"type": "array", "items": {"type": "object", "properties": {
                        "partition": {"type": "integer", "format": "int32"},
                        "queued_messages": {"type": "integer"},
                        "paused": {"type": "boolean"},
                        "paused_by_operator": {"type": "boolean"},
                        "backing_off": {"type": "boolean"},
                        "last_settled": timestamp,
                        "lag": nullable_int}}},
                    "paused_partitions": {"type": "array", "items": {"type": "integer",
                        "format": "int32"}, "description": "paused by an operator on this \
                        instance, assigned now or not"},
                    "throughput": {"type": "array", "description": "messages settled, every \
                        5 s over the last 10 min, oldest first", "items": {"type": "object",
                        "properties": {"at": {"type": "string", "format": "date-time"},
                                       "settled": {"type": "integer"}}}}
                }},
                "BulkOutcome": {"type": "object", "properties": {
                    "matched": {"type": "integer", "format": "int64",
                                "description": "failures matching the filters"},
                    "processed": {"type": "integer", "description": "failures taken on"},
                    "acknowledged": {"type": "integer"},
                    "settled_otherwise": {"type": "integer",
                                          "description": "skipped, or the event was already stored"},
                    "failed": {"type": "integer"},
                    "conflicts": {"type": "integer",
                                  "description": "no handler for the row's topic and group"},
                    "deleted": {"type": "integer"},
                    "vanished": {"type": "integer",
                                 "description": "gone before their turn"}
                }},
                "PartitionControl": {"type": "object", "properties": {
                    "listener_id": {"type": "string"},
                    "partition": {"type": "integer", "format": "int32"},
                    "paused_by_operator": {"type": "boolean"},
                    "changed": {"type": "boolean"}
                }},
                "Failure": {"type": "object", "properties": failure_properties}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use chrono::NaiveDateTime;

    use super::*;
    use crate::api::{EventBody, FailureBody};
    use crate::store::{Event, Failure};

    fn documented(schema: &str) -> BTreeSet<String> {
        openapi_document()["components"]["schemas"][schema]["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .cloned()
            .collect()
    }

    fn served(body: Value) -> BTreeSet<String> {
        body.as_object().expect("object").keys().cloned().collect()
    }

    /// Every field the typed bodies serialize is documented, and nothing else is; a binary key
    /// brings the optional `key_encoding`.
    #[test]
    fn schemas_match_the_typed_bodies_field_by_field() {
        let time = NaiveDateTime::default();
        let event = Event {
            id: 1,
            topic: "t".into(),
            group_id: "g".into(),
            partition: 0,
            offset: 0,
            key: Some(vec![0xff]),
            checksum: "c".into(),
            entity_id: None,
            event_time: Some(time),
            event_type: None,
            event_version: None,
            payload: b"{}".to_vec(),
            created_at: Some(time),
        };
        let failure = Failure {
            id: 1,
            created_at: Some(time),
            topic: "t".into(),
            group_id: "g".into(),
            partition: 0,
            offset: 0,
            key: Some(vec![0xff]),
            checksum: "c".into(),
            entity_id: None,
            event_time: None,
            event_type: None,
            event_version: None,
            payload: vec![0xff],
            metadata: "{}".into(),
            error_class: "e".into(),
            error_message: "m".into(),
            error_backtrace: "[]".into(),
            attempts: 1,
        };
        let event = serde_json::to_value(EventBody::from(&event)).expect("event");
        let failure = serde_json::to_value(FailureBody::from(&failure)).expect("failure");
        assert_eq!(served(event), documented("Event"));
        assert_eq!(served(failure), documented("Failure"));
    }

    /// The listener bodies too, down to a partition's and a sample's fields.
    #[test]
    fn listener_schemas_match_their_bodies() {
        use crate::handler::{BoxFuture, Context, Handler, HandlerError, Outcome};
        use crate::listener::{Listener, ListenerSpec};
        use crate::message::Message;
        struct Nothing;
        impl Handler for Nothing {
            fn name(&self) -> &str {
                "nothing"
            }
            fn consume<'a>(
                &'a self,
                _: &'a Message,
                _: &'a mut Context<'_>,
            ) -> BoxFuture<'a, Result<Outcome, HandlerError>> {
                Box::pin(async { Ok(Outcome::skip()) })
            }
        }
        let store = crate::store::Store::connect("sqlite::memory:").expect("store");
        let listener = Listener::new(
            ListenerSpec::new(std::sync::Arc::new(Nothing), "t", "g"),
            crate::engine::Engine::new(store),
        );
        let stats = listener.stats();
        stats.assigned_for_tests(&[0]);
        let probe = crate::api::ListenerProbe::of(&listener);
        let body = serde_json::to_value(crate::api::ListenerBody::from(&probe)).expect("body");
        let schema = &openapi_document()["components"]["schemas"]["Listener"]["properties"];
        assert_eq!(served(body.clone()), documented("Listener"));
        let keys = |value: &Value| served(value.clone());
        assert_eq!(
            keys(&body["counters"]),
            keys(&schema["counters"]["properties"])
        );
        assert_eq!(
            keys(&body["partitions"][0]),
            keys(&schema["partitions"]["items"]["properties"])
        );
        assert_eq!(
            keys(&body["throughput"][0]),
            keys(&schema["throughput"]["items"]["properties"])
        );
        let control = crate::api::PartitionControl {
            listener_id: "g/t".into(),
            partition: 0,
            paused_by_operator: true,
            changed: true,
        };
        let control = serde_json::to_value(control).expect("control");
        assert_eq!(served(control), documented("PartitionControl"));
        let bulk = serde_json::to_value(crate::api::BulkOutcome::default()).expect("bulk");
        assert_eq!(served(bulk), documented("BulkOutcome"));
    }
}
