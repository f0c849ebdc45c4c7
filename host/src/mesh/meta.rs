//! What hosts tell each other about themselves beyond membership: code version, tags,
//! properties, paglet count. Spread as foca custom broadcasts (one JSON item per host,
//! a newer `(generation, seq)` replaces an older one) and fetched from `/health` when a
//! member comes up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use foca::{BroadcastHandler, Invalidates};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::identity::HostId;
use super::view::View;
use crate::runtime::lock;

/// One host's metadata, as it broadcasts it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostMeta {
    /// The host's name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Its start generation (fixed for the process).
    #[serde(default)]
    pub generation: u64,
    /// Grows with every change this process announces.
    #[serde(default)]
    pub seq: u64,
    /// What peers compare to decide `compatible`.
    #[serde(default)]
    pub code_version: Option<String>,
    /// The `--mesh-version` label.
    #[serde(default)]
    pub mesh_version: Option<String>,
    /// Normalized tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Properties.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Live paglets.
    #[serde(default)]
    pub paglets: u64,
    /// Runs with `--auto-update-from-git`.
    #[serde(default)]
    pub auto_update_from_git: bool,
}

impl HostMeta {
    /// The same content, ignoring the sequence number (what decides whether to announce).
    pub fn same_content(&self, other: &HostMeta) -> bool {
        HostMeta {
            seq: 0,
            ..self.clone()
        } == HostMeta {
            seq: 0,
            ..other.clone()
        }
    }

    /// Reads a member's `GET /health` answer; `None` when it is not a paglets host's.
    pub fn from_health(health: &Value) -> Option<HostMeta> {
        let mesh = &health["mesh"];
        let mut meta: HostMeta = serde_json::from_value(health.clone()).ok()?;
        meta.generation = mesh["generation"].as_u64().unwrap_or(0);
        meta.seq = mesh["seq"].as_u64().unwrap_or(0);
        Some(meta)
    }

    /// True when this is newer than `other` for the same host.
    pub fn newer_than(&self, other: &HostMeta) -> bool {
        (self.generation, self.seq) > (other.generation, other.seq)
    }
}

/// The identity of one broadcast item: a newer one for the same host replaces it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MetaKey {
    name: String,
    generation: u64,
    seq: u64,
}

impl Invalidates for MetaKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.name == other.name && (self.generation, self.seq) >= (other.generation, other.seq)
    }
}

/// Why a broadcast item was refused.
#[derive(Debug, thiserror::Error)]
#[error("bad metadata broadcast: {0}")]
pub struct MetaError(String);

/// Decodes broadcast items into the shared view; disseminates only news.
pub struct MetaHandler {
    /// The table of members and their metadata.
    pub view: Arc<Mutex<View>>,
}

impl BroadcastHandler<HostId> for MetaHandler {
    type Key = MetaKey;
    type Error = MetaError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&HostId>,
    ) -> Result<Option<MetaKey>, MetaError> {
        let meta: HostMeta = serde_json::from_slice(data).map_err(|e| MetaError(e.to_string()))?;
        if !crate::runtime::valid_id(&meta.name) {
            return Err(MetaError(format!("invalid host name '{}'", meta.name)));
        }
        let key = MetaKey {
            name: meta.name.clone(),
            generation: meta.generation,
            seq: meta.seq,
        };
        Ok(lock(&self.view).offer_meta(meta).then_some(key))
    }
}

/// Normalizes tags as the contract says: trimmed, lowercase, sorted, deduplicated, no
/// empty ones.
pub fn normalize_tags(tags: &[String]) -> Vec<String> {
    let mut tags: Vec<String> = tags
        .iter()
        .map(|t| t.trim().to_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    tags.sort();
    tags.dedup();
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_normalized() {
        let tags = [
            "  GPU".to_string(),
            "gpu".into(),
            "Zone-A ".into(),
            " ".into(),
        ];
        assert_eq!(normalize_tags(&tags), ["gpu", "zone-a"]);
    }

    #[test]
    fn a_newer_key_replaces_only_its_own_host() {
        let key = |name: &str, generation, seq| MetaKey {
            name: name.into(),
            generation,
            seq,
        };
        assert!(key("a", 1, 2).invalidates(&key("a", 1, 1)));
        assert!(key("a", 2, 0).invalidates(&key("a", 1, 9)));
        assert!(!key("a", 1, 1).invalidates(&key("a", 1, 2)));
        assert!(!key("b", 9, 9).invalidates(&key("a", 1, 1)));
    }
}
