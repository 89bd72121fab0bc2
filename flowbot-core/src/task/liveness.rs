//! Liveness locks: how a worker pool learns at once that a pool of another process on this
//! host has ended, so the tasks it held go back to the queue without waiting for their
//! leases to expire.
//!
//! Each running pool holds an exclusive lock (`flock`) on a file of its own in a directory
//! shared by the pools of one database on one host; the file holds the pool's lease owner.
//! The operating system drops the lock when the process ends however it ends (SIGKILL
//! included), and never while the process lives. A pool that can take another pool's lock
//! therefore knows that pool is gone: no live process can own the tasks leased to it. Owners
//! are unique to one run of one pool (the configured worker id plus the file's random name),
//! so a pool that is restarted, or two pools given the same id, never answer for each other.
//!
//! Every failure here leans towards "alive": a lock file that cannot be opened, read or locked
//! is left alone, and its tasks wait for their leases as they did before.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Lock files of running pools end in this; a file is renamed to it only once it is locked.
const LOCK_SUFFIX: &str = ".lock";
/// A lock file being written (locked, not yet holding its owner).
const TMP_SUFFIX: &str = ".tmp";
/// A `.tmp` file older than this whose lock is free was left by a process that died while
/// registering; it is removed.
const STALE_TMP: Duration = Duration::from_secs(60);
/// Owners longer than this are not read (no pool writes one).
const MAX_OWNER_BYTES: u64 = 4096;

/// A pool's lock, held for as long as the pool runs.
#[derive(Debug)]
pub(crate) struct LivenessLock {
    file: File,
    path: PathBuf,
    owner: String,
}

impl LivenessLock {
    /// Create and lock a lock file in `dir` (created if missing) for a pool configured with
    /// `worker_id`; the lease owner to use is [`LivenessLock::owner`].
    pub(crate) fn acquire(dir: &Path, worker_id: &str) -> io::Result<Self> {
        let mut last = None;
        // A pool that shuts down removes the directory when it is empty; a registration that
        // loses that race tries again.
        for _ in 0..3 {
            match Self::try_acquire(dir, worker_id) {
                Ok(lock) => return Ok(lock),
                Err(e) if e.kind() == io::ErrorKind::NotFound => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("could not create a liveness lock")))
    }

