//! inotify for `file://` buckets: "closed after writing" and "renamed into place",
//! never "created" (which fires before any data is written).

use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

/// What the file watcher saw.
pub(super) enum Change {
    /// A file finished being written or was renamed into place.
    File(PathBuf),
    /// Something the watcher cannot describe precisely (overflow, new directory): list again.
    Rescan,
}

/// The object key of a file under `root`, if it is one ('/'-separated, UTF-8).
pub(super) fn key_of_file(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}

/// Starts inotify on `dir`; changes arrive on the returned bounded channel. When the
/// channel is full the watcher thread waits, the kernel queue fills and overflows, and
/// the overflow is reported as a rescan: memory stays bounded under any burst.
pub(super) fn watch(dir: &Path) -> anyhow::Result<(notify::RecommendedWatcher, mpsc::Receiver<Change>)> {
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
    use notify::{EventKind, RecursiveMode, Watcher};
    let (tx, rx) = mpsc::channel(1024);
    let handler = move |res: notify::Result<notify::Event>| {
        let changes: Vec<Change> = match res {
            Err(_) => vec![Change::Rescan],
            Ok(event) if event.need_rescan() => vec![Change::Rescan],
            Ok(event) => match event.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                    event.paths.into_iter().map(Change::File).collect()
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                    event.paths.into_iter().map(Change::File).collect()
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                    event.paths.into_iter().skip(1).map(Change::File).collect()
                }
                // Files written right after a directory is created can be missed by a
                // recursive watch: list again to be sure.
                EventKind::Create(CreateKind::Folder) => vec![Change::Rescan],
                _ => vec![],
            },
        };
        for change in changes {
            if tx.blocking_send(change).is_err() {
                return;
            }
        }
    };
    // A link in the bucket must not put watches on directories elsewhere on the disk.
    let config = notify::Config::default().with_follow_symlinks(false);
    let mut watcher = notify::RecommendedWatcher::new(handler, config)?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok((watcher, rx))
}

pub(super) async fn recv(changes: &mut Option<mpsc::Receiver<Change>>) -> Option<Change> {
    match changes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// `first` and the changes already waiting behind it, up to `max` in all: a burst is
/// looked at together (its ledger writes then share transactions).
pub(super) fn with_waiting(changes: &mut Option<mpsc::Receiver<Change>>, first: Change, max: usize) -> Vec<Change> {
    let mut batch = vec![first];
    if let Some(rx) = changes {
        while batch.len() < max {
            match rx.try_recv() {
                Ok(change) => batch.push(change),
                Err(_) => break,
            }
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_paths_become_keys() {
        let root = Path::new("/data");
        assert_eq!(key_of_file(root, Path::new("/data/inbox/a b.jpg")).as_deref(), Some("inbox/a b.jpg"));
        assert_eq!(key_of_file(root, Path::new("/elsewhere/a.jpg")), None);
    }
}
