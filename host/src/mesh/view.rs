//! The member table `/mesh/hosts` shows: one entry per host name, its state, its latest
//! metadata. A pure state machine fed by the membership task (foca's member list, leave
//! notices) and by metadata broadcasts; it never waits on anything.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::identity::HostId;
use super::meta::HostMeta;

/// A member's state as the contract names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// Answers probes.
    Alive,
    /// Missed probes; declared down unless it refutes in time.
    Suspect,
    /// Declared down (killed, unreachable).
    Down,
    /// Sent a leave notice: stopped gracefully.
    Left,
}

/// One other host.
#[derive(Debug, Clone)]
struct Entry {
    id: HostId,
    state: HostState,
    /// Unix seconds when it was last seen alive.
    last_seen: u64,
    /// Unix seconds of the latest state change (what forgetting counts from).
    since: u64,
}

/// One row of `GET /mesh/hosts`.
#[derive(Debug, Clone, Serialize)]
pub struct HostRow {
    /// The host's name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// True for the host answering.
    #[serde(rename = "self")]
    pub is_self: bool,
    /// alive, suspect, down or left.
    pub state: HostState,
    /// Its identity's generation (grows with every start).
    pub generation: u64,
    /// Its code version, once known.
    pub code_version: Option<String>,
    /// Its `--mesh-version` label.
    pub mesh_version: Option<String>,
    /// Its code version equals ours.
    pub compatible: bool,
    /// Unix seconds it was last seen alive.
    pub last_seen: u64,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its properties.
    pub properties: BTreeMap<String, String>,
    /// Its live paglets.
    pub paglets: u64,
    /// It runs with `--auto-update-from-git`.
    pub auto_update_from_git: bool,
}

/// How many other hosts are in each state (`mesh` in `/health`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    /// Alive.
    pub alive: usize,
    /// Suspect.
    pub suspect: usize,
    /// Down.
    pub down: usize,
    /// Left.
    pub left: usize,
}

/// The member table of one host.
#[derive(Debug)]
pub struct View {
    self_name: String,
    entries: BTreeMap<String, Entry>,
    /// Latest metadata per host name, this host's own included.
    metas: BTreeMap<String, HostMeta>,
    /// Names that sent a leave notice, with the generation they left as.
    left: BTreeMap<String, u64>,
}

impl View {
    /// An empty table for the host `self_name`.
    pub fn new(self_name: &str) -> View {
        View {
            self_name: self_name.to_string(),
            entries: BTreeMap::new(),
            metas: BTreeMap::new(),
            left: BTreeMap::new(),
        }
    }

