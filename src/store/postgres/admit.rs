//! Admission by group commit: concurrent [`PgStore::admit`] calls are queued to [`WORKERS`]
//! background workers; each takes every admission waiting (up to [`MAX_BATCH`]) and decides
//! and writes them all in ONE transaction, answering the callers only after its COMMIT
//! returned. One worker per instance: measured with the receive bench on a 2-core machine,
//! one worker's larger batches admitted more than two workers' overlapping commits (one
//! instance 7,300/s against 5,100/s; two instances 4,800/s against 4,100/s). Against a remote
//! server with a longer round trip, a second worker may pay off: it is this one constant.
//!
//! The decisions are the embedded engine's: an admission whose signed digest was seen before
//! is a duplicate; otherwise, if none of its dedupe keys is new, it is a duplicate whose
//! digest is remembered; otherwise it is new: its new keys, its event (or quarantined
//! delivery) and one queue row per sink are written. Within a batch, an earlier admission
//! takes the keys and digest it shares with a later one. Uniqueness is PostgreSQL's:
//! `INSERT ... ON CONFLICT DO NOTHING RETURNING` on the digest and key tables, so two
//! instances admitting the same key concurrently get exactly one `New` (the second waits
//! for the first's commit). Rows are inserted in one global order (digests sorted, then keys
//! sorted), so two transactions never wait on each other in a cycle.
//!
//! Any failure answers every admission of the batch [`StoreError::Unavailable`]: nothing of
//! it may be acknowledged, whether it was committed or not.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;

use super::{engine, get, int8, timed, Inner, PgStore, StoreError};
use crate::store::model::{Admission, Destination, NewDelivery};
use crate::store::record;

/// Admission transactions one store runs at once.
pub(super) const WORKERS: usize = 1;
/// Most admissions in one transaction.
pub(super) const MAX_BATCH: usize = 256;
/// Admissions waiting for a worker, at most (callers wait for room beyond it).
pub(super) const QUEUE: usize = 4096;
/// How long one admission transaction may take before its outcome counts as unknown.
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One admission waiting for its batch.
pub(super) struct AdmitJob {
    digest: [u8; 32],
    keys: Vec<String>,
    destination: Destination,
    sinks: Vec<String>,
    received_at_ms: i64,
    record: Vec<u8>,
    event_type: Option<String>,
    source: Option<&'static str>,
    /// The phone number ids as a JSON array (turned into `text[]` in SQL).
    phone_ids: String,
    reply: oneshot::Sender<Result<Admission, StoreError>>,
}

impl PgStore {
    /// Admits a verified delivery: `New{seq}` once it is durably stored and queued for its
    /// sinks, `Duplicate` when its digest or every key was seen before. An error means it
    /// must not be acknowledged.
    pub async fn admit(&self, delivery: NewDelivery) -> Result<Admission, StoreError> {
        let digest = delivery.signed_digest();
        let mut meta = delivery.meta;
        meta.secret_id = delivery.verified.secret_id().to_owned();
        let record = record::encode(&meta, &delivery.body);
        let phone_ids =
            serde_json::to_string(&meta.phone_number_ids).unwrap_or_else(|_| "[]".into());
        let (reply, answer) = oneshot::channel();
        let job = AdmitJob {
            digest,
            keys: meta.keys.into_iter().map(|k| k.into_string()).collect(),
            destination: delivery.destination,
            sinks: delivery.sinks,
            received_at_ms: int8(meta.received_at_ms),
            record,
            event_type: meta.event_type,
            source: meta.source.map(|s| s.as_str()),
            phone_ids,
            reply,
        };
        self.inner
            .admit_tx
            .send(job)
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }
}

/// Starts the admission workers; they share `rx` and stop when the store is cancelled.
pub(super) fn spawn_workers(
    inner: &Arc<Inner>,
    rx: mpsc::Receiver<AdmitJob>,
) -> Vec<JoinHandle<()>> {
    let rx = Arc::new(Mutex::new(rx));
    (0..WORKERS)
        .map(|_| {
            // The workers hold the store's state weakly, so that dropping every PgStore
            // (without close) still ends them.
            let cancel = inner.cancel.clone();
            let inner = Arc::downgrade(inner);
            let rx = rx.clone();
            tokio::spawn(async move {
                loop {
                    let Some(batch) = next_batch(&rx, &cancel).await else {
                        return;
                    };
                    let Some(inner) = inner.upgrade() else {
                        answer_all(batch, || StoreError::WriterGone);
                        return;
                    };
                    commit_batch(&inner, batch).await;
                }
            })
        })
        .collect()
}

