//! The state_dir as a place: a folder kabar can write, used by one kabar at a time (flock).
//! It must not read or write the store inside it: the SQLite adapter does.
//!
//! Two kabars on one SQLite store would both run senders over the same outbox and post
//! every message twice, so `kabar serve` holds an OS lock (flock) on
//! `state_dir/kabar.lock` for as long as it runs. The OS drops the lock when the process
//! ends, however it ends (kill -9 included), so a lock file left behind never blocks a
//! restart. `kabar dead-letters` does not take the lock: it is made to work beside a
//! running kabar (SQLite's WAL lets both use the store).

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// The lock file's name inside state_dir; it holds the pid of the kabar that has it.
pub(crate) const LOCK_FILE: &str = "kabar.lock";

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error(
        "state_dir {0} is a file, not a folder: point state_dir at a folder (kabar creates it when missing)"
    )]
    NotAFolder(PathBuf),
    #[error("state_dir {path} is not writable ({source}); {hint}")]
    NotWritable {
        path: PathBuf,
        source: io::Error,
        hint: String,
    },
    #[error(
        "state_dir {path} is in use by another kabar ({holder}): two kabars on one store would post every message twice. Stop the other kabar, or give this one a state_dir of its own"
    )]
    InUse { path: PathBuf, holder: String },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
}

/// The serve lock on a state_dir; released when dropped or when the process ends.
#[derive(Debug)]
pub(crate) struct StateDirLock {
    // Held only for its lock: closing the file releases it. None where no lock could be
    // taken and kabar runs unguarded (a read-only disk without a lock file).
    _file: Option<File>,
}

impl StateDirLock {
    /// Creates state_dir if needed and takes its lock, or says who holds it.
    pub(crate) fn acquire(state_dir: &Path) -> Result<StateDirLock, StateDirError> {
        refuse_a_file(state_dir)?;
        std::fs::create_dir_all(state_dir).map_err(|e| classify(state_dir, e))?;
        let path = state_dir.join(LOCK_FILE);
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path);
        let (mut file, writable) = match opened {
            Ok(file) => (file, true),
            // A disk that came back read-only (after a crash, say) is not a mistake in the
            // config: kabar starts, answers 503 and reports not ready until it is writable
            // again, as the store decides. The lock is taken on the file already there
            // (flock needs no write access).
            Err(e) if e.kind() == io::ErrorKind::ReadOnlyFilesystem => match File::open(&path) {
                Ok(file) => (file, false),
                Err(_) => {
                    tracing::warn!(
                        state_dir = %state_dir.display(),
                        "state_dir is on a read-only filesystem and has no lock file yet: nothing stops a second kabar on it"
                    );
                    return Ok(StateDirLock { _file: None });
                }
            },
            Err(e) => return Err(classify(state_dir, e)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StateDirError::InUse {
                    path: state_dir.to_owned(),
                    holder: holder_of(&path),
                });
            }
            // Some network and FUSE filesystems have no locks at all: refusing to run there
            // would be worse than running unguarded, which is how kabar ran before the lock.
            Err(std::fs::TryLockError::Error(source))
                if source.kind() == io::ErrorKind::Unsupported =>
            {
                tracing::warn!(
                    state_dir = %state_dir.display(),
                    error = %source,
                    "the filesystem of state_dir has no file locks: nothing stops a second kabar on it, run only one"
                );
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(StateDirError::Lock { path, source });
            }
        }
        // The pid is for the message another kabar prints; the lock itself is the flock.
        if writable {
            let pid = std::process::id();
            file.set_len(0)
                .and_then(|()| file.write_all(format!("{pid}\n").as_bytes()))
                .map_err(|e| classify(state_dir, e))?;
        }
        tracing::info!(state_dir = %state_dir.display(), "state_dir locked for this kabar");
        Ok(StateDirLock { _file: Some(file) })
    }
}

