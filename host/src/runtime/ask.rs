//! A message over HTTP, from request to answer. The request's task never runs paglet code:
//! it queues the message and waits for the answer, at most the handler timeout (then
//! [`RuntimeError::HandlerTimeout`]; the handler runs on, since in-process code cannot be
//! stopped). The message runs in an inline runner when it may (see `inline.rs`): a task
//! spawned on the same HTTP worker, which runs it right after the request's task yields, with
//! no thread hand-off; otherwise on the pool.
//!
//! The runner is a task of its own so that the request's task stays free to answer 504 from
//! another worker while a handler runs long.

use std::sync::Arc;

use plugin_api::PagletError;
use tokio::sync::oneshot;

use super::inline::{Permit, Permits};
use super::mailbox::QueueAt;
use super::paglet::{Job, Paglet, Replier};
use super::pool::Pool;
use super::{Runtime, RuntimeError};

impl Runtime {
    /// Sends a message to `id` and waits for the answer, at most the handler timeout.
    pub async fn ask(&self, id: &str, kind: &str, args: String) -> Result<String, RuntimeError> {
        let paglet = self.for_message(id)?;
        let (tx, answer) = oneshot::channel();
        let inline = paglet.runs_inline();
        let job = Job::Message {
            kind: kind.into(),
            args,
            reply: Replier::new(move |r| drop(tx.send(r))),
            inline,
        };
        if paglet.is_isolated() {
            // Its worker process is stopped at its library's handler timeout.
            self.send_isolated(&paglet, job);
        } else if !inline {
            paglet.push(job, QueueAt::Back, &self.pool);
        } else if paglet.push_inline(job, &self.pool) {
            start_runner(paglet.clone(), self.pool.clone(), self.permits.clone());
        }
        let answer = match self.handler_timeout_of(&paglet) {
            Some(limit) => tokio::time::timeout(limit, answer)
                .await
                .map_err(|_| RuntimeError::waited_past(limit))?,
            None => answer.await,
        };
        answer.unwrap_or_else(|_| {
            Err(PagletError::failed("the answer was lost before it came").into())
        })
    }
}

/// Starts an inline runner for the message at the front of `paglet`'s mailbox, or leaves it
/// to the pool when every inline permit is taken.
fn start_runner(paglet: Arc<Paglet>, pool: Pool, permits: Arc<Permits>) {
    match permits.try_acquire() {
        Some(permit) => {
            tokio::spawn(async move { run_inline(paglet, pool, permits, permit) });
        }
        None => paglet.hand_to_pool(&pool),
    }
}

/// An inline runner: runs the message at the front, then starts the runner of the next one
/// when that may run inline too.
fn run_inline(paglet: Arc<Paglet>, pool: Pool, permits: Arc<Permits>, permit: Permit) {
    if let Some(job) = paglet.next_inline(&pool) {
        paglet.run(job);
    }
    drop(permit);
    if paglet.settle_inline(&pool) {
        start_runner(paglet, pool, permits);
    }
}
