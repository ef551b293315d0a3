//! The running daemon's management API, as the CLI uses it: while a daemon runs, commands that
//! change volumes, snapshots and shares go through the same API the console and scripts use, so
//! the CLI and the API cannot disagree (issue 9). With no daemon, commands work on the catalog
//! directly.

use anyhow::{Context, Result, anyhow};
use serde_json::Value;

use super::UsageError;
use crate::config::Config;
use crate::daemon::Ready;

pub struct DaemonApi {
    base: String,
    token: String,
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl DaemonApi {
    /// The API of the daemon running on this config, or `None` when no daemon runs (or it serves
    /// no API). A daemon whose token the caller cannot read is an error, not a silent fallback
    /// to the catalog behind the daemon's back.
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
            base: format!("http://{addr}/api/v1"),
            token,
            client: reqwest::Client::new(),
            rt: super::runtime()?,
        }))
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, path, None)
    }

    pub fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::DELETE, path, None)
    }

    /// One request; an API error keeps its message, and the client's mistakes (4xx other than
    /// authorization) exit with status 2 like the same mistake made without a daemon.
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .client
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(&b)?);
        }
        let (status, bytes) = self
            .rt
            .block_on(async {
                let resp = req.send().await?;
                let status = resp.status();
                Ok::<_, reqwest::Error>((status, resp.bytes().await?))
            })
            .with_context(|| format!("{method} {url}: the daemon's API did not answer"))?;
        let value: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{method} {url}: the daemon's answer is not JSON"))?;
        if status.is_success() {
            return Ok(value);
        }
        let message = value["message"].as_str().unwrap_or("no message").to_owned();
        let code = value["code"].as_str().unwrap_or("unknown");
        if status.is_client_error() && status.as_u16() != 401 && status.as_u16() != 403 {
            Err(UsageError(message).into())
        } else {
            Err(anyhow!(
                "the daemon refused: {message} ({code}, HTTP {status})"
            ))
        }
    }
}

/// Runs a command through the running daemon's API when there is one: `api` handles what it can
/// and hands the rest back (commands that need local disks or only read); that, and every
/// command when no daemon runs, goes to `local`.
pub fn route<C>(
    config: Config,
    cmd: C,
    api: impl FnOnce(&DaemonApi, &Config, C, &mut std::io::StdoutLock<'static>) -> Result<Option<C>>,
    local: impl FnOnce(C, Config) -> Result<std::process::ExitCode>,
) -> Result<std::process::ExitCode> {
    let cmd = match DaemonApi::running(&config)? {
        Some(daemon) => match api(&daemon, &config, cmd, &mut std::io::stdout().lock())? {
            None => return Ok(std::process::ExitCode::SUCCESS),
            Some(rest) => rest,
        },
        None => cmd,
    };
    local(cmd, config)
}

/// The elements of a JSON list answer (none if the answer is not a list).
pub fn items(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// A path segment of a name the operator typed: API paths carry names as one segment.
pub fn segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_one_path_segment() {
        assert_eq!(super::segment("vol-1.a_b~"), "vol-1.a_b~");
        assert_eq!(super::segment("a/b c"), "a%2Fb%20c");
    }
}
