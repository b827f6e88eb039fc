//! Requests accepted for later (`mode = "async"`), kept in the state directory until
//! their event finished: written and synced before the `202` goes out, so a kill -9
//! loses no accepted request; read back at start-up and run again.

use std::io::Write;
use std::path::PathBuf;

/// One file per request, `<id>.json`, in `<state dir>/http/<pipeline>/`.
pub struct Spool {
    dir: PathBuf,
}

/// Ids are UUIDs: anything else never names a file.
pub fn is_id(id: &str) -> bool {
    id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

impl Spool {
    pub fn new(state_dir: &std::path::Path, pipeline: &str) -> Self {
        // Pipeline names are checked when loaded, but a name is no path: encode it.
        let name: String =
            pipeline.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        Self { dir: state_dir.join("http").join(name) }
    }

    fn file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Keeps `record` as request `id`, durably: written to a temporary file, synced,
    /// renamed into place and the directory synced.
    pub async fn put(&self, id: &str, record: Vec<u8>) -> std::io::Result<()> {
        let (dir, file, temp) = (self.dir.clone(), self.file(id), self.dir.join(format!("{id}.tmp")));
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let mut out = std::fs::File::create(&temp)?;
            out.write_all(&record)?;
            out.sync_all()?;
            std::fs::rename(&temp, &file)?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await?
    }

    pub async fn remove(&self, id: &str) {
        let file = self.file(id);
        if let Err(e) = tokio::fs::remove_file(&file).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %file.display(), error = %e, "cannot remove a finished request; it runs again after a restart");
            }
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        is_id(id) && self.file(id).exists()
    }

    /// The ids of the requests kept, oldest first (ids are time-ordered UUIDs).
    pub async fn pending(&self) -> std::io::Result<Vec<String>> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let mut ids = Vec::new();
            for entry in entries {
                let name = entry?.file_name();
                let name = name.to_string_lossy();
                if let Some(id) = name.strip_suffix(".json").filter(|id| is_id(id)) {
                    ids.push(id.to_string());
                } else if name.ends_with(".tmp") {
                    // Never answered 202: the client was told nothing and will retry.
                    let _ = std::fs::remove_file(dir.join(&*name));
                }
            }
            ids.sort();
            Ok(ids)
        })
        .await?
    }

    pub async fn read(&self, id: &str) -> std::io::Result<Vec<u8>> {
        tokio::fs::read(self.file(id)).await
    }

    /// Moves a file that cannot be read back out of the way, keeping it for a look.
    pub async fn set_aside(&self, id: &str) {
        let _ = tokio::fs::rename(self.file(id), self.dir.join(format!("{id}.unreadable"))).await;
    }
}