/// For `kabar check`: whether kabar could create and write state_dir, without creating
/// anything that stays. A folder that does not exist yet is fine when its nearest existing
/// parent is writable (kabar creates it at start-up).
pub(crate) fn check_usable(state_dir: &Path) -> Result<(), StateDirError> {
    refuse_a_file(state_dir)?;
    let existing = state_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if !existing.is_dir() {
        return Err(StateDirError::NotAFolder(existing.to_owned()));
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let probe = existing.join(format!(".kabar-check-{}-{nanos}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| classify(state_dir, e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Who holds the lock, as far as the lock file says.
pub(crate) fn holder_of(lock_file: &Path) -> String {
    match std::fs::read_to_string(lock_file)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
    {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".to_owned(),
    }
}

fn refuse_a_file(state_dir: &Path) -> Result<(), StateDirError> {
    if state_dir.exists() && !state_dir.is_dir() {
        return Err(StateDirError::NotAFolder(state_dir.to_owned()));
    }
    Ok(())
}

fn classify(state_dir: &Path, source: io::Error) -> StateDirError {
    // A path through a file ("data/kabar.db/x") reports NotADirectory.
    if source.kind() == io::ErrorKind::NotADirectory {
        let file = state_dir
            .ancestors()
            .find(|p| p.is_file())
            .unwrap_or(state_dir);
        return StateDirError::NotAFolder(file.to_owned());
    }
    StateDirError::NotWritable {
        path: state_dir.to_owned(),
        hint: permission_hint(state_dir),
        source,
    }
}

/// Which uid kabar runs as and who owns the folder, and what to change on Kubernetes,
/// where this is nearly always a volume mounted with another owner.
fn permission_hint(state_dir: &Path) -> String {
    let me = process_uid().map_or("an unknown uid".to_owned(), |uid| format!("uid {uid}"));
    let owner = state_dir
        .ancestors()
        .find(|p| p.exists())
        .and_then(owner_of)
        .map(|(path, uid, gid)| format!(", {} is owned by uid {uid} gid {gid}", path.display()))
        .unwrap_or_default();
    format!(
        "kabar runs as {me}{owner}. Make the folder writable for kabar's user (chown/chmod), or on Kubernetes set the pod's securityContext.fsGroup to kabar's group (the Helm chart sets fsGroup 65532) so the volume is group-writable, or runAsUser to the volume's owner"
    )
}

#[cfg(unix)]
fn process_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    // /proc/self belongs to the process's effective uid; std has no getuid().
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

#[cfg(not(unix))]
fn process_uid() -> Option<u32> {
    None
}

#[cfg(unix)]
fn owner_of(path: &Path) -> Option<(PathBuf, u32, u32)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    Some((path.to_owned(), meta.uid(), meta.gid()))
}

#[cfg(not(unix))]
fn owner_of(_path: &Path) -> Option<(PathBuf, u32, u32)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_with_the_holder_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let first = StateDirLock::acquire(&state).expect("first lock");
        let err = StateDirLock::acquire(&state).expect_err("second lock must fail");
        let message = err.to_string();
        assert!(matches!(err, StateDirError::InUse { .. }), "{message}");
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        assert!(message.contains(&state.display().to_string()), "{message}");
        drop(first);
        StateDirLock::acquire(&state).expect("free again once the first is dropped");
    }

    #[test]
    fn a_file_as_state_dir_is_refused_by_lock_and_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("data");
        std::fs::write(&file, "not a folder").expect("write");
        for err in [
            StateDirLock::acquire(&file).expect_err("a file"),
            check_usable(&file).expect_err("a file"),
            check_usable(&file.join("below")).expect_err("below a file"),
        ] {
            assert!(
                matches!(&err, StateDirError::NotAFolder(p) if p == &file),
                "{err}"
            );
        }
    }

    #[test]
    fn check_creates_nothing_that_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        check_usable(&dir.path().join("not/yet")).expect("creatable");
        check_usable(dir.path()).expect("writable");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("read").collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
