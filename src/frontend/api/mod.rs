//! The management API (REST/JSON) and Prometheus `/metrics` over HTTP/1.
//!
//! Owns only the protocol: routing, the bearer token, JSON bodies and error shapes. What each
//! call does is the `Management` implementation the daemon passes in, so this front end never
//! touches the catalog or the bucket. Every `/api/` route needs `Authorization: Bearer <token>`;
//! `/metrics` is open (read-only figures, loopback by default) so a Prometheus scraper needs no
//! secret. Errors are `{"code": "...", "message": "..."}` with a stable code.

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::Value;

/// A failed call: an HTTP status, a stable machine-readable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({ "code": self.code, "message": self.message });
        (status, Json(body)).into_response()
    }
}

pub type ApiResult = Result<Value, ApiError>;
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the API can do; the daemon implements it with the gateway.
pub trait Management: Send + Sync + 'static {
    /// Prometheus text exposition format.
    fn metrics(&self) -> String;
    fn status(&self) -> ApiResult;
    fn volumes(&self) -> ApiResult;
    fn create_volume(&self, body: Value) -> BoxFuture<'_, ApiResult>;
    fn delete_volume(&self, name: String) -> ApiResult;
    fn snapshots(&self) -> ApiResult;
    /// Queues a snapshot; the answer names it (poll `GET /api/v1/snapshots`).
    fn create_snapshot(&self, body: Value) -> ApiResult;
    fn delete_snapshot(&self, id: String) -> BoxFuture<'_, ApiResult>;
    fn bandwidth(&self) -> ApiResult;
    fn set_bandwidth(&self, body: Value) -> ApiResult;
    /// Samples of cumulative traffic over the last hour, oldest first (the console's graph).
    fn history(&self) -> ApiResult;
    fn shares(&self) -> ApiResult {
        Err(no_shares())
    }
    fn create_share(&self, _body: Value) -> BoxFuture<'_, ApiResult> {
        Box::pin(async { Err(no_shares()) })
    }
    /// `force` deletes a share whose files are not all in the bucket yet.
    fn delete_share(&self, _name: String, _force: bool) -> ApiResult {
        Err(no_shares())
    }
    /// `{"path"}` (optional): directories to re-list from the bucket on next access.
    fn refresh_share(&self, _name: String, _body: Value) -> ApiResult {
        Err(no_shares())
    }
    fn tapes(&self) -> ApiResult {
        Err(no_tapes())
    }
    /// `{"barcode_prefix", "count", "size", "retention_days", "lock"}`, as `tape create`.
    fn create_tapes(&self, _body: Value) -> ApiResult {
        Err(no_tapes())
    }
    /// `bypass_governance` overrides a governance retention lock (never a compliance one).
    fn delete_tape(&self, _barcode: String, _bypass_governance: bool) -> ApiResult {
        Err(no_tapes())
    }
    /// Queues the retrieval of an archived tape; the answer is the tape, RETRIEVING (poll
    /// `GET /api/v1/tapes` for its progress).
    fn retrieve_tape(&self, _barcode: String) -> ApiResult {
        Err(no_tapes())
    }
    fn jobs(&self) -> ApiResult {
        Ok(Value::Array(Vec::new()))
    }
}

fn no_tapes() -> ApiError {
    ApiError::new(404, "not_found", "this gateway has no tape library")
}

fn no_shares() -> ApiError {
    ApiError::new(404, "not_found", "this gateway serves no shares")
}

/// The web console: one page, embedded in the binary, that signs in with the API token and
/// calls the API from the browser.
const CONSOLE: &str = include_str!("console.html");

#[derive(Clone)]
struct Shared {
    management: Arc<dyn Management>,
    token: Arc<str>,
}

fn reply(r: ApiResult) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn authorize(
    State(s): State<Shared>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), s.token.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::new(401, "unauthorized", "wrong bearer token").into_response(),
        None => ApiError::new(
            401,
            "unauthorized",
            "missing `Authorization: Bearer <token>` (the token is in the api token file)",
        )
        .into_response(),
    }
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON body that did not parse is the client's error, said plainly.
fn body(raw: &str) -> Result<Value, ApiError> {
    if raw.trim().is_empty() {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    serde_json::from_str(raw)
        .map_err(|e| ApiError::new(400, "bad_request", format!("the body is not JSON: {e}")))
}

/// A `name=true` query flag.
fn flag(uri: &Uri, name: &str) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.strip_prefix(name) == Some("=true"))
    })
}

