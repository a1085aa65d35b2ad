//! `kirimhook accounts` against a fake kirim.dev API served from the test process: two pages
//! followed through the cursor (table and `--json`), a wrong key (401), an unset key variable,
//! a refused port, kirim.dev's error message on a 403, and a cursor that never ends.
//!
//! The fake API is a hyper server on 127.0.0.1:0 in a tokio task; it records every request so
//! the tests can check what the binary sent. The binary runs on a blocking thread so the
//! server keeps answering.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The key the fake API accepts.
const KEY: &str = "kdv_test_4c9f1b2e7a";

/// What the fake API saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path_and_query: String,
    authorization: Option<String>,
    accept: Option<String>,
    user_agent: Option<String>,
}

/// A fake kirim.dev API: answers each request with what `answer` returns.
struct FakeApi {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeApi {
    async fn start(answer: fn(&Seen) -> (u16, String)) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API");
        let addr = listener.local_addr().expect("fake API address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let header = |name: &str| {
                            request
                                .headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                        };
                        let request_seen = Seen {
                            method: request.method().to_string(),
                            path_and_query: request
                                .uri()
                                .path_and_query()
                                .map(|p| p.as_str().to_owned())
                                .unwrap_or_default(),
                            authorization: header("authorization"),
                            accept: header("accept"),
                            user_agent: header("user-agent"),
                        };
                        let (status, body) = answer(&request_seen);
                        log.lock().expect("seen lock").push(request_seen);
                        let response = Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .expect("a response");
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeApi { addr, seen, task }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// kirim.dev's answers: two pages for the right key, 401 for any other.
fn two_pages(seen: &Seen) -> (u16, String) {
    if seen.authorization.as_deref() != Some(&format!("Bearer {KEY}")) {
        return (
            401,
            r#"{"error":{"code":"unauthorized","message":"Invalid API key"}}"#.into(),
        );
    }
    match seen.path_and_query.as_str() {
        "/v1/accounts" => (
            200,
            r#"{"object":"list","data":[
                {"id":"wba_01J8Z3M6Q9T2V5X7Y0B4C6D8E1","phone_number_id":"106540352242922",
                 "display_phone_number":"+62 811 1222 333","verified_name":"Acme Inc",
                 "quality_rating":"GREEN","status":"approved","created_at":"2026-01-05T10:00:00Z"},
                {"id":"wba_01J8Z3M6Q9T2V5X7Y0B4C6D8E2","phone_number_id":"109283746501928",
                 "display_phone_number":"+62 815 1122 3344","verified_name":"Toko Siti",
                 "quality_rating":"YELLOW","status":"approved"}
              ],"has_more":true,"next_cursor":"c2"}"#
                .into(),
        ),
        "/v1/accounts?cursor=c2" => (
            200,
            r#"{"object":"list","data":[
                {"id":"wba_01J8Z3M6Q9T2V5X7Y0B4C6D8E3","phone_number_id":"117364829105736",
                 "display_phone_number":"+62 812 9988 7766","status":"pending"}
              ],"has_more":false,"next_cursor":null}"#
                .into(),
        ),
        other => (
            400,
            format!(
                r#"{{"error":{{"code":"invalid_field_value","message":"unexpected {other}"}}}}"#
            ),
        ),
    }
}

const IDS: [&str; 3] = ["106540352242922", "109283746501928", "117364829105736"];

/// Runs `kirimhook accounts ARGS` with `env` set (and `KIRIM_API_KEY` removed first), on a
/// blocking thread so the fake API keeps serving.
async fn accounts(args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_kirimhook"))
            .arg("accounts")
            .args(&args)
            .env_remove("KIRIM_API_KEY")
            .envs(env)
            .output()
            .expect("run kirimhook accounts")
    })
    .await
    .expect("the kirimhook thread")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts exit code 1, an `error:` line on stderr containing every one of `needles`, nothing
/// on stdout, and the key nowhere.
#[track_caller]
fn assert_fails_with(out: &Output, needles: &[&str]) {
    let stderr = text(&out.stderr);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}; stderr: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "stderr: {stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr should mention {needle:?}; stderr: {stderr}"
        );
    }
    assert_eq!(stdout, "", "nothing on stdout on error");
    assert!(!stderr.contains(KEY), "the key leaked: {stderr}");
}

#[tokio::test]
async fn accounts_lists_every_page_as_a_table() {
    let api = FakeApi::start(two_pages).await;
    let out = accounts(&["--api-base", &api.base()], &[("KIRIM_API_KEY", KEY)]).await;
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}; stderr: {stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three rows; stdout:\n{stdout}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "PHONE_NUMBER_ID",
            "DISPLAY_NUMBER",
            "VERIFIED_NAME",
            "QUALITY",
            "STATUS"
        ]
    );
    for (line, id) in lines[1..].iter().zip(IDS) {
        assert!(line.starts_with(id), "row for {id}; stdout:\n{stdout}");
    }
    assert!(
        lines[1].contains("+62 811 1222 333") && lines[1].contains("Acme Inc"),
        "{stdout}"
    );
    assert!(
        lines[2].contains("YELLOW") && lines[2].contains("Toko Siti"),
        "{stdout}"
    );
    // The second page's line has no verified name and no quality: shown as "-".
    let third: Vec<&str> = lines[3].split("  ").filter(|c| !c.is_empty()).collect();
    assert_eq!(
        third,
        [IDS[2], "+62 812 9988 7766", "-", "-", "pending"],
        "{stdout}"
    );
    // Columns line up: STATUS starts at the same column on every line.
    let status_at = lines[0].find("STATUS").expect("STATUS header");
    assert_eq!(lines[1].find("approved"), Some(status_at), "{stdout}");
    assert_eq!(lines[3].find("pending"), Some(status_at), "{stdout}");
    assert!(!stdout.contains(KEY) && !stderr.contains(KEY));

    let seen = api.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path_and_query.as_str()).collect();
    assert_eq!(paths, ["/v1/accounts", "/v1/accounts?cursor=c2"]);
    for request in &seen {
        assert_eq!(request.method, "GET");
        assert_eq!(request.accept.as_deref(), Some("application/json"));
        assert!(
            request
                .user_agent
                .as_deref()
                .is_some_and(|ua| ua.starts_with("kirimhook/")),
            "{request:?}"
        );
    }
}

