//! The one task that owns the `Foca` instance. Packets from `POST /mesh/swim`, timer
//! events, seed announcements, leave notices and our own metadata reach it through one
//! channel; what foca asks for (sends, timers, notifications) is collected while it runs and
//! carried out afterwards, so nothing here waits while holding foca or a lock.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use foca::{Foca, Member, Notification, OwnedNotification, Runtime, Timer};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot};

use super::identity::HostId;
use super::meta::{HostMeta, MetaHandler};
use super::wire::{self, MeshCodec};
use super::{Shared, unix_now};
use crate::runtime::lock;

/// What the membership task is asked to do.
#[derive(Debug)]
pub enum Event {
    /// A checked foca packet from `POST /mesh/swim`.
    Packet(Vec<u8>),
    /// A timer foca asked for has fired.
    Timer(Timer<HostId>),
    /// Join through this seed (its identity fetched from `/mesh/identity`).
    Announce(HostId),
    /// This host sent a leave notice.
    Left(HostId),
    /// Our own metadata changed: broadcast it.
    Meta(HostMeta),
    /// Leave the cluster, then answer.
    Stop(oneshot::Sender<()>),
}

/// What one foca call asked for.
#[derive(Default)]
struct Effects {
    sends: Vec<(HostId, Vec<u8>)>,
    timers: Vec<(Timer<HostId>, Duration)>,
    notes: Vec<OwnedNotification<HostId>>,
}

impl Runtime<HostId> for Effects {
    fn notify(&mut self, notification: Notification<'_, HostId>) {
        self.notes.push(notification.to_owned());
    }

    fn send_to(&mut self, to: HostId, data: &[u8]) {
        self.sends.push((to, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<HostId>, after: Duration) {
        self.timers.push((event, after));
    }
}

/// foca's settings: `new_lan` with probe timing from `period`, suspicion of four periods,
/// packets as large as the body bound, and down members kept until `forget_after`.
pub fn config(period: Duration, forget_after: Duration) -> foca::Config {
    let cluster = NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN);
    let mut config = foca::Config::new_lan(cluster);
    config.probe_period = period;
    config.probe_rtt = period / 2;
    config.suspect_to_down_after = period * 4;
    config.remove_down_after = Some(forget_after);
    config.max_packet_size = NonZeroUsize::new(wire::MAX_PACKET).unwrap_or(NonZeroUsize::MIN);
    config.notify_down_members = true;
    config
}

type MeshFoca = Foca<HostId, MeshCodec, StdRng, MetaHandler>;

/// Runs the membership task until [`Event::Stop`] (or until every sender is gone).
pub async fn run(
    shared: Arc<Shared>,
    me: HostId,
    config: foca::Config,
    mut rx: mpsc::Receiver<Event>,
) {
    let rng = StdRng::seed_from_u64(me.generation ^ u64::from(std::process::id()));
    let handler = MetaHandler {
        view: shared.view.clone(),
    };
    let mut foca: MeshFoca = Foca::with_custom_broadcast(me, config, rng, MeshCodec, handler);
    let mut effects = Effects::default();
    while let Some(event) = rx.recv().await {
        let result = match event {
            Event::Packet(data) => foca.handle_data(&data, &mut effects),
            Event::Timer(timer) => foca.handle_timer(timer, &mut effects),
            Event::Announce(seed) => foca.announce(seed, &mut effects),
            Event::Left(id) => {
                lock(&shared.view).mark_left(&id, unix_now());
                foca.apply_many(std::iter::once(Member::down(id)), false, &mut effects)
            }
            Event::Meta(meta) => {
                let data = serde_json::to_vec(&meta).unwrap_or_default();
                foca.add_broadcast(&data).map(drop)
            }
            Event::Stop(done) => {
                if let Err(e) = foca.leave_cluster(&mut effects) {
                    tracing::debug!("leaving the mesh: {e}");
                }
                // Deliver the last words before answering: the process exits right after.
                let sends = std::mem::take(&mut effects.sends);
                let deliveries: Vec<_> = sends
                    .into_iter()
                    .map(|(to, data)| {
                        tokio::spawn(shared.transport.clone().post_swim(to, wire::swim(&data)))
                    })
                    .collect();
                for delivery in deliveries {
                    let _ = delivery.await;
                }
                let _ = done.send(());
                return;
            }
        };
        if let Err(e) = result {
            // Stale or misdirected packets are normal in a changing cluster.
            tracing::debug!("membership: {e}");
        }
        carry_out(&shared, &foca, &mut effects);
    }
}

/// Sends what foca wants sent, arms its timers, reacts to its notifications and refreshes
/// the view.
fn carry_out(shared: &Arc<Shared>, foca: &MeshFoca, effects: &mut Effects) {
    for (to, data) in effects.sends.drain(..) {
        tokio::spawn(shared.transport.clone().post_swim(to, wire::swim(&data)));
    }
    for (timer, after) in effects.timers.drain(..) {
        let tx = shared.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(Event::Timer(timer)).await;
        });
    }
    for note in effects.notes.drain(..) {
        match note {
            OwnedNotification::MemberUp(id) => {
                tracing::info!(host = %id.name, url = %id.url, generation = id.generation, "mesh host up");
                shared.fetch_meta(id);
            }
            OwnedNotification::Rename(old, new) => {
                tracing::info!(host = %new.name, url = %new.url, old_url = %old.url, "mesh host restarted");
                shared.fetch_meta(new);
            }
            OwnedNotification::MemberDown(id) => {
                tracing::info!(host = %id.name, url = %id.url, "mesh host down");
            }
            OwnedNotification::Rejoin(id) => {
                tracing::info!(
                    generation = id.generation,
                    "rejoined the mesh after being declared down"
                );
                *lock(&shared.me) = id;
            }
            OwnedNotification::Defunct => {
                tracing::warn!("this host was declared down by the mesh; rejoining");
            }
            OwnedNotification::Idle => tracing::debug!("no other mesh hosts"),
            OwnedNotification::Active => tracing::debug!("connected to the mesh"),
        }
    }
    let now = unix_now();
    lock(&shared.view).sync(
        foca.iter_membership_state().map(|m| (m.id(), m.state())),
        now,
    );
}
