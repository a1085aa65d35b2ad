//! The command line as an operator uses it: `check-config` on the example and on a typo,
//! `sign` reproducing a spec signature, and `send` delivering a file to a running daemon.

use std::process::{Command, Output};

use crate::daemon::{temp_dir, Daemon, Settings};
use crate::fixtures::{self, SECRET_A};

fn kirimhook(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kirimhook"))
        .args(args)
        .output()
        .expect("run kirimhook")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_config_accepts_the_example_and_names_an_unknown_key() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let out = kirimhook(&["check-config", "--config", example]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "check-config on config.example.toml; stderr: {}",
        text(&out.stderr)
    );

    let dir = temp_dir();
    let settings = Settings::default();
    let good = settings.config_toml(dir.path());
    let bad = good.replacen("[server]\n", "[server]\nmax_bodybytes = 4096\n", 1);
    assert_ne!(good, bad);
    let path = dir.path().join("typo.toml");
    std::fs::write(&path, bad).expect("write the config");
    let out = kirimhook(&[
        "check-config",
        "--config",
        path.to_str().expect("UTF-8 path"),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "check-config on a typo; stderr: {stderr}"
    );
    assert!(
        stderr.contains("max_bodybytes"),
        "the error must name the unknown key; stderr: {stderr}"
    );
    assert!(
        !stderr.contains(SECRET_A),
        "the error must not show the secret; stderr: {stderr}"
    );

    // The generated test config itself is valid.
    let path = dir.path().join("good.toml");
    std::fs::write(&path, good).expect("write the config");
    let out = kirimhook(&[
        "check-config",
        "--config",
        path.to_str().expect("UTF-8 path"),
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
}

#[test]
fn sign_reproduces_the_spec_signature_of_f1() {
    let f1 = fixtures::get("f1");
    let file = f1.file.to_str().expect("UTF-8 path");
    let out = kirimhook(&[
        "sign",
        "--secret",
        SECRET_A,
        "--timestamp",
        "1781061307",
        file,
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{}\n", f1.header("X-Kirim-Signature")),
        "kirimhook sign must print F1's X-Kirim-Signature value and nothing else"
    );
}

#[tokio::test]
async fn send_delivers_a_file_to_a_running_daemon() {
    let dir = temp_dir();
    let daemon = Daemon::start(dir.path(), &Settings::default()).await;
    let f7 = fixtures::get("f7");
    let url = format!("http://{}{}", daemon.addr, fixtures::PATH);
    let file = f7.file.clone();
    let out = tokio::task::spawn_blocking(move || {
        kirimhook(&[
            "send",
            "--url",
            &url,
            "--secret",
            SECRET_A,
            file.to_str().expect("UTF-8 path"),
        ])
    })
    .await
    .expect("run kirimhook send");
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "kirimhook send; stdout: {stdout}; stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(
        stdout.lines().next(),
        Some("200"),
        "kirimhook send prints the status first; stdout: {stdout}"
    );
    assert!(
        stdout.contains(r#"{"status":"accepted"}"#),
        "stdout: {stdout}"
    );

    let event = daemon.wait_for_event(f7.event_id()).await;
    assert_eq!(event.str("type"), Some("contact.created"), "{}", event.raw);
    assert_eq!(event.str("source"), Some("kirim"), "{}", event.raw);
    assert_eq!(event.keys(), f7.dedupe_keys, "{}", event.raw);
    assert_eq!(event.str("secret_id"), Some("sec_A"), "{}", event.raw);
    assert!(
        event
            .str("delivery_id")
            .is_some_and(|id| id.starts_with("wbd_")),
        "send makes a wbd_ delivery id: {}",
        event.raw
    );
    assert_eq!(event.json["attempt"], 1, "{}", event.raw);
    assert_eq!(event.body_bytes(), &f7.body[..]);
}
