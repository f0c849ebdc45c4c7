//! Git alignment between hosts: an auto-updating host sends its applied head
//! (`POST /admin/git-update`) to the peers after its startup update, to every alive mesh
//! host after an update that ends `updated`, and to any alive auto-updating host whose code
//! version differs from its own, at most once per host per 10 s, never while its own update
//! runs. Each answer is logged.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Mesh;
use crate::runtime::lock;
use crate::update::Updater;

/// At most one request per host this often.
const EVERY: Duration = Duration::from_secs(10);
/// How often the mesh is checked for hosts on other code.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Sends this host's applied head where it is missing.
pub struct Aligner {
    mesh: Arc<Mesh>,
    updater: Arc<Updater>,
    name: String,
    url: String,
    key: Option<Arc<str>>,
    /// Long timeout: the update call is synchronous and may build for minutes.
    client: reqwest::Client,
    /// When each host (by URL: a seed is known by its URL before its name) was last sent
    /// our head, and which requests still run.
    sent: Mutex<(HashMap<String, Instant>, HashSet<String>)>,
}

impl Aligner {
    /// Starts alignment: announces the applied head to `peers` now, then watches the mesh.
    pub fn start(
        mesh: Arc<Mesh>,
        updater: Arc<Updater>,
        url: &str,
        key: Option<Arc<str>>,
        timeout: Duration,
    ) -> Result<Arc<Aligner>, reqwest::Error> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let aligner = Arc::new(Aligner {
            name: mesh.own_meta().name,
            mesh,
            updater,
            url: url.to_string(),
            key,
            client,
            sent: Mutex::new((HashMap::new(), HashSet::new())),
        });
        for peer in aligner.mesh.settings().seeds.clone() {
            aligner.clone().send(peer.clone(), peer, true);
        }
        tokio::spawn(aligner.clone().watch());
        Ok(aligner)
    }

    /// After an update that ended `updated`: tell every alive mesh host.
    pub fn announce_updated(self: &Arc<Self>) {
        for (id, _) in self.mesh.alive() {
            self.clone().send(id.name, id.url, true);
        }
    }

    async fn watch(self: Arc<Self>) {
        let mut interval = tokio::time::interval(CHECK_EVERY);
        loop {
            interval.tick().await;
            if self.updater.is_running() {
                continue;
            }
            let ours = self.mesh.own_meta().code_version;
            for (id, meta) in self.mesh.alive() {
                let Some(meta) = meta else { continue };
                if meta.auto_update_from_git && meta.code_version != ours {
                    self.clone().send(id.name, id.url, false);
                }
            }
        }
    }

    /// Sends our applied head to `url` in the background, unless a request to that host
    /// runs or (when not `always`) one was sent within [`EVERY`].
    fn send(self: Arc<Self>, name: String, url: String, always: bool) {
        let key = url.trim_end_matches('/').to_string();
        {
            let mut sent = lock(&self.sent);
            let (last, running) = &mut *sent;
            let recent = last.get(&key).is_some_and(|t| t.elapsed() < EVERY);
            if running.contains(&key) || (recent && !always) {
                return;
            }
            last.insert(key.clone(), Instant::now());
            running.insert(key.clone());
        }
        tokio::spawn(async move {
            let head = self.updater.applied_head();
            let answer = self.post(&url, &head).await;
            lock(&self.sent).1.remove(&key);
            match answer {
                Ok(answer) if answer["status"] == "target-missing" => tracing::warn!(
                    host = %name, %url, head,
                    "alignment: the host answered target-missing: commit may not have been pushed"
                ),
                Ok(answer) => tracing::info!(
                    host = %name, %url, head, status = %answer["status"],
                    "alignment: the host answered the update"
                ),
                Err(e) => {
                    tracing::warn!(host = %name, %url, "alignment: cannot reach the host: {e}")
                }
            }
        });
    }

    async fn post(&self, url: &str, head: &str) -> Result<Value, String> {
        let endpoint = format!("{}/admin/git-update", url.trim_end_matches('/'));
        let body = json!({"target_hash": head, "source_name": self.name, "source_url": self.url});
        let mut request = self.client.post(endpoint).json(&body);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let answer = request.send().await.map_err(|e| e.to_string())?;
        let status = answer.status();
        let value: Value = answer.json().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(format!("{status}: {}", value["error"]["message"]))
        }
    }
}
