//! A paglet's mailbox: its queued jobs and who drains them, as a state machine that runs no
//! job itself (the paglet does, with the mailbox unlocked).
//!
//! One drainer at a time: nobody, the pool, or a thread running jobs now. A message that may
//! run inline (see `inline.rs`) is run by an inline runner, a task of its own on the HTTP
//! worker that received it; a runner that finds another such message next starts the runner
//! for it, so messages from many connections to one paglet keep running inline one after
//! the other. Everything else goes to the pool.

use std::collections::VecDeque;

use super::pool::Lane;

/// What the mailbox needs to know of a job.
pub trait Queued {
    /// The lane a paglet with this job queued waits in.
    fn lane(&self) -> Lane;
    /// A migration: queued ahead of messages.
    fn is_migration(&self) -> bool;
    /// A message an inline runner may run.
    fn runs_inline(&self) -> bool;
}

/// Where [`Mailbox::push`] puts a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueAt {
    /// Behind everything queued (messages, disposal).
    Back,
    /// Ahead of queued messages, behind earlier migrations (reloads).
    AfterMigrations,
}

/// Who drains a mailbox.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Drainer {
    /// Nobody: the queue is empty.
    #[default]
    Nobody,
    /// The pool, once a worker takes it from this lane (it may sit in both lanes: the first
    /// worker to come takes it, the other entry finds nothing to do).
    Pool(Lane),
    /// A pool worker, an inline runner or an inline sender runs its jobs now.
    Running,
}

/// Who drains the mailbox next: what the caller of [`Mailbox::push`] or
/// [`Mailbox::settle`] must arrange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing: someone drains it already, or nothing is queued.
    Nothing,
    /// Submit the paglet to the pool, in this lane.
    Pool(Lane),
    /// Start an inline runner for the job at the front; the mailbox counts as drained
    /// meanwhile. Without a permit, [`Mailbox::hand_to_pool`] instead.
    Inline,
}

/// The queue and its drainer.
pub struct Mailbox<J> {
    pub queue: VecDeque<J>,
    pub drainer: Drainer,
}

impl<J> Default for Mailbox<J> {
    fn default() -> Self {
        Mailbox {
            queue: VecDeque::new(),
            drainer: Drainer::Nobody,
        }
    }
}

impl<J: Queued> Mailbox<J> {
    /// Queues `job`. A message that may run inline, for a paglet nobody drains, gets an
    /// inline runner; other work for nobody goes to the pool; a message for a paglet that
    /// waits in the background lane (migrations only) moves it to the urgent lane.
    pub fn push(&mut self, job: J, at: QueueAt) -> Next {
        let lane = job.lane();
        let inline = job.runs_inline();
        match at {
            QueueAt::Back => self.queue.push_back(job),
            QueueAt::AfterMigrations => {
                // Two reloads in a row while the paglet is busy must leave it on the newer
                // code.
                let index = self.queue.iter().take_while(|j| j.is_migration()).count();
                self.queue.insert(index, job);
            }
        }
        match self.drainer {
            Drainer::Nobody if inline && self.queue.len() == 1 => {
                self.drainer = Drainer::Running;
                Next::Inline
            }
            Drainer::Nobody => {
                self.drainer = Drainer::Pool(lane);
                Next::Pool(lane)
            }
            Drainer::Pool(Lane::Background) if lane == Lane::Urgent => {
                self.drainer = Drainer::Pool(Lane::Urgent);
                Next::Pool(lane)
            }
            Drainer::Pool(_) | Drainer::Running => Next::Nothing,
        }
    }

    /// Takes over draining if the mailbox is idle and empty, so a sender can run a job on
    /// its own thread. Pair with [`settle`](Mailbox::settle).
    pub fn try_claim(&mut self) -> bool {
        if self.drainer != Drainer::Nobody || !self.queue.is_empty() {
            return false;
        }
        self.drainer = Drainer::Running;
        true
    }

