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
    assert!(
        text(&out.stderr).contains(
            "warning: secret sec_DEMO0000000000000000000000 is the demo secret of config.example.toml"
        ),
        "check-config warns about the published demo secret; stderr: {}",
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

/// Writes `text` as a config file in `dir` and runs `check-config` on it with `extra` args.
fn check_config(dir: &std::path::Path, config: &str, extra: &[&str]) -> (Option<i32>, String) {
    let path = dir.join("check.toml");
    std::fs::write(&path, config).expect("write the config");
    let mut args = vec![
        "check-config",
        "--config",
        path.to_str().expect("UTF-8 path"),
    ];
    args.extend_from_slice(extra);
    let out = kirimhook(&args);
    (out.status.code(), text(&out.stderr))
}

#[test]
fn check_config_names_the_key_of_a_wrong_type_and_says_a_missing_file_once() {
    let dir = temp_dir();
    let good = Settings::default().config_toml(dir.path());
    let bad = good.replacen("[server]\n", "[server]\nmax_body_bytes = \"1M\"\n", 1);
    let (code, stderr) = check_config(dir.path(), &bad, &[]);
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(
        stderr.starts_with("error: server.max_body_bytes: invalid type: string"),
        "the error must start with the key; stderr: {stderr}"
    );
    assert!(stderr.contains("line 2"), "stderr: {stderr}");
    assert!(
        !stderr.contains("u64"),
        "no Rust type names; stderr: {stderr}"
    );

    let missing = dir.path().join("no-such-config.toml");
    let out = kirimhook(&[
        "check-config",
        "--config",
        missing.to_str().expect("UTF-8 path"),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let os = std::fs::read(&missing)
        .expect_err("the file is missing")
        .to_string();
    assert_eq!(
        stderr.matches(&os).count(),
        1,
        "the OS error is said once; stderr: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
}

#[test]
fn check_config_refuses_a_store_path_that_serve_cannot_use() {
    let dir = temp_dir();
    let good = Settings::default().config_toml(dir.path());
    let store = crate::daemon::store_path(dir.path());
    let store_line = format!("path = \"{}\"", store.display());
    assert!(good.contains(&store_line), "{good}");

    // A store under /proc is refused by the kernel, even to root.
    if std::path::Path::new("/proc/self").exists() {
        let bad = good.replace(&store_line, "path = \"/proc/kirimhook-store\"");
        let (code, stderr) = check_config(dir.path(), &bad, &[]);
        assert_eq!(code, Some(1), "stderr: {stderr}");
        assert!(
            stderr.starts_with("error: store.path: /proc/kirimhook-store cannot be created"),
            "stderr: {stderr}"
        );
    } else {
        eprintln!("no /proc here: the /proc case did not run");
    }

    // A file where a parent directory should be.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").expect("write a file");
    let bad = good.replace(
        &store_line,
        &format!("path = \"{}\"", file.join("store").display()),
    );
    let (code, stderr) = check_config(dir.path(), &bad, &[]);
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(stderr.contains("is not a directory"), "stderr: {stderr}");

    // A store that does not exist yet is fine, and the check creates nothing.
    let deep = dir.path().join("new/deeper/store");
    let fine = good.replace(&store_line, &format!("path = \"{}\"", deep.display()));
    let (code, stderr) = check_config(dir.path(), &fine, &[]);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(stderr.starts_with("config OK: "), "stderr: {stderr}");
    assert!(
        !dir.path().join("new").exists(),
        "check-config must leave no directory behind"
    );
}

#[test]
fn check_config_can_skip_credential_files_that_are_not_here() {
    let dir = temp_dir();
    let settings = Settings {
        secret_b: false,
        ..Settings::default()
    };
    let good = settings.config_toml(dir.path());
    let credential = dir
        .path()
        .join("run/credentials/kirimhook.service/kirim_secret");
    let inline = format!("value = \"{SECRET_A}\"");
    assert!(good.contains(&inline), "{good}");
    let production = good.replace(
        &inline,
        &format!("value_file = \"{}\"", credential.display()),
    );

    // Without the flag: an error naming the key and the path.
    let (code, stderr) = check_config(dir.path(), &production, &[]);
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(
        stderr.starts_with("error: verify.secrets[0].value_file: "),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains(&credential.display().to_string()),
        "stderr: {stderr}"
    );

    // With it: listed as not checked, and never called OK.
    let (code, stderr) = check_config(dir.path(), &production, &["--skip-missing-secrets"]);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!(
            "not checked: verify.secrets[0].value_file ({})",
            credential.display()
        )),
        "stderr: {stderr}"
    );
    // The temporary directory's random name may itself contain "OK".
    assert!(!stderr.contains("config OK"), "stderr: {stderr}");

    // Everything else is still checked.
    let broken = production.replace("tolerance_secs = 300", "tolerance_secs = \"5m\"");
    assert_ne!(broken, production);
    let (code, stderr) = check_config(dir.path(), &broken, &["--skip-missing-secrets"]);
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(
        stderr.starts_with("error: verify.tolerance_secs: "),
        "stderr: {stderr}"
    );
}

#[tokio::test]
async fn a_retry_or_drop_by_an_id_that_matched_nothing_exits_non_zero() {
    let dir = temp_dir();
    let daemon = Daemon::start(dir.path(), &Settings::default()).await;
    let admin = format!(
        "http://{}",
        daemon.admin_addr.expect("the admin listener's address")
    );
    let run = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend(["--admin".to_owned(), admin.clone()]);
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = all.iter().map(String::as_str).collect();
                kirimhook(&args)
            })
            .await
            .expect("run kirimhook")
        }
    };
    for (args, says) in [
        (
            vec!["dead-letters", "drop", "--sink", "stdout", "99"],
            "no dead letter of sink stdout has ID 99",
        ),
        (
            vec!["dead-letters", "retry", "--sink", "stdout", "99", "100"],
            "no dead letter of sink stdout has any of the IDs 99, 100",
        ),
        (
            vec!["quarantine", "drop", "99"],
            "no quarantined delivery has ID 99",
        ),
    ] {
        let out = run(&args).await;
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "kirimhook {args:?}; stdout: {}; stderr: {stderr}",
            text(&out.stdout)
        );
        assert!(
            stderr.contains(says),
            "kirimhook {args:?}; stderr: {stderr}"
        );
        assert_eq!(text(&out.stdout), "", "kirimhook {args:?}");
    }
    // Nothing to do for --all is not an error.
    let out = run(&["dead-letters", "drop", "--sink", "stdout", "--all"]).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let out = run(&["quarantine", "drop", "--all"]).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
}

