//! `hello::Hello` and `hello::Echo`: one library exporting two classes that talk to each other.
//!
//! `Hello` (state `{"greeting": "Hello", "greeted": <u64>}`) answers `greet` (optional
//! `args.name`, default `"world"`) with `{"message": "Hello, world!"}`, `echo` with its args,
//! `forward {to, kind, args?, times?}` with `{"from": to, "reply": ..., "sent": n}` after
//! sending the message on (`times` times, default once: the benchmark of paglet-to-paglet
//! sends uses it),
//! `whoami` with `{"id", "class", "host"}` and `spawn {class, state?, id?}` with `{"id": new_id}`.
//! `Echo` (state `{"echoed": <u64>}`) answers `echo` with its args. Other kinds are not handled.

use plugin_api::{Context, Message, Paglet, PagletError, Reply};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Greets, echoes, forwards messages, and creates paglets. Its state is the struct itself.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    /// The word `greet` starts its message with.
    pub greeting: String,
    /// How many greetings were given.
    pub greeted: u64,
}

impl Default for Hello {
    fn default() -> Self {
        Hello {
            greeting: "Hello".into(),
            greeted: 0,
        }
    }
}

/// The arguments of `greet`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Greet {
    #[serde(default = "world")]
    name: String,
}

fn world() -> String {
    "world".into()
}

/// The arguments of `forward`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Forward {
    to: String,
    kind: String,
    #[serde(default)]
    args: Value,
    /// How many times to send it (default once); the last reply is returned.
    #[serde(default = "once")]
    times: u64,
}

fn once() -> u64 {
    1
}

/// The arguments of `spawn`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spawn {
    class: String,
    #[serde(default)]
    state: Map<String, Value>,
    id: Option<String>,
}

impl Paglet for Hello {
    const DESCRIPTION: &'static str = "Greets: greet {name?}, echo, forward, whoami, spawn.";

    fn handle_message(&mut self, ctx: &Context, msg: Message) -> Result<Reply, PagletError> {
        match msg.kind.as_str() {
            "greet" => {
                let Greet { name } = msg.args()?;
                self.greeted = self.greeted.saturating_add(1);
                let message = format!("{}, {name}!", self.greeting);
                tracing::info!(greeted = self.greeted, "{message}");
                Reply::new(json!({ "message": message }))
            }
            "echo" => Ok(Reply(msg.args)),
            "forward" => {
                let Forward {
                    to,
                    kind,
                    args,
                    times,
                } = msg.args()?;
                let mut reply = Value::Null;
                for _ in 0..times {
                    reply = ctx.send(&to, &kind, &args)?;
                }
                Reply::new(json!({ "from": to, "reply": reply, "sent": times }))
            }
            "whoami" => Reply::new(json!({
                "id": ctx.id(),
                "class": ctx.class(),
                "host": ctx.host_name(),
            })),
            "spawn" => {
                let Spawn { class, state, id } = msg.args()?;
                let id = ctx.create(&class, state, id.as_deref())?;
                Reply::new(json!({ "id": id }))
            }
            _ => Err(msg.not_handled()),
        }
    }
}

/// Echoes its arguments back and counts how often. Its state is the struct itself.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Echo {
    /// How many messages were echoed.
    pub echoed: u64,
}

impl Paglet for Echo {
    const DESCRIPTION: &'static str = "Echoes: echo replies its args.";

    fn handle_message(&mut self, _ctx: &Context, msg: Message) -> Result<Reply, PagletError> {
        match msg.kind.as_str() {
            "echo" => {
                self.echoed = self.echoed.saturating_add(1);
                Ok(Reply(msg.args))
            }
            _ => Err(msg.not_handled()),
        }
    }
}

plugin_api::export_paglets!(Hello, Echo);

#[cfg(test)]
mod tests {
    use super::{Echo, Hello};
    use plugin_api::{PagletError, testing::PagletTest};
    use serde_json::{Value, json};

    #[test]
    fn greets_by_name_and_counts() {
        let test = PagletTest::new::<Hello>();
        let id = test
            .create_class("hello::Hello", json!({}))
            .expect("create");
        assert_eq!(
            test.send(&id, "greet", Value::Null),
            Ok(json!({"message": "Hello, world!"}))
        );
        assert_eq!(
            test.send(&id, "greet", json!({"name": "Ada"})),
            Ok(json!({"message": "Hello, Ada!"}))
        );
        assert_eq!(
            test.state(&id),
            Ok(json!({"greeting": "Hello", "greeted": 2}))
        );
        let err = test.send(&id, "greet", json!({"name": 7}));
        assert!(matches!(err, Err(PagletError::InvalidArgs(_))), "{err:?}");
    }

