//! Everything besides admission and claims: reading events, dead letters and quarantine,
//! the operator's actions on them (retry, drop, replay), status and exact counts, and the
//! retention sweep.
//!
//! Operator actions run with `synchronous_commit=on` (they are answered only once durable).
//! The sweep works in bounded steps (at most [`SWEEP_STEP`] rows per statement) so that it
//! never holds many locks for long. A replay and a sweep step that removes events exclude
//! each other with an advisory lock: a sweep never removes an event that a concurrent replay
//! is queueing again.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::claims::attempt_state;
use super::schema::LOCK_CLASS;
use super::{engine, int8, timed, uint8, PgStore, StoreError, OP_TIMEOUT};
use crate::receive::route::Filter;
use crate::store::model::{millis, Counts, DeadLetter, SinkStatus, StoredEvent, Swept};
use crate::store::record;

/// Most rows one sweep statement removes.
pub(super) const SWEEP_STEP: i64 = 1000;

impl PgStore {
    /// Up to `limit` of `sink`'s dead letters with seq greater than `after`, in seq order.
    pub async fn dead_letters(
        &self,
        sink: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let inner = &self.inner;
        let client = inner.client().await?;
        let rows = timed(
            OP_TIMEOUT,
            "reading dead letters",
            client.query(
                &inner.sql(
                    "SELECT d.seq, d.attempts, d.first_attempt_ms, d.last_attempt_ms,
                            d.next_attempt_ms, d.error_status, d.error_message, e.record
                     FROM __SCHEMA__.dead_letters d
                     JOIN __SCHEMA__.events e ON e.seq = d.seq
                     WHERE d.sink = $1 AND d.seq > $2 ORDER BY d.seq LIMIT $3",
                ),
                &[&sink, &int8(after), &limit_of(limit)],
            ),
        )
        .await?
        .map_err(engine)?;
        rows.iter()
            .map(|row| {
                let seq = uint8(row.get(0));
                let bytes: Vec<u8> = row.get(7);
                Ok(DeadLetter {
                    sink: sink.to_owned(),
                    state: attempt_state(row, 1),
                    event: decode(seq, &bytes)?,
                })
            })
            .collect()
    }

