//! The built `libserver_info` through the host's loader: the same checks as the in-process tests.

use plugin_api::testing::{PagletTest, built_library};
use serde_json::{Value, json};

#[test]
fn the_built_library_reports_the_machine() {
    let path = built_library("server_info").expect("libserver_info is built with this test");
    let test = PagletTest::from_library(&path).expect("load libserver_info");
    let classes: Vec<String> = test.classes().into_iter().map(|c| c.class).collect();
    assert_eq!(classes, ["server_info::ServerInfo"]);
    assert_eq!(test.classes()[0].state_template, json!({"queries": 0}));
    let id = test
        .create_class("server_info::ServerInfo", json!({}))
        .expect("create");
    let info = test.send(&id, "info", Value::Null).expect("info");
    assert!(info["logical_cpus"].as_u64() >= Some(1), "{info}");
    assert!(info["total_memory_bytes"].as_u64() > Some(0), "{info}");
    assert_eq!(
        test.send(&id, "queries", Value::Null),
        Ok(json!({"queries": 1}))
    );
    test.dispose(&id).expect("dispose");
}
