//! The route handlers: each reads through the store or the engine and answers a typed body.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::bodies::{
    Acknowledged, BulkOutcome, Check, Count, EventBody, FailureBody, ListenerBody,
    ListenerReadiness, Liveness, PartitionControl, Readiness,
};
use super::error::{ApiError, ApiResult};
use super::extract::{Id, ListenerPartition, Listing};
use crate::engine::RetryOutcome;
use crate::handler::Handler;
use crate::store::{Failure, ListQuery};

pub(super) async fn not_found() -> ApiError {
    ApiError::NotFound("not found")
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

pub(super) async fn ping() -> &'static str {
    "PONG"
}

/// How long `/health/ready` waits for the database.
const READY_DB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) async fn live() -> Json<Liveness> {
    Json(Liveness { live: true })
}

pub(super) async fn ready(State(state): State<ApiState>) -> (StatusCode, Json<Readiness>) {
    // In a task of its own, which runs to its end even when the probe stops waiting: a query
    // dropped mid-flight would hand a broken connection back to the pool.
    let store = state.store.clone();
    let ping = tokio::spawn(async move { store.ping().await });
    let database = match tokio::time::timeout(READY_DB_TIMEOUT, ping).await {
        Ok(Ok(Ok(()))) => Check {
            ok: true,
            error: None,
        },
        Ok(Ok(Err(error))) => Check {
            ok: false,
            error: Some(error.to_string()),
        },
        Ok(Err(join)) => Check {
            ok: false,
            error: Some(format!("the check ended abnormally: {join}")),
        },
        Err(_) => Check {
            ok: false,
            error: Some(format!("no answer within {READY_DB_TIMEOUT:?}")),
        },
    };
    let listeners: Vec<ListenerReadiness> = state
        .listeners
        .iter()
        .map(|probe| {
            let stats = probe.stats.snapshot();
            ListenerReadiness {
                listener_id: probe.listener_id.clone(),
                joined: stats.joined,
                assigned_partitions: stats.assigned_partitions,
                kafka_error: probe.stats.last_client_error(),
            }
        })
        .collect();
    let ready = database.ok && listeners.iter().all(|l| l.joined);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            database,
            listeners,
        }),
    )
}

pub(super) async fn metrics_text(State(state): State<ApiState>) -> ApiResult<Response> {
    let handle = state.metrics.ok_or(ApiError::NotFound("not found"))?;
    handle.run_upkeep();
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        handle.render(),
    )
        .into_response())
}

pub(super) async fn list_events(
    State(state): State<ApiState>,
    Listing(query): Listing,
) -> ApiResult<Json<Vec<EventBody>>> {
    let rows = state.store.list_events(&query).await?;
    Ok(Json(rows.iter().map(EventBody::from).collect()))
}

pub(super) async fn get_event(
    State(state): State<ApiState>,
    Id(id): Id,
) -> ApiResult<Json<EventBody>> {
    let row = state
        .store
        .get_event(id)
        .await?
        .ok_or(ApiError::NotFound("event not found"))?;
    Ok(Json(EventBody::from(&row)))
}

pub(super) async fn retry_event(
    State(state): State<ApiState>,
    Id(id): Id,
) -> ApiResult<Json<Acknowledged>> {
    let row = state
        .store
        .get_event(id)
        .await?
        .ok_or(ApiError::NotFound("event not found"))?;
    let handler = handler_for(&state, &row.topic, &row.group_id)?;
    let engine = state.engine.clone();
    // In a task of its own: a client that hangs up does not cancel `consume` mid-call.
    let retry = tokio::spawn(async move { engine.retry_event_row(handler.as_ref(), row).await });
    retried(joined(retry.await)?)
}

pub(super) async fn list_failures(
    State(state): State<ApiState>,
    Listing(query): Listing,
) -> ApiResult<Json<Vec<FailureBody>>> {
    let rows = state.store.list_failures(&query).await?;
    Ok(Json(rows.iter().map(FailureBody::from).collect()))
}

pub(super) async fn count_failures(
    State(state): State<ApiState>,
    Listing(query): Listing,
) -> ApiResult<Json<Count>> {
    let count = state.store.count_failures(&query).await?;
    Ok(Json(Count { count }))
}

pub(super) async fn get_failure(
    State(state): State<ApiState>,
    Id(id): Id,
) -> ApiResult<Json<FailureBody>> {
    let row = state
        .store
        .get_failure(id)
        .await?
        .ok_or(ApiError::NotFound("failure not found"))?;
    Ok(Json(FailureBody::from(&row)))
}

pub(super) async fn delete_failure(
    State(state): State<ApiState>,
    Id(id): Id,
) -> ApiResult<Json<Acknowledged>> {
    if state.store.delete_failure(id).await? {
        Ok(Json(Acknowledged { acknowledged: true }))
    } else {
        Err(ApiError::NotFound("failure not found"))
    }
}

pub(super) async fn retry_failure(
    State(state): State<ApiState>,
    Id(id): Id,
) -> ApiResult<Json<Acknowledged>> {
    let row = state
        .store
        .get_failure(id)
        .await?
        .ok_or(ApiError::NotFound("failure not found"))?;
    let handler = handler_for(&state, &row.topic, &row.group_id)?;
    let engine = state.engine.clone();
    // In a task of its own: a client that hangs up does not cancel `consume` mid-call.
    let retry = tokio::spawn(async move { engine.retry_failure_row(handler.as_ref(), row).await });
    retried(joined(retry.await)?)
}