    /// Moves `sink`'s dead letters (all when `seqs` is `None`) back into its queue as never
    /// attempted, due now. Returns how many moved.
    pub async fn retry_dead_letters(
        &self,
        sink: &str,
        seqs: Option<Vec<u64>>,
    ) -> Result<usize, StoreError> {
        let seqs = seqs.map(|s| s.into_iter().map(int8).collect::<Vec<i64>>());
        let channel = self.inner.schema.channel();
        let moved = self
            .durably(
                "WITH moved AS (
                   DELETE FROM __SCHEMA__.dead_letters
                   WHERE sink = $1 AND ($2::int8[] IS NULL OR seq = ANY($2::int8[]))
                   RETURNING seq
                 ), queued AS (
                   INSERT INTO __SCHEMA__.queue (sink, seq) SELECT $1, seq FROM moved
                   ON CONFLICT (sink, seq) DO NOTHING RETURNING 1
                 ), n AS (
                   SELECT pg_notify($3, '') WHERE EXISTS (SELECT 1 FROM moved)
                 )
                 SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM queued),
                        (SELECT count(*) FROM n)",
                &[&sink, &seqs, &channel],
                false,
            )
            .await?;
        if moved > 0 {
            self.inner.wake();
        }
        Ok(moved)
    }

    /// Forgets `sink`'s dead letters (all when `seqs` is `None`). Returns how many.
    pub async fn drop_dead_letters(
        &self,
        sink: &str,
        seqs: Option<Vec<u64>>,
    ) -> Result<usize, StoreError> {
        let seqs = seqs.map(|s| s.into_iter().map(int8).collect::<Vec<i64>>());
        self.durably(
            "WITH gone AS (
               DELETE FROM __SCHEMA__.dead_letters
               WHERE sink = $1 AND ($2::int8[] IS NULL OR seq = ANY($2::int8[]))
               RETURNING 1
             )
             SELECT count(*) FROM gone",
            &[&sink, &seqs],
            false,
        )
        .await
    }

    /// Up to `limit` quarantined deliveries with seq greater than `after`, in seq order.
    pub async fn read_quarantine(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let inner = &self.inner;
        let client = inner.client().await?;
        let rows = timed(
            OP_TIMEOUT,
            "reading the quarantine",
            client.query(
                &inner.sql(
                    "SELECT seq, record FROM __SCHEMA__.quarantine
                     WHERE seq > $1 ORDER BY seq LIMIT $2",
                ),
                &[&int8(after), &limit_of(limit)],
            ),
        )
        .await?
        .map_err(engine)?;
        rows.iter()
            .map(|row| decode(uint8(row.get(0)), row.get(1)))
            .collect()
    }

    /// Forgets quarantined deliveries (all when `seqs` is `None`). Returns how many.
    pub async fn drop_quarantine(&self, seqs: Option<Vec<u64>>) -> Result<usize, StoreError> {
        let seqs = seqs.map(|s| s.into_iter().map(int8).collect::<Vec<i64>>());
        self.durably(
            "WITH gone AS (
               DELETE FROM __SCHEMA__.quarantine
               WHERE $1::int8[] IS NULL OR seq = ANY($1::int8[])
               RETURNING 1
             )
             SELECT count(*) FROM gone",
            &[&seqs],
            false,
        )
        .await
    }

    /// Queues again for `sink` every stored event received at or after `since` that `filter`
    /// matches (the filter is evaluated by PostgreSQL, see [`FilterSql`]); an event already
    /// queued for the sink is not queued twice. Returns how many were queued.
    pub async fn replay(
        &self,
        sink: &str,
        since: SystemTime,
        filter: &Filter,
    ) -> Result<usize, StoreError> {
        let f = FilterSql::of(filter);
        let channel = self.inner.schema.channel();
        let queued = self
            .durably(
                "WITH queued AS (
                   INSERT INTO __SCHEMA__.queue (sink, seq)
                   SELECT $1, seq FROM __SCHEMA__.events
                   WHERE received_at_ms >= $2
                     AND ($3 OR event_type LIKE ANY($4::text[]))
                     AND ($5 OR source = ANY($6::text[]))
                     AND ($7 OR phone_number_ids && $8::text[])
                   ORDER BY seq
                   ON CONFLICT (sink, seq) DO NOTHING
                   RETURNING 1
                 ), n AS (
                   SELECT pg_notify($9, '') WHERE EXISTS (SELECT 1 FROM queued)
                 )
                 SELECT (SELECT count(*) FROM queued), (SELECT count(*) FROM n)",
                &[
                    &sink,
                    &int8(millis(since)),
                    &f.any_event,
                    &f.patterns,
                    &f.any_source,
                    &f.sources,
                    &f.any_phone,
                    &f.phones,
                    &channel,
                ],
                true,
            )
            .await?;
        if queued > 0 {
            self.inner.wake();
        }
        Ok(queued)
    }

    /// The stored events with these seqs (`None` for one that is gone), in the given order.
    pub async fn events(&self, seqs: Vec<u64>) -> Result<Vec<Option<StoredEvent>>, StoreError> {
        let inner = &self.inner;
        let wanted: Vec<i64> = seqs.iter().copied().map(int8).collect();
        let client = inner.client().await?;
        let rows = timed(
            OP_TIMEOUT,
            "reading events",
            client.query(
                &inner.sql("SELECT seq, record FROM __SCHEMA__.events WHERE seq = ANY($1::int8[])"),
                &[&wanted],
            ),
        )
        .await?
        .map_err(engine)?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            let seq = uint8(row.get(0));
            found.insert(seq, decode(seq, row.get(1))?);
        }
        Ok(seqs.iter().map(|seq| found.get(seq).cloned()).collect())
    }

    /// What `sink` owes: queue depth, its oldest queued event's arrival, dead letters.
    pub async fn sink_status(&self, sink: &str) -> Result<SinkStatus, StoreError> {
        let inner = &self.inner;
        let client = inner.client().await?;
        let row = timed(
            OP_TIMEOUT,
            "reading a sink's status",
            client.query_one(
                &inner.sql(
                    "SELECT (SELECT count(*) FROM __SCHEMA__.queue WHERE sink = $1),
                            (SELECT e.received_at_ms FROM __SCHEMA__.queue q
                             JOIN __SCHEMA__.events e ON e.seq = q.seq
                             WHERE q.sink = $1 ORDER BY q.seq LIMIT 1),
                            (SELECT count(*) FROM __SCHEMA__.dead_letters WHERE sink = $1)",
                ),
                &[&sink],
            ),
        )
        .await?
        .map_err(engine)?;
        Ok(SinkStatus {
            queued: count(row.get(0)),
            oldest_received_ms: row.get::<_, Option<i64>>(1).map(uint8),
            dead_letters: count(row.get(2)),
        })
    }

    /// Exact counts (`count(*)`): events, quarantine, and per sink the queue and dead letters.
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        let inner = &self.inner;
        let client = inner.client().await?;
        timed(OP_TIMEOUT, "counting", async {
            let totals = client
                .query_one(
                    &inner.sql(
                        "SELECT (SELECT count(*) FROM __SCHEMA__.events),
                                (SELECT count(*) FROM __SCHEMA__.quarantine)",
                    ),
                    &[],
                )
                .await
                .map_err(engine)?;
            let per_sink = |table: &str| {
                inner.sql(&format!(
                    "SELECT sink, count(*) FROM __SCHEMA__.{table} GROUP BY sink"
                ))
            };
            let mut sinks = Vec::new();
            for table in ["queue", "dead_letters"] {
                let rows = client.query(&per_sink(table), &[]).await.map_err(engine)?;
                let map: BTreeMap<String, u64> = rows
                    .iter()
                    .map(|r| (r.get::<_, String>(0), uint8(r.get(1))))
                    .collect();
                sinks.push(map);
            }
            let dead_letters = sinks.pop().unwrap_or_default();
            let queued = sinks.pop().unwrap_or_default();
            Ok(Counts {
                events: uint8(totals.get(0)),
                quarantine: uint8(totals.get(1)),
                queued,
                dead_letters,
            })
        })
        .await?
    }

    /// Forgets dedupe keys first seen before `now - retention` and digests first seen before
    /// `now - keep_signatures`, and removes events that no sink has queued and no dead letter
    /// refers to, once older than `now - keep_events` (0: at once). In bounded steps.
    pub async fn sweep(
        &self,
        now: SystemTime,
        retention: Duration,
        keep_signatures: Duration,
        keep_events: Duration,
    ) -> Result<Swept, StoreError> {
        let before = |keep: Duration| int8(millis(now.checked_sub(keep).unwrap_or(UNIX_EPOCH)));
        let events_before = if keep_events.is_zero() {
            i64::MAX
        } else {
            before(keep_events)
        };
        let inner = &self.inner;
        let keys = self.sweep_table("dedupe", "key", before(retention)).await?;
        self.sweep_table("signatures", "digest", before(keep_signatures))
            .await?;
        let mut events = 0;
        let (mut after_at, mut after_seq) = (i64::MIN, i64::MIN);
        loop {
            let mut client = inner.client().await?;
            let step = timed(OP_TIMEOUT, "a sweep step", async {
                let tx = client.transaction().await.map_err(engine)?;
                tx.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                    &[&LOCK_CLASS, &format!("events:{}", inner.schema.name())],
                )
                .await
                .map_err(engine)?;
                let row = tx
                    .query_one(
                        &inner.sql(
                            "WITH batch AS (
                               SELECT seq, received_at_ms FROM __SCHEMA__.events
                               WHERE (received_at_ms, seq) > ($1, $2) AND received_at_ms < $3
                               ORDER BY received_at_ms, seq LIMIT $4
                             ), gone AS (
                               DELETE FROM __SCHEMA__.events e USING batch b
                               WHERE e.seq = b.seq
                                 AND NOT EXISTS (SELECT 1 FROM __SCHEMA__.queue q
                                                 WHERE q.seq = e.seq)
                                 AND NOT EXISTS (SELECT 1 FROM __SCHEMA__.dead_letters d
                                                 WHERE d.seq = e.seq)
                               RETURNING 1
                             ), last AS (
                               SELECT received_at_ms, seq FROM batch
                               ORDER BY received_at_ms DESC, seq DESC LIMIT 1
                             )
                             SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM gone),
                                    (SELECT received_at_ms FROM last), (SELECT seq FROM last)",
                        ),
                        &[&after_at, &after_seq, &events_before, &SWEEP_STEP],
                    )
                    .await
                    .map_err(engine)?;
                tx.commit().await.map_err(engine)?;
                Ok::<_, StoreError>(row)
            })
            .await??;
            events += count(step.get(1));
            if step.get::<_, i64>(0) < SWEEP_STEP {
                break;
            }
            after_at = step.get::<_, Option<i64>>(2).unwrap_or(i64::MAX);
            after_seq = step.get::<_, Option<i64>>(3).unwrap_or(i64::MAX);
        }
        Ok(Swept { keys, events })
    }

    /// Deletes the rows of `table` first seen before `before`, [`SWEEP_STEP`] at a time.
    async fn sweep_table(&self, table: &str, key: &str, before: i64) -> Result<usize, StoreError> {
        let inner = &self.inner;
        let sql = inner.sql(&format!(
            "WITH gone AS (
               DELETE FROM __SCHEMA__.{table} WHERE {key} IN (
                 SELECT {key} FROM __SCHEMA__.{table} WHERE first_seen_ms < $1 LIMIT $2
               ) RETURNING 1
             )
             SELECT count(*) FROM gone"
        ));
        let mut total = 0;
        loop {
            let client = inner.client().await?;
            let row = timed(
                OP_TIMEOUT,
                "a sweep step",
                client.query_one(&sql, &[&before, &SWEEP_STEP]),
            )
            .await?
            .map_err(engine)?;
            let n: i64 = row.get(0);
            total += count(n);
            if n < SWEEP_STEP {
                return Ok(total);
            }
        }
    }

    /// Runs one statement returning a count first, in a transaction with
    /// `synchronous_commit=on` (under the events lock when `events_lock`); returns the count.
    async fn durably(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        events_lock: bool,
    ) -> Result<usize, StoreError> {
        let inner = &self.inner;
        let mut client = inner.client().await?;
        let tx = client.transaction().await.map_err(engine)?;
        tx.batch_execute("SET LOCAL synchronous_commit TO on")
            .await
            .map_err(engine)?;
        if events_lock {
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&LOCK_CLASS, &format!("events:{}", inner.schema.name())],
            )
            .await
            .map_err(engine)?;
        }
        let row = tx
            .query_one(&inner.sql(sql), params)
            .await
            .map_err(engine)?;
        tx.commit().await.map_err(engine)?;
        Ok(count(row.get(0)))
    }
}

