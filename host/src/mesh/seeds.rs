//! Joining through seeds: fetch each seed's identity (`GET /mesh/identity`) and announce
//! to it, again every few seconds, so a seed that was down at start is joined when it comes
//! up and a late host is known everywhere quickly. A seed that refuses our key or is not a
//! paglets host is logged once and never listed.

use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use super::swim::Event;
use super::transport::FetchError;

/// Announcements in quick succession right after start: a seed's answer lists the members
/// it knows at that moment, and hosts that start together learn of each other through the
/// later answers instead of waiting a whole period.
const EARLY_ROUNDS: u32 = 4;

/// Announces to every seed now, a few times in the first period, and then every `every`,
/// until the host stops.
pub async fn run(shared: Arc<Shared>, seeds: Vec<String>, self_name: String, every: Duration) {
    if seeds.is_empty() {
        return;
    }
    let early = every / (EARLY_ROUNDS + 1);
    for round in 0.. {
        if round > 0 {
            let pause = if round <= EARLY_ROUNDS { early } else { every };
            tokio::time::sleep(pause).await;
        }
        for seed in &seeds {
            let (shared, seed, self_name) = (shared.clone(), seed.clone(), self_name.clone());
            tokio::spawn(async move { announce(&shared, &seed, &self_name).await });
        }
    }
}

async fn announce(shared: &Shared, seed: &str, self_name: &str) {
    let transport = &shared.transport;
    match transport.identity(seed).await {
        Ok(id) if id.name == self_name => {
            if transport.first_time(seed, "self") {
                tracing::info!(seed, "this seed is this host's own name; skipped");
            }
        }
        Ok(id) => {
            transport.recovered(seed);
            let _ = shared.tx.send(Event::Announce(id)).await;
        }
        Err(e @ (FetchError::Unauthorized | FetchError::NotPaglets(_))) => {
            if transport.first_time(seed, "refused") {
                tracing::warn!(seed, "mesh seed: {e}");
            }
        }
        Err(e @ FetchError::Unreachable(_)) => {
            if transport.first_time(seed, "unreachable") {
                tracing::warn!(seed, "mesh seed {e}; retrying");
            }
        }
    }
}