/// The failures a bulk action takes: the oldest `limit` of those the filters match (the
/// listing's `offset` does not apply), oldest first, so that an entity's failures are retried
/// in the order they happened; and how many matched.
async fn bulk_rows(state: &ApiState, mut query: ListQuery) -> ApiResult<(i64, Vec<Failure>)> {
    let matched = state.store.count_failures(&query).await?;
    query.offset = matched.saturating_sub(query.limit).max(0);
    let mut rows = state.store.list_failures(&query).await?;
    rows.reverse();
    Ok((matched, rows))
}

/// Retries the failures matching the filters, at most `limit` of them (oldest first), one
/// after another, in a task of its own that runs to its end even when the client hangs up;
/// one bulk retry at a time.
pub(super) async fn bulk_retry(
    State(state): State<ApiState>,
    Listing(query): Listing,
) -> ApiResult<Json<BulkOutcome>> {
    let running = Arc::clone(&state.bulk_retry)
        .try_acquire_owned()
        .map_err(|_| ApiError::BulkRetryRunning)?;
    let (matched, rows) = bulk_rows(&state, query).await?;
    let bulk = tokio::spawn(async move {
        let _running = running;
        let mut outcome = BulkOutcome {
            matched,
            processed: rows.len(),
            ..BulkOutcome::default()
        };
        for row in rows {
            let Some(handler) = state.handlers.handler_for(&row.topic, &row.group_id) else {
                outcome.conflicts += 1;
                continue;
            };
            match state.engine.retry_failure_row(handler.as_ref(), row).await {
                Ok(RetryOutcome::Acknowledged) => outcome.acknowledged += 1,
                Ok(RetryOutcome::Failed(_)) => outcome.failed += 1,
                Ok(_) => outcome.settled_otherwise += 1,
                Err(crate::engine::EngineError::FailureNotFound(_)) => outcome.vanished += 1,
                Err(error) => return Err(ApiError::from(error)),
            }
        }
        Ok(outcome)
    });
    match bulk.await {
        Ok(result) => Ok(Json(result?)),
        Err(join) => Err(ApiError::Internal(format!(
            "the bulk retry ended abnormally: {join}"
        ))),
    }
}

/// Deletes the failures matching the filters, at most `limit` of them (oldest first).
pub(super) async fn bulk_delete(
    State(state): State<ApiState>,
    Listing(query): Listing,
) -> ApiResult<Json<BulkOutcome>> {
    let (matched, rows) = bulk_rows(&state, query).await?;
    let mut outcome = BulkOutcome {
        matched,
        processed: rows.len(),
        ..BulkOutcome::default()
    };
    for row in rows {
        if state.store.delete_failure(row.id).await? {
            outcome.deleted += 1;
        } else {
            outcome.vanished += 1;
        }
    }
    Ok(Json(outcome))
}

pub(super) async fn list_listeners(State(state): State<ApiState>) -> Json<Vec<ListenerBody>> {
    Json(state.listeners.iter().map(ListenerBody::from).collect())
}

pub(super) async fn pause_partition(
    State(state): State<ApiState>,
    ListenerPartition {
        listener_id,
        partition,
    }: ListenerPartition,
) -> ApiResult<Json<PartitionControl>> {
    let probe = probe(&state, &listener_id)?;
    let assigned = probe
        .stats
        .partitions()
        .iter()
        .any(|p| p.partition == partition);
    if !assigned {
        return Err(ApiError::NotAssigned {
            listener_id,
            partition,
        });
    }
    let changed = probe.control.pause(partition);
    Ok(Json(PartitionControl {
        listener_id,
        partition,
        paused_by_operator: true,
        changed,
    }))
}

/// Resumes a paused partition, assigned or not (a pause outlives a rebalance).
pub(super) async fn resume_partition(
    State(state): State<ApiState>,
    ListenerPartition {
        listener_id,
        partition,
    }: ListenerPartition,
) -> ApiResult<Json<PartitionControl>> {
    let changed = probe(&state, &listener_id)?.control.resume(partition);
    Ok(Json(PartitionControl {
        listener_id,
        partition,
        paused_by_operator: false,
        changed,
    }))
}

fn probe<'s>(state: &'s ApiState, listener_id: &str) -> ApiResult<&'s super::ListenerProbe> {
    state
        .listeners
        .iter()
        .find(|p| p.listener_id == listener_id)
        .ok_or(ApiError::NotFound("listener not found"))
}

fn handler_for(state: &ApiState, topic: &str, group_id: &str) -> ApiResult<Arc<dyn Handler>> {
    state
        .handlers
        .handler_for(topic, group_id)
        .ok_or_else(|| ApiError::NoHandler {
            topic: topic.to_owned(),
            group_id: group_id.to_owned(),
        })
}

/// The retry task's result; a panic there (the engine catches handler panics) is a bug.
fn joined(
    result: Result<Result<RetryOutcome, crate::engine::EngineError>, tokio::task::JoinError>,
) -> ApiResult<RetryOutcome> {
    match result {
        Ok(outcome) => Ok(outcome?),
        Err(join) => Err(ApiError::Internal(format!(
            "the retry task ended abnormally: {join}"
        ))),
    }
}

fn retried(outcome: RetryOutcome) -> ApiResult<Json<Acknowledged>> {
    match outcome {
        RetryOutcome::Failed(error) => Err(ApiError::RetryFailed(error.message().to_owned())),
        other => Ok(Json(Acknowledged {
            acknowledged: other.acknowledged(),
        })),
    }
}
