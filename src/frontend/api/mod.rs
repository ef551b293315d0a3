//! The management API (REST/JSON) and Prometheus `/metrics` over HTTP/1.
//!
//! Owns only the protocol: routing, the bearer token, JSON bodies and error shapes. What each
//! call does is the `Management` implementation the daemon passes in, so this front end never
//! touches the catalog or the bucket. Every `/api/` route needs `Authorization: Bearer <token>`;
//! `/metrics` is open (read-only figures, loopback by default) so a Prometheus scraper needs no
//! secret. Errors are `{"code": "...", "message": "..."}` with a stable code.

pub mod metrics;
pub mod types;

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde::Serialize;
use serde::de::DeserializeOwned;

use types::{
    Bandwidth, CreateShare, CreateSnapshot, CreateTapes, CreateVolume, Deleted, Job, RefreshShare,
    Refreshed, Sample, Schedule, SetBandwidth, SetSchedule, Share, Snapshot, Status, Tape, Volume,
};

/// A failed call: an HTTP status, a stable machine-readable code and a message for people.
/// The CLI gets the same value whether it called the daemon over HTTP or the implementation
/// in-process, so both print the same error and exit with the same status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// The caller's mistake (a bad or conflicting request), not a failure of the gateway or a
    /// refused credential.
    pub fn is_usage(&self) -> bool {
        (400..500).contains(&self.status) && self.status != 401 && self.status != 403
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// What every management call returns.
pub type Call<'a, T> = BoxFuture<'a, ApiResult<T>>;

/// Every management operation, typed. The daemon implements it with the gateway (and the CLI
/// runs that same implementation in-process when no daemon runs); the CLI's HTTP client
/// implements it by calling these routes. Calls are idempotent where their HTTP method is.
pub trait Management: Send + Sync + 'static {
    /// One snapshot of the gateway's figures (also what `/metrics` renders).
    fn status(&self) -> Call<'_, Status>;
    fn volumes(&self) -> Call<'_, Vec<Volume>>;
    /// Creates (or restores from a snapshot) and serves at once.
    fn create_volume(&self, req: CreateVolume) -> Call<'_, Volume>;
    fn delete_volume(&self, name: String) -> Call<'_, Deleted>;
    fn set_schedule(&self, volume: String, req: SetSchedule) -> Call<'_, Schedule>;
    fn snapshots(&self) -> Call<'_, Vec<Snapshot>>;
    /// Queues a snapshot (a daemon takes it; poll `snapshots`), or with no daemon takes it
    /// before answering.
    fn create_snapshot(&self, req: CreateSnapshot) -> Call<'_, Snapshot>;
    fn delete_snapshot(&self, id: String) -> Call<'_, Deleted>;
    fn bandwidth(&self) -> Call<'_, Bandwidth>;
    /// Applies to the next transfer; answers the limits then in force.
    fn set_bandwidth(&self, req: SetBandwidth) -> Call<'_, Bandwidth>;
    /// Samples of cumulative traffic over the last hour, oldest first (the console's graph).
    fn history(&self) -> Call<'_, Vec<Sample>>;
    fn shares(&self) -> Call<'_, Vec<Share>>;
    fn create_share(&self, req: CreateShare) -> Call<'_, Share>;
    /// `force` deletes a share whose files are not all in the bucket yet.
    fn delete_share(&self, name: String, force: bool) -> Call<'_, Deleted>;
    fn refresh_share(&self, name: String, req: RefreshShare) -> Call<'_, Refreshed>;
    fn tapes(&self) -> Call<'_, Vec<Tape>>;
    fn create_tapes(&self, req: CreateTapes) -> Call<'_, Vec<Tape>>;
    /// `bypass_governance` overrides a governance retention lock (never a compliance one).
    fn delete_tape(&self, barcode: String, bypass_governance: bool) -> Call<'_, Deleted>;
    /// Queues the retrieval of an archived tape; the answer is the tape, RETRIEVING (poll
    /// `tapes` for its progress).
    fn retrieve_tape(&self, barcode: String) -> Call<'_, Tape>;
    fn jobs(&self) -> Call<'_, Vec<Job>>;
}

/// The web console: one page, embedded in the binary, that signs in with the API token and
/// calls the API from the browser.
const CONSOLE: &str = include_str!("console.html");

#[derive(Clone)]
struct Shared {
    management: Arc<dyn Management>,
    token: Arc<str>,
}

fn reply<T: Serialize>(r: ApiResult<T>) -> Response {
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

/// A request body as its type; an empty body is `{}`. One that does not parse is the
/// client's error, said plainly.
fn body<T: DeserializeOwned>(raw: &str) -> Result<T, ApiError> {
    let raw = if raw.trim().is_empty() { "{}" } else { raw };
    serde_json::from_str(raw)
        .map_err(|e| ApiError::new(400, "bad_request", format!("the body is not valid: {e}")))
}

/// A `name=true` query flag.
fn flag(uri: &Uri, name: &str) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.strip_prefix(name) == Some("=true"))
    })
}

