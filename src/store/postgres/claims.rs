//! Claims and settlements: how the instances sharing a schema split a sink's queue.
//!
//! A claim leases due queue rows to this instance (`lease_owner`, `lease_until_ms`) and bumps
//! their `lease_gen`, which becomes the claim's [`ClaimToken`]; rows are picked with
//! `FOR UPDATE SKIP LOCKED`, so concurrent claims never hand out the same row, and the leased
//! rows come back joined with their events in one round trip. A settlement applies only while
//! the row is still leased to this instance under the same generation: once a lease expired
//! and another instance claimed the row, the late settlement is fenced. Strict order is kept
//! across instances by a per-sink advisory lock around the claim; a strict claim reads at most
//! `max` rows from the head of the sink's queue, so its cost does not grow with a backlog.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Row;

use super::schema::LOCK_CLASS;
use super::{engine, int8, timed, uint8, Inner, PgStore, StoreError, OP_TIMEOUT};
use crate::store::model::{
    millis, AttemptState, Claim, ClaimOrder, ClaimToken, Claimed, LastError, Outcome, Settled,
    Settlement,
};
use crate::store::record;

/// Settlement kinds as sent to SQL.
const DELIVERED: i16 = 0;
const RETRY: i16 = 1;
const DEAD_LETTER: i16 = 2;
const RELEASE: i16 = 3;

/// The columns every claim returns: the attempt state, the lease generation, the record.
const LEASE_AND_RETURN: &str = "
    leased AS (
      UPDATE __SCHEMA__.queue q
      SET lease_owner = $4, lease_until_ms = $5, lease_gen = q.lease_gen + 1
      FROM picked WHERE q.sink = $1 AND q.seq = picked.seq
      RETURNING q.seq, q.attempts, q.first_attempt_ms, q.last_attempt_ms, q.due_ms,
                q.error_status, q.error_message, q.lease_gen
    )
    SELECT l.seq, l.attempts, l.first_attempt_ms, l.last_attempt_ms, l.due_ms,
           l.error_status, l.error_message, l.lease_gen, e.record
    FROM leased l LEFT JOIN __SCHEMA__.events e ON e.seq = l.seq
    ORDER BY l.seq";

