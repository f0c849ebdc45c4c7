//! The examples of the book's "Changing your state" chapter (`docs/src/state.md` includes the
//! parts between the ANCHOR lines), each as a test: a state written by an older version of a
//! paglet is read by the newer one through the harness, as a reload or a restore does.

use plugin_api::testing::PagletTest;
use plugin_api::{Context, Message, Paglet, PagletError, Reply};
use serde_json::json;

/// The class every version below is created as: the crate is this test file.
const CLASS: &str = "state_evolution::Todo";

/// The first version.
mod v1 {
    use super::*;
    use serde::{Deserialize, Serialize};

    // ANCHOR: v1
    #[derive(Default, Serialize, Deserialize)]
    pub struct Todo {
        pub title: String,
        pub items: Vec<String>,
        pub owner: Owner,
    }

    #[derive(Default, Serialize, Deserialize)]
    pub struct Owner {
        pub name: String,
    }
    // ANCHOR_END: v1

    impl Paglet for Todo {
        fn handle_message(&mut self, _: &Context, msg: Message) -> Result<Reply, PagletError> {
            Err(msg.not_handled())
        }
    }
}

/// Adding fields, a nested one too, and renaming one: still state version 1.
mod added {
    use super::*;
    use serde::{Deserialize, Serialize};

    // ANCHOR: added
    #[derive(Default, Serialize, Deserialize)]
    pub struct Todo {
        // Renamed: states written as `title` are read through the alias.
        #[serde(alias = "title")]
        pub name: String,
        pub items: Vec<String>,
        pub owner: Owner,
        // New: old states get the default (here `false`).
        pub archived: bool,
    }

    #[derive(Default, Serialize, Deserialize)]
    pub struct Owner {
        pub name: String,
        // New in a nested struct, no `#[serde(default)]` needed: it comes from
        // `Todo::default()`'s `owner`.
        pub email: String,
    }
    // ANCHOR_END: added

    impl Paglet for Todo {
        fn handle_message(&mut self, _: &Context, msg: Message) -> Result<Reply, PagletError> {
            Err(msg.not_handled())
        }
    }
}

/// Removing a field without saying so: states holding it are refused.
mod removed {
    use super::*;
    use serde::{Deserialize, Serialize};

    // ANCHOR: removed
    #[derive(Default, Serialize, Deserialize)]
    pub struct Todo {
        pub title: String,
        pub items: Vec<String>,
        // `owner` removed
    }
    // ANCHOR_END: removed

    impl Paglet for Todo {
        fn handle_message(&mut self, _: &Context, msg: Message) -> Result<Reply, PagletError> {
            Err(msg.not_handled())
        }
    }
}

/// Version 2: items become structs and `owner` goes, on purpose, through `upgrade`.
mod v2 {
    use super::*;
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

    // ANCHOR: v2
    #[derive(Default, Serialize, Deserialize)]
    pub struct Todo {
        pub title: String,
        pub items: Vec<Item>,
    }

    #[derive(Serialize, Deserialize)]
    pub struct Item {
        pub text: String,
        pub done: bool,
    }

    /// The state as version 1 wrote it.
    #[derive(Deserialize)]
    struct TodoV1 {
        title: String,
        items: Vec<String>,
        // `owner` is not read: dropped on purpose.
    }

    impl Paglet for Todo {
        const STATE_VERSION: u32 = 2;

        fn upgrade(old: Value, from_version: u32) -> Result<Self, PagletError> {
            match from_version {
                1 => {
                    let old: TodoV1 = serde_json::from_value(old)
                        .map_err(|e| PagletError::invalid_args(e.to_string()))?;
                    let items = old
                        .items
                        .into_iter()
                        .map(|text| Item { text, done: false })
                        .collect();
                    Ok(Todo {
                        title: old.title,
                        items,
                    })
                }
                other => Err(PagletError::invalid_args(format!(
                    "no upgrade from state version {other}"
                ))),
            }
        }

        fn handle_message(&mut self, _: &Context, msg: Message) -> Result<Reply, PagletError> {
            Err(msg.not_handled())
        }
    }
    // ANCHOR_END: v2
}

fn v1_state() -> serde_json::Value {
    json!({"title": "groceries", "items": ["milk"], "owner": {"name": "ada"}})
}

#[test]
fn the_first_version_round_trips() {
    let test = PagletTest::new::<v1::Todo>();
    let id = test.restore(CLASS, v1_state(), 1).expect("restore");
    assert_eq!(test.state(&id), Ok(v1_state()));
}

// ANCHOR: test_added
#[test]
fn added_and_renamed_fields_read_a_version_1_state() {
    let test = PagletTest::new::<added::Todo>();
    let id = test.restore(CLASS, v1_state(), 1).expect("restore");
    assert_eq!(
        test.state(&id),
        Ok(json!({
            "name": "groceries", "items": ["milk"], "archived": false,
            "owner": {"name": "ada", "email": ""}
        }))
    );
}
// ANCHOR_END: test_added

// ANCHOR: test_removed
#[test]
fn a_removed_field_is_refused_naming_the_keys() {
    let test = PagletTest::new::<removed::Todo>();
    let err = test.restore(CLASS, v1_state(), 1).expect_err("drops keys");
    assert_eq!(
        err,
        PagletError::DropsKeys {
            keys: vec!["owner".into()]
        }
    );
}
// ANCHOR_END: test_removed

// ANCHOR: test_v2
#[test]
fn version_2_upgrades_a_version_1_state() {
    let test = PagletTest::new::<v2::Todo>();
    let id = test.restore(CLASS, v1_state(), 1).expect("upgrade");
    assert_eq!(
        test.state(&id),
        Ok(json!({"title": "groceries", "items": [{"text": "milk", "done": false}]}))
    );
    assert_eq!(test.state_version(&id), Ok(2));
}

#[test]
fn version_1_code_refuses_a_version_2_state() {
    let test = PagletTest::new::<v1::Todo>();
    let v2_state = json!({"title": "groceries", "items": []});
    let err = test.restore(CLASS, v2_state, 2).expect_err("no downgrade");
    assert!(err.to_string().contains("newer than this code's"), "{err}");
}
// ANCHOR_END: test_v2
