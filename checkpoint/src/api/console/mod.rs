//! The web console under `/ui`: server-rendered pages over the same store, engine and state as
//! the JSON routes, for operators who would rather look than read.
//!
//! - Every value goes through maud, which escapes it: a payload holding `<script>` shows as
//!   text.
//! - No inline script or style: the one script and the one stylesheet are embedded in the
//!   binary and served from `/ui/assets/`, so the page works offline and the
//!   Content-Security-Policy forbids everything else.
//! - The pages only read. Retry, delete, pause and resume go through the JSON routes (`POST
//!   /v1/failures/{id}/retry`, `DELETE /v1/failures/{id}`, `POST /v1/listeners/{id}/
//!   partitions/{partition}/pause`, …) from the script, with the bearer
//!   token the operator typed in, kept in the tab's `sessionStorage`. A bearer header, unlike a
//!   cookie, is never sent by a forged cross-site form; the guard also refuses a mutating
//!   request whose `Origin` is another site.

mod listeners;
mod pages;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use super::ApiState;
use super::error::ApiError;
use super::extract::{Id, Listing};
use crate::store::ListQuery;

/// The console's script: token prompt, retry and delete buttons, the overview's refresh.
const SCRIPT: &str = include_str!("assets/console.js");
/// The console's stylesheet.
const STYLE: &str = include_str!("assets/console.css");

/// The `/ui` routes.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/live", get(live))
        .route("/ui/consumers", get(consumers))
        .route("/ui/consumers/live", get(consumers_live))
        .route("/ui/events", get(events))
        .route("/ui/events/{id}", get(event))
        .route("/ui/events/{id}/payload", get(event_payload))
        .route("/ui/failures", get(failures))
        .route("/ui/failures/{id}", get(failure))
        .route("/ui/failures/{id}/payload", get(failure_payload))
        .route("/ui/assets/{file}", get(asset))
}

/// An error on a console page: the API's status, shown as a page.
struct UiError(ApiError);

impl From<ApiError> for UiError {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

impl From<crate::store::StoreError> for UiError {
    fn from(error: crate::store::StoreError) -> Self {
        Self(error.into())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        if let ApiError::Internal(detail) = &self.0 {
            tracing::error!(target: "checkpoint", error = %detail, "console: internal error");
        }
        (
            status,
            Html(pages::error(status, &self.0.to_string()).into_string()),
        )
            .into_response()
    }
}

type UiResult = Result<Response, UiError>;

fn page(markup: maud::Markup) -> Response {
    Html(markup.into_string()).into_response()
}

async fn overview(State(state): State<ApiState>) -> UiResult {
    let live = pages::Live::load(&state).await?;
    Ok(page(pages::overview(&state, &live)))
}

/// The overview's changing part, fetched by the script every few seconds.
async fn live(State(state): State<ApiState>) -> UiResult {
    let live = pages::Live::load(&state).await?;
    Ok(page(pages::live(&live)))
}

async fn consumers(State(state): State<ApiState>) -> Response {
    page(listeners::consumers(&state, &listeners::listeners(&state)))
}

/// The consumers page's changing part, fetched by the script every few seconds.
async fn consumers_live(State(state): State<ApiState>) -> Response {
    page(listeners::consumers_live(&listeners::listeners(&state)))
}

/// The filter form sends its empty fields too: on a page, an empty field filters nothing
/// (in the JSON API, `?topic=` matches the empty value).
fn form(mut query: ListQuery) -> ListQuery {
    for field in [
        &mut query.topic,
        &mut query.group_id,
        &mut query.entity_id,
        &mut query.event_type,
        &mut query.checksum,
    ] {
        if field.as_deref() == Some("") {
            *field = None;
        }
    }
    query
}

async fn events(State(state): State<ApiState>, Listing(query): Listing) -> UiResult {
    let query = form(query);
    let rows = state.store.list_events(&query).await?;
    Ok(page(pages::events(&state, &query, &rows)))
}

async fn event(State(state): State<ApiState>, Id(id): Id) -> UiResult {
    let row = state
        .store
        .get_event(id)
        .await?
        .ok_or(ApiError::NotFound("event not found"))?;
    Ok(page(pages::event(&state, &row)))
}

async fn failures(State(state): State<ApiState>, Listing(query): Listing) -> UiResult {
    let query = form(query);
    let rows = state.store.list_failures(&query).await?;
    let total = state.store.count_failures(&query).await?;
    Ok(page(pages::failures(&state, &query, &rows, total)))
}

async fn failure(State(state): State<ApiState>, Id(id): Id) -> UiResult {
    let row = state
        .store
        .get_failure(id)
        .await?
        .ok_or(ApiError::NotFound("failure not found"))?;
    Ok(page(pages::failure(&state, &row)))
}

/// The exact stored bytes, as a download.
fn download(name: String, bytes: Vec<u8>) -> Response {
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response()
}

async fn event_payload(State(state): State<ApiState>, Id(id): Id) -> UiResult {
    let row = state
        .store
        .get_event(id)
        .await?
        .ok_or(ApiError::NotFound("event not found"))?;
    Ok(download(format!("event-{id}.bin"), row.payload))
}

async fn failure_payload(State(state): State<ApiState>, Id(id): Id) -> UiResult {
    let row = state
        .store
        .get_failure(id)
        .await?
        .ok_or(ApiError::NotFound("failure not found"))?;
    Ok(download(format!("failure-{id}.bin"), row.payload))
}

async fn asset(Path(file): Path<String>) -> UiResult {
    let (body, kind) = match file.as_str() {
        "console.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "console.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return Err(ApiError::NotFound("not found").into()),
    };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response())
}