pub fn router(management: Arc<dyn Management>, token: &str) -> Router {
    let shared = Shared {
        management,
        token: token.into(),
    };
    let api = Router::new()
        .route(
            "/api/v1/status",
            get(|State(s): State<Shared>| async move { reply(s.management.status()) }),
        )
        .route(
            "/api/v1/volumes",
            get(|State(s): State<Shared>| async move { reply(s.management.volumes()) }).post(
                |State(s): State<Shared>, raw: String| async move {
                    match body(&raw) {
                        Ok(b) => reply(s.management.create_volume(b).await),
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
        .route(
            "/api/v1/volumes/{name}",
            delete(
                |State(s): State<Shared>, Path(name): Path<String>| async move {
                    reply(s.management.delete_volume(name))
                },
            ),
        )
        .route(
            "/api/v1/snapshots",
            get(|State(s): State<Shared>| async move { reply(s.management.snapshots()) }).post(
                |State(s): State<Shared>, raw: String| async move {
                    reply(body(&raw).and_then(|b| s.management.create_snapshot(b)))
                },
            ),
        )
        .route(
            "/api/v1/snapshots/{id}",
            delete(
                |State(s): State<Shared>, Path(id): Path<String>| async move {
                    reply(s.management.delete_snapshot(id).await)
                },
            ),
        )
        .route(
            "/api/v1/bandwidth",
            get(|State(s): State<Shared>| async move { reply(s.management.bandwidth()) }).put(
                |State(s): State<Shared>, raw: String| async move {
                    reply(body(&raw).and_then(|b| s.management.set_bandwidth(b)))
                },
            ),
        )
        .route(
            "/api/v1/history",
            get(|State(s): State<Shared>| async move { reply(s.management.history()) }),
        )
        .route(
            "/api/v1/shares",
            get(|State(s): State<Shared>| async move { reply(s.management.shares()) }).post(
                |State(s): State<Shared>, raw: String| async move {
                    match body(&raw) {
                        Ok(b) => reply(s.management.create_share(b).await),
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
        .route(
            "/api/v1/shares/{name}",
            delete(
                |State(s): State<Shared>, Path(name): Path<String>, uri: Uri| async move {
                    let force = flag(&uri, "force");
                    reply(s.management.delete_share(name, force))
                },
            ),
        )
        .route(
            "/api/v1/shares/{name}/refresh",
            post(
                |State(s): State<Shared>, Path(name): Path<String>, raw: String| async move {
                    reply(body(&raw).and_then(|b| s.management.refresh_share(name, b)))
                },
            ),
        )
        .route(
            "/api/v1/tapes",
            get(|State(s): State<Shared>| async move { reply(s.management.tapes()) }).post(
                |State(s): State<Shared>, raw: String| async move {
                    reply(body(&raw).and_then(|b| s.management.create_tapes(b)))
                },
            ),
        )
        .route(
            "/api/v1/tapes/{barcode}",
            delete(
                |State(s): State<Shared>, Path(barcode): Path<String>, uri: Uri| async move {
                    let bypass = flag(&uri, "bypass_governance");
                    reply(s.management.delete_tape(barcode, bypass))
                },
            ),
        )
        .route(
            "/api/v1/tapes/{barcode}/retrieve",
            post(
                |State(s): State<Shared>, Path(barcode): Path<String>| async move {
                    reply(s.management.retrieve_tape(barcode))
                },
            ),
        )
        .route(
            "/api/v1/jobs",
            get(|State(s): State<Shared>| async move { reply(s.management.jobs()) }),
        )
        .route_layer(middleware::from_fn_with_state(shared.clone(), authorize));
    Router::new()
        .route(
            "/",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                        (header::CACHE_CONTROL, "no-store"),
                    ],
                    CONSOLE,
                )
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<Shared>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    s.management.metrics(),
                )
            }),
        )
        .merge(api)
        .fallback(|| async { ApiError::new(404, "not_found", "no such endpoint").into_response() })
        .with_state(shared)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    management: Arc<dyn Management>,
    token: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(management, &token))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn bodies() {
        assert_eq!(body("").unwrap(), serde_json::json!({}));
        assert_eq!(body("{\"a\":1}").unwrap()["a"], 1);
        assert_eq!(body("{nope").unwrap_err().code, "bad_request");
    }
}