    /// A pool worker's claim: true unless someone else drains (this paglet was in both
    /// lanes, or a runner has it) or nothing is queued.
    pub fn claim_for_pool(&mut self) -> bool {
        match self.drainer {
            Drainer::Running => false,
            Drainer::Nobody | Drainer::Pool(_) if self.queue.is_empty() => {
                self.drainer = Drainer::Nobody;
                false
            }
            Drainer::Nobody | Drainer::Pool(_) => {
                self.drainer = Drainer::Running;
                true
            }
        }
    }

    /// The next job for a pool worker that drains.
    pub fn next(&mut self) -> Option<J> {
        self.queue.pop_front()
    }

    /// The job for an inline runner: the front one, when it may run inline. `None` when
    /// something else came first (a migration); then [`settle`](Mailbox::settle).
    pub fn next_inline(&mut self) -> Option<J> {
        if self.queue.front().is_some_and(Queued::runs_inline) {
            self.queue.pop_front()
        } else {
            None
        }
    }

    /// The drainer stops. An inline runner (`inline`) hands over to a runner for the next
    /// message when that may run inline; otherwise the pool takes what is queued, or nobody
    /// drains an empty queue.
    pub fn settle(&mut self, inline: bool) -> Next {
        match self.queue.front() {
            None => {
                self.drainer = Drainer::Nobody;
                Next::Nothing
            }
            Some(job) if inline && job.runs_inline() => Next::Inline,
            Some(_) => self.hand_to_pool(),
        }
    }

    /// The pool takes over (an inline runner could not start: no permit).
    pub fn hand_to_pool(&mut self) -> Next {
        if self.queue.is_empty() {
            self.drainer = Drainer::Nobody;
            return Next::Nothing;
        }
        let lane = self.lane();
        self.drainer = Drainer::Pool(lane);
        Next::Pool(lane)
    }

