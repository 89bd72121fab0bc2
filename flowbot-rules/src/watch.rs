//! Hot reload: watch a rules directory and swap in the new set when a file changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flowbot_core::CancellationToken;

use crate::{Error, Plugins, RuleSet, RulesRouter};

/// What a reload attempt did.
#[derive(Debug)]
#[non_exhaustive]
pub enum Reload {
    /// The new set is in force, with this many rules.
    Applied(usize),
    /// The change was rejected; the previous set stays in force.
    Rejected(Error),
}

/// The `*.toml` files of `dir` with their modification times and sizes.
pub(crate) fn snapshot(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_file()
                .then(|| (e.path(), meta.modified().ok(), meta.len()))
        })
        .collect();
    files.sort();
    files
}

/// Watch `dir` every `interval` until `stop`: when a `*.toml` file is added, removed or
/// changed, and the directory then stays the same for one more interval (so a file being
/// written is not read half way), compile the whole directory and swap the new set into
/// `router` at once. A set
/// that does not compile is rejected (with the file, line and rule in the error) and the
/// previous set stays in force. `on_reload` hears of every attempt.
///
/// Polling, rather than file system notifications, works the same on every platform, on
/// network file systems and in containers with mounted volumes, and a rules directory holds
/// few files, so a check costs a handful of `stat` calls.
pub async fn watch_dir(
    router: Arc<RulesRouter>,
    dir: PathBuf,
    plugins: Plugins,
    interval: Duration,
    stop: CancellationToken,
    on_reload: impl Fn(&Reload) + Send + Sync + 'static,
) {
    let mut seen = snapshot(&dir);
    let mut pending = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = snapshot(&dir);
        if now == seen {
            pending = None;
            continue;
        }
        // A file caught half written (truncated, not yet filled) must not be loaded: wait
        // until the directory has stayed the same for one interval.
        if pending.as_ref() != Some(&now) {
            pending = Some(now);
            continue;
        }
        pending = None;
        seen = now;
        let (dir2, plugins2) = (dir.clone(), plugins.clone());
        // Compiling a large set takes a while: keep it off the async workers.
        let compiled = tokio::task::spawn_blocking(move || RuleSet::load_dir(&dir2, &plugins2))
            .await
            .unwrap_or_else(|e| Err(Error::Invalid(format!("rule compilation failed: {e}"))));
        let outcome = match compiled {
            Ok(set) => {
                let n = set.len();
                router.replace(set);
                Reload::Applied(n)
            }
            Err(e) => Reload::Rejected(e),
        };
        on_reload(&outcome);
    }
}
