//! A host's mesh identity: its name (foca's address), its URL and a generation that grows
//! on every start, so a host restarted under the same name replaces its old entry.

use foca::Identity;
use serde::{Deserialize, Serialize};

/// Longest URL a mesh identity may carry.
const MAX_URL: usize = 2048;

/// Who a mesh member is, as foca sees it. Two identities with the same name are the same
/// host: the one with the higher generation wins.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostId {
    /// The host's `--name`.
    pub name: String,
    /// Where its HTTP API answers.
    pub url: String,
    /// Grows on every start (microseconds since the epoch at start) and by one on every
    /// renewal after the host was declared down.
    pub generation: u64,
}

impl HostId {
    /// True when the fields are what a host could have sent: a valid host name and an
    /// http(s) URL of bounded length. Everything decoded from the wire is checked with this.
    pub fn is_valid(&self) -> bool {
        crate::runtime::valid_id(&self.name)
            && self.url.len() <= MAX_URL
            && (self.url.starts_with("http://") || self.url.starts_with("https://"))
    }
}

impl Identity for HostId {
    type Addr = String;

    /// After being declared down (a frozen process that wakes up), come back as the next
    /// generation: peers then take it as newer than the down entry.
    fn renew(&self) -> Option<Self> {
        Some(HostId {
            generation: self.generation.saturating_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> String {
        self.name.clone()
    }

    /// The later start wins; the URL only breaks a tie, so every host picks the same winner.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, &self.url) > (adversary.generation, &adversary.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(url: &str, generation: u64) -> HostId {
        HostId {
            name: "alpha".into(),
            url: url.into(),
            generation,
        }
    }

    #[test]
    fn the_newer_generation_wins_an_address_conflict() {
        let old = id("http://127.0.0.1:1", 5);
        let new = id("http://127.0.0.1:2", 6);
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
        assert_eq!(old.addr(), new.addr());
    }

    #[test]
    fn renewal_is_the_next_generation_at_the_same_url() {
        let renewed = id("http://h:1", 7).renew().expect("renews");
        assert_eq!(renewed.generation, 8);
        assert_eq!(renewed.url, "http://h:1");
    }

    #[test]
    fn identities_from_the_wire_are_checked() {
        assert!(id("http://h:1", 1).is_valid());
        assert!(!id("ftp://h", 1).is_valid());
        let bad_name = HostId {
            name: "../x".into(),
            ..id("http://h:1", 1)
        };
        assert!(!bad_name.is_valid());
    }
}