impl PgStore {
    /// Leases up to `max` due entries of `sink` to this instance for `lease`, lowest seq
    /// first. With [`ClaimOrder::Strict`], only entries before the first one that is not due
    /// or is leased (to anyone) are handed out. When fewer than `max` were claimed,
    /// `next_due_ms` says when the sink's next retry is due (`None`: none waits); a lease
    /// that ends is found by the waiters' one-second poll.
    pub async fn claim(
        &self,
        sink: &str,
        max: usize,
        lease: Duration,
        order: ClaimOrder,
    ) -> Result<Claimed, StoreError> {
        if max == 0 {
            return Ok(Claimed::default());
        }
        let inner = &self.inner;
        timed(OP_TIMEOUT, "a claim", async {
            let mut client = inner.client().await?;
            let now = millis(std::time::SystemTime::now());
            let until = now.saturating_add(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
            let limit = i64::try_from(max).unwrap_or(i64::MAX);
            let params = (sink, int8(now), limit, inner.instance.as_str(), int8(until));
            let rows = match order {
                ClaimOrder::Any => {
                    let stmt = client
                        .prepare_cached(&inner.sql(&format!(
                            "WITH picked AS (
                               SELECT seq FROM __SCHEMA__.queue
                               WHERE sink = $1 AND due_ms <= $2 AND lease_until_ms <= $2
                               ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED
                             ), {LEASE_AND_RETURN}"
                        )))
                        .await
                        .map_err(engine)?;
                    client
                        .query(
                            &stmt,
                            &[&params.0, &params.1, &params.2, &params.3, &params.4],
                        )
                        .await
                        .map_err(engine)?
                }
                ClaimOrder::Strict => {
                    let tx = client.transaction().await.map_err(engine)?;
                    let key = format!("claim:{}:{sink}", inner.schema.name());
                    tx.execute(
                        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                        &[&LOCK_CLASS, &key],
                    )
                    .await
                    .map_err(engine)?;
                    let stmt = tx
                        .prepare_cached(&inner.sql(&format!(
                            "WITH head AS (
                               SELECT seq, (due_ms > $2 OR lease_until_ms > $2) AS blocked
                               FROM __SCHEMA__.queue
                               WHERE sink = $1 ORDER BY seq LIMIT $3
                             ), picked AS (
                               SELECT q.seq FROM __SCHEMA__.queue q
                               WHERE q.sink = $1 AND q.seq IN (
                                 SELECT seq FROM head WHERE seq < coalesce(
                                   (SELECT min(seq) FROM head WHERE blocked),
                                   9223372036854775807))
                               ORDER BY q.seq FOR UPDATE
                             ), {LEASE_AND_RETURN}"
                        )))
                        .await
                        .map_err(engine)?;
                    let rows = tx
                        .query(
                            &stmt,
                            &[&params.0, &params.1, &params.2, &params.3, &params.4],
                        )
                        .await
                        .map_err(engine)?;
                    tx.commit().await.map_err(engine)?;
                    rows
                }
            };
            let claims = self.claims_of(&client, sink, rows).await?;
            let next_due_ms = if claims.len() < max {
                next_due(inner, &client, sink, order, now).await?
            } else {
                None
            };
            Ok(Claimed {
                claims,
                next_due_ms,
            })
        })
        .await?
    }

    /// The claims of the leased `rows`; a row whose event is gone is dropped from the queue.
    async fn claims_of(
        &self,
        client: &deadpool_postgres::Object,
        sink: &str,
        rows: Vec<Row>,
    ) -> Result<Vec<Claim>, StoreError> {
        let mut claims = Vec::with_capacity(rows.len());
        let mut orphans = Vec::new();
        for row in rows {
            let seq = uint8(row.get(0));
            let Some(bytes) = row.get::<_, Option<Vec<u8>>>(8) else {
                orphans.push(int8(seq));
                continue;
            };
            let event =
                record::decode(seq, &bytes).map_err(|source| StoreError::Decode { seq, source })?;
            claims.push(Claim {
                seq,
                state: attempt_state(&row, 1),
                event: Arc::new(event),
                token: ClaimToken(uint8(row.get(7))),
            });
        }
        if !orphans.is_empty() {
            tracing::warn!(
                sink,
                seqs = ?orphans,
                "queue entries whose event is gone: dropped from the queue"
            );
            client
                .execute(
                    &self.inner.sql(
                        "DELETE FROM __SCHEMA__.queue WHERE sink = $1 AND seq = ANY($2::int8[])",
                    ),
                    &[&sink, &orphans],
                )
                .await
                .map_err(engine)?;
        }
        Ok(claims)
    }

    /// Applies `sink`'s settlements in one statement, each only if its claim is still this
    /// instance's under the same token (fencing). Delivered: the entry goes; Retry: its
    /// state is kept and it is due at `next_attempt_ms`; DeadLetter: it moves to the dead
    /// letters; Release: its lease ends, its state and due time unchanged.
    pub async fn settle(
        &self,
        sink: &str,
        settlements: Vec<Settlement>,
    ) -> Result<Settled, StoreError> {
        if settlements.is_empty() {
            return Ok(Settled::default());
        }
        let columns = SettleColumns::of(&settlements);
        let inner = &self.inner;
        let (removed, updated) = timed(OP_TIMEOUT, "a settle", async {
            let client = inner.client().await?;
            let stmt = client
                .prepare_cached(&inner.sql(
                    "WITH s AS (
                       SELECT * FROM unnest($3::int8[], $4::int8[], $5::int2[], $6::int4[],
                                            $7::int8[], $8::int8[], $9::int8[], $10::int4[],
                                            $11::text[])
                         AS u(seq, gen, kind, attempts, first_ms, last_ms, next_ms,
                              err_status, err_message)
                     ), del AS (
                       DELETE FROM __SCHEMA__.queue q USING s
                       WHERE q.sink = $1 AND q.seq = s.seq AND q.lease_owner = $2
                         AND q.lease_gen = s.gen AND s.kind IN (0, 2)
                       RETURNING s.*
                     ), upd AS (
                       UPDATE __SCHEMA__.queue q SET
                         attempts = CASE WHEN s.kind = 1 THEN s.attempts ELSE q.attempts END,
                         first_attempt_ms =
                           CASE WHEN s.kind = 1 THEN s.first_ms ELSE q.first_attempt_ms END,
                         last_attempt_ms =
                           CASE WHEN s.kind = 1 THEN s.last_ms ELSE q.last_attempt_ms END,
                         due_ms = CASE WHEN s.kind = 1 THEN s.next_ms ELSE q.due_ms END,
                         error_status =
                           CASE WHEN s.kind = 1 THEN s.err_status ELSE q.error_status END,
                         error_message =
                           CASE WHEN s.kind = 1 THEN s.err_message ELSE q.error_message END,
                         lease_owner = NULL,
                         lease_until_ms = 0
                       FROM s
                       WHERE q.sink = $1 AND q.seq = s.seq AND q.lease_owner = $2
                         AND q.lease_gen = s.gen AND s.kind IN (1, 3)
                       RETURNING q.seq
                     ), dead AS (
                       INSERT INTO __SCHEMA__.dead_letters AS d
                         (sink, seq, attempts, first_attempt_ms, last_attempt_ms,
                          next_attempt_ms, error_status, error_message)
                       SELECT $1, seq, attempts, first_ms, last_ms, next_ms, err_status,
                              err_message
                       FROM del WHERE kind = 2
                       ON CONFLICT (sink, seq) DO UPDATE SET
                         attempts = excluded.attempts,
                         first_attempt_ms = excluded.first_attempt_ms,
                         last_attempt_ms = excluded.last_attempt_ms,
                         next_attempt_ms = excluded.next_attempt_ms,
                         error_status = excluded.error_status,
                         error_message = excluded.error_message
                       RETURNING 1
                     ), n AS (
                       SELECT pg_notify($12, '') WHERE EXISTS (SELECT 1 FROM upd)
                     )
                     SELECT (SELECT count(*) FROM del), (SELECT count(*) FROM upd),
                            (SELECT count(*) FROM dead), (SELECT count(*) FROM n)",
                ))
                .await
                .map_err(engine)?;
            let row = client
                .query_one(
                    &stmt,
                    &[
                        &sink,
                        &inner.instance,
                        &columns.seq,
                        &columns.gen,
                        &columns.kind,
                        &columns.attempts,
                        &columns.first_ms,
                        &columns.last_ms,
                        &columns.next_ms,
                        &columns.err_status,
                        &columns.err_message,
                        &inner.schema.channel(),
                    ],
                )
                .await
                .map_err(engine)?;
            Ok::<_, StoreError>((row.get::<_, i64>(0), row.get::<_, i64>(1)))
        })
        .await??;
        if updated > 0 {
            inner.wake();
        }
        let applied = usize::try_from(removed + updated).unwrap_or(0);
        Ok(Settled {
            applied,
            fenced: settlements.len().saturating_sub(applied),
        })
    }
}

