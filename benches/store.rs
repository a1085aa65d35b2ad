//! Durable admissions per second of the store alone: 32 concurrent writers, each admitting
//! unique ~400-byte events (dedupe check + keys + event, acknowledged only after fdatasync,
//! group-committed). Prints rate and latency percentiles per round and the medians.
//!
//! `cargo bench --bench store` (env: BENCH_SECS, default 3; BENCH_ROUNDS, default 3;
//! BENCH_WRITERS, default 32).

use std::time::{Duration, Instant, SystemTime};

use kirimhook::receive::envelope::{self, Classified, Hints};
use kirimhook::receive::signature::{self, SigningSecret};
use kirimhook::store::{Admission, Destination, NewDelivery, RecordMeta, Store};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn body(writer: u64, i: u64) -> Vec<u8> {
    format!(
        r#"{{"id":"evt_BENCH{writer:05}{i:016}","type":"contact.created","created_at":"2026-06-10T03:15:07Z","livemode":true,"data":{{"contact":{{"id":"ctc_EMQ9M6DXX1JHFP6B88494Q61WB","object":"contact","phone_number":"+6281398765432","name":"Siti Rahmawati","email":null,"metadata":null,"whatsapp_account":{{"phone_number":"+62 815-1122-3344"}},"created_at":"2026-06-10T03:15:07Z","updated_at":"2026-06-10T03:15:07Z"}}}}}}"#
    )
    .into_bytes()
}

async fn round(secs: u64, writers: u64) -> (f64, Duration, Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), vec!["bench".into()]).expect("open store");
    let secret = SigningSecret::new("sec_bench", "whsec_bench");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let secret = secret.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let body = body(w, i);
                i += 1;
                let header = secret.sign(1000, &body);
                let verified = signature::verify(
                    Some(header.as_bytes()),
                    &body,
                    std::slice::from_ref(&secret),
                    1000,
                    0,
                )
                .expect("own signature verifies");
                let Classified::Event(info) = envelope::classify(Hints::default(), &body) else {
                    panic!("bench body is an envelope");
                };
                let meta = RecordMeta {
                    received_at_ms: kirimhook::store::millis(SystemTime::now()),
                    secret_id: String::new(),
                    headers: vec![("x-kirim-delivery-id".into(), format!("wbd_{w}_{i}"))],
                    keys: info.keys,
                    shape: Some(info.shape),
                    source: Some(info.source),
                    event_type: info.event_type,
                    event_id: info.event_id,
                    phone_number_ids: info.phone_number_ids,
                    quarantine_reason: None,
                };
                let start = Instant::now();
                let outcome = store
                    .admit(NewDelivery {
                        verified,
                        destination: Destination::Events,
                        meta,
                        body: body.into(),
                        sinks: vec!["bench".into()],
                    })
                    .await
                    .expect("admit");
                latencies.push(start.elapsed());
                assert!(matches!(outcome, Admission::New { .. }));
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("writer task"));
    }
    store.close().await.expect("close");
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    (all.len() as f64 / secs as f64, pct(0.50), pct(0.99))
}

fn main() {
    let secs = env_or("BENCH_SECS", 3);
    let rounds = env_or("BENCH_ROUNDS", 3);
    let writers = env_or("BENCH_WRITERS", 32);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    println!("store admit: {writers} concurrent writers, {secs} s per round, fdatasync per batch");
    println!("round  admits/s  p50_ms  p99_ms");
    let mut results = Vec::new();
    for r in 1..=rounds {
        let (rate, p50, p99) = runtime.block_on(round(secs, writers));
        println!(
            "{r:<5}  {rate:>8.0}  {:>6.2}  {:>6.2}",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
        results.push((rate, p50, p99));
    }
    let mut rates: Vec<f64> = results.iter().map(|r| r.0).collect();
    let mut p99s: Vec<Duration> = results.iter().map(|r| r.2).collect();
    rates.sort_by(f64::total_cmp);
    p99s.sort();
    println!(
        "median {:.0} admits/s, p99 {:.2} ms",
        rates[rates.len() / 2],
        p99s[p99s.len() / 2].as_secs_f64() * 1e3
    );
}
