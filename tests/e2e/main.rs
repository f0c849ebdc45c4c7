//! The end-to-end tests: one binary, one module per area. The harness is in `tests/src/lib.rs`.

mod author_crate;
mod bad_libraries;
mod busy_paglets;
mod cli;
mod connections;
mod discover;
mod durable;
mod git_update;
mod http_api;
mod http_edges;
mod isolation;
mod lifecycle;
mod mesh;
mod messaging;
mod moving;
mod reload;
mod state_evolution;
mod traveller;
