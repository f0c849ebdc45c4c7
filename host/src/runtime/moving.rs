//! Paglets that move between hosts: dispatch, clone and retract, arrivals, forwarding, and
//! the settling of transfers in doubt.
//!
//! Only state moves. A dispatch runs on the paglet's turn (after the jobs queued before it;
//! messages that come meanwhile wait behind it): the `dispatching` hook, then a departing
//! record (the whole arrival body, with a fresh transfer id) committed to the store, then
//! `POST /mesh/arrivals` on the target. The target runs `arrived`, commits the paglet with
//! the transfer id in one transaction and answers; only then is the paglet removed here (in
//! one transaction with the departing record, and a forward to its new host recorded), and
//! the messages that waited follow it. Any HTTP answer but 200 is a refusal (the target
//! commits nothing before it answers 200); a connection refused sent nothing; anything else
//! (a timeout, a cut connection) leaves the transfer in doubt: the paglet stays here, refuses
//! messages with 503 `transfer-in-doubt`, and the same body is re-sent every second until
//! the target answers. The target answers a transfer id it already took with "already
//! accepted", so a re-send never makes a second copy; a source that restarts finds its
//! departing records and settles them the same way.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::code::Code;
use plugin_api::{Arrival, ArrivalReason, Hook, PagletError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::durable::not_persisted;
use super::lifecycle::fail_job;
use super::mailbox::QueueAt;
use super::paglet::{Job, Paglet, Replier, Task};
use super::{Runtime, RuntimeError, lock, valid_id};
use crate::mesh::HostState;
use crate::mesh::Mesh;
use crate::registry::unix_seconds;
use crate::store::{Direction, Extra, Forward, Record, Transfer};

/// How often an unsettled transfer is sent again.
const SETTLE_EVERY: Duration = Duration::from_secs(1);
/// Redirects a forwarded request follows at most.
const MAX_HOPS: usize = 3;

/// What the runtime needs to talk to other hosts; attached once the async runtime runs.
pub struct Net {
    /// The async runtime's handle (requests run there).
    pub handle: tokio::runtime::Handle,
    /// One pooled client; it never follows redirects itself.
    pub client: reqwest::Client,
    /// This host's name.
    pub name: String,
    /// This host's public URL.
    pub url: String,
    /// The API key, sent to mesh members and to hosts paglets were sent to.
    pub api_key: Option<Arc<str>>,
    /// The mesh, to resolve host names and check compatibility.
    pub mesh: Arc<Mesh>,
    /// How long a source waits for an arrival's answer before the transfer is in doubt.
    pub transfer_timeout: Duration,
    /// How long requests for a paglet that left are answered with 308.
    pub forward_ttl: Duration,
}

/// The other end of a transfer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peer {
    /// Its mesh name (empty when only its URL is known).
    pub name: String,
    /// Its URL.
    pub url: String,
}

/// A paglet as it travels: its record, with the state as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MovedPaglet {
    id: String,
    class: String,
    state: Value,
    state_version: u32,
    library: String,
    library_version: String,
    library_sha256: String,
    created_at: f64,
    messages_handled: u64,
}

impl MovedPaglet {
    fn from_record(record: &Record) -> Result<MovedPaglet, RuntimeError> {
        Ok(MovedPaglet {
            id: record.id.clone(),
            class: record.class.clone(),
            state: serde_json::from_str(&record.state).map_err(|e| {
                RuntimeError::Paglet(PagletError::Failed(format!("its state is not JSON: {e}")))
            })?,
            state_version: record.state_version,
            library: record.library.clone(),
            library_version: record.library_version.clone(),
            library_sha256: record.library_sha256.clone(),
            created_at: record.created_at,
            messages_handled: record.messages_handled,
        })
    }
}

/// `POST /mesh/arrivals` body: one arriving paglet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArrivalBody {
    /// Makes a re-send safe: the same id is accepted once.
    pub transfer_id: String,
    /// `dispatch`, `clone` or `retract`.
    pub reason: ArrivalReason,
    /// The host it comes from.
    pub source: Peer,
    /// The paglet.
    pub paglet: MovedPaglet,
}