/// When another entry of `sink` becomes claimable: the next retry (any order), or the end of
/// the wait of the earliest entry (strict order).
async fn next_due(
    inner: &Inner,
    client: &deadpool_postgres::Object,
    sink: &str,
    order: ClaimOrder,
    now: u64,
) -> Result<Option<u64>, StoreError> {
    let row = match order {
        ClaimOrder::Any => {
            // The next retry only, found through `queue_due` without walking the queue: a
            // lease that ends is noticed by the waiters' one-second poll.
            let stmt = client
                .prepare_cached(&inner.sql(
                    "SELECT min(due_ms) FROM __SCHEMA__.queue
                     WHERE sink = $1 AND due_ms > $2",
                ))
                .await
                .map_err(engine)?;
            client.query_opt(&stmt, &[&sink, &int8(now)]).await
        }
        ClaimOrder::Strict => {
            let stmt = client
                .prepare_cached(&inner.sql(
                    "SELECT greatest(due_ms, lease_until_ms) FROM __SCHEMA__.queue
                     WHERE sink = $1 AND (due_ms > $2 OR lease_until_ms > $2)
                     ORDER BY seq LIMIT 1",
                ))
                .await
                .map_err(engine)?;
            client.query_opt(&stmt, &[&sink, &int8(now)]).await
        }
    }
    .map_err(engine)?;
    Ok(row.and_then(|r| r.get::<_, Option<i64>>(0)).map(uint8))
}