    #[test]
    fn greets_with_the_given_greeting_and_logs_it_with_the_id() {
        let test = PagletTest::new::<Hello>();
        let id = test
            .create_class("hello::Hello", json!({"greeting": "Bonjour"}))
            .expect("create");
        assert_eq!(
            test.send(&id, "greet", json!({"name": "Lyon"})),
            Ok(json!({"message": "Bonjour, Lyon!"}))
        );
        let logs = test.logs();
        assert!(
            logs.iter().any(|line| line.id == id
                && line.level == tracing::Level::INFO
                && line.message.contains("Bonjour, Lyon!")),
            "{logs:?}"
        );
    }

    #[test]
    fn echoes_its_args() {
        let test = PagletTest::new::<Hello>().with::<Echo>();
        let args = json!({"a": [1, 2, {"b": null}], "c": "d"});
        for class in ["hello::Hello", "hello::Echo"] {
            let id = test.create_class(class, json!({})).expect("create");
            assert_eq!(test.send(&id, "echo", args.clone()), Ok(args.clone()));
            assert_eq!(test.send(&id, "echo", Value::Null), Ok(Value::Null));
        }
    }

    #[test]
    fn forwards_to_an_echo_but_not_to_itself() {
        let test = PagletTest::new::<Hello>().with::<Echo>();
        let hello = test
            .create_class("hello::Hello", json!({}))
            .expect("create");
        let echo = test
            .create_with_id("hello::Echo", "echo-1", json!({}))
            .expect("create");
        let forward = json!({"to": echo, "kind": "echo", "args": {"x": 1}});
        assert_eq!(
            test.send(&hello, "forward", forward),
            Ok(json!({"from": "echo-1", "reply": {"x": 1}, "sent": 1}))
        );
        assert_eq!(test.state(&echo), Ok(json!({"echoed": 1})));
        let three = json!({"to": echo, "kind": "echo", "args": {"x": 2}, "times": 3});
        assert_eq!(
            test.send(&hello, "forward", three),
            Ok(json!({"from": "echo-1", "reply": {"x": 2}, "sent": 3}))
        );
        assert_eq!(test.state(&echo), Ok(json!({"echoed": 4})));
        let to_self = json!({"to": hello, "kind": "greet"});
        let err = test.send(&hello, "forward", to_self);
        assert!(
            matches!(&err, Err(PagletError::Deadlock(m)) if m.contains(&hello)),
            "{err:?}"
        );
        let err = test.send(&hello, "forward", json!({"to": echo, "kind": "fly"}));
        assert_eq!(err, Err(PagletError::NotHandled { kind: "fly".into() }));
    }

    #[test]
    fn knows_who_it_is() {
        let test = PagletTest::new::<Hello>();
        let id = test
            .create_with_id("hello::Hello", "hi", json!({}))
            .expect("create");
        assert_eq!(
            test.send(&id, "whoami", Value::Null),
            Ok(json!({"id": "hi", "class": "hello::Hello", "host": "test"}))
        );
    }

    #[test]
    fn spawns_paglets() {
        let test = PagletTest::new::<Hello>().with::<Echo>();
        let id = test
            .create_class("hello::Hello", json!({}))
            .expect("create");
        let spawn = json!({"class": "hello::Echo", "state": {"echoed": 5}, "id": "child"});
        assert_eq!(test.send(&id, "spawn", spawn), Ok(json!({"id": "child"})));
        assert_eq!(test.state("child"), Ok(json!({"echoed": 5})));
        let reply = test
            .send(&id, "spawn", json!({"class": "hello::Hello"}))
            .expect("spawn without state or id");
        let child = reply["id"].as_str().expect("an id");
        assert_eq!(
            test.state(child),
            Ok(json!({"greeting": "Hello", "greeted": 0}))
        );
        let err = test.send(&id, "spawn", json!({"class": "hello::Nope"}));
        assert!(matches!(err, Err(PagletError::Failed(_))), "{err:?}");
    }

    #[test]
    fn does_not_handle_unknown_kinds() {
        let test = PagletTest::new::<Hello>().with::<Echo>();
        for class in ["hello::Hello", "hello::Echo"] {
            let id = test.create_class(class, json!({})).expect("create");
            let err = test.send(&id, "fly", Value::Null);
            assert_eq!(err, Err(PagletError::NotHandled { kind: "fly".into() }));
        }
    }
}
