//! What the store checks besides the engine, so that it never loses data silently and never
//! answers 200 for an event that did not reach the disk:
//!
//! - **Acknowledged high-water mark** (`kirimhook.acked` in the store directory): after every
//!   group commit that admitted events, the highest committed seq is written there (and the
//!   file is fdatasync'd at most once a second). The engine's recovery silently drops a torn
//!   or truncated journal tail; at open, a mark above the highest recovered seq means
//!   acknowledged admissions were lost, which [`crate::store::Store::open`] reports.
//! - **Identity**: the store directory's device and inode, and the mark file's link count,
//!   are checked after every commit. A directory that was removed or replaced under a running
//!   daemon (`rm -rf`) still takes writes into unlinked files; the check turns that into a
//!   failed batch (503) and stops the writer.
//! - **Free space**: below `store.min_free_bytes` new admissions are refused (503) before
//!   anything is written, so the engine never reaches ENOSPC in normal operation; sink
//!   outcomes and sweeps still run (they free space), and admissions resume once the space is
//!   back.

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::lock;
use crate::units::human_bytes;
use std::time::{Duration, Instant};

/// The mark file's name in the store directory.
pub const MARK_FILE: &str = "kirimhook.acked";
/// How often the mark file is fdatasync'd at most.
const MARK_SYNC_EVERY: Duration = Duration::from_secs(1);
/// How long a free-space sample is trusted by default.
pub const DISK_SAMPLE_TTL: Duration = Duration::from_millis(250);
/// Bytes admitted after which free space is sampled again, whatever its age.
const DISK_SAMPLE_BYTES: u64 = 8 * 1024 * 1024;

/// Reports the bytes available to an unprivileged writer on the filesystem holding a path.
pub type FreeSpaceProbe = Arc<dyn Fn(&Path) -> std::io::Result<u64> + Send + Sync>;

/// The real probe: `statvfs(2)`, blocks available to unprivileged users.
pub fn statvfs_probe() -> FreeSpaceProbe {
    Arc::new(|path: &Path| {
        let stat = rustix::fs::statvfs(path)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    })
}

/// The free-space watermark: sampled by the writer before each admission, and by readers
/// (`/readyz`, `status`, metrics) while it refuses, so that a refusal clears once space is
/// back even when no delivery arrives to notice it. Shared; cheap to call.
pub struct DiskWatch {
    path: PathBuf,
    min_free: u64,
    probe: FreeSpaceProbe,
    ttl: Duration,
    free: AtomicU64,
    low: AtomicBool,
    sample: Mutex<Sample>,
}

/// When the free space was last read, and what was admitted since.
#[derive(Default)]
struct Sample {
    at: Option<Instant>,
    since: u64,
    /// Whether the last sample could be read (an unreadable one refuses nothing).
    known: bool,
}

impl DiskWatch {
    /// A watermark of `min_free` bytes (0: off) on the filesystem of `path`; a sample is
    /// trusted for `ttl` or [`DISK_SAMPLE_BYTES`] admitted, whichever comes first.
    pub fn new(path: &Path, min_free: u64, probe: FreeSpaceProbe, ttl: Duration) -> DiskWatch {
        DiskWatch {
            path: path.to_owned(),
            min_free,
            probe,
            ttl,
            free: AtomicU64::new(0),
            low: AtomicBool::new(false),
            sample: Mutex::new(Sample::default()),
        }
    }

    /// Bytes free at the last sample.
    pub fn free_bytes(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Whether admissions are refused for lack of space.
    pub fn is_low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }

    /// Whether an admission of `bytes` may be written now: `Err` with the refusal's reason
    /// when free space, as last sampled less what was admitted since, would fall below the
    /// watermark. Samples again when the last sample is old, much was admitted since, or it
    /// is refusing.
    pub fn admit(&self, bytes: u64) -> Result<(), String> {
        if self.min_free == 0 {
            return Ok(());
        }
        let mut sample = lock(&self.sample);
        let stale = self.is_low()
            || sample.at.is_none_or(|at| at.elapsed() >= self.ttl)
            || sample.since >= DISK_SAMPLE_BYTES;
        if stale {
            self.take_sample(&mut sample);
        }
        if !sample.known {
            return Ok(());
        }
        let projected = self
            .free_bytes()
            .saturating_sub(sample.since.saturating_add(bytes));
        if self.is_low() || projected < self.min_free {
            self.set_low(true, self.free_bytes());
            return Err(format!(
                "free disk space {} is below store.min_free_bytes {}",
                human_bytes(projected.min(self.free_bytes())),
                human_bytes(self.min_free)
            ));
        }
        sample.since = sample.since.saturating_add(bytes);
        Ok(())
    }

