//! What paglet-to-paglet sends hold while they wait: the wait-for graph (who waits for whom,
//! to refuse a send that would wait on itself) and the bytes of their arguments (bounded, and
//! given back to the system once the sends are over).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::lock;

/// Sends waiting for an answer, as edges `waiter → awaited`. A paglet runs one job at a time,
/// so it waits for at most one other, but the same id may briefly appear twice (two creates
/// of one id racing), hence a list.
#[derive(Default)]
pub struct WaitGraph {
    edges: Mutex<HashMap<String, Vec<String>>>,
}

/// A recorded wait; dropping it removes the edge.
pub struct Waiting<'a> {
    graph: &'a WaitGraph,
    from: String,
    to: String,
}

impl WaitGraph {
    /// Records that `from` waits for `to`, unless `to` already waits (directly or through
    /// others) for `from`: then nothing is recorded and the cycle is returned, starting and
    /// ending at `from` (e.g. `["a", "b", "a"]`).
    pub fn wait(&self, from: &str, to: &str) -> Result<Waiting<'_>, Vec<String>> {
        let mut edges = lock(&self.edges);
        if let Some(path) = path(&edges, to, from) {
            let mut cycle = vec![from.to_string()];
            cycle.extend(path);
            return Err(cycle);
        }
        edges
            .entry(from.to_string())
            .or_default()
            .push(to.to_string());
        Ok(Waiting {
            graph: self,
            from: from.into(),
            to: to.into(),
        })
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut edges = lock(&self.graph.edges);
        if let Some(targets) = edges.get_mut(&self.from) {
            if let Some(at) = targets.iter().position(|t| *t == self.to) {
                targets.swap_remove(at);
            }
            if targets.is_empty() {
                edges.remove(&self.from);
            }
        }
    }
}

/// A path of edges from `start` to `goal` (both included), if any.
fn path(edges: &HashMap<String, Vec<String>>, start: &str, goal: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![start.to_string()]];
    let mut seen = std::collections::HashSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last()?;
        if last == goal {
            return Some(path);
        }
        if !seen.insert(last.clone()) {
            continue;
        }
        for next in edges.get(last).into_iter().flatten() {
            let mut longer = path.clone();
            longer.push(next.clone());
            stack.push(longer);
        }
    }
    None
}

/// After in-flight bytes peaked at least this high, their end gives memory back to the
/// system.
const TRIM_AFTER: usize = 8 << 20;

/// The bytes of arguments held by paglet-to-paglet sends in flight, bounded.
pub struct InFlight {
    budget: usize,
    held: AtomicUsize,
    peak: AtomicUsize,
}

/// Bytes held by one send; dropping it gives them back.
pub struct Held<'a> {
    in_flight: &'a InFlight,
    bytes: usize,
}

impl InFlight {
    /// A budget of `budget` bytes.
    pub fn new(budget: usize) -> InFlight {
        InFlight {
            budget,
            held: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Takes `bytes` from the budget, or says how much is held when they do not fit.
    pub fn hold(&self, bytes: usize) -> Result<Held<'_>, usize> {
        let mut total = 0;
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                total = held;
                let after = held.checked_add(bytes)?;
                (after <= self.budget).then_some(after)
            })?;
        self.peak.fetch_max(total + bytes, Ordering::Relaxed);
        Ok(Held {
            in_flight: self,
            bytes,
        })
    }

    /// The budget in bytes.
    pub fn budget(&self) -> usize {
        self.budget
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let left = self.in_flight.held.fetch_sub(self.bytes, Ordering::AcqRel) - self.bytes;
        if left == 0 && self.in_flight.peak.swap(0, Ordering::Relaxed) >= TRIM_AFTER {
            give_back_memory();
        }
    }
}

/// Returns freed heap memory to the system. glibc keeps freed blocks in its arenas (one per
/// thread that allocated), so a burst of large messages would otherwise stay resident.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(super) fn give_back_memory() {
    // SAFETY: `malloc_trim` only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(super) fn give_back_memory() {}

/// Blocks this large or larger get their own mapping, returned to the system when freed.
const MMAP_AT: usize = 256 << 10;

/// Makes glibc map large blocks (message arguments, replies, their JSON) on their own and
/// unmap them when freed. By default it raises that threshold to the largest block freed so
/// far (up to 32 MiB), after which large blocks come from per-thread arenas whose free space
/// `malloc_trim` does not give back: after a burst of 1 MiB messages the host stayed ten
/// times its size.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn map_large_blocks() {
    // SAFETY: `mallopt` only changes the allocator's thresholds; an error leaves them as
    // they were.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_AT as libc::c_int) };
    if ok == 0 {
        tracing::warn!("could not set the allocator's mmap threshold");
    }
}

/// Nothing to do where glibc is not the allocator.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn map_large_blocks() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_to_oneself_is_a_cycle() {
        let graph = WaitGraph::default();
        assert_eq!(
            graph.wait("a", "a").err(),
            Some(vec!["a".into(), "a".into()])
        );
    }

    #[test]
    fn opposing_waits_are_a_cycle_named_from_the_second_waiter() {
        let graph = WaitGraph::default();
        let _a = graph.wait("a", "b").expect("a waits for b");
        let _b = graph.wait("b", "c").expect("b waits for c");
        assert_eq!(
            graph.wait("c", "a").err(),
            Some(vec!["c".into(), "a".into(), "b".into(), "c".into()])
        );
    }

    #[test]
    fn a_finished_wait_is_forgotten() {
        let graph = WaitGraph::default();
        drop(graph.wait("a", "b").expect("a waits for b"));
        assert!(graph.wait("b", "a").is_ok());
    }

    #[test]
    fn two_waiters_on_one_paglet_are_no_cycle() {
        let graph = WaitGraph::default();
        let _a = graph.wait("a", "c").expect("a waits for c");
        let _b = graph.wait("b", "c").expect("b waits for c");
        assert!(graph.wait("c", "d").is_ok());
    }

    #[test]
    fn the_budget_refuses_what_does_not_fit_and_takes_back_what_ends() {
        let in_flight = InFlight::new(100);
        let first = in_flight.hold(60).expect("fits");
        assert_eq!(in_flight.hold(41).err(), Some(60));
        let second = in_flight.hold(40).expect("fits exactly");
        drop(first);
        drop(second);
        assert!(in_flight.hold(100).is_ok());
    }
}