#[test]
fn replay_since_too_far_back_is_an_error_not_a_panic() {
    let out = kirimhook(&[
        "replay",
        "--sink",
        "stdout",
        "--since",
        "60years",
        "--admin",
        "http://127.0.0.1:9",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("too far back"), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

#[test]
fn sign_and_send_refuse_a_secret_the_config_would_refuse() {
    let f1 = fixtures::get("f1");
    let file = f1.file.to_str().expect("UTF-8 path");
    for bad in ["hunter2", "whsec_", "whsec_two words"] {
        let out = kirimhook(&["sign", "--secret", bad, file]);
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "sign --secret {bad:?}; stderr: {stderr}"
        );
        assert!(stderr.starts_with("error: --secret: "), "stderr: {stderr}");
        assert_eq!(text(&out.stdout), "", "nothing is signed");
        if bad.len() > "whsec_".len() {
            assert!(!stderr.contains(bad), "the value is not shown: {stderr}");
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kirimhook"))
        .args(["sign", "--secret-env", "KIRIMHOOK_TEST_BAD_SECRET", file])
        .env("KIRIMHOOK_TEST_BAD_SECRET", "whsec_abc\n")
        .output()
        .expect("run kirimhook");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.starts_with("error: --secret-env KIRIMHOOK_TEST_BAD_SECRET: "),
        "stderr: {stderr}"
    );
    let out = kirimhook(&[
        "send",
        "--url",
        "http://127.0.0.1:9/webhooks/kirim",
        "--secret",
        "hunter2",
        file,
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.starts_with("error: --secret: "), "stderr: {stderr}");
}

#[tokio::test]
async fn send_speaks_https_to_a_daemon_with_tls_trusting_its_cacert() {
    let dir = temp_dir();
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("generate a test certificate");
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, generated.cert.pem()).expect("write cert.pem");
    std::fs::write(&key_file, generated.signing_key.serialize_pem()).expect("write key.pem");
    let settings = Settings {
        tls: Some((cert_file.clone(), key_file)),
        ..Settings::default()
    };
    let daemon = Daemon::start(dir.path(), &settings).await;
    let f7 = fixtures::get("f7");
    let send = |url: String, cacert: Option<std::path::PathBuf>| {
        let file = f7.file.clone();
        tokio::task::spawn_blocking(move || {
            let mut args = vec![
                "send".to_owned(),
                "--url".to_owned(),
                url,
                "--secret".to_owned(),
                SECRET_A.to_owned(),
            ];
            if let Some(cacert) = cacert {
                args.push("--cacert".to_owned());
                args.push(cacert.to_str().expect("UTF-8 path").to_owned());
            }
            args.push(file.to_str().expect("UTF-8 path").to_owned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kirimhook(&args)
        })
    };
    let port = daemon.addr.port();

    // The self-signed certificate is not trusted without --cacert.
    let out = send(format!("https://localhost:{port}{}", fixtures::PATH), None)
        .await
        .expect("run kirimhook send");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("TLS handshake"), "stderr: {stderr}");

    // With it, by name and by IP address.
    for host in ["localhost", "127.0.0.1"] {
        let url = format!("https://{host}:{port}{}", fixtures::PATH);
        let out = send(url, Some(cert_file.clone()))
            .await
            .expect("run kirimhook send");
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "send to {host}; stdout: {stdout}; stderr: {}",
            text(&out.stderr)
        );
        assert_eq!(stdout.lines().next(), Some("200"), "stdout: {stdout}");
    }
    let event = daemon.wait_for_event(f7.event_id()).await;
    assert_eq!(event.body_bytes(), &f7.body[..]);

    // --cacert is for https only.
    let out = send(
        format!("http://127.0.0.1:{port}{}", fixtures::PATH),
        Some(cert_file.clone()),
    )
    .await
    .expect("run kirimhook send");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--cacert is for https://"));
}

#[test]
fn a_reader_that_went_away_is_no_panic() {
    // `kirimhook sign ... | head -0`: the pipe's reading end is closed before the child starts.
    let f1 = fixtures::get("f1");
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_kirimhook"))
        .args(["sign", "--secret", SECRET_A])
        .arg(&f1.file)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run kirimhook");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

/// Every command of kirimhook, as typed.
const COMMANDS: [&str; 12] = [
    "serve",
    "check-config",
    "sign",
    "send",
    "accounts",
    "status",
    "dead-letters",
    "quarantine",
    "replay",
    "tail",
    "completions",
    "man",
];

/// Whether `text` has `word` as a word of its own: not inside a longer name (`man` in
/// `command`, `send` in `sends`), whatever quoting or separators each shell's script uses.
fn names(text: &str, word: &str) -> bool {
    let part_of_name = |c: char| c.is_ascii_alphanumeric() || c == '-';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(part_of_name) && !after.is_some_and(part_of_name)
    })
}

/// Runs kirimhook, checks it exited 0, and returns its stdout.
fn stdout_of(args: &[&str]) -> Vec<u8> {
    let out = kirimhook(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "kirimhook {args:?}: {}",
        text(&out.stderr)
    );
    out.stdout
}

/// Every shell's completion script comes out of the binary, non-empty, naming every command.
#[test]
fn completions_for_every_shell_name_every_command() {
    let help = text(&stdout_of(&["--help"]));
    assert_eq!(
        kirimhook::cli::command_names(),
        COMMANDS,
        "COMMANDS must list every command, so that the checks below cover it"
    );
    for command in COMMANDS {
        assert!(names(&help, command), "--help does not list {command}");
    }
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = text(&stdout_of(&["completions", shell]));
        for command in COMMANDS {
            assert!(
                names(&script, command),
                "the {shell} script does not name {command}"
            );
        }
    }
    let out = kirimhook(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("tcsh"), "{}", text(&out.stderr));
}

