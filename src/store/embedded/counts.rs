//! Exact counts of what the store holds: stored events, quarantined deliveries, and each
//! sink's queue depth and dead letters.
//!
//! The engine only has an approximate length (it counts deletions too), and counting entries
//! is O(n), so the writer keeps these numbers itself: every batch that adds or removes an entry
//! also writes the changed counters into `meta`, in the same atomic batch, so they are exactly
//! as durable as the entries. A store written before the counters existed is counted once, at
//! open.

use fjall::{Keyspace, OwnedWriteBatch};

use super::{be_u64, queue, Keyspaces, StoreError};
use crate::store::model::Counts;

/// Present once the counters were written: older stores are counted at open.
const MARKER: &[u8] = b"count:v1";
const EVENTS: &[u8] = b"count:events";
const QUARANTINE: &[u8] = b"count:quarantine";
const QUEUED: &str = "count:queue:";
const DEAD: &str = "count:dead:";

impl Counts {
    pub(super) fn add_queued(&mut self, sink: &str, n: u64) {
        *self.queued.entry(sink.to_owned()).or_default() += n;
    }

    pub(super) fn remove_queued(&mut self, sink: &str) {
        if let Some(n) = self.queued.get_mut(sink) {
            *n = n.saturating_sub(1);
        }
    }

    pub(super) fn add_dead(&mut self, sink: &str) {
        *self.dead_letters.entry(sink.to_owned()).or_default() += 1;
    }

    pub(super) fn remove_dead(&mut self, sink: &str) {
        if let Some(n) = self.dead_letters.get_mut(sink) {
            *n = n.saturating_sub(1);
        }
    }

    /// Reads the counters from `meta`, or counts every keyspace when there are none yet (and
    /// writes them, so that this happens once).
    pub(super) fn load_or_count(
        ks: &Keyspaces,
        db: &fjall::Database,
    ) -> Result<Counts, StoreError> {
        if ks.meta.contains_key(MARKER)? {
            return Counts::load(&ks.meta);
        }
        let counts = Counts::count(ks)?;
        let mut batch = db.batch().durability(Some(fjall::PersistMode::SyncData));
        counts.write_changed(&Counts::default(), &mut batch, &ks.meta, true);
        batch.commit()?;
        Ok(counts)
    }

    fn load(meta: &Keyspace) -> Result<Counts, StoreError> {
        let get = |key: &[u8]| -> Result<u64, StoreError> {
            Ok(meta.get(key)?.map(|v| be_u64(&v)).unwrap_or(0))
        };
        let mut counts = Counts {
            events: get(EVENTS)?,
            quarantine: get(QUARANTINE)?,
            ..Counts::default()
        };
        for (prefix, map) in [
            (QUEUED, &mut counts.queued),
            (DEAD, &mut counts.dead_letters),
        ] {
            for guard in meta.prefix(prefix.as_bytes()) {
                let (key, value) = guard.into_inner()?;
                let sink = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                map.insert(sink, be_u64(&value));
            }
        }
        Ok(counts)
    }

    /// Counts every entry (O(store)): only for a store without counters.
    fn count(ks: &Keyspaces) -> Result<Counts, StoreError> {
        let mut counts = Counts::default();
        for guard in ks.events.iter() {
            guard.key()?;
            counts.events += 1;
        }
        for guard in ks.quarantine.iter() {
            guard.key()?;
            counts.quarantine += 1;
        }
        for (keyspace, map) in [
            (&ks.queue, &mut counts.queued),
            (&ks.dead_letters, &mut counts.dead_letters),
        ] {
            for guard in keyspace.iter() {
                let key = guard.key()?;
                *map.entry(queue::sink_of(&key)).or_default() += 1;
            }
        }
        Ok(counts)
    }

    /// Adds to `batch` every counter that differs from `before` (all of them with `all`).
    pub(super) fn write_changed(
        &self,
        before: &Counts,
        batch: &mut OwnedWriteBatch,
        meta: &Keyspace,
        all: bool,
    ) {
        if all {
            batch.insert(meta, MARKER, []);
        }
        if all || self.events != before.events {
            batch.insert(meta, EVENTS, self.events.to_be_bytes());
        }
        if all || self.quarantine != before.quarantine {
            batch.insert(meta, QUARANTINE, self.quarantine.to_be_bytes());
        }
        for (prefix, now, then) in [
            (QUEUED, &self.queued, &before.queued),
            (DEAD, &self.dead_letters, &before.dead_letters),
        ] {
            for (sink, n) in now {
                if all || then.get(sink) != Some(n) {
                    let key = format!("{prefix}{sink}");
                    batch.insert(meta, key.as_bytes(), n.to_be_bytes());
                }
            }
        }
    }
}