    /// While refusing, samples again (at most once per `ttl`), so that readers see the
    /// refusal end once space is back.
    pub fn refresh_if_low(&self) {
        if self.min_free == 0 || !self.is_low() {
            return;
        }
        let mut sample = lock(&self.sample);
        if sample.at.is_none_or(|at| at.elapsed() >= self.ttl) {
            self.take_sample(&mut sample);
        }
    }

    fn take_sample(&self, sample: &mut Sample) {
        sample.at = Some(Instant::now());
        sample.since = 0;
        match (self.probe)(&self.path) {
            Ok(free) => {
                sample.known = true;
                self.free.store(free, Ordering::Relaxed);
                self.set_low(free < self.min_free, free);
            }
            Err(e) => {
                // Unknown: do not refuse on a probe that fails; a real failure to write still
                // answers 503 through the engine's own error.
                tracing::warn!(error = %e, path = %self.path.display(), "cannot read the free disk space");
                sample.known = false;
                self.set_low(false, self.free_bytes());
            }
        }
    }

    fn set_low(&self, low: bool, free: u64) {
        let was_low = self.low.swap(low, Ordering::Relaxed);
        if low && !was_low {
            tracing::warn!(
                free_bytes = free,
                min_free_bytes = self.min_free,
                "disk nearly full: refusing new deliveries (503) until free space is back above store.min_free_bytes; sinks keep draining"
            );
        } else if was_low && !low {
            tracing::info!(
                free_bytes = free,
                "free disk space is back; accepting deliveries again"
            );
        }
    }
}

/// The mark file and the directory's identity.
pub struct Guard {
    dir: PathBuf,
    identity: (u64, u64),
    mark: File,
    synced: Instant,
    dirty: bool,
}

