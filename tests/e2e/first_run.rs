//! What a newcomer meets on a first run: the README's relay walkthrough works as written (its
//! `[[sinks]]` table, copied as it is, relays every fixture), the Quick start says how the
//! binary gets on `PATH`, and a reload refused for a value of the wrong type names the key in
//! its log line (the `key` field, not `-`).

use crate::daemon::{temp_dir, Daemon, Settings};
use crate::fixtures;
use crate::target::Target;

const README: &str = include_str!("../../README.md");
const README_TARGET_URL: &str = "http://127.0.0.1:9000/hooks/kirim";

/// The body of the first fenced block of `language` after the heading `heading`.
fn block_after(heading: &str, language: &str) -> String {
    let section = README
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README has no {heading:?} heading"))
        .1;
    let fence = format!("```{language}\n");
    let start = section
        .find(&fence)
        .unwrap_or_else(|| panic!("no {language} block after {heading:?}"))
        + fence.len();
    let end = section[start..].find("```").expect("the block ends") + start;
    section[start..end].to_owned()
}

#[tokio::test]
async fn the_readme_relay_table_copied_as_it_is_relays_every_fixture() {
    let table = block_after("## Relaying to your service (HTTP sink)", "toml");
    assert!(
        table.contains(README_TARGET_URL),
        "the README's table should post to the stand-in's URL: {table}"
    );
    let target = Target::start().await;
    let dir = temp_dir();
    let settings = Settings {
        extra_sinks: table.replace(README_TARGET_URL, &target.url()),
        ..Settings::default()
    };
    let daemon = Daemon::start(dir.path(), &settings).await;
    let mut client = daemon.client();
    let all = fixtures::all();
    assert_eq!(all.len(), 9);
    let mut ids = Vec::new();
    for fixture in &all {
        let reply = client.send(&fixture.signed_now()).await;
        assert_eq!(reply.status, 200, "{}: {}", fixture.name, reply.body);
        ids.push(fixture.event_id().to_owned());
    }
    target.wait_acknowledged(&ids).await;
}

#[test]
fn the_quick_start_says_how_kirimhook_gets_on_the_path() {
    let quick_start = README
        .split_once("\n## Quick start\n")
        .expect("a Quick start")
        .1
        .split_once("\n### ")
        .expect("a subsection after it")
        .0;
    let commands = block_after("## Quick start", "sh");
    assert_eq!(
        commands.lines().filter(|l| !l.trim().is_empty()).count(),
        2,
        "exactly two set-up commands: run the daemon, run the tests: {commands}"
    );
    assert!(
        quick_start.contains("cargo install --path .")
            && quick_start.contains("target/release/kirimhook"),
        "the Quick start must say how `kirimhook` gets on PATH: {quick_start}"
    );
}

const REFUSED: &str = "reload refused; keeping the running configuration";

#[tokio::test]
async fn a_reload_refused_for_a_wrong_type_logs_the_key() {
    let dir = temp_dir();
    let settings = Settings::default();
    let daemon = Daemon::start(dir.path(), &settings).await;
    let text = settings
        .config_toml(dir.path())
        .replace("[server]\n", "[server]\nmax_body_bytes = \"1M\"\n");
    std::fs::write(dir.path().join("kirimhook.toml"), text).expect("write the config");
    daemon.signal("HUP");
    let refusal = daemon
        .stderr
        .wait_for(|lines, _| {
            lines
                .iter()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .find(|log| log["message"] == REFUSED)
        })
        .await
        .unwrap_or_else(|| panic!("no refusal logged; stderr:\n{}", daemon.stderr_text()));
    assert_eq!(refusal["key"], "server.max_body_bytes", "{refusal}");
}
