//! `traveller::Traveller`: a paglet that moves itself from host to host.
//!
//! `start {"hosts": [NAME_OR_URL, ...], "home": NAME_OR_URL}` stores the itinerary and asks
//! to be dispatched to the first stop (mesh host names or host URLs). On each stop, its
//! `arrived` hook records a visit, `{"host", "arrived_from", "server_info"}` (`server_info`
//! is the `info` reply of the paglet with id `server-info` on that host, or `null` when there
//! is none), and asks to go on to the next stop, or home after the last. Arriving home sets
//! `done`. `report` replies with the whole state:
//!
//! ```json
//! {"hosts": ["lab-b", "lab-c"], "home": "lab-a", "heading": null, "done": true,
//!  "visits": [{"host": "lab-b", "arrived_from": "lab-a", "server_info": {...}}, ...]}
//! ```
//!
//! A dispatch takes effect after the hook or handler that asked for it returns; if it fails
//! (an unreachable host, say), the traveller stays where it is and `heading` still names
//! where it meant to go. Arrivals for other reasons (a reload, a restore, a clone, a retract)
//! move nothing.

use plugin_api::{Arrival, ArrivalReason, Context, Level, Message, Paglet, PagletError, Reply};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The id of the paglet a traveller asks about each host it visits.
pub const SERVER_INFO_ID: &str = "server-info";

/// Travels an itinerary and comes home. Its state is the struct itself.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Traveller {
    /// The stops, in order.
    pub hosts: Vec<String>,
    /// Where it goes after the last stop.
    pub home: String,
    /// Where it last asked to go, until it arrives there.
    pub heading: Option<String>,
    /// One visit per stop reached, in order.
    pub visits: Vec<Visit>,
    /// Whether it is back home after its last stop.
    pub done: bool,
}

/// What a traveller noted on arriving at a stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Visit {
    /// The name of the host it arrived on.
    pub host: String,
    /// The name of the host it came from.
    pub arrived_from: String,
    /// The `info` reply of the host's `server-info` paglet, `null` without one.
    pub server_info: Value,
}

/// The messages a traveller handles.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", content = "args", rename_all = "snake_case")]
enum TravellerMsg {
    /// Sets out on an itinerary.
    Start(Start),
    /// Replies with the state.
    Report,
}

/// The arguments of `start`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Start {
    hosts: Vec<String>,
    home: String,
}

impl Traveller {
    /// Where to go after the visits so far: the next stop, or home after the last.
    fn next_leg(&self) -> String {
        self.hosts
            .get(self.visits.len())
            .unwrap_or(&self.home)
            .clone()
    }

    /// Asks the host to move this paglet to `to` once the current call returns.
    fn go(&mut self, ctx: &Context, to: String) -> Result<(), PagletError> {
        ctx.dispatch(&to)?;
        self.heading = Some(to);
        Ok(())
    }

    /// Records the visit to this host.
    fn record_visit(&mut self, ctx: &Context, arrival: &Arrival) {
        let server_info = match ctx.send(SERVER_INFO_ID, "info", Value::Null) {
            Ok(info) => info,
            Err(PagletError::NotFound(_)) => Value::Null,
            Err(e) => {
                ctx.log(Level::WARN, format_args!("no server info here: {e}"));
                Value::Null
            }
        };
        self.visits.push(Visit {
            host: ctx.host_name().to_string(),
            arrived_from: arrival.source.clone(),
            server_info,
        });
    }
}

impl Paglet for Traveller {
    const DESCRIPTION: &'static str = "Travels: start {hosts, home}, report.";

    fn handle_message(&mut self, ctx: &Context, msg: Message) -> Result<Reply, PagletError> {
        match msg.parse()? {
            TravellerMsg::Start(Start { hosts, home }) => {
                let Some(first) = hosts.first().cloned() else {
                    return Err(PagletError::invalid_args("start needs at least one host"));
                };
                *self = Traveller {
                    hosts,
                    home,
                    ..Traveller::default()
                };
                self.go(ctx, first)?;
            }
            TravellerMsg::Report => {}
        }
        Reply::new(&*self)
    }

    fn arrived(&mut self, ctx: &Context, arrival: &Arrival) -> Result<(), PagletError> {
        if arrival.reason != ArrivalReason::Dispatch || self.done || self.heading.is_none() {
            return Ok(());
        }
        if self.visits.len() == self.hosts.len() {
            // The last stop is behind it: this is home.
            self.heading = None;
            self.done = true;
            return Ok(());
        }
        self.record_visit(ctx, arrival);
        let next = self.next_leg();
        // Failing here would refuse the arrival and send it back; it stays and says why.
        if let Err(e) = self.go(ctx, next.clone()) {
            ctx.log(Level::WARN, format_args!("cannot leave for {next}: {e}"));
            self.heading = None;
        }
        Ok(())
    }
}

plugin_api::export_paglets!(Traveller);

#[cfg(test)]
mod tests {
    use super::Traveller;
    use plugin_api::testing::{LifecycleRequest, PagletTest};
    use plugin_api::{Arrival, ArrivalReason, Context, Hook, Message, Paglet, PagletError, Reply};
    use serde::{Deserialize, Serialize};
    use serde_json::{Value, json};

    /// Stands in for `server_info::ServerInfo`: answers `info` with a fixed reply.
    #[derive(Debug, Default, Serialize, Deserialize)]
    struct FakeServerInfo {}

