//! Which paglets may run a message on the HTTP worker that received it: a small state machine
//! over the durations of their handlers, kept in one atomic word per paglet.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A handler faster than this, every time so far, may run on the HTTP worker directly.
const INLINE_BELOW: Duration = Duration::from_micros(50);
/// A message this slow from an eligible paglet sends it back to the pool for good (well
/// above the scheduling hiccups of a busy machine).
const DEMOTE_AT: Duration = Duration::from_millis(1);
/// How many fast messages, run on the pool, make a paglet eligible.
const INLINE_AFTER: u32 = 8;

/// Where a paglet stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speed {
    /// Not eligible yet: this many fast messages in a row (fewer than `INLINE_AFTER`).
    Learning(u32),
    /// Its messages may run inline.
    Eligible,
    /// One message was slow after it became eligible: never inline again.
    Demoted,
}

impl Speed {
    /// The state after a handler that took `took`.
    pub fn after(self, took: Duration) -> Speed {
        match self {
            Speed::Demoted => Speed::Demoted,
            Speed::Eligible if took >= DEMOTE_AT => Speed::Demoted,
            Speed::Eligible => Speed::Eligible,
            // A slow message (a cold first call, say) restarts the count.
            Speed::Learning(_) if took >= INLINE_BELOW => Speed::Learning(0),
            Speed::Learning(n) if n + 1 >= INLINE_AFTER => Speed::Eligible,
            Speed::Learning(n) => Speed::Learning(n + 1),
        }
    }

    fn encode(self) -> u32 {
        match self {
            Speed::Learning(n) => n.min(INLINE_AFTER - 1),
            Speed::Eligible => INLINE_AFTER,
            Speed::Demoted => u32::MAX,
        }
    }

    fn decode(word: u32) -> Speed {
        match word {
            u32::MAX => Speed::Demoted,
            n if n >= INLINE_AFTER => Speed::Eligible,
            n => Speed::Learning(n),
        }
    }
}

/// One paglet's [`Speed`], shared by the threads that run its messages.
#[derive(Debug, Default)]
pub struct InlineGate(AtomicU32);

impl InlineGate {
    /// True after enough fast messages in a row: the caller may run the next one on its own
    /// (HTTP) thread instead of handing it to the pool. One slow message after that ends this
    /// for good, so a long handler holds an HTTP worker at most once per paglet.
    pub fn open(&self) -> bool {
        self.speed() == Speed::Eligible
    }

    /// The current state.
    pub fn speed(&self) -> Speed {
        Speed::decode(self.0.load(Ordering::Relaxed))
    }

    /// Records a handler's duration.
    pub fn note(&self, took: Duration) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                Some(Speed::decode(word).after(took).encode())
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_micros(5);
    const MEDIUM: Duration = Duration::from_micros(200);
    const SLOW: Duration = Duration::from_millis(5);

    fn gate_after(durations: &[Duration]) -> InlineGate {
        let gate = InlineGate::default();
        for took in durations {
            gate.note(*took);
        }
        gate
    }

    #[test]
    fn a_new_paglet_runs_on_the_pool() {
        assert_eq!(InlineGate::default().speed(), Speed::Learning(0));
        assert!(!InlineGate::default().open());
    }

    #[test]
    fn enough_fast_messages_in_a_row_make_it_eligible() {
        let almost = gate_after(&[FAST; INLINE_AFTER as usize - 1]);
        assert_eq!(almost.speed(), Speed::Learning(INLINE_AFTER - 1));
        assert!(!almost.open());
        almost.note(FAST);
        assert!(almost.open());
    }

    #[test]
    fn a_slow_message_while_learning_restarts_the_count() {
        let mut durations = vec![FAST; INLINE_AFTER as usize - 1];
        durations.push(MEDIUM);
        let gate = gate_after(&durations);
        assert_eq!(gate.speed(), Speed::Learning(0));
        for _ in 0..INLINE_AFTER {
            gate.note(FAST);
        }
        assert!(gate.open());
    }

    #[test]
    fn an_eligible_paglet_tolerates_hiccups_below_the_demotion_bound() {
        let gate = gate_after(&[FAST; INLINE_AFTER as usize]);
        gate.note(MEDIUM);
        assert!(gate.open(), "200 µs is a hiccup, not a slow handler");
    }

    #[test]
    fn one_slow_message_after_eligibility_demotes_for_good() {
        let gate = gate_after(&[FAST; INLINE_AFTER as usize]);
        gate.note(SLOW);
        assert_eq!(gate.speed(), Speed::Demoted);
        for _ in 0..100 {
            gate.note(FAST);
        }
        assert_eq!(gate.speed(), Speed::Demoted);
        assert!(!gate.open());
    }

    #[test]
    fn every_state_survives_its_encoding() {
        for speed in [
            Speed::Learning(0),
            Speed::Learning(INLINE_AFTER - 1),
            Speed::Eligible,
            Speed::Demoted,
        ] {
            assert_eq!(Speed::decode(speed.encode()), speed);
        }
    }
}
