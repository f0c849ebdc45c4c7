//! The built `libcounter` through the host's loader: the same checks as the in-process tests.

use plugin_api::testing::{PagletTest, built_library};
use serde_json::{Value, json};

#[test]
fn the_built_library_counts() {
    let path = built_library("counter").expect("libcounter is built with this test");
    let test = PagletTest::from_library(&path).expect("load libcounter");
    let classes: Vec<String> = test.classes().into_iter().map(|c| c.class).collect();
    assert_eq!(classes, ["counter::Counter"]);
    assert_eq!(test.classes()[0].state_template, json!({"count": 0}));
    let id = test
        .create_class("counter::Counter", json!({"count": 2}))
        .expect("create");
    assert_eq!(
        test.send(&id, "increment", json!({"by": 3})),
        Ok(json!({"count": 5}))
    );
    assert!(test.send(&id, "increment", json!({"by": -3})).is_err());
    assert_eq!(test.send(&id, "get", Value::Null), Ok(json!({"count": 5})));
    test.dispose(&id).expect("dispose");
}