type S = State<Shared>;

/// A route whose body is a request type: a body that does not parse never reaches the
/// implementation.
async fn with_body<T, R>(
    s: Shared,
    raw: String,
    call: impl for<'a> FnOnce(&'a dyn Management, T) -> Call<'a, R>,
) -> Response
where
    T: DeserializeOwned,
    R: Serialize,
{
    match body(&raw) {
        Ok(b) => reply(call(s.management.as_ref(), b).await),
        Err(e) => e.into_response(),
    }
}

pub fn router(management: Arc<dyn Management>, token: &str) -> Router {
    let shared = Shared {
        management,
        token: token.into(),
    };
    let api = Router::new()
        .route(
            "/api/v1/status",
            get(|State(s): S| async move { reply(s.management.status().await) }),
        )
        .route(
            "/api/v1/volumes",
            get(|State(s): S| async move { reply(s.management.volumes().await) }).post(
                |State(s): S, raw: String| with_body(s, raw, <dyn Management>::create_volume),
            ),
        )
        .route(
            "/api/v1/volumes/{name}",
            delete(|State(s): S, Path(name): Path<String>| async move {
                reply(s.management.delete_volume(name).await)
            }),
        )
        .route(
            "/api/v1/volumes/{name}/schedule",
            put(
                |State(s): S, Path(name): Path<String>, raw: String| async move {
                    match body(&raw) {
                        Ok(b) => reply(s.management.set_schedule(name, b).await),
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
        .route(
            "/api/v1/snapshots",
            get(|State(s): S| async move { reply(s.management.snapshots().await) }).post(
                |State(s): S, raw: String| with_body(s, raw, <dyn Management>::create_snapshot),
            ),
        )
        .route(
            "/api/v1/snapshots/{id}",
            delete(|State(s): S, Path(id): Path<String>| async move {
                reply(s.management.delete_snapshot(id).await)
            }),
        )
        .route(
            "/api/v1/bandwidth",
            get(|State(s): S| async move { reply(s.management.bandwidth().await) })
                .put(|State(s): S, raw: String| with_body(s, raw, <dyn Management>::set_bandwidth)),
        )
        .route(
            "/api/v1/history",
            get(|State(s): S| async move { reply(s.management.history().await) }),
        )
        .route(
            "/api/v1/shares",
            get(|State(s): S| async move { reply(s.management.shares().await) })
                .post(|State(s): S, raw: String| with_body(s, raw, <dyn Management>::create_share)),
        )
        .route(
            "/api/v1/shares/{name}",
            delete(
                |State(s): S, Path(name): Path<String>, uri: Uri| async move {
                    let force = flag(&uri, "force");
                    reply(s.management.delete_share(name, force).await)
                },
            ),
        )
        .route(
            "/api/v1/shares/{name}/refresh",
            post(
                |State(s): S, Path(name): Path<String>, raw: String| async move {
                    match body(&raw) {
                        Ok(b) => reply(s.management.refresh_share(name, b).await),
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
        .route(
            "/api/v1/tapes",
            get(|State(s): S| async move { reply(s.management.tapes().await) })
                .post(|State(s): S, raw: String| with_body(s, raw, <dyn Management>::create_tapes)),
        )
        .route(
            "/api/v1/tapes/{barcode}",
            delete(
                |State(s): S, Path(barcode): Path<String>, uri: Uri| async move {
                    let bypass = flag(&uri, "bypass_governance");
                    reply(s.management.delete_tape(barcode, bypass).await)
                },
            ),
        )
        .route(
            "/api/v1/tapes/{barcode}/retrieve",
            post(|State(s): S, Path(barcode): Path<String>| async move {
                reply(s.management.retrieve_tape(barcode).await)
            }),
        )
        .route(
            "/api/v1/jobs",
            get(|State(s): S| async move { reply(s.management.jobs().await) }),
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
            get(|State(s): S| async move {
                match s.management.status().await {
                    Ok(status) => (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        metrics::render(&status),
                    )
                        .into_response(),
                    Err(e) => e.into_response(),
                }
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
    fn bodies_parse_into_their_request_type() {
        let empty: types::RefreshShare = body("").unwrap();
        assert_eq!(empty.path, None);
        let v: types::CreateVolume = body(r#"{"name":"a"}"#).unwrap();
        assert_eq!(v.name, "a");
        for bad in ["{nope", "{}", r#"{"name":3}"#] {
            let e = body::<types::CreateVolume>(bad).unwrap_err();
            assert_eq!((e.status, e.code.as_str()), (400, "bad_request"), "{bad}");
        }
    }

    #[test]
    fn usage_errors_are_the_callers_4xx_but_credentials() {
        for (status, usage) in [
            (400, true),
            (404, true),
            (409, true),
            (401, false),
            (403, false),
            (500, false),
            (503, false),
        ] {
            assert_eq!(
                ApiError::new(status, "x", "m").is_usage(),
                usage,
                "{status}"
            );
        }
    }
}