/// The attempt state in the seven columns from `first`: attempts, first, last, due, error
/// status, error message.
pub(super) fn attempt_state(row: &Row, first: usize) -> AttemptState {
    let status: Option<i32> = row.get(first + 4);
    let message: Option<String> = row.get(first + 5);
    let last_error = match (status, message) {
        (None, None) => None,
        (status, message) => Some(LastError {
            status: status.and_then(|s| u16::try_from(s).ok()),
            message: message.unwrap_or_default(),
        }),
    };
    AttemptState {
        attempts: u32::try_from(row.get::<_, i32>(first)).unwrap_or(0),
        first_attempt_ms: uint8(row.get(first + 1)),
        last_attempt_ms: uint8(row.get(first + 2)),
        next_attempt_ms: uint8(row.get(first + 3)),
        last_error,
    }
}

/// Settlements as columns for `unnest`.
struct SettleColumns {
    seq: Vec<i64>,
    gen: Vec<i64>,
    kind: Vec<i16>,
    attempts: Vec<i32>,
    first_ms: Vec<i64>,
    last_ms: Vec<i64>,
    next_ms: Vec<i64>,
    err_status: Vec<Option<i32>>,
    err_message: Vec<Option<String>>,
}

impl SettleColumns {
    fn of(settlements: &[Settlement]) -> SettleColumns {
        let n = settlements.len();
        let mut c = SettleColumns {
            seq: Vec::with_capacity(n),
            gen: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            attempts: Vec::with_capacity(n),
            first_ms: Vec::with_capacity(n),
            last_ms: Vec::with_capacity(n),
            next_ms: Vec::with_capacity(n),
            err_status: Vec::with_capacity(n),
            err_message: Vec::with_capacity(n),
        };
        let none = AttemptState::default();
        // In seq order, like claims lock rows: two transactions never wait on each other in
        // a cycle.
        let mut sorted: Vec<&Settlement> = settlements.iter().collect();
        sorted.sort_by_key(|s| s.seq);
        for s in sorted {
            let (kind, state) = match &s.outcome {
                Outcome::Delivered => (DELIVERED, &none),
                Outcome::Retry(state) => (RETRY, state),
                Outcome::DeadLetter(state) => (DEAD_LETTER, state),
                Outcome::Release => (RELEASE, &none),
            };
            c.seq.push(int8(s.seq));
            c.gen.push(int8(s.token.0));
            c.kind.push(kind);
            c.attempts
                .push(i32::try_from(state.attempts).unwrap_or(i32::MAX));
            c.first_ms.push(int8(state.first_attempt_ms));
            c.last_ms.push(int8(state.last_attempt_ms));
            c.next_ms.push(int8(state.next_attempt_ms));
            c.err_status.push(
                state
                    .last_error
                    .as_ref()
                    .and_then(|e| e.status.map(i32::from)),
            );
            c.err_message
                .push(state.last_error.as_ref().map(|e| e.message.clone()));
        }
        c
    }
}
