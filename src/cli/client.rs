//! The management operations as the CLI reaches them (issue 9, issue 18): while a daemon runs,
//! over its HTTP API, posting the request types the API takes, so the CLI never goes behind the
//! daemon's back; with none, the same implementation (`daemon::manage::Manager`) in-process on
//! the catalog and the bucket. Either way a command gets the same typed answer or the same
//! `ApiError`, and prints and exits the same.

use anyhow::{Context, Result, anyhow};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::UsageError;
use crate::config::Config;
use crate::daemon::Ready;
use crate::frontend::api::types::{
    Bandwidth, CreateShare, CreateSnapshot, CreateTapes, CreateVolume, Deleted, Job, RefreshShare,
    Refreshed, Sample, Schedule, SetBandwidth, SetSchedule, Share, Snapshot, Status, Tape, Volume,
};
use crate::frontend::api::{ApiError, ApiResult, Call, Management};

/// A running daemon's API.
struct Remote {
    base: String,
    token: String,
    client: reqwest::Client,
}

/// A path segment of a name the operator typed: API paths carry names as one segment.
fn segment(name: &str) -> String {
    crate::percent::encode(name, false)
}

impl Remote {
    /// One request. An API error comes back as the `ApiError` the daemon sent; a daemon that
    /// does not answer (or answers nonsense) is `unavailable`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> ApiResult<T> {
        let url = format!("{}{path}", self.base);
        let unavailable = |what: String| ApiError::new(503, "unavailable", what);
        let mut req = self
            .client
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(json) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(json);
        }
        let fail = |e: reqwest::Error| {
            unavailable(format!(
                "{method} {url}: the daemon's API did not answer: {e}"
            ))
        };
        let resp = req.send().await.map_err(fail)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(fail)?;
        let not_json = |e: serde_json::Error| {
            unavailable(format!(
                "{method} {url}: the daemon's answer does not read: {e}"
            ))
        };
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(not_json);
        }
        let mut e: ApiError = serde_json::from_slice(&bytes).map_err(not_json)?;
        e.status = status.as_u16();
        Err(e)
    }

    fn get<T: DeserializeOwned + 'static>(&self, path: String) -> Call<'_, T> {
        Box::pin(async move { self.call(reqwest::Method::GET, &path, None).await })
    }

    fn send<T: DeserializeOwned + 'static>(
        &self,
        method: reqwest::Method,
        path: String,
        body: impl Serialize,
    ) -> Call<'_, T> {
        // The request types always encode; a failure would be a bug, said as such.
        let json = serde_json::to_vec(&body)
            .map_err(|e| ApiError::new(500, "internal", format!("encoding the request: {e}")));
        Box::pin(async move { self.call(method, &path, Some(json?)).await })
    }

    fn delete<T: DeserializeOwned + 'static>(&self, path: String) -> Call<'_, T> {
        Box::pin(async move { self.call(reqwest::Method::DELETE, &path, None).await })
    }
}

/// An empty body: calls whose arguments are all in the path.
#[derive(Serialize)]
struct Empty {}