/// `kirimhook man` and every command's page render with groff without a warning (`-ww` turns
/// every warning on); an unknown command is refused by name. Without groff the rendering is
/// skipped with a message (the pages are still checked to be roff naming their command),
/// unless `KIRIMHOOK_REQUIRE_SERVICES=1`, as in CI, where a missing groff fails the test.
#[test]
fn man_pages_render_without_warnings() {
    let groff = Command::new("groff").arg("--version").output().is_ok();
    if !groff {
        assert!(
            std::env::var("KIRIMHOOK_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "groff is needed to render the man pages (KIRIMHOOK_REQUIRE_SERVICES=1)"
        );
        eprintln!("skipped: rendering the man pages needs groff (apt install groff-base)");
    }
    let pages = std::iter::once(None).chain(COMMANDS.map(Some));
    for page in pages {
        let mut args = vec!["man"];
        args.extend(page);
        let roff = stdout_of(&args);
        let title = match page {
            None => "kirimhook".to_owned(),
            Some(name) => format!("kirimhook-{name}"),
        };
        let shown = text(&roff);
        assert!(shown.contains(".TH"), "man {page:?} is not roff");
        assert!(shown.contains(&title), "man {page:?} does not name {title}");
        if groff {
            let rendered = render_roff(roff);
            assert!(
                rendered.status.success() && rendered.stderr.is_empty(),
                "groff on man {page:?}: {}",
                text(&rendered.stderr)
            );
        }
    }
    let out = kirimhook(&["man", "no-such-command"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("no-such-command") && stderr.contains("serve"),
        "{stderr}"
    );
}

fn render_roff(roff: Vec<u8>) -> Output {
    use std::io::Write as _;
    let mut child = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run groff");
    child
        .stdin
        .take()
        .expect("groff's stdin")
        .write_all(&roff)
        .expect("write to groff");
    child.wait_with_output().expect("groff's answer")
}
