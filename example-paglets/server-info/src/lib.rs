//! `server_info::ServerInfo`: what the machine running the paglet looks like, via `sysinfo`.
//!
//! State `{"queries": <u64>}`. `info` replies `{"hostname", "logical_cpus",
//! "total_memory_bytes", "used_memory_bytes", "load_average": [1 min, 5 min, 15 min],
//! "uptime_seconds"}` and counts one query; `queries` replies `{"queries": n}`. Facts the
//! platform cannot give are `null` (a load average on Windows, say). Any other kind is not
//! handled.

use plugin_api::{Context, Message, Paglet, PagletError, Reply};
use serde::{Deserialize, Serialize};
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

/// Reports on its host machine. Its state is the struct itself.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ServerInfo {
    /// How many `info` queries were answered.
    pub queries: u64,
}

/// The reply to `info`.
#[derive(Debug, Serialize)]
pub struct Info {
    /// The machine's host name.
    pub hostname: Option<String>,
    /// The number of logical CPUs.
    pub logical_cpus: usize,
    /// Total RAM, in bytes.
    pub total_memory_bytes: u64,
    /// RAM in use, in bytes.
    pub used_memory_bytes: u64,
    /// The load average over 1, 5 and 15 minutes.
    pub load_average: Option<[f64; 3]>,
    /// Seconds since the machine booted.
    pub uptime_seconds: Option<u64>,
}

impl Info {
    /// Reads the facts now.
    pub fn read() -> Result<Info, PagletError> {
        let refresh = RefreshKind::nothing()
            .with_memory(MemoryRefreshKind::nothing().with_ram())
            .with_cpu(CpuRefreshKind::nothing());
        let system = System::new_with_specifics(refresh)
            .map_err(|e| PagletError::failed(format!("cannot read system information: {e}")))?;
        Ok(Info {
            hostname: System::host_name().ok(),
            logical_cpus: system.cpus().len(),
            total_memory_bytes: system.total_memory(),
            used_memory_bytes: system.used_memory(),
            load_average: System::load_average()
                .ok()
                .map(|load| [load.one, load.five, load.fifteen]),
            uptime_seconds: System::uptime().ok(),
        })
    }
}

impl Paglet for ServerInfo {
    const DESCRIPTION: &'static str = "Reports on its machine: info, queries.";

    fn handle_message(&mut self, _ctx: &Context, msg: Message) -> Result<Reply, PagletError> {
        match msg.kind.as_str() {
            "info" => {
                let info = Info::read()?;
                self.queries = self.queries.saturating_add(1);
                Reply::new(info)
            }
            "queries" => Reply::new(&*self),
            _ => Err(msg.not_handled()),
        }
    }
}

plugin_api::export_paglets!(ServerInfo);

#[cfg(test)]
mod tests {
    use super::ServerInfo;
    use plugin_api::{PagletError, testing::PagletTest};
    use serde_json::{Value, json};

    #[test]
    fn reports_the_machine_and_counts_queries() {
        let test = PagletTest::new::<ServerInfo>();
        let id = test
            .create_class("server_info::ServerInfo", json!({}))
            .expect("create");
        let info = test.send(&id, "info", Value::Null).expect("info");
        assert!(info["logical_cpus"].as_u64() >= Some(1), "{info}");
        assert!(info["total_memory_bytes"].as_u64() > Some(0), "{info}");
        assert!(info["used_memory_bytes"].as_u64().is_some(), "{info}");
        assert!(
            info["used_memory_bytes"].as_u64() <= info["total_memory_bytes"].as_u64(),
            "{info}"
        );
        if cfg!(unix) {
            assert!(info["hostname"].is_string(), "{info}");
            assert_eq!(info["load_average"].as_array().map(Vec::len), Some(3));
            assert!(info["uptime_seconds"].is_u64(), "{info}");
        }
        assert_eq!(
            test.send(&id, "queries", Value::Null),
            Ok(json!({"queries": 1}))
        );
    }

    #[test]
    fn keeps_its_count_across_a_reload_and_rejects_unknown_kinds() {
        let test = PagletTest::new::<ServerInfo>();
        let id = test
            .create_class("server_info::ServerInfo", json!({"queries": 9}))
            .expect("create");
        test.reload(&id).expect("reload");
        test.send(&id, "info", Value::Null).expect("info");
        assert_eq!(test.state(&id), Ok(json!({"queries": 10})));
        let err = test.send(&id, "reboot", Value::Null);
        assert_eq!(
            err,
            Err(PagletError::NotHandled {
                kind: "reboot".into()
            })
        );
    }
}
