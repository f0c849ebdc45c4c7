//! Outbound mesh requests on one pooled async client: packets (fire-and-forget), identity
//! and health fetches. Every request has a short total timeout (a frozen peer still
//! completes the TCP handshake), answers are read with a bound, and a peer's refusal is
//! logged once per URL, not every second.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::identity::HostId;
use super::wire;
use crate::runtime::lock;

/// Total time one mesh request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest answer read from a peer.
const MAX_ANSWER: usize = 256 * 1024;

/// Why a seed's identity could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The peer refused our key.
    #[error("it refused our API key (401); it is not listed")]
    Unauthorized,
    /// Something answered, but not a paglets host.
    #[error("it is not a paglets host ({0}); ignored")]
    NotPaglets(String),
    /// Nothing answered.
    #[error("not reachable: {0}")]
    Unreachable(String),
}

/// The mesh's HTTP client.
pub struct Transport {
    client: reqwest::Client,
    key: Option<Arc<str>>,
    /// `(url, what)` pairs already logged.
    logged: Mutex<HashSet<(String, &'static str)>>,
    /// Requests sent so far (for `/health` and the benchmarks).
    sent: AtomicU64,
}

impl Transport {
    /// A client sending `key` as bearer token, ignoring proxies from the environment (they
    /// would swallow loopback traffic).
    pub fn new(key: Option<Arc<str>>) -> reqwest::Result<Transport> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Transport {
            client,
            key,
            logged: Mutex::new(HashSet::new()),
            sent: AtomicU64::new(0),
        })
    }

    /// How many requests this host sent to other hosts.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// True the first time `(url, what)` is seen: log then, stay quiet afterwards.
    pub fn first_time(&self, url: &str, what: &'static str) -> bool {
        lock(&self.logged).insert((url.to_string(), what))
    }

    /// Forgets that `url` failed, so a new failure is logged again.
    pub fn recovered(&self, url: &str) {
        lock(&self.logged).retain(|(u, _)| u != url);
    }

    fn endpoint(url: &str, path: &str) -> String {
        format!("{}{path}", url.trim_end_matches('/'))
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        self.sent.fetch_add(1, Ordering::Relaxed);
        match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// Posts one framed body to `to`'s `/mesh/swim`; failures are logged once per URL.
    pub async fn post_swim(self: Arc<Self>, to: HostId, body: Vec<u8>) {
        let request = self
            .client
            .post(Self::endpoint(&to.url, "/mesh/swim"))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        match self.authorized(request).send().await {
            Ok(answer) if answer.status() == reqwest::StatusCode::UNAUTHORIZED => {
                if self.first_time(&to.url, "401") {
                    tracing::warn!(host = %to.name, url = %to.url, "mesh host refused our API key (401)");
                }
            }
            Ok(answer) if !answer.status().is_success() => {
                if self.first_time(&to.url, "status") {
                    tracing::warn!(host = %to.name, url = %to.url, status = %answer.status(), "mesh host refused a membership packet");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(host = %to.name, "membership packet not delivered: {e}"),
        }
    }

    /// Sends a leave notice to `to` and waits (bounded) for it to arrive.
    pub async fn send_leave(self: Arc<Self>, to: HostId, me: HostId) {
        self.post_swim(to, wire::leave(&me)).await;
    }

    async fn get_json(&self, url: &str, path: &str) -> Result<Value, FetchError> {
        let request = self.client.get(Self::endpoint(url, path));
        let mut answer = self
            .authorized(request)
            .send()
            .await
            .map_err(|e| FetchError::Unreachable(e.to_string()))?;
        if answer.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(FetchError::Unauthorized);
        }
        if !answer.status().is_success() {
            return Err(FetchError::NotPaglets(format!(
                "{path} answered {}",
                answer.status()
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = answer
            .chunk()
            .await
            .map_err(|e| FetchError::Unreachable(e.to_string()))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_ANSWER {
                return Err(FetchError::NotPaglets(format!("{path} answer too large")));
            }
        }
        serde_json::from_slice(&body)
            .map_err(|_| FetchError::NotPaglets(format!("{path} is not JSON")))
    }

    /// `GET url/mesh/identity`.
    pub async fn identity(&self, url: &str) -> Result<HostId, FetchError> {
        let value = self.get_json(url, "/mesh/identity").await?;
        let id: HostId = serde_json::from_value(value)
            .map_err(|_| FetchError::NotPaglets("no mesh identity".into()))?;
        if !id.is_valid() {
            return Err(FetchError::NotPaglets("invalid mesh identity".into()));
        }
        Ok(id)
    }

    /// `GET url/health`, or `None` (logged at debug level).
    pub async fn health(&self, url: &str) -> Option<Value> {
        match self.get_json(url, "/health").await {
            Ok(value) => Some(value),
            Err(e) => {
                tracing::debug!(url, "cannot read a mesh host's /health: {e}");
                None
            }
        }
    }
}