    fn try_acquire(dir: &Path, worker_id: &str) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let name = uuid::Uuid::new_v4().simple().to_string();
        let name = &name[..16];
        let owner = format!("{worker_id}@{name}");
        let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
        let path = dir.join(format!("{name}{LOCK_SUFFIX}"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let written = (|| {
            lock(&file)?
                .then_some(())
                .ok_or_else(|| io::Error::other("a new lock file was locked by someone else"))?;
            file.write_all(owner.as_bytes())?;
            // Locked and complete: only now may other pools see it (and find it held).
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(LivenessLock { file, path, owner })
    }

    /// The lease owner of the pool holding this lock: the worker id and the file's name.
    pub(crate) fn owner(&self) -> &str {
        &self.owner
    }

    /// The lock file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Remove the lock file (the pool finished and holds no task), then let the lock go; the
    /// directory too when it is empty.
    pub(crate) fn close(self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = self.path.parent() {
            // Fails (harmlessly) while other pools' files are in it.
            let _ = std::fs::remove_dir(dir);
        }
        drop(self.file);
    }
}

/// A pool that ended: its lock is held here until [`DeadWorker::forget`] removes the file,
/// so no other pool handles it at the same time.
#[derive(Debug)]
pub(crate) struct DeadWorker {
    pub(crate) owner: String,
    path: PathBuf,
    _file: File,
}

impl DeadWorker {
    /// Its tasks are back in the queue: remove the lock file.
    pub(crate) fn forget(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Take the lock of `file`: `Ok(false)` when another open file (a live pool) holds it.
fn lock(file: &File) -> io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// The pools with lock files in `dir` whose lock is free (their process ended, or they were
/// dropped without finishing), each locked by the caller now. Lock files that are held, or
/// cannot be opened or read, are left alone; empty ones and stale `.tmp` files are removed.
pub(crate) fn dead_workers(dir: &Path) -> io::Result<Vec<DeadWorker>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut dead = Vec::new();
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let is_lock = name.ends_with(LOCK_SUFFIX);
        if !is_lock && !name.ends_with(TMP_SUFFIX) {
            continue;
        }
        if !is_lock {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TMP);
            if !stale {
                continue;
            }
        }
        // Read-only is enough for the lock; a file removed meanwhile is skipped.
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if !lock(&file).unwrap_or(false) {
            continue;
        }
        let mut owner = String::new();
        let read = (&file)
            .take(MAX_OWNER_BYTES)
            .read_to_string(&mut owner)
            .is_ok();
        if !is_lock || (read && owner.is_empty()) {
            // Never registered: no task can be leased to it.
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if !read {
            continue;
        }
        dead.push(DeadWorker {
            owner,
            path,
            _file: file,
        });
    }
    Ok(dead)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!(
                "flowbot-liveness-{}",
                uuid::Uuid::new_v4().simple()
            ));
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn owners(dir: &Path) -> Vec<String> {
        let mut owners: Vec<String> = dead_workers(dir)
            .expect("sweep")
            .into_iter()
            .map(|d| d.owner)
            .collect();
        owners.sort();
        owners
    }

    #[test]
    fn a_held_lock_is_alive_and_a_dropped_one_is_dead() {
        let dir = Dir::new();
        let a = LivenessLock::acquire(&dir.0, "pool").expect("a");
        let b = LivenessLock::acquire(&dir.0, "pool").expect("b");
        // The same configured id, two runs: two owners.
        assert!(a.owner().starts_with("pool@") && b.owner().starts_with("pool@"));
        assert_ne!(a.owner(), b.owner());
        assert!(owners(&dir.0).is_empty(), "both alive");
        let b_owner = b.owner().to_owned();
        drop(b);
        assert_eq!(owners(&dir.0), std::slice::from_ref(&b_owner));
        // Found, but not forgotten: still there for the next sweep.
        let dead = dead_workers(&dir.0).expect("sweep");
        assert_eq!(dead.len(), 1);
        // While one sweep holds it, another does not see it.
        assert!(owners(&dir.0).is_empty());
        dead.into_iter().for_each(DeadWorker::forget);
        assert!(owners(&dir.0).is_empty());
        assert!(a.path().exists());
        a.close();
        assert!(!dir.0.exists(), "the empty directory is removed");
    }

    #[test]
    fn files_being_written_and_strangers_are_left_alone() {
        let dir = Dir::new();
        std::fs::create_dir_all(&dir.0).expect("dir");
        // A registration in progress (fresh .tmp), an unrelated file, and an empty lock file.
        std::fs::write(dir.0.join("abc.tmp"), b"").expect("tmp");
        std::fs::write(dir.0.join("notes.txt"), b"hello").expect("txt");
        std::fs::write(dir.0.join("empty.lock"), b"").expect("empty");
        assert!(owners(&dir.0).is_empty());
        assert!(dir.0.join("abc.tmp").exists(), "a fresh .tmp stays");
        assert!(dir.0.join("notes.txt").exists());
        assert!(
            !dir.0.join("empty.lock").exists(),
            "an empty lock file is removed"
        );
        // A missing directory has no dead pools.
        assert!(owners(&dir.0.join("missing")).is_empty());
    }

    #[test]
    fn a_lock_survives_until_the_process_ends_not_when_a_sweep_opens_it() {
        let dir = Dir::new();
        let a = LivenessLock::acquire(&dir.0, "pool").expect("a");
        for _ in 0..3 {
            assert!(owners(&dir.0).is_empty());
        }
        assert!(a.path().exists());
        a.close();
    }
}
