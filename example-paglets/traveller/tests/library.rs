//! The built `libtraveller` through the host's loader: a start asks for the first dispatch.

use plugin_api::testing::{PagletTest, built_library};
use serde_json::{Value, json};

#[test]
fn the_built_library_sets_out() {
    let path = built_library("traveller").expect("libtraveller is built with this test");
    let test = PagletTest::from_library(&path).expect("load libtraveller");
    let classes: Vec<String> = test.classes().into_iter().map(|c| c.class).collect();
    assert_eq!(classes, ["traveller::Traveller"]);
    let id = test
        .create_class("traveller::Traveller", json!({}))
        .expect("create");
    test.send(&id, "start", json!({"hosts": ["lab-b"], "home": "lab-a"}))
        .expect("start");
    let requests = test.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].op, "dispatch");
    assert_eq!(requests[0].args, json!({"to": "lab-b"}));
    let report = test.send(&id, "report", Value::Null).expect("report");
    assert_eq!(report["heading"], "lab-b");
    test.dispose(&id).expect("dispose");
}
