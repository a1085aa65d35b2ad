//! `kirimhook check-config` beyond the file itself: whether the store can be used (the
//! embedded store's `store.path`, or a connection to PostgreSQL), and the report it prints.
//!
//! PostgreSQL is checked by connecting once and reading the server version; nothing is
//! created or migrated (that is `serve`'s job, under its advisory lock).
//!
//! The store check looks at the disk the way `serve` will use it, without starting anything:
//! the directory must exist or be creatable (its nearest existing ancestor is a writable
//! directory), and must be a writable directory. Writability is tested by creating and removing
//! one empty file, so nothing is left behind, and no directory is created. The storage engine
//! is never opened, so a running daemon on the same store is not disturbed. This module does
//! not read the config (see [`crate::config`]).

use crate::receive::signature::DEMO_SECRET_WARNING;
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::config::{Checked, ConfigError, StoreEngine};

const STORE_KEY: &str = "store.path";

/// Checks the store of `checked`: the embedded store's directory, or a connection to
/// PostgreSQL (skipped when its `url_file` was not checked). Returns the store in a few words
/// for the report.
pub async fn store(checked: &Checked) -> Result<String, ConfigError> {
    let store = &checked.config.store;
    match &store.engine {
        StoreEngine::Embedded => {
            let path = store.path.clone();
            tokio::task::spawn_blocking(move || store_path(&path))
                .await
                .map_err(|e| ConfigError::Invalid {
                    key: STORE_KEY.to_owned(),
                    message: format!("the check failed: {e}"),
                })??;
            Ok(store.path.display().to_string())
        }
        StoreEngine::Postgres(pg) => {
            if checked
                .not_checked
                .iter()
                .any(|n| n.key.starts_with("store.url"))
            {
                return Ok(format!(
                    "postgres (not connected: its URL was not checked), schema {}",
                    pg.schema
                ));
            }
            let settings = crate::app::postgres_settings(pg);
            let version = crate::store::postgres::PgStore::check(&settings)
                .await
                .map_err(|e| ConfigError::Invalid {
                    key: "store.url".to_owned(),
                    message: e.to_string(),
                })?;
            Ok(format!("postgres {version}, schema {}", pg.schema))
        }
    }
}

/// Checks that `path` is, or can become, a writable store directory. The error is on
/// `store.path` and says which directory is at fault and why.
pub fn store_path(path: &Path) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: STORE_KEY.to_owned(),
        message,
    };
    let shown = path.display();
    let (existing, exists) = nearest_existing(path)
        .map_err(|(at, err)| invalid(format!("{shown}: cannot look at {}: {err}", at.display())))?;
    if !existing.is_dir() {
        return Err(invalid(if exists {
            format!("{shown} is not a directory")
        } else {
            format!(
                "{shown} cannot be created: {} is not a directory",
                existing.display()
            )
        }));
    }
    if exists {
        // What `serve` refuses before opening the engine (a damaged store), refused here too.
        crate::store::check_not_damaged(path).map_err(|e| invalid(e.to_string()))?;
    }
    probe_writable(&existing).map_err(|err| {
        invalid(if exists {
            format!("{shown} is not writable: {err}")
        } else {
            format!(
                "{shown} cannot be created: {} is not writable: {err}",
                existing.display()
            )
        })
    })
}

/// `path` itself when it exists (`true`), else its nearest existing ancestor (`false`; `.`
/// for a relative path none of whose parts exist). An error other than "not found" stops
/// the search, with the path it happened on.
fn nearest_existing(path: &Path) -> Result<(PathBuf, bool), (PathBuf, std::io::Error)> {
    let mut at = path.to_path_buf();
    let mut exists = true;
    loop {
        match std::fs::metadata(&at) {
            Ok(_) => return Ok((at, exists)),
            // Not a directory: a file stands where a parent directory should be; the
            // parent check below says so.
            Err(err) if matches!(err.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                exists = false;
                at = match at.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
                    // A relative path's first part: its parent is the working directory.
                    Some(_) => PathBuf::from("."),
                    // The root or `.` itself is gone: nothing left to climb.
                    None => return Err((at, err)),
                };
            }
            Err(err) => return Err((at, err)),
        }
    }
}

/// Creates and removes one empty file in `dir`.
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let name = format!(
        ".kirimhook-check-config-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    );
    let probe = dir.join(name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

/// What `check-config` prints on success: the files it did not check, one per line, then one
/// summary line that says "OK" only when everything was checked.
pub fn report(checked: &Checked, store: &str) -> String {
    let config = &checked.config;
    let summary = format!(
        "listen {}, {} secret(s), {} sink(s), store {store}",
        config.server.listen,
        config.verify.secrets.len(),
        config.sinks.len(),
    );
    let mut out = String::new();
    for secret in config.verify.secrets.iter().filter(|s| s.is_demo()) {
        out.push_str(&format!(
            "warning: secret {} {DEMO_SECRET_WARNING}\n",
            secret.id()
        ));
    }
    if checked.not_checked.is_empty() {
        out.push_str(&format!("config OK: {summary}\n"));
        return out;
    }
    for file in &checked.not_checked {
        out.push_str(&format!("not checked: {file}\n"));
    }
    out.push_str(&format!(
        "config valid except {} file(s) not checked (see above): {summary}\n",
        checked.not_checked.len()
    ));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_store_is_refused_as_serve_refuses_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keyspaces")).unwrap();
        let err = store_path(dir.path()).unwrap_err().to_string();
        assert!(err.contains("`version` file is missing"), "{err}");
        assert!(err.contains("store.path"), "{err}");
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn an_existing_or_creatable_directory_passes_and_nothing_is_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep"), b"").unwrap();
        store_path(dir.path()).unwrap();
        store_path(&dir.path().join("a/b/store")).unwrap();
        assert_eq!(entries(dir.path()), ["keep"]);
    }

    #[test]
    fn a_file_in_the_way_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let err = store_path(&file).unwrap_err();
        assert_eq!(err.key(), Some("store.path"));
        assert!(err.to_string().ends_with("is not a directory"), "{err}");
        let err = store_path(&file.join("store")).unwrap_err();
        assert!(err.to_string().contains("cannot be created"), "{err}");
    }

    #[test]
    fn proc_is_refused() {
        // Refused even for root, unlike a directory without write permission.
        if !Path::new("/proc/self").exists() {
            eprintln!("no /proc here: not run");
            return;
        }
        let err = store_path(Path::new("/proc/kirimhook-store")).unwrap_err();
        assert_eq!(err.key(), Some("store.path"));
        assert!(err.to_string().contains("/proc"), "{err}");
        assert!(store_path(Path::new("/proc")).is_err());
    }
}
