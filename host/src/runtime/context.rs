//! What a paglet may ask of its host, host side: [`HostContext`] (one per paglet) and the
//! paglet-to-paglet send, checked against the wait-for graph and the in-flight budget.

use std::sync::{Arc, Weak};

use plugin_api::PagletError;
use plugin_api::loader;
use serde_json::Value;

use super::mailbox::QueueAt;
use super::paglet::{Job, Replier};
use super::{Origin, Runtime, RuntimeError, deadlock};

impl Runtime {
    /// A message from paglet `from` (inside its handler) to `to`. When `to` is idle it runs
    /// on the sender's own thread, inside the sender's handler, so the sender's handler
    /// timeout bounds it (its caller gets 504 past it); otherwise it is queued and waited
    /// for at most the send timeout (the handler timeout, or 30 s when that is off). A send
    /// that would wait on itself (through any chain of sends in flight, whichever call
    /// started them) fails at once with [`PagletError::Deadlock`]; one whose arguments do
    /// not fit the in-flight budget fails too.
    fn send_from(
        &self,
        from: &str,
        to: &str,
        kind: &str,
        args: &str,
    ) -> Result<String, PagletError> {
        let _waiting = self
            .waits
            .wait(from, to)
            .map_err(|cycle| deadlock(&cycle))?;
        let _held = self.in_flight.hold(args.len()).map_err(|held| {
            PagletError::Failed(format!(
                "cannot send {kind} to {to}: its {} bytes of arguments would take the bytes \
                 held by sends between paglets in flight ({held}) past the budget of {}",
                args.len(),
                self.in_flight.budget()
            ))
        })?;
        let target = match self.paglet(to) {
            Ok(target) => target,
            Err(_) if self.is_inactive(to) => self
                .activate(to)
                .map_err(|e| PagletError::Failed(format!("cannot wake {to}: {e}")))?,
            Err(e) => match self.forward_url(to) {
                // It moved: the message follows it there.
                Some(url) => {
                    return self.send_remote(&url, to, kind, args).map_err(|e| match e {
                        RuntimeError::Paglet(e) => e,
                        other => PagletError::Failed(other.to_string()),
                    });
                }
                None => return Err(PagletError::NotFound(e.to_string())),
            },
        };
        if target.in_doubt.load(std::sync::atomic::Ordering::Acquire) {
            return Err(PagletError::Failed(
                RuntimeError::InDoubt(to.into()).to_string(),
            ));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let job = Job::Message {
            kind: kind.into(),
            args: args.into(),
            reply: Replier::new(move |r| drop(tx.send(r))),
            inline: false,
        };
        // The sender may be an inline runner on an HTTP worker (see `ask.rs`): tell tokio
        // before that thread waits for another process or for a queue, so the worker's other
        // tasks move to another thread.
        let on_tokio_worker = super::on_tokio_worker();
        if target.try_claim() {
            let run = || {
                target.run(job);
                target.release(&self.pool);
            };
            if on_tokio_worker && target.is_isolated() {
                tokio::task::block_in_place(run);
            } else {
                run();
            }
        } else {
            target.push(job, QueueAt::Back, &self.pool);
        }
        let limit = self.send_timeout(&target);
        let wait = || rx.recv_timeout(limit);
        let answer = if on_tokio_worker {
            tokio::task::block_in_place(wait)
        } else {
            wait()
        };
        match answer {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(RuntimeError::Paglet(e))) => Err(e),
            Ok(Err(e)) => Err(PagletError::Failed(e.to_string())),
            Err(_) => Err(PagletError::Failed(format!(
                "no reply from {to} within {}s",
                limit.as_secs_f64()
            ))),
        }
    }
}

/// The host context of one paglet: what its code may ask of the host (the runtime's side of
/// [`loader::HostContext`]).
pub struct HostContext {
    pub(super) runtime: Weak<Runtime>,
    pub(super) id: String,
    pub(super) class: String,
}

impl HostContext {
    fn runtime(&self) -> Result<Arc<Runtime>, PagletError> {
        self.runtime
            .upgrade()
            .ok_or_else(|| PagletError::Failed("the host is stopping".into()))
    }
}

impl loader::HostContext for HostContext {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn host_name(&self) -> String {
        self.runtime
            .upgrade()
            .map(|r| r.host_name.clone())
            .unwrap_or_default()
    }

    fn send(&self, to: &str, kind: &str, args: &str) -> Result<String, PagletError> {
        self.runtime()?.send_from(&self.id, to, kind, args)
    }

    fn create(&self, class: &str, state: &str, id: Option<&str>) -> Result<String, PagletError> {
        let state: Value = serde_json::from_str(state)
            .map_err(|e| PagletError::InvalidArgs(format!("state is not JSON: {e}")))?;
        self.runtime()?
            .create_for(Some(&self.id), class, Some(&state), id, Origin::New)
            .map_err(|e| match e {
                RuntimeError::Paglet(e) => e,
                other => PagletError::Failed(other.to_string()),
            })
    }

    fn send_oneway(&self, to: &str, kind: &str, args: &str) -> Result<String, PagletError> {
        self.runtime()?.send_oneway_from(&self.id, to, kind, args)
    }

    fn request(&self, op: &str, args: &str) -> Result<String, PagletError> {
        self.runtime()?.request_from(&self.id, op, args)
    }

    fn log(&self, level: tracing::Level, target: &str, message: &str) {
        let (id, class) = (self.id.as_str(), self.class.as_str());
        match level {
            tracing::Level::ERROR => {
                tracing::error!(paglet = id, class, source = target, "{message}")
            }
            tracing::Level::WARN => {
                tracing::warn!(paglet = id, class, source = target, "{message}")
            }
            tracing::Level::INFO => {
                tracing::info!(paglet = id, class, source = target, "{message}")
            }
            tracing::Level::DEBUG => {
                tracing::debug!(paglet = id, class, source = target, "{message}")
            }
            _ => tracing::trace!(paglet = id, class, source = target, "{message}"),
        }
    }
}