/// Waits for one admission, then takes every other one already waiting (up to
/// [`MAX_BATCH`]). `None` when the store is cancelled or every sender is gone.
async fn next_batch(
    rx: &Mutex<mpsc::Receiver<AdmitJob>>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Option<Vec<AdmitJob>> {
    let mut rx = tokio::select! {
        _ = cancel.cancelled() => return None,
        rx = rx.lock() => rx,
    };
    let first = tokio::select! {
        _ = cancel.cancelled() => return None,
        job = rx.recv() => job?,
    };
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    Some(batch)
}

fn answer_all(batch: Vec<AdmitJob>, error: impl Fn() -> StoreError) {
    for job in batch {
        let _ = job.reply.send(Err(error()));
    }
}

/// Decides and writes `batch` in one transaction, then answers every caller.
async fn commit_batch(inner: &Inner, batch: Vec<AdmitJob>) {
    let outcome = match get(&inner.admit_pool).await {
        Ok(mut client) => {
            let written = timed(
                BATCH_TIMEOUT,
                "an admission batch",
                write_batch(inner, &mut client, &batch),
            )
            .await
            .and_then(|r| r);
            if written.is_err() {
                // The connection may be mid-transaction or broken: never hand it out again.
                drop(deadpool_postgres::Object::take(client));
            }
            written
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok(answers) => {
            let queued = batch
                .iter()
                .zip(&answers)
                .any(|(job, a)| matches!(a, Admission::New { .. }) && queues(job));
            for (job, answer) in batch.into_iter().zip(answers) {
                let _ = job.reply.send(Ok(answer));
            }
            if queued {
                inner.wake();
                // Outside the admission's transaction: a notifying transaction's commit
                // takes a database-wide lock until its WAL is flushed, which would serialise
                // every instance's durable admissions behind one another.
                inner.announce.notify_one();
            }
        }
        Err(e) => {
            let why = e.to_string();
            tracing::warn!(error = %why, admissions = batch.len(), "an admission batch failed");
            answer_all(batch, || StoreError::Unavailable(why.clone()));
        }
    }
}

/// Whether a new `job` writes queue rows.
fn queues(job: &AdmitJob) -> bool {
    job.destination == Destination::Events && !job.sinks.is_empty()
}

/// The transaction of one batch; returns the answers in the batch's order once committed.
async fn write_batch(
    inner: &Inner,
    client: &mut deadpool_postgres::Object,
    batch: &[AdmitJob],
) -> Result<Vec<Admission>, StoreError> {
    let tx = client.transaction().await.map_err(unavailable)?;

    // 1. Digests, sorted; each with the arrival time of its first admission in the batch.
    let mut digests: BTreeMap<&[u8; 32], i64> = BTreeMap::new();
    for job in batch {
        digests.entry(&job.digest).or_insert(job.received_at_ms);
    }
    let (d, at): (Vec<&[u8]>, Vec<i64>) = digests.iter().map(|(d, t)| (&d[..], *t)).unzip();
    let stmt = tx
        .prepare_cached(&inner.sql(
            "INSERT INTO __SCHEMA__.signatures (digest, first_seen_ms) \
             SELECT d, t FROM unnest($1::bytea[], $2::int8[]) WITH ORDINALITY AS u(d, t, n) \
             ORDER BY n ON CONFLICT DO NOTHING RETURNING digest",
        ))
        .await
        .map_err(unavailable)?;
    let fresh_digests: HashSet<Vec<u8>> = tx
        .query(&stmt, &[&d, &at])
        .await
        .map_err(unavailable)?
        .iter()
        .map(|row| row.get::<_, Vec<u8>>(0))
        .collect();

    // 2. The admissions still in the running: the first of the batch with a digest not seen.
    let mut taken_digests: HashSet<&[u8; 32]> = HashSet::new();
    let candidates: Vec<bool> = batch
        .iter()
        .map(|job| fresh_digests.contains(&job.digest[..]) && taken_digests.insert(&job.digest))
        .collect();

    // 3. Their keys, sorted, each with the arrival time of its first candidate.
    let mut keys: BTreeMap<&str, i64> = BTreeMap::new();
    for (job, _) in batch.iter().zip(&candidates).filter(|(_, c)| **c) {
        for key in &job.keys {
            keys.entry(key.as_str()).or_insert(job.received_at_ms);
        }
    }
    let mut fresh_keys: HashSet<String> = HashSet::new();
    if !keys.is_empty() {
        let (k, at): (Vec<&str>, Vec<i64>) = keys.iter().map(|(k, t)| (*k, *t)).unzip();
        let stmt = tx
            .prepare_cached(&inner.sql(
                "INSERT INTO __SCHEMA__.dedupe (key, first_seen_ms) \
                 SELECT k, t FROM unnest($1::text[], $2::int8[]) WITH ORDINALITY AS u(k, t, n) \
                 ORDER BY n ON CONFLICT DO NOTHING RETURNING key",
            ))
            .await
            .map_err(unavailable)?;
        fresh_keys = tx
            .query(&stmt, &[&k, &at])
            .await
            .map_err(unavailable)?
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect();
    }

    // 4. A candidate is new when it takes at least one fresh key no earlier one took.
    let mut is_new = Vec::with_capacity(batch.len());
    for (job, candidate) in batch.iter().zip(&candidates) {
        let mut took = false;
        if *candidate {
            for key in &job.keys {
                took |= fresh_keys.remove(key.as_str());
            }
        }
        is_new.push(took);
    }
    let new_count = is_new.iter().filter(|n| **n).count();
    if new_count == 0 {
        tx.commit().await.map_err(commit_failed)?;
        return Ok(vec![Admission::Duplicate; batch.len()]);
    }

    // 5. Seqs for the new ones, in batch order.
    let stmt = tx
        .prepare_cached(
            &inner.sql("SELECT nextval('__SCHEMA__.seq') FROM generate_series(1, $1::int4)"),
        )
        .await
        .map_err(unavailable)?;
    let count = i32::try_from(new_count).unwrap_or(i32::MAX);
    let mut seqs: Vec<i64> = tx
        .query(&stmt, &[&count])
        .await
        .map_err(unavailable)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    seqs.sort_unstable();

    // 6. Events, quarantined deliveries and queue rows in one statement.
    let mut rows = Rows::default();
    let mut answers = Vec::with_capacity(batch.len());
    let mut next = seqs.into_iter();
    for (job, new) in batch.iter().zip(is_new) {
        if !new {
            answers.push(Admission::Duplicate);
            continue;
        }
        let Some(seq) = next.next() else {
            return Err(StoreError::Unavailable(
                "PostgreSQL handed out fewer seqs than asked for".into(),
            ));
        };
        rows.add(job, seq);
        answers.push(Admission::New { seq: seq as u64 });
    }
    rows.write(inner, &tx).await?;
    tx.commit().await.map_err(commit_failed)?;
    Ok(answers)
}

/// The rows a batch writes, as columns for `unnest`.
#[derive(Default)]
struct Rows<'a> {
    ev_seq: Vec<i64>,
    ev_at: Vec<i64>,
    ev_record: Vec<&'a [u8]>,
    ev_type: Vec<Option<&'a str>>,
    ev_source: Vec<Option<&'a str>>,
    ev_phones: Vec<&'a str>,
    qu_seq: Vec<i64>,
    qu_at: Vec<i64>,
    qu_record: Vec<&'a [u8]>,
    q_sink: Vec<&'a str>,
    q_seq: Vec<i64>,
}

impl<'a> Rows<'a> {
    fn add(&mut self, job: &'a AdmitJob, seq: i64) {
        match job.destination {
            Destination::Events => {
                self.ev_seq.push(seq);
                self.ev_at.push(job.received_at_ms);
                self.ev_record.push(&job.record);
                self.ev_type.push(job.event_type.as_deref());
                self.ev_source.push(job.source);
                self.ev_phones.push(&job.phone_ids);
                let mut sinks: Vec<&str> = job.sinks.iter().map(String::as_str).collect();
                sinks.sort_unstable();
                sinks.dedup();
                for sink in sinks {
                    self.q_sink.push(sink);
                    self.q_seq.push(seq);
                }
            }
            Destination::Quarantine => {
                self.qu_seq.push(seq);
                self.qu_at.push(job.received_at_ms);
                self.qu_record.push(&job.record);
            }
        }
    }

    async fn write(
        &self,
        inner: &Inner,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<(), StoreError> {
        let stmt = tx
            .prepare_cached(&inner.sql(
                "WITH ev AS (
                   INSERT INTO __SCHEMA__.events
                     (seq, received_at_ms, record, event_type, source, phone_number_ids)
                   SELECT s, t, r, e, o,
                          ARRAY(SELECT jsonb_array_elements_text(p::jsonb))
                   FROM unnest($1::int8[], $2::int8[], $3::bytea[], $4::text[], $5::text[],
                               $6::text[]) AS u(s, t, r, e, o, p)
                   RETURNING 1
                 ), qu AS (
                   INSERT INTO __SCHEMA__.quarantine (seq, received_at_ms, record)
                   SELECT * FROM unnest($7::int8[], $8::int8[], $9::bytea[])
                   RETURNING 1
                 ), qr AS (
                   INSERT INTO __SCHEMA__.queue (sink, seq)
                   SELECT * FROM unnest($10::text[], $11::int8[])
                   RETURNING 1
                 )
                 SELECT (SELECT count(*) FROM ev), (SELECT count(*) FROM qu),
                        (SELECT count(*) FROM qr)",
            ))
            .await
            .map_err(unavailable)?;
        tx.query_one(
            &stmt,
            &[
                &self.ev_seq,
                &self.ev_at,
                &self.ev_record,
                &self.ev_type,
                &self.ev_source,
                &self.ev_phones,
                &self.qu_seq,
                &self.qu_at,
                &self.qu_record,
                &self.q_sink,
                &self.q_seq,
            ],
        )
        .await
        .map_err(unavailable)?;
        Ok(())
    }
}

/// Any error before COMMIT: nothing of the batch may be acknowledged.
fn unavailable(e: tokio_postgres::Error) -> StoreError {
    match engine(e) {
        StoreError::Engine(why) | StoreError::Unavailable(why) => StoreError::Unavailable(why),
        other => other,
    }
}

/// A failed COMMIT: its outcome is unknown.
fn commit_failed(e: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(format!(
        "the admission commit's outcome is unknown: {}",
        super::describe(&e)
    ))
}