/// What a host answers an arrival it took, and what dispatch, clone and retract answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArrivalAnswer {
    /// The paglet's id there.
    pub id: String,
    /// The host's name.
    pub host: String,
    /// The host's URL.
    pub url: String,
    /// `new`, or `already` for a transfer id taken before.
    #[serde(default)]
    pub accepted: String,
}

/// Where a paglet goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// The mesh name, when it is a mesh host.
    pub name: Option<String>,
    /// Its URL.
    pub url: String,
}

/// How a send of an arrival ended.
enum Outcome {
    /// 200: the target holds it.
    Accepted(ArrivalAnswer),
    /// Any other answer: the target holds nothing.
    Refused(RuntimeError),
    /// No connection: nothing was sent.
    Unsent(String),
    /// Sent, no answer: the target may or may not hold it.
    InDoubt(String),
}

/// A transfer id: this host, the time and a counter; never repeats on one host.
fn transfer_id(host: &str, n: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{host}-{nanos:x}-{n}")
}

/// Runs `fut` on the async runtime from blocking code (a paglet worker, or a handler that
/// runs on an HTTP worker, which tokio is told about first).
fn block_on<F: std::future::Future>(handle: &tokio::runtime::Handle, fut: F) -> F::Output {
    super::blocking_here(|| handle.block_on(fut))
}

/// The error another host answered, relayed as it was.
fn remote_error(status: u16, body: &[u8]) -> RuntimeError {
    let parsed: Option<(String, String)> =
        serde_json::from_slice::<Value>(body).ok().and_then(|v| {
            let error = v.get("error")?;
            Some((
                error.get("code")?.as_str()?.to_string(),
                error.get("message")?.as_str()?.to_string(),
            ))
        });
    let (code, message) = parsed.unwrap_or_else(|| {
        (
            "bad-gateway".into(),
            format!(
                "the other host answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        )
    });
    match code.as_str() {
        "class-missing" => RuntimeError::ClassMissing(message),
        "incompatible-code" => RuntimeError::Incompatible(message),
        _ => RuntimeError::Remote {
            status,
            code,
            message,
        },
    }
}

impl Net {
    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, url);
        match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// True when `url` is on a current mesh member (or this host).
    fn is_member_url(&self, url: &str) -> bool {
        self.mesh.hosts().iter().any(|h| {
            let base = h.url.trim_end_matches('/');
            url.strip_prefix(base)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    /// Posts an arrival body to `url` and reads the answer.
    async fn post_arrival(&self, url: &str, body: String) -> Outcome {
        let sent = self
            .request(reqwest::Method::POST, &format!("{url}/mesh/arrivals"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(self.transfer_timeout)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) if e.is_connect() => return Outcome::Unsent(format!("cannot reach {url}: {e}")),
            Err(e) => return Outcome::InDoubt(format!("no answer from {url}: {e}")),
        };
        let status = response.status().as_u16();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) if status == 200 => {
                return Outcome::InDoubt(format!("the answer of {url} was cut: {e}"));
            }
            Err(_) => Default::default(),
        };
        if status != 200 {
            return Outcome::Refused(remote_error(status, &bytes));
        }
        match serde_json::from_slice(&bytes) {
            Ok(answer) => Outcome::Accepted(answer),
            Err(e) => Outcome::InDoubt(format!("{url} answered 200 with an unreadable body: {e}")),
        }
    }

    /// Sends `method` `path` with `body` to `url`, following up to three 308s (the key goes
    /// again to each hop); returns the final status and body.
    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        path: &str,
        body: Option<String>,
        timeout: Duration,
    ) -> Result<(u16, bytes::Bytes), RuntimeError> {
        let mut target = format!("{url}{path}");
        for hop in 0..=MAX_HOPS {
            // The key goes to the host asked first (a paglet was sent there, or it is a mesh
            // member) and, on a redirect, only to current mesh members.
            let trusted = hop == 0 || self.is_member_url(&target);
            let mut request = if trusted {
                self.request(method.clone(), &target)
            } else {
                self.client.request(method.clone(), &target)
            }
            .timeout(timeout);
            if let Some(body) = &body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            } else if method == reqwest::Method::POST {
                request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
            }
            let response = request
                .send()
                .await
                .map_err(|e| RuntimeError::Unreachable(format!("cannot reach {target}: {e}")))?;
            let status = response.status().as_u16();
            if status == 308 {
                match response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                {
                    Some(location) => {
                        target = location.to_string();
                        continue;
                    }
                    None => {
                        return Err(RuntimeError::Unreachable(format!(
                            "{target} answered 308 without a Location"
                        )));
                    }
                }
            }
            let bytes = response
                .bytes()
                .await
                .map_err(|e| RuntimeError::Unreachable(format!("reading {target}: {e}")))?;
            return Ok((status, bytes));
        }
        Err(RuntimeError::Unreachable(format!(
            "more than {MAX_HOPS} redirects from {url}{path}"
        )))
    }
}