    impl Paglet for FakeServerInfo {
        fn handle_message(&mut self, _: &Context, msg: Message) -> Result<Reply, PagletError> {
            match msg.kind.as_str() {
                "info" => Reply::new(json!({"hostname": "box", "logical_cpus": 2})),
                _ => Err(msg.not_handled()),
            }
        }
    }

    fn dispatch_to(id: &str, to: &str) -> LifecycleRequest {
        LifecycleRequest {
            id: id.into(),
            op: "dispatch".into(),
            args: json!({ "to": to }),
        }
    }

    fn arrival(reason: ArrivalReason, source: &str) -> Hook {
        Hook::Arrived(Arrival::new(reason, source))
    }

    /// A traveller that was sent off from `lab-a` to `lab-b`, then `lab-c`, and home.
    fn started(test: &PagletTest) -> String {
        let id = test.create(Traveller::default()).expect("create");
        test.send(
            &id,
            "start",
            json!({"hosts": ["lab-b", "lab-c"], "home": "lab-a"}),
        )
        .expect("start");
        id
    }

    #[test]
    fn start_stores_the_itinerary_and_asks_to_go_to_the_first_stop() {
        let test = PagletTest::new::<Traveller>();
        let id = test.create(Traveller::default()).expect("create");
        let state = test
            .send(
                &id,
                "start",
                json!({"hosts": ["lab-b", "http://127.0.0.1:9002"], "home": "lab-a"}),
            )
            .expect("start");
        assert_eq!(
            state,
            json!({"hosts": ["lab-b", "http://127.0.0.1:9002"], "home": "lab-a",
                   "heading": "lab-b", "visits": [], "done": false})
        );
        assert_eq!(test.requests(), [dispatch_to(&id, "lab-b")]);
    }

    #[test]
    fn visits_every_stop_then_goes_home_and_is_done() {
        let test = PagletTest::new::<Traveller>();
        let id = started(&test);
        test.run_hook(&id, arrival(ArrivalReason::Dispatch, "lab-a"))
            .expect("arrive at lab-b");
        test.run_hook(&id, arrival(ArrivalReason::Dispatch, "lab-b"))
            .expect("arrive at lab-c");
        assert_eq!(
            test.requests(),
            [
                dispatch_to(&id, "lab-b"),
                dispatch_to(&id, "lab-c"),
                dispatch_to(&id, "lab-a"),
            ]
        );
        test.run_hook(&id, arrival(ArrivalReason::Dispatch, "lab-c"))
            .expect("arrive home");
        assert_eq!(test.requests().len(), 3, "home is the end of the trip");
        let report = test.send(&id, "report", Value::Null).expect("report");
        assert_eq!(report["done"], true);
        assert_eq!(report["heading"], Value::Null);
        // The harness's host is called `test`; without a `server-info` paglet there is no info.
        assert_eq!(
            report["visits"],
            json!([
                {"host": "test", "arrived_from": "lab-a", "server_info": null},
                {"host": "test", "arrived_from": "lab-b", "server_info": null},
            ])
        );
    }

    #[test]
    fn asks_the_server_info_paglet_of_each_host_it_visits() {
        let test = PagletTest::new::<Traveller>().with::<FakeServerInfo>();
        test.create_with_id("traveller::FakeServerInfo", "server-info", json!({}))
            .expect("create server-info");
        let id = started(&test);
        test.run_hook(&id, arrival(ArrivalReason::Dispatch, "lab-a"))
            .expect("arrive");
        let report = test.send(&id, "report", Value::Null).expect("report");
        assert_eq!(
            report["visits"][0]["server_info"],
            json!({"hostname": "box", "logical_cpus": 2})
        );
    }

    #[test]
    fn arrivals_for_other_reasons_or_before_a_start_move_nothing() {
        let test = PagletTest::new::<Traveller>();
        let idle = test.create(Traveller::default()).expect("create");
        test.run_hook(&idle, arrival(ArrivalReason::Dispatch, "lab-a"))
            .expect("arrive");
        assert_eq!(test.requests(), []);
        let id = started(&test);
        for reason in [
            ArrivalReason::Reload,
            ArrivalReason::Restore,
            ArrivalReason::Clone,
            ArrivalReason::Retract,
        ] {
            test.run_hook(&id, arrival(reason, "lab-a"))
                .expect("arrive");
        }
        test.reload(&id).expect("reload");
        assert_eq!(test.requests(), [dispatch_to(&id, "lab-b")]);
        let report = test.send(&id, "report", Value::Null).expect("report");
        assert_eq!(report["visits"], json!([]));
        assert_eq!(report["heading"], "lab-b");
    }

    #[test]
    fn start_needs_hosts_and_a_home() {
        let test = PagletTest::new::<Traveller>();
        let id = test.create(Traveller::default()).expect("create");
        for args in [
            json!({"hosts": [], "home": "lab-a"}),
            json!({"hosts": ["lab-b"]}),
            json!({"hosts": ["lab-b"], "home": "lab-a", "via": "lab-c"}),
        ] {
            let err = test.send(&id, "start", args.clone());
            assert!(
                matches!(err, Err(PagletError::InvalidArgs(_))),
                "{args}: {err:?}"
            );
        }
        assert_eq!(
            test.send(&id, "fly", Value::Null),
            Err(PagletError::NotHandled { kind: "fly".into() })
        );
        assert_eq!(test.requests(), []);
    }
}