    /// Takes foca's full member list at time `now` (unix seconds). A name seen with a newer
    /// generation is a new life of that host (restart or renewal): it replaces the entry.
    /// Hosts foca no longer lists keep their last state until forgotten.
    pub fn sync<'a>(&mut self, members: impl Iterator<Item = (&'a HostId, foca::State)>, now: u64) {
        for (id, state) in members {
            if id.name == self.self_name {
                continue;
            }
            let left = self.left.get(&id.name).is_some_and(|g| *g >= id.generation);
            let state = match state {
                _ if left => HostState::Left,
                foca::State::Alive => HostState::Alive,
                foca::State::Suspect => HostState::Suspect,
                foca::State::Down => HostState::Down,
            };
            match self.entries.get_mut(&id.name) {
                Some(entry) if entry.id.generation > id.generation => {}
                Some(entry) => {
                    if entry.state != state {
                        entry.since = now;
                    }
                    entry.id = id.clone();
                    entry.state = state;
                    if state == HostState::Alive {
                        entry.last_seen = now;
                    }
                }
                None => {
                    self.entries.insert(
                        id.name.clone(),
                        Entry {
                            id: id.clone(),
                            state,
                            last_seen: now,
                            since: now,
                        },
                    );
                }
            }
        }
    }

    /// A leave notice from `id`: listed as `left` until a newer generation shows up.
    pub fn mark_left(&mut self, id: &HostId, now: u64) {
        self.left.insert(id.name.clone(), id.generation);
        if let Some(entry) = self.entries.get_mut(&id.name)
            && entry.id.generation <= id.generation
        {
            entry.state = HostState::Left;
            entry.since = now;
        }
    }

    /// Drops down and left hosts whose state is older than `after`.
    pub fn forget(&mut self, now: u64, after: Duration) {
        let cutoff = now.saturating_sub(after.as_secs());
        let gone: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, HostState::Down | HostState::Left))
            .filter(|(_, e)| e.since < cutoff || after.is_zero())
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.entries.remove(&name);
            self.metas.remove(&name);
            self.left.remove(&name);
        }
    }

    /// Stores `meta` when it is newer than what we have for that host; true when it was.
    pub fn offer_meta(&mut self, meta: HostMeta) -> bool {
        match self.metas.get(&meta.name) {
            Some(known) if !meta.newer_than(known) => false,
            _ => {
                self.metas.insert(meta.name.clone(), meta);
                true
            }
        }
    }

    /// Every other host in `state`.
    pub fn in_state(&self, state: HostState) -> Vec<HostId> {
        self.entries
            .values()
            .filter(|e| e.state == state)
            .map(|e| e.id.clone())
            .collect()
    }

    /// The counts for `/health`.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for entry in self.entries.values() {
            *match entry.state {
                HostState::Alive => &mut counts.alive,
                HostState::Suspect => &mut counts.suspect,
                HostState::Down => &mut counts.down,
                HostState::Left => &mut counts.left,
            } += 1;
        }
        counts
    }

    /// The rows of `/mesh/hosts`: `me` first, then the others by name. `compatible` is
    /// equality with `me`'s code version.
    pub fn rows(&self, me: &HostMeta, now: u64) -> Vec<HostRow> {
        let ours = me.code_version.as_deref();
        let row = |id: &HostId, meta: Option<&HostMeta>, state, last_seen, is_self| {
            let meta = meta.cloned();
            let code_version = meta.as_ref().and_then(|m| m.code_version.clone());
            HostRow {
                name: id.name.clone(),
                url: id.url.clone(),
                is_self,
                state,
                generation: id.generation,
                compatible: ours.is_some() && code_version.as_deref() == ours,
                code_version,
                mesh_version: meta.as_ref().and_then(|m| m.mesh_version.clone()),
                last_seen,
                tags: meta.as_ref().map(|m| m.tags.clone()).unwrap_or_default(),
                properties: meta
                    .as_ref()
                    .map(|m| m.properties.clone())
                    .unwrap_or_default(),
                paglets: meta.as_ref().map_or(0, |m| m.paglets),
                auto_update_from_git: meta.as_ref().is_some_and(|m| m.auto_update_from_git),
            }
        };
        let me_id = HostId {
            name: me.name.clone(),
            url: me.url.clone(),
            generation: me.generation,
        };
        let mut rows = vec![row(&me_id, Some(me), HostState::Alive, now, true)];
        for entry in self.entries.values() {
            let meta = self.metas.get(&entry.id.name);
            rows.push(row(&entry.id, meta, entry.state, entry.last_seen, false));
        }
        rows
    }

    /// The latest metadata of `name`.
    pub fn meta(&self, name: &str) -> Option<&HostMeta> {
        self.metas.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, generation: u64) -> HostId {
        HostId {
            name: name.into(),
            url: format!("http://{name}:{generation}"),
            generation,
        }
    }

    fn state(view: &View, name: &str) -> Option<HostState> {
        view.entries.get(name).map(|e| e.state)
    }

    #[test]
    fn a_restart_under_the_same_name_is_one_entry_with_the_new_url() {
        let mut view = View::new("me");
        view.sync([(&id("b", 1), foca::State::Down)].into_iter(), 10);
        view.sync(
            [
                (&id("b", 1), foca::State::Down),
                (&id("b", 2), foca::State::Alive),
            ]
            .into_iter(),
            11,
        );
        assert_eq!(view.entries.len(), 1);
        assert_eq!(state(&view, "b"), Some(HostState::Alive));
        assert_eq!(view.entries["b"].id.url, "http://b:2");
    }

    #[test]
    fn left_holds_until_a_newer_generation_appears() {
        let mut view = View::new("me");
        view.sync([(&id("b", 1), foca::State::Alive)].into_iter(), 10);
        view.mark_left(&id("b", 1), 11);
        view.sync([(&id("b", 1), foca::State::Down)].into_iter(), 12);
        assert_eq!(state(&view, "b"), Some(HostState::Left));
        view.sync([(&id("b", 5), foca::State::Alive)].into_iter(), 13);
        assert_eq!(state(&view, "b"), Some(HostState::Alive));
    }

    #[test]
    fn down_and_left_hosts_are_forgotten_after_the_delay() {
        let mut view = View::new("me");
        view.sync(
            [
                (&id("a", 1), foca::State::Alive),
                (&id("b", 1), foca::State::Down),
            ]
            .into_iter(),
            100,
        );
        view.forget(150, Duration::from_secs(60));
        assert_eq!(view.entries.len(), 2);
        view.forget(200, Duration::from_secs(60));
        assert_eq!(view.entries.keys().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn compatible_means_an_equal_code_version() {
        let mut view = View::new("me");
        view.sync(
            [
                (&id("a", 1), foca::State::Alive),
                (&id("b", 1), foca::State::Alive),
            ]
            .into_iter(),
            1,
        );
        let meta = |name: &str, code: &str| HostMeta {
            name: name.into(),
            url: String::new(),
            generation: 1,
            seq: 1,
            code_version: Some(code.into()),
            mesh_version: None,
            tags: vec![],
            properties: BTreeMap::new(),
            paglets: 0,
            auto_update_from_git: false,
        };
        assert!(view.offer_meta(meta("a", "v1")));
        assert!(view.offer_meta(meta("b", "v2")));
        assert!(
            !view.offer_meta(meta("b", "v3")),
            "same (generation, seq) is not news"
        );
        let rows = view.rows(&meta("me", "v1"), 1);
        let compat: Vec<_> = rows
            .iter()
            .map(|r| (r.name.as_str(), r.compatible))
            .collect();
        assert_eq!(compat, [("me", true), ("a", true), ("b", false)]);
    }
}