impl Runtime {
    /// Attaches the network (once the async runtime runs) and takes up what the store kept:
    /// forwards still valid, transfers accepted here, and departing transfers to settle.
    pub fn attach_net(&self, net: Net) {
        if self.net.set(net).is_err() {
            tracing::error!("the network was attached twice; the first one stays");
            return;
        }
        let Some(saver) = self.saver() else {
            return;
        };
        let moving = saver.store().take_moving();
        let now = unix_seconds(std::time::SystemTime::now());
        {
            let mut forwards = self.forwards.write().unwrap_or_else(|p| p.into_inner());
            for forward in moving.forwards.into_iter().filter(|f| f.until > now) {
                forwards.insert(forward.paglet_id, (forward.url, forward.until));
            }
        }
        for transfer in moving.transfers {
            match transfer.direction {
                Direction::In => {
                    if let Ok(answer) = serde_json::from_str(&transfer.body) {
                        lock(&self.accepted).insert(transfer.transfer_id, answer);
                    }
                }
                Direction::Out => {
                    tracing::warn!(paglet = %transfer.paglet_id, target = %transfer.peer_url, "a transfer was unsettled at the last stop; settling it");
                    if let Ok(paglet) = self.paglet(&transfer.paglet_id) {
                        paglet.in_doubt.store(true, Ordering::Release);
                    }
                    self.settle(transfer);
                }
            }
        }
    }

    fn net(&self) -> Result<&Net, RuntimeError> {
        self.net.get().ok_or_else(|| {
            RuntimeError::Unreachable("this host does not talk to others yet".into())
        })
    }

    /// Where paglet `id` went, while that is said (and it is not here again).
    pub fn forward_url(&self, id: &str) -> Option<String> {
        let forwards = self.forwards.read().unwrap_or_else(|p| p.into_inner());
        let (url, until) = forwards.get(id)?;
        (*until > unix_seconds(std::time::SystemTime::now())).then(|| url.clone())
    }

