//! `counter::Counter`: the smallest stateful paglet.
//!
//! State `{"count": <u64>}`. `increment` (optional `args.by`, default 1), `get` and `reset`
//! all reply `{"count": n}`; any other kind is not handled.

use plugin_api::{Context, Message, Paglet, PagletError, Reply};
use serde::{Deserialize, Serialize};

/// Counts. Its state is the struct itself.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Counter {
    /// The current count.
    pub count: u64,
}

/// The messages a counter handles, decoded with `msg.parse()`: the variant is the message's
/// `kind`, its content the `args`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", content = "args", rename_all = "snake_case")]
enum CounterMsg {
    /// Adds `by` (default 1).
    Increment(Increment),
    /// Replies with the count.
    Get,
    /// Sets the count to 0.
    Reset,
}

/// The arguments of `increment`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Increment {
    #[serde(default = "one")]
    by: u64,
}

fn one() -> u64 {
    1
}

impl Paglet for Counter {
    const DESCRIPTION: &'static str = "Counts: increment {by?}, get, reset.";

    fn handle_message(&mut self, _ctx: &Context, msg: Message) -> Result<Reply, PagletError> {
        match msg.parse()? {
            CounterMsg::Increment(Increment { by }) => {
                self.count = self
                    .count
                    .checked_add(by)
                    .ok_or_else(|| PagletError::invalid_args("count would overflow u64"))?;
            }
            CounterMsg::Get => {}
            CounterMsg::Reset => self.count = 0,
        }
        Reply::new(&*self)
    }
}

plugin_api::export_paglets!(Counter);

#[cfg(test)]
mod tests {
    use super::Counter;
    use plugin_api::{PagletError, testing::PagletTest};
    use serde_json::{Value, json};

    #[test]
    fn counts_gets_and_resets() {
        let test = PagletTest::new::<Counter>();
        let id = test
            .create_class("counter::Counter", json!({}))
            .expect("create");
        assert_eq!(
            test.send(&id, "increment", Value::Null),
            Ok(json!({"count": 1}))
        );
        assert_eq!(
            test.send(&id, "increment", json!({"by": 5})),
            Ok(json!({"count": 6}))
        );
        assert_eq!(test.send(&id, "get", Value::Null), Ok(json!({"count": 6})));
        assert_eq!(
            test.send(&id, "reset", Value::Null),
            Ok(json!({"count": 0}))
        );
    }

    #[test]
    fn starts_from_the_given_state_and_keeps_it_across_a_reload() {
        let test = PagletTest::new::<Counter>();
        let id = test.create(Counter { count: 41 }).expect("create");
        test.reload(&id).expect("reload");
        assert_eq!(
            test.send(&id, "increment", Value::Null),
            Ok(json!({"count": 42}))
        );
    }

    #[test]
    fn rejects_bad_by_and_unknown_kinds() {
        let test = PagletTest::new::<Counter>();
        let id = test
            .create_class("counter::Counter", json!({}))
            .expect("create");
        for by in [json!(-1), json!("two"), json!(1.5)] {
            let err = test.send(&id, "increment", json!({ "by": by }));
            assert!(
                matches!(err, Err(PagletError::InvalidArgs(_))),
                "by={by}: {err:?}"
            );
        }
        let err = test.send(&id, "increment", json!({"by": 1, "extra": true}));
        assert!(matches!(err, Err(PagletError::InvalidArgs(_))), "{err:?}");
        let err = test.send(&id, "fly", Value::Null);
        assert_eq!(err, Err(PagletError::NotHandled { kind: "fly".into() }));
        assert_eq!(test.state(&id), Ok(json!({"count": 0})));
    }

    #[test]
    fn absent_and_empty_args_are_the_same() {
        let test = PagletTest::new::<Counter>();
        let id = test.create(Counter::default()).expect("create");
        assert_eq!(
            test.send(&id, "increment", json!({})),
            Ok(json!({"count": 1}))
        );
        assert_eq!(test.send(&id, "get", json!({})), Ok(json!({"count": 1})));
        assert_eq!(
            test.send(&id, "reset", Value::Null),
            Ok(json!({"count": 0}))
        );
    }

    #[test]
    fn an_error_message_says_what_was_wrong_once() {
        let test = PagletTest::new::<Counter>();
        let id = test.create(Counter::default()).expect("create");
        let err = test
            .send(&id, "increment", json!({"by": "two"}))
            .expect_err("rejected");
        assert_eq!(
            err.to_string(),
            "increment args: invalid type: string \"two\", expected u64"
        );
    }
}
