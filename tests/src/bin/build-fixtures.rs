//! `cargo run -p paglets-e2e --bin build-fixtures`: builds the misbehaving test libraries of
//! `tests/fixtures/` once, before the tests run, so that no test waits on that build (the
//! README's test command runs it between `cargo build` and `cargo test`). The tests build them
//! again only if something changed, which takes a second.

fn main() {
    eprintln!(
        "building the test fixtures into tests/fixtures/target (once; about a minute the first time)"
    );
    let target = paglets_e2e::fixtures_dir();
    eprintln!("test fixtures ready in {}", target.display());
}
