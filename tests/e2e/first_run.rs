//! What a newcomer meets on a first run: a reload refused for a value of the wrong type names
//! the key in its log line (the `key` field, not `-`).

use crate::daemon::{temp_dir, Daemon, Settings};

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