impl Management for Remote {
    fn status(&self) -> Call<'_, Status> {
        self.get("/status".into())
    }

    fn volumes(&self) -> Call<'_, Vec<Volume>> {
        self.get("/volumes".into())
    }

    fn create_volume(&self, req: CreateVolume) -> Call<'_, Volume> {
        self.send(reqwest::Method::POST, "/volumes".into(), req)
    }

    fn delete_volume(&self, name: String) -> Call<'_, Deleted> {
        let path = format!("/volumes/{}", segment(&name));
        self.delete(path)
    }

    fn set_schedule(&self, volume: String, req: SetSchedule) -> Call<'_, Schedule> {
        let path = format!("/volumes/{}/schedule", segment(&volume));
        self.send(reqwest::Method::PUT, path, req)
    }

    fn snapshots(&self) -> Call<'_, Vec<Snapshot>> {
        self.get("/snapshots".into())
    }

    fn create_snapshot(&self, req: CreateSnapshot) -> Call<'_, Snapshot> {
        self.send(reqwest::Method::POST, "/snapshots".into(), req)
    }

    fn delete_snapshot(&self, id: String) -> Call<'_, Deleted> {
        let path = format!("/snapshots/{}", segment(&id));
        self.delete(path)
    }

    fn bandwidth(&self) -> Call<'_, Bandwidth> {
        self.get("/bandwidth".into())
    }

    fn set_bandwidth(&self, req: SetBandwidth) -> Call<'_, Bandwidth> {
        self.send(reqwest::Method::PUT, "/bandwidth".into(), req)
    }

    fn history(&self) -> Call<'_, Vec<Sample>> {
        self.get("/history".into())
    }

    fn shares(&self) -> Call<'_, Vec<Share>> {
        self.get("/shares".into())
    }

    fn create_share(&self, req: CreateShare) -> Call<'_, Share> {
        self.send(reqwest::Method::POST, "/shares".into(), req)
    }

    fn delete_share(&self, name: String, force: bool) -> Call<'_, Deleted> {
        let query = if force { "?force=true" } else { "" };
        let path = format!("/shares/{}{query}", segment(&name));
        self.delete(path)
    }

    fn refresh_share(&self, name: String, req: RefreshShare) -> Call<'_, Refreshed> {
        let path = format!("/shares/{}/refresh", segment(&name));
        self.send(reqwest::Method::POST, path, req)
    }

    fn tapes(&self) -> Call<'_, Vec<Tape>> {
        self.get("/tapes".into())
    }

    fn create_tapes(&self, req: CreateTapes) -> Call<'_, Vec<Tape>> {
        self.send(reqwest::Method::POST, "/tapes".into(), req)
    }

    fn delete_tape(&self, barcode: String, bypass_governance: bool) -> Call<'_, Deleted> {
        let query = if bypass_governance {
            "?bypass_governance=true"
        } else {
            ""
        };
        let path = format!("/tapes/{}{query}", segment(&barcode));
        self.delete(path)
    }

    fn retrieve_tape(&self, barcode: String) -> Call<'_, Tape> {
        let path = format!("/tapes/{}/retrieve", segment(&barcode));
        self.send(reqwest::Method::POST, path, Empty {})
    }

    fn jobs(&self) -> Call<'_, Vec<Job>> {
        self.get("/jobs".into())
    }
}

/// The management operations for one config, and the runtime they run on.
pub struct Session {
    rt: tokio::runtime::Runtime,
    management: Box<dyn Management>,
}

impl Session {
    /// The running daemon's API, or with no daemon the implementation in-process. A daemon
    /// whose token the caller cannot read is an error, not a silent fallback to the catalog
    /// behind the daemon's back.
    pub fn open(config: &Config) -> Result<Self> {
        match Self::running(config)? {
            Some(session) => Ok(session),
            None => Ok(Self {
                rt: super::runtime()?,
                management: Box::new(crate::daemon::manage::Manager::offline(config.clone())?),
            }),
        }
    }

    /// The running daemon's API, if a daemon runs.
    pub fn running(config: &Config) -> Result<Option<Self>> {
        let Some(addr) = Ready::read(config).and_then(|r| r.api) else {
            return Ok(None);
        };
        let path = &config.api.token_file;
        let token = std::fs::read_to_string(path)
            .with_context(|| {
                format!(
                    "a daemon is running (API on {addr}) but its token {} is not readable by \
                     this user; run as the daemon's user or root",
                    path.display()
                )
            })?
            .trim()
            .to_owned();
        Ok(Some(Self {
            rt: super::runtime()?,
            management: Box::new(Remote {
                base: format!("http://{addr}/api/v1"),
                token,
                client: reqwest::Client::new(),
            }),
        }))
    }

    /// Runs one call to its answer. The caller's mistakes exit with status 2, the rest with 1.
    pub fn run<T>(&self, call: impl FnOnce(&dyn Management) -> Call<'_, T>) -> Result<T> {
        self.rt
            .block_on(call(self.management.as_ref()))
            .map_err(|e| {
                if e.is_usage() {
                    UsageError(e.message).into()
                } else {
                    anyhow!(e)
                }
            })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_one_path_segment() {
        assert_eq!(super::segment("vol-1.a_b~"), "vol-1.a_b~");
        assert_eq!(super::segment("a/b c"), "a%2Fb%20c");
    }
}
