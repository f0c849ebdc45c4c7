//! Sleeping and waking: `deactivate` runs the paglet's `deactivating` hook, stores it as
//! `inactive` and frees it (its instance goes with its last job); `activate`, or the first
//! message to it, reads it back from the store and runs `activated`. Only a small row per
//! inactive paglet stays in memory, for listings. Also oneway messages, and where a job goes
//! once its paglet left this host's memory.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use plugin_api::{Hook, PagletError};
use serde_json::Value;

use super::code::Code;
use super::durable::not_persisted;
use super::mailbox::QueueAt;
use super::paglet::{Job, Paglet, Replier, Task};
use super::{PagletDetail, PagletSummary, Runtime, RuntimeError, lock};
use crate::store::Status;

/// What stays in memory of an inactive paglet: what `GET /paglets?status=inactive` shows.
#[derive(Debug, Clone)]
pub struct Sleeper {
    class: String,
    created_at: f64,
    messages_handled: u64,
}

/// Which paglets `GET /paglets` lists (`?status=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusFilter {
    /// Running ones (the default).
    #[default]
    Active,
    /// Sleeping in the store.
    Inactive,
    /// Those of a quarantined library.
    Quarantined,
    /// All of them.
    All,
}

impl StatusFilter {
    pub(super) fn active(self) -> bool {
        matches!(self, StatusFilter::Active | StatusFilter::All)
    }

    pub(super) fn quarantined(self) -> bool {
        matches!(self, StatusFilter::Quarantined | StatusFilter::All)
    }

    pub(super) fn inactive(self) -> bool {
        matches!(self, StatusFilter::Inactive | StatusFilter::All)
    }
}

/// Answers a job that cannot run with `error` (a task answers through its own replier when
/// it is dropped).
pub(super) fn fail_job(job: Job, error: RuntimeError) {
    match job {
        Job::Message { reply, .. } => reply.send(Err(error)),
        Job::Dispose { reply } => reply.send(Err(error)),
        Job::Migrate { done, .. } => done.send(Ok(())),
        Job::Checkpoint(_) | Job::Task(_) => {}
    }
}

impl Runtime {
    /// True when `id` sleeps in the store.
    pub fn is_inactive(&self, id: &str) -> bool {
        lock(&self.inactive).contains_key(id)
    }

    /// Remembers stored inactive paglets at start (their states stay in the store).
    pub(super) fn note_sleepers(&self, records: impl Iterator<Item = crate::store::Record>) {
        let mut inactive = lock(&self.inactive);
        for record in records {
            inactive.insert(
                record.id,
                Sleeper {
                    class: record.class,
                    created_at: record.created_at,
                    messages_handled: record.messages_handled,
                },
            );
        }
    }

    pub(super) fn sleepers(&self) -> Vec<PagletSummary> {
        lock(&self.inactive)
            .iter()
            .map(|(id, s)| PagletSummary {
                id: id.clone(),
                class: s.class.clone(),
                status: "inactive",
                created_at: s.created_at,
                messages_handled: s.messages_handled,
            })
            .collect()
    }

    pub(super) fn sleeper_detail(&self, id: &str) -> Option<PagletDetail> {
        let inactive = lock(&self.inactive);
        let sleeper = inactive.get(id)?;
        Some(PagletDetail {
            id: id.into(),
            class: sleeper.class.clone(),
            status: "inactive",
            created_at: sleeper.created_at,
            messages_handled: sleeper.messages_handled,
            busy: false,
            state: None,
            generation: None,
            sha256: None,
            oneway_failed: 0,
            crashes: 0,
            last_crash: None,
        })
    }

