//! Tests of the PostgreSQL engine's connections against a real server: racing migrations,
//! restarts, NOTIFY wake-ups, lost connections, a server that goes down and comes back,
//! TLS, and a throughput print. Skipped (and saying so) without `KIRIMHOOK_TEST_POSTGRES_URL`.

use std::time::Duration;

use super::testing::*;
use super::*;
use crate::store::model::{Admission, ClaimOrder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_everything() {
    let (settings, _guard) = settings!("restart");
    let store = PgStore::connect(&settings).await.unwrap();
    let seq = seq_of(store.admit(event(&["x1"], &["s"])).await.unwrap());
    store.close().await;
    assert!(matches!(
        store.admit(event(&["x2"], &["s"])).await,
        Err(StoreError::WriterGone)
    ));
    let store = PgStore::connect(&settings).await.unwrap();
    assert_eq!(
        store.admit(event(&["x1"], &["s"])).await.unwrap(),
        Admission::Duplicate
    );
    let claimed = store.claim("s", 5, LEASE, ClaimOrder::Any).await.unwrap();
    assert_eq!(claimed.claims.len(), 1);
    assert_eq!(claimed.claims[0].seq, seq);
    assert!(store.disk_space().await.unwrap() > 0);
    store.ping().await.unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_connects_on_a_fresh_schema_both_succeed() {
    let (settings, _guard) = settings!("racing_connects");
    let (a, b) = tokio::join!(PgStore::connect(&settings), PgStore::connect(&settings));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        PgStore::check(&settings).await.unwrap().split('.').next(),
        Some("15")
    );
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_wakes_the_other_instance() {
    let (settings, _guard) = settings!("notify_wakes");
    let a = PgStore::connect(&settings).await.unwrap();
    let b = PgStore::connect(&settings).await.unwrap();
    let mut work = a.work();
    // Let the LISTEN connection come up (its first wake-up is the reconnection's).
    work.wait(Some(tokio::time::Instant::now() + Duration::from_secs(2)))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // On a loaded machine the LISTEN connection may still be coming up (a notification sent
    // before it listens is lost): up to three tries, each well under the 1 s poll.
    let mut waits = Vec::new();
    for i in 0..3 {
        let mut work = a.work();
        let started = std::time::Instant::now();
        let b = b.clone();
        let key = format!("n{i}");
        let admit = tokio::spawn(async move { b.admit(event(&[&key], &["s"])).await });
        work.wait(Some(tokio::time::Instant::now() + Duration::from_secs(5)))
            .await;
        let waited = started.elapsed();
        admit.await.unwrap().unwrap();
        waits.push(waited);
        if waited < Duration::from_millis(900) {
            break;
        }
    }
    assert!(
        waits.iter().any(|w| *w < Duration::from_millis(900)),
        "never woke before the poll: {waits:?}"
    );
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_refused_with_words() {
    let (mut settings, _guard) = settings!("bad_settings");
    settings.schema = "Bad-Name".into();
    let err = PgStore::connect(&settings).await.err().unwrap();
    assert!(err.to_string().contains("not a valid schema name"), "{err}");
    settings.schema = "kh_unreachable".into();
    settings.url = "postgres://kh:pw@127.0.0.1:1/x".into();
    let err = PgStore::check(&settings).await.err().unwrap();
    assert!(err.to_string().contains("cannot connect"), "{err}");
    assert!(!err.to_string().contains(":pw@"), "{err}");
}

/// Not a test of speed (nothing is asserted on it): prints admissions per second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_throughput() {
    let (settings, _guard) = settings!("admission_throughput");
    let store = PgStore::connect(&settings).await.unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(2);
    let mut tasks = Vec::new();
    for c in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while std::time::Instant::now() < until {
                let admitted = store.admit(event(&[&format!("tp{c}_{n}")], &["s"])).await;
                assert!(
                    matches!(admitted, Ok(Admission::New { .. })),
                    "{admitted:?}"
                );
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    eprintln!(
        "admission throughput: {} admissions/s (64 concurrent callers, {} workers)",
        total / 2,
        admit::WORKERS
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connections_come_back() {
    let (mut settings, _guard) = settings!("lost_connections");
    settings.url = format!("{}?application_name={}", settings.url, settings.schema);
    let store = PgStore::connect(&settings).await.unwrap();
    store.admit(event(&["lc0"], &["s"])).await.unwrap();
    store.claim("s", 1, LEASE, ClaimOrder::Any).await.unwrap();
    let (client, connection) = tokio_postgres::connect(
        &std::env::var("KIRIMHOOK_TEST_POSTGRES_URL").unwrap(),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let killed = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&settings.schema],
        )
        .await
        .unwrap();
    assert!(killed.len() >= 2, "{}", killed.len());
    // Each call fails at most once (its pooled connection was dead), quickly, and never as
    // a New; then the pools have made new connections.
    let started = std::time::Instant::now();
    let mut admitted = None;
    for i in 0..3 {
        match store.admit(event(&[&format!("lc{}", i + 1)], &["s"])).await {
            Ok(a) => {
                admitted = Some(a);
                break;
            }
            Err(e) => assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}"),
        }
    }
    assert!(matches!(admitted, Some(Admission::New { .. })));
    let mut status = None;
    for _ in 0..3 {
        if let Ok(s) = store.sink_status("s").await {
            status = Some(s);
            break;
        }
    }
    assert!(status.is_some());
    assert!(started.elapsed() < Duration::from_secs(10));
    store.ping().await.unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_speaks_tls_and_verifies_the_certificate() {
    let (mut settings, _guard) = settings!("sslmode_require");
    settings.url = format!("{}?sslmode=require", settings.url);
    // The test server's certificate (if it speaks TLS at all) is not signed by a public CA:
    // the handshake is attempted and refused, never silently downgraded to plain TCP.
    match PgStore::check(&settings).await {
        Ok(version) => panic!("connected over an unverified TLS or plain connection: {version}"),
        Err(e) => {
            let why = e.to_string();
            eprintln!("sslmode=require refused as expected: {why}");
            assert!(
                why.contains("certificate") || why.contains("TLS") || why.contains("SSL"),
                "{why}"
            );
        }
    }
}

/// A TCP proxy to the test server that can be cut (every connection dropped, new ones
/// refused) and restored on the same port.
struct Proxy {
    addr: std::net::SocketAddr,
    upstream: String,
    cut: tokio_util::sync::CancellationToken,
}

impl Proxy {
    async fn start(upstream: String, addr: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = tokio_util::sync::CancellationToken::new();
        let (up, stop) = (upstream.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                let (up, stop) = (up.clone(), stop.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&up).await else {
                        return;
                    };
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            upstream,
            cut,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_means_unavailable_quickly_and_back_means_working() {
    let (mut settings, _guard) = settings!("postgres_down");
    let proxy = Proxy::start("127.0.0.1:5432".into(), "127.0.0.1:0".parse().unwrap()).await;
    let direct: tokio_postgres::Config = settings.url.parse().unwrap();
    let user = direct.get_user().unwrap_or("postgres").to_owned();
    let db = direct.get_dbname().unwrap_or("test").to_owned();
    settings.url = format!("postgres://{user}@{}/{db}", proxy.addr);
    let store = PgStore::connect(&settings).await.unwrap();
    store.admit(event(&["pd0"], &["s"])).await.unwrap();

    proxy.cut.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let admitted = store.admit(event(&["pd1"], &["s"])).await;
    assert!(
        matches!(admitted, Err(StoreError::Unavailable(_))),
        "{admitted:?}"
    );
    let claimed = store.claim("s", 1, LEASE, ClaimOrder::Any).await;
    assert!(
        matches!(claimed, Err(StoreError::Unavailable(_))),
        "{claimed:?}"
    );
    assert!(store.ping().await.is_err());
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(8), "took {waited:?}");
    let mut work = store.work();
    work.wait(None).await; // polls: returns without the LISTEN connection

    let back = Proxy::start(proxy.upstream.clone(), proxy.addr).await;
    let mut ok = false;
    for i in 0..20 {
        if let Ok(a) = store.admit(event(&[&format!("pd_back{i}")], &["s"])).await {
            assert!(matches!(a, Admission::New { .. }));
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "no admission after PostgreSQL came back");
    store.ping().await.unwrap();
    store.close().await;
    back.cut.cancel();
}