impl Guard {
    /// Opens (or creates) the mark file in `dir`; returns the guard and the mark found there
    /// (`None` for a new file).
    pub fn open(dir: &Path) -> std::io::Result<(Guard, Option<u64>)> {
        let meta = std::fs::metadata(dir)?;
        let mut mark = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(MARK_FILE))?;
        let mut bytes = Vec::new();
        mark.read_to_end(&mut bytes)?;
        let found = (bytes.len() >= 8).then(|| super::be_u64(&bytes));
        Ok((
            Guard {
                dir: dir.to_owned(),
                identity: (meta.dev(), meta.ino()),
                mark,
                synced: Instant::now(),
                dirty: false,
            },
            found,
        ))
    }

    /// Writes `seq` as the highest acknowledged seq (synced at most every second).
    pub fn acked(&mut self, seq: u64) -> std::io::Result<()> {
        self.mark.write_all_at(&seq.to_be_bytes(), 0)?;
        self.dirty = true;
        if self.synced.elapsed() >= MARK_SYNC_EVERY {
            self.sync()?;
        }
        Ok(())
    }

    /// fdatasyncs the mark if it changed since the last sync.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.dirty {
            self.mark.sync_data()?;
            self.dirty = false;
        }
        self.synced = Instant::now();
        Ok(())
    }

    /// `Err` with a plain reason when the store directory is gone or was replaced, or the
    /// store's files were deleted under the running daemon.
    pub fn check_identity(&self) -> Result<(), String> {
        let dir = self.dir.display();
        match std::fs::metadata(&self.dir) {
            Err(e) => return Err(format!("the store directory {dir} is gone ({e})")),
            Ok(meta) if (meta.dev(), meta.ino()) != self.identity => {
                return Err(format!(
                    "the store directory {dir} was replaced by another directory"
                ))
            }
            Ok(_) => {}
        }
        match self.mark.metadata() {
            Ok(meta) if meta.nlink() == 0 => Err(format!(
                "the store's files in {dir} were deleted while the daemon ran"
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("cannot check the store's files in {dir}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_of(free: &Arc<Mutex<u64>>) -> FreeSpaceProbe {
        let free = free.clone();
        Arc::new(move |_: &Path| Ok(*free.lock().unwrap()))
    }

    #[test]
    fn refuses_below_the_watermark_and_recovers_above_it() {
        let free = Arc::new(Mutex::new(10_000u64));
        // A long sample life: a pause of the test machine never makes a sample stale.
        let disk = DiskWatch::new(
            Path::new("/"),
            5_000,
            probe_of(&free),
            Duration::from_secs(60),
        );
        assert_eq!(disk.admit(100), Ok(()));
        assert_eq!(disk.free_bytes(), 10_000);

        *free.lock().unwrap() = 4_000;
        // A recent sample is trusted until enough was admitted.
        assert_eq!(disk.admit(100), Ok(()));
        // What it would admit counts: refused without waiting for a new sample.
        let refused = disk.admit(DISK_SAMPLE_BYTES).unwrap_err();
        assert!(refused.contains("below store.min_free_bytes"), "{refused}");
        assert!(disk.is_low());
        // While refusing it samples every time: still 4,000 free.
        assert!(disk.admit(100).is_err());
        assert_eq!(disk.free_bytes(), 4_000);

        *free.lock().unwrap() = 6_000;
        assert_eq!(
            disk.admit(100),
            Ok(()),
            "a refusing watermark samples every time"
        );
        assert!(!disk.is_low());
    }

    #[test]
    fn what_is_admitted_counts_before_the_next_sample() {
        let free = Arc::new(Mutex::new(10_000u64));
        let disk = DiskWatch::new(
            Path::new("/"),
            5_000,
            probe_of(&free),
            Duration::from_secs(60),
        );
        assert_eq!(disk.admit(3_000), Ok(()));
        // 10,000 - 3,000 - 3,000 < 5,000: refused without waiting for a new sample.
        assert!(disk.admit(3_000).is_err());
        assert!(disk.is_low());
    }

    #[test]
    fn readers_clear_a_refusal_once_space_is_back() {
        let free = Arc::new(Mutex::new(1_000u64));
        let disk = DiskWatch::new(Path::new("/"), 5_000, probe_of(&free), Duration::ZERO);
        assert!(disk.admit(1).is_err());
        *free.lock().unwrap() = 9_000;
        disk.refresh_if_low();
        assert!(!disk.is_low());
        assert_eq!(disk.free_bytes(), 9_000);
    }

    #[test]
    fn a_zero_watermark_never_refuses_and_a_failing_probe_does_not_either() {
        let failing: FreeSpaceProbe = Arc::new(|_: &Path| Err(std::io::Error::other("no statvfs")));
        let off = DiskWatch::new(Path::new("/"), 0, failing.clone(), DISK_SAMPLE_TTL);
        assert_eq!(off.admit(1), Ok(()));
        let on = DiskWatch::new(Path::new("/"), 1, failing, DISK_SAMPLE_TTL);
        assert_eq!(on.admit(1), Ok(()));
    }

    #[test]
    fn the_real_probe_reads_a_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        assert!(statvfs_probe()(dir.path()).unwrap() > 0);
    }

    #[test]
    fn the_mark_survives_reopening_and_deletion_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut guard, found) = Guard::open(dir.path()).unwrap();
        assert_eq!(found, None);
        guard.acked(42).unwrap();
        guard.sync().unwrap();
        assert_eq!(guard.check_identity(), Ok(()));
        drop(guard);
        let (guard, found) = Guard::open(dir.path()).unwrap();
        assert_eq!(found, Some(42));
        std::fs::remove_file(dir.path().join(MARK_FILE)).unwrap();
        let gone = guard.check_identity().unwrap_err();
        assert!(gone.contains("deleted"), "{gone}");
    }

    #[test]
    fn a_removed_directory_is_noticed() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("store");
        std::fs::create_dir(&dir).unwrap();
        let (guard, _) = Guard::open(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let gone = guard.check_identity().unwrap_err();
        assert!(gone.contains("is gone"), "{gone}");
        std::fs::create_dir(&dir).unwrap();
        let replaced = guard.check_identity().unwrap_err();
        assert!(replaced.contains("replaced"), "{replaced}");
    }
}