    /// The lane the queued jobs call for.
    fn lane(&self) -> Lane {
        if self.queue.iter().any(|job| job.lane() == Lane::Urgent) {
            Lane::Urgent
        } else {
            Lane::Background
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job for the tests: a message (which may run inline, or not) or a migration.
    #[derive(Debug, PartialEq)]
    enum Fake {
        Message(u32, bool),
        Migration(u32),
    }

    impl Queued for Fake {
        fn lane(&self) -> Lane {
            match self {
                Fake::Message(..) => Lane::Urgent,
                Fake::Migration(_) => Lane::Background,
            }
        }

        fn is_migration(&self) -> bool {
            matches!(self, Fake::Migration(_))
        }

        fn runs_inline(&self) -> bool {
            matches!(self, Fake::Message(_, true))
        }
    }

    fn id(job: &Fake) -> u32 {
        match job {
            Fake::Message(n, _) | Fake::Migration(n) => *n,
        }
    }

    fn drain(mailbox: &mut Mailbox<Fake>) -> Vec<u32> {
        std::iter::from_fn(|| mailbox.next())
            .map(|j| id(&j))
            .collect()
    }

    #[test]
    fn an_idle_mailbox_is_claimed_once_and_settles_back_to_nobody() {
        let mut mailbox = Mailbox::<Fake>::default();
        assert!(mailbox.try_claim());
        assert!(!mailbox.try_claim(), "one drainer at a time");
        assert_eq!(mailbox.settle(false), Next::Nothing);
        assert_eq!(mailbox.drainer, Drainer::Nobody);
        assert!(mailbox.try_claim());
    }

    #[test]
    fn work_for_nobody_goes_to_the_pool_and_a_message_hurries_it() {
        let mut mailbox = Mailbox::default();
        assert_eq!(
            mailbox.push(Fake::Migration(1), QueueAt::Back),
            Next::Pool(Lane::Background)
        );
        assert_eq!(
            mailbox.push(Fake::Message(2, true), QueueAt::Back),
            Next::Pool(Lane::Urgent),
            "an inline message behind other work waits for the pool"
        );
        assert_eq!(
            mailbox.push(Fake::Message(3, false), QueueAt::Back),
            Next::Nothing
        );
        assert!(!mailbox.try_claim(), "the pool has it");
        assert!(mailbox.claim_for_pool());
        assert!(
            !mailbox.claim_for_pool(),
            "the other lane's entry finds it taken"
        );
        assert_eq!(drain(&mut mailbox), [1, 2, 3]);
        assert_eq!(mailbox.settle(false), Next::Nothing);
        assert_eq!(mailbox.drainer, Drainer::Nobody);
    }

    #[test]
    fn migrations_go_ahead_of_messages_in_their_order() {
        let mut mailbox = Mailbox::default();
        assert!(mailbox.try_claim());
        mailbox.push(Fake::Message(1, false), QueueAt::Back);
        mailbox.push(Fake::Migration(2), QueueAt::AfterMigrations);
        mailbox.push(Fake::Message(3, false), QueueAt::Back);
        mailbox.push(Fake::Migration(4), QueueAt::AfterMigrations);
        assert_eq!(drain(&mut mailbox), [2, 4, 1, 3]);
    }

    #[test]
    fn an_inline_message_for_an_idle_paglet_gets_a_runner() {
        let mut mailbox = Mailbox::default();
        assert_eq!(
            mailbox.push(Fake::Message(1, true), QueueAt::Back),
            Next::Inline
        );
        assert_eq!(mailbox.drainer, Drainer::Running);
        assert!(!mailbox.claim_for_pool(), "the runner has it");
        assert_eq!(
            mailbox.push(Fake::Message(2, true), QueueAt::Back),
            Next::Nothing
        );
        assert_eq!(
            mailbox.push(Fake::Message(3, false), QueueAt::Back),
            Next::Nothing
        );
        assert_eq!(mailbox.next_inline().map(|j| id(&j)), Some(1));
        // The runner is done: message 2 gets the next runner, message 3 the pool.
        assert_eq!(mailbox.settle(true), Next::Inline);
        assert_eq!(mailbox.next_inline().map(|j| id(&j)), Some(2));
        assert_eq!(mailbox.settle(true), Next::Pool(Lane::Urgent));
        assert!(mailbox.claim_for_pool());
        assert_eq!(drain(&mut mailbox), [3]);
    }

    #[test]
    fn a_runner_without_a_permit_leaves_its_message_to_the_pool() {
        let mut mailbox = Mailbox::default();
        assert_eq!(
            mailbox.push(Fake::Message(1, true), QueueAt::Back),
            Next::Inline
        );
        assert_eq!(mailbox.hand_to_pool(), Next::Pool(Lane::Urgent));
        assert!(mailbox.claim_for_pool());
        assert_eq!(drain(&mut mailbox), [1]);
    }

    #[test]
    fn a_migration_that_came_ahead_goes_to_the_pool_with_the_message() {
        let mut mailbox = Mailbox::default();
        assert_eq!(
            mailbox.push(Fake::Message(1, true), QueueAt::Back),
            Next::Inline
        );
        mailbox.push(Fake::Migration(2), QueueAt::AfterMigrations);
        assert!(mailbox.next_inline().is_none());
        assert_eq!(mailbox.settle(true), Next::Pool(Lane::Urgent));
        assert!(mailbox.claim_for_pool());
        assert_eq!(drain(&mut mailbox), [2, 1]);
    }

    #[test]
    fn only_an_inline_runner_hands_over_to_the_next_runner() {
        let mut mailbox = Mailbox::default();
        assert!(mailbox.try_claim());
        mailbox.push(Fake::Message(1, true), QueueAt::Back);
        assert_eq!(
            mailbox.settle(false),
            Next::Pool(Lane::Urgent),
            "a pool worker or a sender hands over to the pool"
        );
    }
}
