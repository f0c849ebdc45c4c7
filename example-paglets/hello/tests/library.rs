//! The built `libhello` through the host's loader: both classes, talking to each other.

use plugin_api::{
    PagletError,
    testing::{PagletTest, built_library},
};
use serde_json::{Value, json};

#[test]
fn the_built_library_greets_and_forwards() {
    let path = built_library("hello").expect("libhello is built with this test");
    let test = PagletTest::from_library(&path).expect("load libhello");
    let classes: Vec<String> = test.classes().into_iter().map(|c| c.class).collect();
    assert_eq!(classes, ["hello::Hello", "hello::Echo"]);
    assert_eq!(
        test.classes()[0].state_template,
        json!({"greeting": "Hello", "greeted": 0})
    );
    let hello = test
        .create_class("hello::Hello", json!({}))
        .expect("create");
    assert_eq!(
        test.send(&hello, "greet", json!({"name": "library"})),
        Ok(json!({"message": "Hello, library!"}))
    );
    assert!(
        test.logs()
            .iter()
            .any(|line| line.id == hello && line.message.contains("Hello, library!")),
        "{:?}",
        test.logs()
    );
    let spawned = test
        .send(
            &hello,
            "spawn",
            json!({"class": "hello::Echo", "id": "echo"}),
        )
        .expect("spawn");
    assert_eq!(spawned, json!({"id": "echo"}));
    assert_eq!(
        test.send(
            &hello,
            "forward",
            json!({"to": "echo", "kind": "echo", "args": [1, 2]})
        ),
        Ok(json!({"from": "echo", "reply": [1, 2], "sent": 1}))
    );
    assert!(
        test.send(&hello, "forward", json!({"to": hello, "kind": "greet"}))
            .is_err()
    );
    assert_eq!(
        test.send("echo", "get", Value::Null),
        Err(PagletError::NotHandled { kind: "get".into() })
    );
    test.dispose(&hello).expect("dispose");
}