#[tokio::test]
async fn accounts_json_is_one_array_with_every_id() {
    let api = FakeApi::start(two_pages).await;
    let out = accounts(
        &[
            "--api-base",
            &format!("{}/", api.base()),
            "--json",
            "--api-key-env",
            "MY_KIRIM_KEY",
        ],
        &[("MY_KIRIM_KEY", KEY)],
    )
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}; stderr: {}",
        text(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("--json output is not one JSON document ({e}): {stdout}"));
    let accounts = json.as_array().expect("a JSON array");
    let ids: Vec<&str> = accounts
        .iter()
        .map(|a| a["phone_number_id"].as_str().expect("phone_number_id"))
        .collect();
    assert_eq!(ids, IDS);
    assert_eq!(accounts[0]["id"], "wba_01J8Z3M6Q9T2V5X7Y0B4C6D8E1");
    assert_eq!(accounts[0]["verified_name"], "Acme Inc");
    assert_eq!(accounts[2]["verified_name"], serde_json::Value::Null);
}

#[tokio::test]
async fn accounts_with_no_lines_says_so() {
    let api = FakeApi::start(|_| {
        (
            200,
            r#"{"data":[],"has_more":false,"next_cursor":null}"#.into(),
        )
    })
    .await;
    let env = [("KIRIM_API_KEY", KEY)];
    let out = accounts(&["--api-base", &api.base()], &env).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("no connected lines"),
        "stdout: {}",
        text(&out.stdout)
    );
    let out = accounts(&["--api-base", &api.base(), "--json"], &env).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "[]");
}

#[tokio::test]
async fn accounts_with_a_wrong_key_names_401_and_the_variable() {
    let api = FakeApi::start(two_pages).await;
    let out = accounts(
        &["--api-base", &api.base()],
        &[("KIRIM_API_KEY", "kdv_live_wrong")],
    )
    .await;
    assert_fails_with(&out, &["401", "KIRIM_API_KEY"]);
    assert!(!text(&out.stderr).contains("kdv_live_wrong"));

    let out = accounts(
        &["--api-base", &api.base(), "--api-key-env", "STAGING_KEY"],
        &[("STAGING_KEY", "kdv_live_wrong")],
    )
    .await;
    assert_fails_with(&out, &["401", "STAGING_KEY"]);
    assert_eq!(api.seen().len(), 2, "one request per run, no retries");
}

#[tokio::test]
async fn accounts_without_the_key_variable_names_it_and_sends_nothing() {
    let api = FakeApi::start(two_pages).await;
    let out = accounts(&["--api-base", &api.base()], &[]).await;
    assert_fails_with(&out, &["KIRIM_API_KEY"]);

    let out = accounts(
        &[
            "--api-base",
            &api.base(),
            "--api-key-env",
            "NOT_SET_ANYWHERE",
        ],
        &[("KIRIM_API_KEY", KEY)],
    )
    .await;
    assert_fails_with(&out, &["NOT_SET_ANYWHERE"]);

    let out = accounts(&["--api-base", &api.base()], &[("KIRIM_API_KEY", "")]).await;
    assert_fails_with(&out, &["KIRIM_API_KEY"]);
    assert!(api.seen().is_empty(), "no request without a key");
}

#[tokio::test]
async fn accounts_reports_a_refused_connection() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let out = accounts(&["--api-base", &base], &[("KIRIM_API_KEY", KEY)]).await;
    assert_fails_with(&out, &["cannot reach", &base]);
}

#[tokio::test]
async fn accounts_repeats_kirims_error_message() {
    let api = FakeApi::start(|_| {
        (
            403,
            r#"{"error":{"code":"insufficient_scope","message":"This key cannot read accounts"}}"#
                .into(),
        )
    })
    .await;
    let out = accounts(&["--api-base", &api.base()], &[("KIRIM_API_KEY", KEY)]).await;
    assert_fails_with(
        &out,
        &["403", "This key cannot read accounts", "insufficient_scope"],
    );
}

#[tokio::test]
async fn accounts_stops_a_cursor_that_never_ends() {
    let api = FakeApi::start(|_| {
        (
            200,
            r#"{"data":[{"phone_number_id":"1"}],"has_more":true,"next_cursor":"again"}"#.into(),
        )
    })
    .await;
    let out = accounts(&["--api-base", &api.base()], &[("KIRIM_API_KEY", KEY)]).await;
    assert_fails_with(&out, &["100 pages"]);
    assert_eq!(api.seen().len(), 100);
}