    /// Puts paglet `id` to sleep after the jobs queued before: its `deactivating` hook, its
    /// record stored as inactive (committed before `reply`), its memory freed. Messages that
    /// arrive meanwhile wake it again. An inactive paglet answers at once.
    pub fn deactivate(&self, id: &str, reply: Replier<()>) -> Result<(), RuntimeError> {
        let paglet = match self.paglet(id) {
            Ok(paglet) => paglet,
            Err(_) if self.is_inactive(id) => {
                reply.send(Ok(()));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if paglet.in_doubt.load(Ordering::Acquire) {
            return Err(RuntimeError::InDoubt(id.into()));
        }
        let me = self.me.clone();
        let task: Task = Box::new(move |paglet, instance| match me.upgrade() {
            Some(runtime) => reply.send(runtime.put_to_sleep(paglet, instance)),
            None => reply.send(Err(RuntimeError::ShuttingDown)),
        });
        paglet.push(Job::Task(task), QueueAt::Back, &self.pool);
        Ok(())
    }

    fn put_to_sleep(&self, paglet: &Paglet, instance: &mut Code) -> Result<(), RuntimeError> {
        if paglet.is_disposed() {
            return Err(RuntimeError::NoPaglet(paglet.id.clone()));
        }
        let saver = self.saver().ok_or(RuntimeError::NoStore)?;
        instance.hook(Hook::Deactivating)?;
        let mut record = paglet.record(instance)?;
        record.status = Status::Inactive;
        let sleeper = Sleeper {
            class: record.class.clone(),
            created_at: record.created_at,
            messages_handled: record.messages_handled,
        };
        saver
            .store()
            .change_and_wait(vec![(paglet.id.clone(), Some(record))], Vec::new())
            .map_err(not_persisted)?;
        {
            let mut table = self.paglets.write().unwrap_or_else(|p| p.into_inner());
            table.remove(&paglet.id);
            lock(&self.inactive).insert(paglet.id.clone(), sleeper);
        }
        let queued = paglet.depart(self.rerouter(&paglet.id));
        for job in queued {
            self.deliver(&paglet.id, job);
        }
        tracing::debug!(paglet = %paglet.id, "deactivated");
        Ok(())
    }

    /// Where the late jobs of a paglet that left this host's memory go: to it again
    /// (awake, asleep, or on the host it moved to).
    pub(super) fn rerouter(&self, id: &str) -> super::paglet::Reroute {
        let (me, id) = (self.me.clone(), id.to_string());
        Arc::new(move |job| match me.upgrade() {
            Some(runtime) => runtime.deliver(&id, job),
            None => fail_job(job, RuntimeError::ShuttingDown),
        })
    }

    /// Delivers `job` to paglet `id` wherever it is now: queued here, woken from the store,
    /// or sent to the host it moved to. Blocks while a sleeping paglet wakes.
    pub(super) fn deliver(&self, id: &str, job: Job) {
        // A checkpoint or a migration belonged to the instance that left: it never wakes or
        // follows the paglet.
        if matches!(job, Job::Checkpoint(_) | Job::Migrate { .. }) {
            return fail_job(job, RuntimeError::NoPaglet(id.into()));
        }
        if let Ok(paglet) = self.paglet(id) {
            return paglet.push(job, QueueAt::Back, &self.pool);
        }
        if self.is_inactive(id) {
            return match self.activate(id) {
                Ok(paglet) => paglet.push(job, QueueAt::Back, &self.pool),
                Err(e) => fail_job(job, e),
            };
        }
        match self.forward_url(id) {
            Some(url) => self.forward_jobs(url, id.to_string(), vec![job]),
            None => fail_job(job, RuntimeError::NoPaglet(id.into())),
        }
    }

    /// Wakes paglet `id`: reads it from the store, runs `activated`, stores it as active
    /// (committed before it serves) and returns it. An active paglet is returned as it is.
    /// Blocks on the store and the paglet's code.
    pub fn activate(&self, id: &str) -> Result<Arc<Paglet>, RuntimeError> {
        let _one = lock(&self.activating);
        if let Ok(paglet) = self.paglet(id) {
            return Ok(paglet);
        }
        if !self.is_inactive(id) {
            return Err(RuntimeError::NoPaglet(id.into()));
        }
        if self.is_shutting_down() {
            return Err(RuntimeError::ShuttingDown);
        }
        let saver = self.saver().ok_or(RuntimeError::NoStore)?;
        let record = saver
            .store()
            .get(id)
            .map_err(not_persisted)?
            .ok_or_else(|| RuntimeError::NoPaglet(id.into()))?;
        let lib = self.registry().class(&record.class)?;
        let state: Value = serde_json::from_str(&record.state)
            .map_err(|e| RuntimeError::Paglet(PagletError::Failed(format!("stored state: {e}"))))?;
        let context = self.context(id, &record.class);
        let mut instance = self.instantiate(
            &lib,
            &record.class,
            Some(&state),
            Some(record.state_version),
            context,
        )?;
        instance.hook(Hook::Activated)?;
        let mut paglet = Paglet::new(
            id.into(),
            record.class.clone(),
            lib,
            instance,
            Some(saver.clone()),
        );
        paglet.keep_history(record.created_at, record.messages_handled);
        let awake = paglet.with_instance(|instance| paglet.record(instance))?;
        paglet.note_saved(&awake.state);
        // Waking changes no state of its own but what `activated` did, which is durable as
        // any change is in this mode: waited for in `sync`, queued (written within the
        // window) otherwise. The state the paglet slept with is stored either way.
        if self.durability() == crate::store::Durability::Sync {
            saver
                .store()
                .change_and_wait(vec![(id.into(), Some(awake))], Vec::new())
                .map_err(not_persisted)?;
        } else {
            saver
                .store()
                .change(vec![(id.into(), Some(awake))], Vec::new(), None);
        }
        let paglet = Arc::new(paglet);
        {
            let mut table = self.paglets.write().unwrap_or_else(|p| p.into_inner());
            table.insert(id.into(), paglet.clone());
            lock(&self.inactive).remove(id);
        }
        tracing::debug!(paglet = %id, "activated");
        Ok(paglet)
    }

    /// Runs the operations paglet `id` asked for on itself before it was in the table.
    pub(super) fn run_deferred(&self, id: &str) {
        let requests = lock(&self.deferred).remove(id).unwrap_or_default();
        for (op, args) in requests {
            if let Err(e) = self.request_from(id, &op, &args) {
                tracing::warn!(paglet = %id, "{op} it asked for failed: {e}");
            }
        }
    }

    /// Queues a oneway message to `id` and returns its message id at once. Its reply is
    /// dropped; a failure is logged and counted in the paglet's `oneway_failed`.
    pub fn send_oneway(&self, id: &str, kind: &str, args: String) -> Result<String, RuntimeError> {
        let paglet = match self.paglet(id) {
            Ok(paglet) => paglet,
            Err(_) if self.is_inactive(id) => return Err(RuntimeError::Inactive(id.into())),
            Err(e) => return Err(e),
        };
        if paglet.in_doubt.load(Ordering::Acquire) {
            return Err(RuntimeError::InDoubt(id.into()));
        }
        let message_id = self.message_id();
        let job = Job::Message {
            kind: kind.into(),
            args,
            reply: self.oneway_replier(&paglet, &message_id, kind),
            inline: false,
        };
        paglet.push(job, QueueAt::Back, &self.pool);
        Ok(message_id)
    }

    /// A new oneway message id: this host's name and a counter.
    fn message_id(&self) -> String {
        format!(
            "{}-{}",
            self.host_name,
            self.next_message.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The replier of a oneway message: counts and logs a failure.
    fn oneway_replier(
        &self,
        paglet: &Arc<Paglet>,
        message_id: &str,
        kind: &str,
    ) -> Replier<String> {
        let target = Arc::downgrade(paglet);
        let (id, message_id, kind) = (paglet.id.clone(), message_id.to_string(), kind.to_string());
        Replier::new(move |result| {
            if let Err(e) = result {
                if let Some(paglet) = target.upgrade() {
                    paglet.oneway_failed.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(paglet = %id, message_id = %message_id, kind = %kind, "oneway message failed: {e}");
            }
        })
    }

    /// A oneway message from paglet `from` (inside its handler): queued to `to`, woken when
    /// asleep, sent on when it moved.
    pub(super) fn send_oneway_from(
        &self,
        from: &str,
        to: &str,
        kind: &str,
        args: &str,
    ) -> Result<String, PagletError> {
        let _ = from;
        if self.paglet(to).is_err() && self.is_inactive(to) {
            self.activate(to)
                .map_err(|e| PagletError::Failed(format!("cannot wake {to}: {e}")))?;
        }
        match self.send_oneway(to, kind, args.into()) {
            Ok(id) => Ok(id),
            Err(RuntimeError::NoPaglet(_)) if self.forward_url(to).is_some() => {
                let url = self.forward_url(to).unwrap_or_default();
                let message_id = self.message_id();
                let (id, mid, kind_owned) = (to.to_string(), message_id.clone(), kind.to_string());
                let reply = Replier::new(move |result: Result<String, RuntimeError>| {
                    if let Err(e) = result {
                        tracing::warn!(paglet = %id, message_id = %mid, kind = %kind_owned, "oneway message to a paglet that moved failed: {e}");
                    }
                });
                let job = Job::Message {
                    kind: kind.into(),
                    args: args.into(),
                    reply,
                    inline: false,
                };
                self.forward_jobs(url, to.to_string(), vec![job]);
                Ok(message_id)
            }
            Err(RuntimeError::Paglet(e)) => Err(e),
            Err(RuntimeError::NoPaglet(m)) => Err(PagletError::NotFound(m)),
            Err(e) => Err(PagletError::Failed(e.to_string())),
        }
    }

    /// Asks, from paglet `id`'s own handler, for an operation on itself; it runs after the
    /// handler returns (queued behind it). Answers what is known at once (the clone's id).
    pub(super) fn request_from(
        &self,
        id: &str,
        op: &str,
        args: &str,
    ) -> Result<String, PagletError> {
        if self.paglet(id).is_err() && op != "clone" {
            // Asked from a hook before the paglet is in the table (`arrived` after a
            // dispatch, `created`): it runs once the paglet is there.
            lock(&self.deferred)
                .entry(id.to_string())
                .or_default()
                .push((op.to_string(), args.to_string()));
            return Ok(serde_json::json!({ "id": id }).to_string());
        }
        let args: Value = serde_json::from_str(args).unwrap_or(Value::Null);
        let done = {
            let (id, op) = (id.to_string(), op.to_string());
            move |result: Result<String, RuntimeError>| {
                if let Err(e) = result {
                    tracing::warn!(paglet = %id, "{op} it asked for failed: {e}");
                }
            }
        };
        let failed = |e: RuntimeError| PagletError::Failed(format!("cannot {op}: {e}"));
        match op {
            "deactivate" => {
                let reply = Replier::new(move |r: Result<(), RuntimeError>| {
                    done(r.map(|()| String::new()))
                });
                self.deactivate(id, reply).map_err(failed)?;
                Ok(serde_json::json!({ "id": id }).to_string())
            }
            "dispatch" => {
                let to = args["to"].as_str().unwrap_or_default().to_string();
                let target = self.resolve(&to).map_err(failed)?;
                let reply = Replier::new(move |r: Result<super::ArrivalAnswer, RuntimeError>| {
                    done(r.map(|a| a.url))
                });
                self.dispatch(id, target, &to, plugin_api::ArrivalReason::Dispatch, reply)
                    .map_err(failed)?;
                Ok(serde_json::json!({ "id": id }).to_string())
            }
            "clone" => {
                let target = match args["to"].as_str() {
                    Some(to) => Some(self.resolve(to).map_err(failed)?),
                    None => None,
                };
                let new_id = match args["id"].as_str() {
                    Some(new_id) => new_id.to_string(),
                    None => {
                        let class = self.paglet(id).map_err(failed)?.class.clone();
                        self.fresh_id(&class)
                    }
                };
                let reply = Replier::new(move |r: Result<super::ArrivalAnswer, RuntimeError>| {
                    done(r.map(|a| a.id))
                });
                self.clone_paglet(id, target, Some(new_id.clone()), reply)
                    .map_err(failed)?;
                Ok(serde_json::json!({ "id": new_id }).to_string())
            }
            other => Err(PagletError::InvalidArgs(format!(
                "unknown operation '{other}': use dispatch, clone or deactivate"
            ))),
        }
    }
}
