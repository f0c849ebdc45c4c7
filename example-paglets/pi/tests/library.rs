//! The built `libpi` through the host's loader: the same checks as the in-process tests.

use plugin_api::testing::{PagletTest, built_library};
use serde_json::json;

#[test]
fn the_built_library_computes_pi() {
    let path = built_library("pi").expect("libpi is built with this test");
    let test = PagletTest::from_library(&path).expect("load libpi");
    let classes: Vec<String> = test.classes().into_iter().map(|c| c.class).collect();
    assert_eq!(classes, ["pi::Pi"]);
    assert_eq!(test.classes()[0].state_template, json!({"computed": 0}));
    let id = test.create_class("pi::Pi", json!({})).expect("create");
    assert_eq!(
        test.send(&id, "digits", json!({"n": 10})),
        Ok(json!({"n": 10, "digits": "3.1415926535"}))
    );
    let reply = test
        .send(&id, "digits", json!({"n": 1000}))
        .expect("1000 digits");
    let digits = reply["digits"].as_str().expect("a string");
    assert!(digits.ends_with("2164201989"), "{digits}");
    assert!(test.send(&id, "digits", json!({"n": 0})).is_err());
    assert_eq!(test.state(&id), Ok(json!({"computed": 2})));
    test.dispose(&id).expect("dispose");
}