    /// Resolves `to` (a mesh host name, or a URL) to a target: this host is refused (400),
    /// an unknown name is 404, a host that is not alive 502, an incompatible one 409.
    pub fn resolve(&self, to: &str) -> Result<Target, RuntimeError> {
        let net = self.net()?;
        let hosts = net.mesh.hosts();
        if to.starts_with("http://") || to.starts_with("https://") {
            let url = to.trim_end_matches('/').to_string();
            if url == net.url.trim_end_matches('/') {
                return Err(RuntimeError::BadRequest(format!(
                    "{to} is this host; a paglet moves to another host"
                )));
            }
            let member = hosts.iter().find(|h| !h.is_self && h.url == url);
            if let Some(host) = member.filter(|h| !h.compatible) {
                return Err(incompatible(&host.name));
            }
            return Ok(Target {
                name: member.map(|h| h.name.clone()),
                url,
            });
        }
        if to == net.name {
            return Err(RuntimeError::BadRequest(format!(
                "'{to}' is this host; a paglet moves to another host"
            )));
        }
        let host = hosts
            .iter()
            .find(|h| !h.is_self && h.name == to)
            .ok_or_else(|| {
                RuntimeError::NoHost(format!(
                    "no mesh host named '{to}' (give a URL for a host outside the mesh)"
                ))
            })?;
        if host.state != HostState::Alive {
            return Err(RuntimeError::Unreachable(format!(
                "mesh host '{to}' is {}",
                serde_json::to_value(host.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            )));
        }
        if !host.compatible {
            return Err(incompatible(to));
        }
        Ok(Target {
            name: Some(host.name.clone()),
            url: host.url.trim_end_matches('/').to_string(),
        })
    }

    /// Moves paglet `id` to `target` after the jobs queued before (`reason` is `dispatch`,
    /// or `retract` when the target asked for it); `reply` gets the target's answer.
    pub fn dispatch(
        &self,
        id: &str,
        target: Target,
        to: &str,
        reason: ArrivalReason,
        reply: Replier<ArrivalAnswer>,
    ) -> Result<(), RuntimeError> {
        let paglet = self.awake(id)?;
        let (me, to) = (self.me.clone(), to.to_string());
        let task: Task = Box::new(move |paglet, instance| match me.upgrade() {
            Some(runtime) => reply.send(runtime.send_away(paglet, instance, &target, &to, reason)),
            None => reply.send(Err(RuntimeError::ShuttingDown)),
        });
        paglet.push(Job::Task(task), QueueAt::Back, &self.pool);
        Ok(())
    }

    /// The live paglet `id`, woken when it sleeps; refused while a transfer of it is in
    /// doubt. Blocks while it wakes.
    fn awake(&self, id: &str) -> Result<Arc<Paglet>, RuntimeError> {
        let paglet = match self.paglet(id) {
            Ok(paglet) => paglet,
            Err(_) if self.is_inactive(id) => self.activate(id)?,
            Err(e) => return Err(e),
        };
        if paglet.in_doubt.load(Ordering::Acquire) {
            return Err(RuntimeError::InDoubt(id.into()));
        }
        Ok(paglet)
    }

    /// The dispatch itself, on the paglet's turn.
    fn send_away(
        &self,
        paglet: &Paglet,
        instance: &mut Code,
        target: &Target,
        to: &str,
        reason: ArrivalReason,
    ) -> Result<ArrivalAnswer, RuntimeError> {
        if paglet.is_disposed() {
            return Err(RuntimeError::NoPaglet(paglet.id.clone()));
        }
        let net = self.net()?;
        let saver = self.saver().ok_or(RuntimeError::NoStore)?;
        instance.hook(Hook::Dispatching { to: to.into() })?;
        let record = paglet.record(instance)?;
        let (body, text) = self.arrival(net, reason, MovedPaglet::from_record(&record)?)?;
        let transfer = Transfer {
            transfer_id: body.transfer_id.clone(),
            direction: Direction::Out,
            paglet_id: paglet.id.clone(),
            peer_name: target.name.clone().unwrap_or_default(),
            peer_url: target.url.clone(),
            body: text.clone(),
            at: unix_seconds(std::time::SystemTime::now()),
        };
        // The departing record: committed before anything leaves, so a crash from here on
        // is settled at the next start.
        saver
            .store()
            .change_and_wait(Vec::new(), vec![Extra::PutTransfer(transfer.clone())])
            .map_err(not_persisted)?;
        paglet.departing.store(true, Ordering::Release);
        let outcome = block_on(&net.handle, net.post_arrival(&target.url, text));
        let _departing = Departing(paglet);
        match outcome {
            Outcome::Accepted(answer) => {
                self.departed(paglet, &transfer.transfer_id, &answer.url);
                tracing::info!(paglet = %paglet.id, to = %answer.host, url = %answer.url, "dispatched");
                Ok(answer)
            }
            Outcome::Refused(error) => {
                self.forget_transfer(&transfer.transfer_id);
                Err(error)
            }
            Outcome::Unsent(why) => {
                self.forget_transfer(&transfer.transfer_id);
                Err(RuntimeError::Unreachable(why))
            }
            Outcome::InDoubt(why) => {
                tracing::warn!(paglet = %paglet.id, target = %target.url, "transfer in doubt ({why}); it is sent again until the target answers");
                paglet.in_doubt.store(true, Ordering::Release);
                for job in paglet.take_messages() {
                    fail_job(job, RuntimeError::InDoubt(paglet.id.clone()));
                }
                self.settle(transfer);
                Err(RuntimeError::InDoubt(paglet.id.clone()))
            }
        }
    }

    /// The arrival body that sends `paglet` from this host for `reason`, with a fresh
    /// transfer id, and its JSON text.
    fn arrival(
        &self,
        net: &Net,
        reason: ArrivalReason,
        paglet: MovedPaglet,
    ) -> Result<(ArrivalBody, String), RuntimeError> {
        let body = ArrivalBody {
            transfer_id: transfer_id(&net.name, self.next_message.fetch_add(1, Ordering::Relaxed)),
            reason,
            source: Peer {
                name: net.name.clone(),
                url: net.url.clone(),
            },
            paglet,
        };
        let text = serde_json::to_string(&body).map_err(|e| {
            RuntimeError::Paglet(PagletError::Failed(format!("transfer body: {e}")))
        })?;
        Ok((body, text))
    }

    /// Forgets a departing record after a refusal (the paglet stays here).
    fn forget_transfer(&self, transfer_id: &str) {
        if let Some(saver) = self.saver() {
            saver.store().change(
                Vec::new(),
                vec![Extra::RemoveTransfer(transfer_id.into())],
                None,
            );
        }
    }

    /// The target took `paglet`: it goes from here (record and departing record in one
    /// transaction, a forward to `url` recorded), and what waited for it follows it.
    fn departed(&self, paglet: &Paglet, transfer_id: &str, url: &str) {
        let net = self.net.get();
        let ttl = net.map_or(Duration::from_secs(600), |n| n.forward_ttl);
        let until = unix_seconds(std::time::SystemTime::now()) + ttl.as_secs_f64();
        if let Some(saver) = self.saver() {
            // Not waited for: until it commits, the departing record is still stored, and a
            // crash before then is settled at the next start by sending the same transfer,
            // which the target answers "already accepted".
            let id = paglet.id.clone();
            saver.store().change(
                vec![(paglet.id.clone(), None)],
                vec![
                    Extra::RemoveTransfer(transfer_id.into()),
                    Extra::PutForward(Forward {
                        paglet_id: paglet.id.clone(),
                        url: url.into(),
                        until,
                    }),
                ],
                Some(Box::new(move |committed| {
                    if let Err(e) = committed {
                        tracing::error!(paglet = %id, "its departure is not recorded yet (it is retried): {e}");
                    }
                })),
            );
        }
        {
            let mut table = self.paglets.write().unwrap_or_else(|p| p.into_inner());
            if table
                .get(&paglet.id)
                .is_some_and(|p| std::ptr::eq(Arc::as_ptr(p), paglet))
            {
                table.remove(&paglet.id);
            }
            self.forwards
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(paglet.id.clone(), (url.into(), until));
        }
        paglet.in_doubt.store(false, Ordering::Release);
        let queued = paglet.depart(self.rerouter(&paglet.id));
        if !queued.is_empty() {
            self.forward_jobs(url.into(), paglet.id.clone(), queued);
        }
    }

    /// Sends the departing record of `transfer` again every second until the target
    /// answers: 200 (now or "already") completes the departure, any other answer keeps the
    /// paglet here.
    fn settle(&self, transfer: Transfer) {
        let Some(net) = self.net.get() else {
            return;
        };
        let me = self.me.clone();
        net.handle.spawn(async move {
            loop {
                tokio::time::sleep(SETTLE_EVERY).await;
                let Some(runtime) = me.upgrade() else {
                    return;
                };
                if runtime.is_shutting_down() {
                    return;
                }
                let Some(net) = runtime.net.get() else {
                    return;
                };
                // A mesh host is found by name at its current URL.
                let url = (!transfer.peer_name.is_empty())
                    .then(|| {
                        net.mesh
                            .hosts()
                            .into_iter()
                            .find(|h| !h.is_self && h.name == transfer.peer_name)
                            .map(|h| h.url.trim_end_matches('/').to_string())
                    })
                    .flatten()
                    .unwrap_or_else(|| transfer.peer_url.clone());
                let outcome = net.post_arrival(&url, transfer.body.clone()).await;
                let runtime2 = runtime.clone();
                let transfer2 = transfer.clone();
                let settled =
                    tokio::task::spawn_blocking(move || runtime2.settled(&transfer2, outcome))
                        .await
                        .unwrap_or(false);
                if settled {
                    return;
                }
            }
        });
    }

    /// Applies the outcome of a re-send; true once the transfer is settled.
    fn settled(&self, transfer: &Transfer, outcome: Outcome) -> bool {
        let id = &transfer.paglet_id;
        match outcome {
            Outcome::Accepted(answer) => {
                tracing::info!(paglet = %id, to = %answer.host, accepted = %answer.accepted, "transfer settled: the paglet is there");
                match self.paglet(id) {
                    Ok(paglet) => self.departed(&paglet, &transfer.transfer_id, &answer.url),
                    Err(_) => {
                        // Not running here (its class is missing): its record goes all the same.
                        lock(&self.waiting).remove(id);
                        if let Some(saver) = self.saver() {
                            saver.store().change(
                                vec![(id.clone(), None)],
                                vec![Extra::RemoveTransfer(transfer.transfer_id.clone())],
                                None,
                            );
                        }
                    }
                }
                true
            }
            Outcome::Refused(error) => {
                tracing::warn!(paglet = %id, "transfer settled: the target refused it ({error}); it stays here");
                self.forget_transfer(&transfer.transfer_id);
                if let Ok(paglet) = self.paglet(id) {
                    paglet.in_doubt.store(false, Ordering::Release);
                }
                true
            }
            Outcome::Unsent(_) | Outcome::InDoubt(_) => false,
        }
    }

    /// Sends jobs of a paglet that moved to `url` (in order, one after the other): messages
    /// are posted there and their replies relayed; a disposal is a `DELETE` there.
    pub(super) fn forward_jobs(&self, url: String, id: String, jobs: Vec<Job>) {
        let Some(net) = self.net.get() else {
            for job in jobs {
                fail_job(job, RuntimeError::NoPaglet(id.clone()));
            }
            return;
        };
        let me = self.me.clone();
        net.handle.spawn(async move {
            for job in jobs {
                let Some(runtime) = me.upgrade() else {
                    fail_job(job, RuntimeError::ShuttingDown);
                    continue;
                };
                let Ok(net) = runtime.net() else {
                    continue;
                };
                match job {
                    Job::Message {
                        kind, args, reply, ..
                    } => {
                        reply.send(remote_message(net, &url, &id, &kind, &args).await);
                    }
                    Job::Dispose { reply } => {
                        let path = format!("/paglets/{id}");
                        let answer = net
                            .call(
                                reqwest::Method::DELETE,
                                &url,
                                &path,
                                None,
                                super::SEND_TIMEOUT,
                            )
                            .await;
                        reply.send(match answer {
                            Ok((204, _)) => Ok(()),
                            Ok((status, body)) => Err(remote_error(status, &body)),
                            Err(e) => Err(e),
                        });
                    }
                    other => fail_job(other, RuntimeError::NoPaglet(id.clone())),
                }
            }
        });
    }

    /// A message from paglet `from` to `to`, which moved to `url`: posted there (following
    /// its moves), waiting for the reply.
    pub(super) fn send_remote(
        &self,
        url: &str,
        to: &str,
        kind: &str,
        args: &str,
    ) -> Result<String, RuntimeError> {
        let net = self.net()?;
        block_on(&net.handle, remote_message(net, url, to, kind, args))
    }

    /// Clones paglet `id` (after the jobs queued before): to `target`, or on this host;
    /// `new_id` names the copy (else the host picks one).
    pub fn clone_paglet(
        &self,
        id: &str,
        target: Option<Target>,
        new_id: Option<String>,
        reply: Replier<ArrivalAnswer>,
    ) -> Result<(), RuntimeError> {
        let paglet = self.awake(id)?;
        if let Some(new_id) = new_id.as_deref().filter(|i| !valid_id(i)) {
            return Err(RuntimeError::BadId(new_id.into()));
        }
        let me = self.me.clone();
        let task: Task = Box::new(move |paglet, instance| match me.upgrade() {
            Some(runtime) => reply.send(runtime.copy(paglet, instance, target, new_id)),
            None => reply.send(Err(RuntimeError::ShuttingDown)),
        });
        paglet.push(Job::Task(task), QueueAt::Back, &self.pool);
        Ok(())
    }

    fn copy(
        &self,
        paglet: &Paglet,
        instance: &mut Code,
        target: Option<Target>,
        new_id: Option<String>,
    ) -> Result<ArrivalAnswer, RuntimeError> {
        if paglet.is_disposed() {
            return Err(RuntimeError::NoPaglet(paglet.id.clone()));
        }
        instance.hook(Hook::Cloning)?;
        let record = paglet.record(instance)?;
        let mut moved = MovedPaglet::from_record(&record)?;
        moved.created_at = unix_seconds(std::time::SystemTime::now());
        moved.messages_handled = 0;
        let Some(target) = target else {
            let new_id = new_id.unwrap_or_else(|| self.fresh_id(&paglet.class));
            moved.id = new_id.clone();
            let arrival = Arrival::new(ArrivalReason::Clone, self.host_name.clone());
            self.settle_in(moved, arrival, Vec::new())?;
            let (host, url) = match self.net.get() {
                Some(net) => (net.name.clone(), net.url.clone()),
                None => (self.host_name.clone(), String::new()),
            };
            return Ok(ArrivalAnswer {
                id: new_id,
                host,
                url,
                accepted: "new".into(),
            });
        };
        let net = self.net()?;
        // No id asked for: the receiving host picks one.
        moved.id = new_id.unwrap_or_default();
        let (_, text) = self.arrival(net, ArrivalReason::Clone, moved)?;
        match block_on(&net.handle, net.post_arrival(&target.url, text)) {
            Outcome::Accepted(answer) => Ok(answer),
            Outcome::Refused(error) => Err(error),
            Outcome::Unsent(why) => Err(RuntimeError::Unreachable(why)),
            Outcome::InDoubt(why) => Err(RuntimeError::Unreachable(format!(
                "the clone may or may not exist on {}: {why}",
                target.url
            ))),
        }
    }

    /// Takes an arriving paglet (`POST /mesh/arrivals`): a transfer id already taken is
    /// answered as before; otherwise the class must be here and the id free, the state must
    /// read on this code, and `arrived` must succeed; then the paglet and the transfer id
    /// are committed together, and only then is it answered.
    pub fn arrive(&self, body: ArrivalBody) -> Result<ArrivalAnswer, RuntimeError> {
        let net = self.net()?;
        if self.is_shutting_down() {
            return Err(RuntimeError::ShuttingDown);
        }
        let _one = lock(&self.arriving);
        if let Some(answer) = lock(&self.accepted).get(&body.transfer_id) {
            let mut answer = answer.clone();
            answer.accepted = "already".into();
            return Ok(answer);
        }
        let mut body = body;
        if body.paglet.id.is_empty() && body.reason == ArrivalReason::Clone {
            // A clone sent without an id: this host names it.
            body.paglet.id = self.fresh_id(&body.paglet.class);
        }
        let answer = ArrivalAnswer {
            id: body.paglet.id.clone(),
            host: net.name.clone(),
            url: net.url.clone(),
            accepted: "new".into(),
        };
        let transfer = Transfer {
            transfer_id: body.transfer_id.clone(),
            direction: Direction::In,
            paglet_id: body.paglet.id.clone(),
            peer_name: body.source.name.clone(),
            peer_url: body.source.url.clone(),
            body: serde_json::to_string(&answer).unwrap_or_default(),
            at: unix_seconds(std::time::SystemTime::now()),
        };
        let arrival = Arrival::new(body.reason, body.source.name.clone());
        self.settle_in(body.paglet, arrival, vec![Extra::PutTransfer(transfer)])?;
        lock(&self.accepted).insert(body.transfer_id, answer.clone());
        Ok(answer)
    }

    /// Brings a moved paglet to life here: checks, `arrived`, one commit (with `extras`),
    /// then the table.
    fn settle_in(
        &self,
        moved: MovedPaglet,
        arrival: Arrival,
        mut extras: Vec<Extra>,
    ) -> Result<(), RuntimeError> {
        let id = moved.id.clone();
        if !valid_id(&id) {
            return Err(RuntimeError::BadId(id));
        }
        let lib = self.registry().class(&moved.class).map_err(|e| {
            RuntimeError::ClassMissing(format!("host '{}' cannot take {id}: {e}", self.host_name))
        })?;
        if self.exists(&id) && !self.left_meanwhile(&id) {
            return Err(RuntimeError::Duplicate(id));
        }
        if !moved.state.is_object() {
            return Err(RuntimeError::BadRequest(format!(
                "the state of {id} is not a JSON object"
            )));
        }
        let context = self.context(&id, &moved.class);
        let mut instance = self
            .instantiate(
                &lib,
                &moved.class,
                Some(&moved.state),
                Some(moved.state_version),
                context,
            )
            .map_err(|e| match e {
                RuntimeError::Paglet(
                    e @ (PagletError::DropsKeys { .. } | PagletError::InvalidArgs(_)),
                ) => RuntimeError::Incompatible(format!(
                    "host '{}' cannot take the state of {id}: {e}",
                    self.host_name
                )),
                other => other,
            })?;
        instance.hook(Hook::Arrived(arrival))?;
        let mut paglet = Paglet::new(id.clone(), moved.class.clone(), lib, instance, self.saver());
        paglet.keep_history(moved.created_at, moved.messages_handled);
        let record = paglet.with_instance(|instance| paglet.record(instance))?;
        paglet.note_saved(&record.state);
        if let Some(saver) = self.saver() {
            extras.push(Extra::RemoveForward(id.clone()));
            saver
                .store()
                .change_and_wait(vec![(id.clone(), Some(record))], extras)
                .map_err(not_persisted)?;
        }
        let paglet = Arc::new(paglet);
        {
            let mut table = self.paglets.write().unwrap_or_else(|p| p.into_inner());
            if table.contains_key(&id) {
                return Err(RuntimeError::Duplicate(id));
            }
            table.insert(id.clone(), paglet);
            self.forwards
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
        self.run_deferred(&id);
        Ok(())
    }

    /// True when paglet `id`, here and being dispatched, left within the transfer timeout: a
    /// paglet that turns round at once (its `arrived` dispatches it back) may come back
    /// before this host read the answer that it arrived there.
    fn left_meanwhile(&self, id: &str) -> bool {
        let Ok(paglet) = self.paglet(id) else {
            return !self.exists(id);
        };
        if !paglet.departing.load(Ordering::Acquire) {
            return false;
        }
        let timeout = self
            .net
            .get()
            .map_or(Duration::from_secs(5), |n| n.transfer_timeout);
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if !paglet.departing.load(Ordering::Acquire) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.paglet(id).is_err() && !self.exists(id)
    }

    /// Asks the host `from` to dispatch paglet `id` here (`retract`).
    pub async fn retract(&self, id: &str, from: Target) -> Result<ArrivalAnswer, RuntimeError> {
        let net = self.net()?;
        let body = serde_json::json!({"to": net.url, "reason": "retract"}).to_string();
        let path = format!("/paglets/{id}/dispatch");
        let timeout = net.transfer_timeout + super::SEND_TIMEOUT;
        let (status, bytes) = net
            .call(reqwest::Method::POST, &from.url, &path, Some(body), timeout)
            .await?;
        if status != 200 {
            return Err(remote_error(status, &bytes));
        }
        Ok(ArrivalAnswer {
            id: id.into(),
            host: net.name.clone(),
            url: net.url.clone(),
            accepted: "new".into(),
        })
    }
}

/// Clears a paglet's `departing` flag when its send is over, whatever the outcome.
struct Departing<'a>(&'a Paglet);

impl Drop for Departing<'_> {
    fn drop(&mut self) {
        self.0.departing.store(false, Ordering::Release);
    }
}

/// Posts one message to paglet `id` on `url` (following its moves) and relays the reply.
async fn remote_message(
    net: &Net,
    url: &str,
    id: &str,
    kind: &str,
    args: &str,
) -> Result<String, RuntimeError> {
    let args: Value = if args.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(args).unwrap_or(Value::Null)
    };
    let body = serde_json::json!({"kind": kind, "args": args}).to_string();
    let path = format!("/paglets/{id}/messages");
    let (status, bytes) = net
        .call(
            reqwest::Method::POST,
            url,
            &path,
            Some(body),
            super::SEND_TIMEOUT,
        )
        .await?;
    if status != 200 {
        return Err(remote_error(status, &bytes));
    }
    let reply: Value = serde_json::from_slice(&bytes).map_err(|e| {
        RuntimeError::Unreachable(format!("{url} answered an unreadable reply: {e}"))
    })?;
    Ok(reply
        .get("reply")
        .cloned()
        .unwrap_or(Value::Null)
        .to_string())
}

fn incompatible(name: &str) -> RuntimeError {
    RuntimeError::Incompatible(format!(
        "mesh host '{name}' runs another code version; paglets move only between compatible hosts"
    ))
}