/// A replay filter as SQL parameters: a flag saying "any" per criterion, and its values.
#[derive(Debug, Default)]
pub(super) struct FilterSql {
    any_event: bool,
    patterns: Vec<String>,
    any_source: bool,
    sources: Vec<String>,
    any_phone: bool,
    phones: Vec<String>,
}

impl FilterSql {
    /// The SQL form of `filter`: the same decisions as [`Filter::matches`].
    pub(super) fn of(filter: &Filter) -> FilterSql {
        let globs = filter.event_globs();
        let bare_star = |g: &&str| !g.is_empty() && g.bytes().all(|b| b == b'*');
        FilterSql {
            any_event: globs.as_ref().is_none_or(|g| g.iter().any(bare_star)),
            patterns: globs
                .unwrap_or_default()
                .into_iter()
                .map(like_pattern)
                .collect(),
            any_source: filter.sources().is_none(),
            sources: filter
                .sources()
                .unwrap_or_default()
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
            any_phone: filter.phone_number_ids().is_none(),
            phones: filter.phone_number_ids().unwrap_or_default().to_vec(),
        }
    }
}

/// An event-type glob as a LIKE pattern: `*` is `%`; `%`, `_` and `\` are literal.
pub(super) fn like_pattern(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len() + 4);
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

fn decode(seq: u64, bytes: &[u8]) -> Result<StoredEvent, StoreError> {
    record::decode(seq, bytes).map_err(|source| StoreError::Decode { seq, source })
}

fn count(n: i64) -> usize {
    usize::try_from(n).unwrap_or(0)
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_escaped_like_patterns() {
        assert_eq!(like_pattern("message.*"), "message.%");
        assert_eq!(like_pattern("*"), "%");
        assert_eq!(like_pattern("a_b%c\\d*"), "a\\_b\\%c\\\\d%");
    }
}
