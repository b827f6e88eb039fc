//! `file://` buckets as jails. object_store's `LocalFileSystem` follows symlinks: a
//! link under a swept prefix let `object.expire` delete files elsewhere on the disk, a
//! link to `/usr/share/doc` turned into thousands of events, and swapping a directory
//! for a link between a check and a write landed outputs outside the bucket.
//!
//! Here every path is walked from a handle on the bucket's root, one component at a
//! time, never following a symlink (`O_NOFOLLOW` / `openat` through cap-std): there is
//! no check-then-use window, a link anywhere in a key refuses the operation, and
//! listings skip links (one line per listing) instead of walking into them. Writes go
//! to a temp file next to the target and are renamed into place through the same
//! directory handle. Names, ETags and temp files match `LocalFileSystem`'s, so a
//! ledger written before stays valid.

use std::io::{self, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, File, Metadata, MetadataExt, OpenOptions};
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    Attributes, CopyMode, CopyOptions, Error, Extensions, GetOptions, GetResult, GetResultPayload, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RenameOptions, RenameTargetMode, Result, UploadPart,
};

const STORE: &str = "LocalBucket";
/// Listing entries handed over per batch from the walking thread.
const LIST_BATCH: usize = 1000;

/// A directory on disk as a bucket nothing can lead out of.
#[derive(Debug, Clone)]
pub struct LocalBucket {
    root: Arc<Dir>,
    /// For messages and `GetResultPayload::File`.
    root_path: PathBuf,
}

impl std::fmt::Display for LocalBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalBucket({})", self.root_path.display())
    }
}

impl LocalBucket {
    /// The bucket at `root` (an existing directory; a link to one is fine: the jail is
    /// what lies below it).
    pub fn open(root: &std::path::Path) -> io::Result<Self> {
        let dir = Dir::open_ambient_dir(root, cap_std::ambient_authority())?;
        Ok(Self { root: Arc::new(dir), root_path: root.to_path_buf() })
    }

    async fn blocking<T: Send + 'static>(&self, work: impl FnOnce(&Dir) -> Result<T> + Send + 'static) -> Result<T> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || work(&root)).await?
    }
}

/// The directory components and the file name of a location.
fn split(location: &Path) -> Result<(Vec<String>, String)> {
    let mut parts: Vec<String> = location.parts().map(|p| p.as_ref().to_string()).collect();
    let name = parts.pop().ok_or_else(|| io_error(location, io::Error::other("empty path")))?;
    if !valid_name(&name) {
        return Err(Error::InvalidPath {
            source: object_store::path::Error::InvalidPath { path: location.as_ref().into() },
        });
    }
    Ok((parts, name))
}

/// `LocalFileSystem` writes `name#N` while uploading; such names are never objects.
fn valid_name(name: &str) -> bool {
    match name.split_once('#') {
        Some((_, suffix)) if !suffix.is_empty() => !suffix.bytes().all(|b| b.is_ascii_digit()),
        _ => true,
    }
}

/// Opens the directories one by one below `root`, never through a symlink; with
/// `create`, makes the missing ones.
fn open_dirs(root: &Dir, dirs: &[String], create: bool, location: &Path) -> Result<Dir> {
    let mut dir = root.try_clone().map_err(|e| io_error(location, e))?;
    for part in dirs {
        if create {
            match dir.create_dir(part) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_error(location, e)),
            }
        }
        dir = dir.open_dir_nofollow(part).map_err(|e| io_error(location, refused_link(&dir, part, e)))?;
    }
    Ok(dir)
}

/// A symlink where a directory or file was expected becomes a clear refusal.
fn refused_link(dir: &Dir, name: &str, error: io::Error) -> io::Error {
    match dir.symlink_metadata(name) {
        Ok(meta) if meta.file_type().is_symlink() => {
            io::Error::new(io::ErrorKind::PermissionDenied, format!("{name:?} is a symlink; links are not followed"))
        }
        _ => error,
    }
}

fn open_file(dir: &Dir, name: &str, location: &Path) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).follow(FollowSymlinks::No);
    dir.open_with(name, &options).map_err(|e| io_error(location, refused_link(dir, name, e)))
}

fn io_error(location: &Path, error: io::Error) -> Error {
    let path = location.to_string();
    match error.kind() {
        // A name too long for the file system cannot exist either.
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::InvalidFilename => {
            Error::NotFound { path, source: error.into() }
        }
        io::ErrorKind::AlreadyExists => Error::AlreadyExists { path, source: error.into() },
        io::ErrorKind::PermissionDenied => Error::PermissionDenied { path, source: error.into() },
        // ELOOP: a symlink met with O_NOFOLLOW.
        _ if error.raw_os_error() == Some(40) => Error::PermissionDenied { path, source: error.into() },
        _ => Error::Generic { store: STORE, source: format!("{path}: {error}").into() },
    }
}

fn meta_of(location: Path, metadata: &Metadata) -> ObjectMeta {
    let modified = metadata.modified().map(|t| t.into_std()).unwrap_or(std::time::UNIX_EPOCH);
    let micros = modified.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros();
    ObjectMeta {
        location,
        last_modified: chrono::DateTime::<chrono::Utc>::from(modified),
        size: metadata.len(),
        // `LocalFileSystem`'s scheme (inode, mtime in µs, size), so versions recorded
        // before stay the same.
        e_tag: Some(format!("\"{:x}-{micros:x}-{:x}\"", metadata.ino(), metadata.len())),
        version: None,
    }
}

/// A temp name next to `name`, as `LocalFileSystem` makes them (skipped by listings).
fn temp_name(name: &str) -> String {
    format!("{name}#{}", rand_suffix())
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) % 1_000_000_000
}

/// A file being written, not yet visible under its name. Unnamed (`O_TMPFILE`) where
/// the file system allows, so a process killed mid-write leaves nothing behind;
/// otherwise a `name#N` temp file next to the target, which listings skip.
struct Pending {
    file: std::fs::File,
    temp: Option<String>,
}

impl Pending {
    fn new(dir: &Dir, name: &str, location: &Path) -> Result<Self> {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
        if let Ok(fd) = rustix::fs::openat(dir, ".", flags, Mode::from_raw_mode(0o644)) {
            return Ok(Self { file: std::fs::File::from(fd), temp: None });
        }
        let temp = temp_name(name);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true).follow(FollowSymlinks::No);
        let file = dir.open_with(&temp, &options).map_err(|e| io_error(location, e))?;
        Ok(Self { file: file.into_std(), temp: Some(temp) })
    }

    /// Makes the file visible as `name` (in `dir`, the directory it was made in): a
    /// rename or link replaces a file or a link itself, never what a link points at;
    /// `exclusive` fails if the name exists.
    fn place(self, dir: &Dir, name: &str, exclusive: bool, location: &Path) -> Result<()> {
        let temp = match self.temp {
            Some(temp) => temp,
            None => {
                // Linking the unnamed file under its final name is atomic and leaves no
                // temp name; only an existing name needs a temp link and a rename.
                match link_unnamed(&self.file, dir, name) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !exclusive => {
                        let temp = temp_name(name);
                        link_unnamed(&self.file, dir, &temp).map_err(|e| io_error(location, e))?;
                        temp
                    }
                    Err(e) => return Err(io_error(location, e)),
                }
            }
        };
        let placed = if exclusive {
            dir.hard_link(&temp, dir, name).and_then(|()| dir.remove_file(&temp))
        } else {
            dir.rename(&temp, dir, name)
        };
        placed.map_err(|e| {
            let _ = dir.remove_file(&temp);
            io_error(location, e)
        })
    }

    /// Gives up: nothing stays behind.
    fn discard(self, dir: &Dir) {
        if let Some(temp) = self.temp {
            let _ = dir.remove_file(temp);
        }
    }

    fn metadata(&self) -> io::Result<Metadata> {
        File::from_std(self.file.try_clone()?).metadata()
    }
}

/// `linkat` of an `O_TMPFILE` file through `/proc/self/fd`, which needs no privilege
/// (unlike `AT_EMPTY_PATH`).
fn link_unnamed(file: &std::fs::File, dir: &Dir, name: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let proc = format!("/proc/self/fd/{}", file.as_raw_fd());
    rustix::fs::linkat(rustix::fs::CWD, proc.as_str(), dir, name, rustix::fs::AtFlags::SYMLINK_FOLLOW)
        .map_err(io::Error::from)
}

/// Writes `payload` into a pending file in `dir` and places it at `name` per `mode`.
fn write_into(dir: &Dir, name: &str, payload: &PutPayload, mode: &PutMode, location: &Path) -> Result<PutResult> {
    let mut pending = Pending::new(dir, name, location)?;
    let written =
        payload.iter().try_for_each(|chunk| pending.file.write_all(chunk)).and_then(|()| pending.file.sync_data());
    let meta = match written.and_then(|()| pending.metadata()) {
        Ok(meta) => meta,
        Err(e) => {
            pending.discard(dir);
            return Err(io_error(location, e));
        }
    };
    pending.place(dir, name, matches!(mode, PutMode::Create), location)?;
    Ok(PutResult { e_tag: meta_of(location.clone(), &meta).e_tag, version: None, extensions: Extensions::default() })
}

#[async_trait]
impl ObjectStore for LocalBucket {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        if matches!(opts.mode, PutMode::Update(_)) {
            return Err(Error::NotImplemented {
                operation: "put with PutMode::Update".into(),
                implementer: STORE.into(),
            });
        }
        let location = location.clone();
        self.blocking(move |root| {
            let (dirs, name) = split(&location)?;
            let dir = open_dirs(root, &dirs, true, &location)?;
            write_into(&dir, &name, &payload, &opts.mode, &location)
        })
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let shown = self.root_path.join(location.as_ref());
        let location = location.clone();
        let (dir, name, pending) = self
            .blocking(move |root| {
                let (dirs, name) = split(&location)?;
                let dir = open_dirs(root, &dirs, true, &location)?;
                let pending = Pending::new(&dir, &name, &location)?;
                Ok((dir, name, pending))
            })
            .await?;
        let state = UploadState { dir, name, pending: std::sync::Mutex::new(Some(pending)), location: shown };
        Ok(Box::new(Upload { state: Arc::new(state), next: 0 }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let location = location.clone();
        let root_path = self.root_path.clone();
        self.blocking(move |root| {
            let (dirs, name) = split(&location)?;
            let dir = open_dirs(root, &dirs, false, &location)?;
            let file = open_file(&dir, &name, &location)?;
            let metadata = file.metadata().map_err(|e| io_error(&location, e))?;
            if metadata.is_dir() {
                return Err(io_error(&location, io::Error::new(io::ErrorKind::NotFound, "is a directory")));
            }
            let meta = meta_of(location.clone(), &metadata);
            options.check_preconditions(&meta)?;
            let range = match &options.range {
                Some(range) => range
                    .as_range(meta.size)
                    .map_err(|e| Error::Generic { store: STORE, source: format!("{location}: {e}").into() })?,
                None => 0..meta.size,
            };
            let mut file = file.into_std();
            if options.head {
                return Ok(GetResult {
                    payload: GetResultPayload::Stream(futures::stream::empty().boxed()),
                    meta,
                    range,
                    attributes: Attributes::default(),
                    extensions: Extensions::default(),
                });
            }
            file.seek(SeekFrom::Start(range.start)).map_err(|e| io_error(&location, e))?;
            let path = root_path.join(location.as_ref());
            Ok(GetResult {
                payload: GetResultPayload::File(file, path),
                meta,
                range,
                attributes: Attributes::default(),
                extensions: Extensions::default(),
            })
        })
        .await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        let this = self.clone();
        locations
            .then(move |location| {
                let this = this.clone();
                async move {
                    let location = location?;
                    let deleted = location.clone();
                    this.blocking(move |root| delete(root, &deleted)).await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<ObjectMeta>>>(2);
        let (root, root_path) = (self.root.clone(), self.root_path.clone());
        let prefix = prefix.cloned().unwrap_or_default();
        tokio::task::spawn_blocking(move || walk(&root, &root_path, &prefix, &tx));
        stream_of(rx)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let prefix = prefix.cloned().unwrap_or_default();
        let root_path = self.root_path.clone();
        self.blocking(move |root| {
            let dirs: Vec<String> = prefix.parts().map(|p| p.as_ref().to_string()).collect();
            let mut result =
                ListResult { common_prefixes: Vec::new(), objects: Vec::new(), extensions: Extensions::default() };
            let dir = match open_dirs(root, &dirs, false, &prefix) {
                Ok(dir) => dir,
                Err(Error::NotFound { .. }) => return Ok(result),
                Err(e) => return Err(e),
            };
            let mut links = Skipped::default();
            for entry in dir.entries().map_err(|e| io_error(&prefix, e))? {
                let Ok(entry) = entry else { continue };
                let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
                let Ok(kind) = entry.file_type() else { continue };
                let Ok(location) = Path::parse(format!("{prefix}/{name}").trim_start_matches('/')) else { continue };
                if kind.is_symlink() {
                    links.note(&location);
                } else if kind.is_dir() {
                    result.common_prefixes.push(location);
                } else if kind.is_file() && valid_name(&name) {
                    if let Ok(metadata) = entry.metadata() {
                        result.objects.push(meta_of(location, &metadata));
                    }
                }
            }
            links.report(&root_path);
            result.common_prefixes.sort();
            result.objects.sort_by(|a, b| a.location.cmp(&b.location));
            Ok(result)
        })
        .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let (from, to) = (from.clone(), to.clone());
        self.blocking(move |root| {
            let (dirs, name) = split(&from)?;
            let source = open_file(&open_dirs(root, &dirs, false, &from)?, &name, &from)?;
            let (dirs, name) = split(&to)?;
            let dir = open_dirs(root, &dirs, true, &to)?;
            let mut pending = Pending::new(&dir, &name, &to)?;
            let copied = io::copy(&mut source.into_std(), &mut pending.file).and_then(|_| pending.file.sync_data());
            if let Err(e) = copied {
                pending.discard(&dir);
                return Err(io_error(&to, e));
            }
            pending.place(&dir, &name, matches!(options.mode, CopyMode::Create), &to)
        })
        .await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let (from, to) = (from.clone(), to.clone());
        self.blocking(move |root| {
            let (dirs, from_name) = split(&from)?;
            let from_dir = open_dirs(root, &dirs, false, &from)?;
            let (dirs, to_name) = split(&to)?;
            let to_dir = open_dirs(root, &dirs, true, &to)?;
            if matches!(options.target_mode, RenameTargetMode::Create) {
                to_dir.hard_link(&from_name, &to_dir, &to_name).map_err(|e| io_error(&to, e))?;
                return from_dir.remove_file(&from_name).map_err(|e| io_error(&from, e));
            }
            from_dir.rename(&from_name, &to_dir, &to_name).map_err(|e| io_error(&to, e))
        })
        .await
    }
}

/// Deletes one object (a link itself, never its target), then the directories it
/// leaves empty, up to the root, as `LocalFileSystem` with automatic cleanup does.
fn delete(root: &Dir, location: &Path) -> Result<()> {
    let (dirs, name) = split(location)?;
    let dir = open_dirs(root, &dirs, false, location)?;
    dir.remove_file_or_symlink(&name).map_err(|e| io_error(location, e))?;
    for depth in (1..=dirs.len()).rev() {
        let Ok(parent) = open_dirs(root, &dirs[..depth - 1], false, location) else { break };
        if parent.remove_dir(&dirs[depth - 1]).is_err() {
            break;
        }
    }
    Ok(())
}

/// Walks `prefix` depth first on a blocking thread, in batches through a bounded
/// channel: memory stays bounded on any tree, and links are skipped, not walked.
fn walk(
    root: &Dir,
    root_path: &std::path::Path,
    prefix: &Path,
    tx: &tokio::sync::mpsc::Sender<Result<Vec<ObjectMeta>>>,
) {
    let dirs: Vec<String> = prefix.parts().map(|p| p.as_ref().to_string()).collect();
    let start = match open_dirs(root, &dirs, false, prefix) {
        Ok(dir) => dir,
        Err(Error::NotFound { .. }) => return,
        Err(e) => {
            let _ = tx.blocking_send(Err(e));
            return;
        }
    };
    let mut links = Skipped::default();
    let mut stack = vec![(start, prefix.to_string())];
    let mut batch = Vec::with_capacity(LIST_BATCH);
    while let Some((dir, at)) = stack.pop() {
        let entries = match dir.entries() {
            Ok(entries) => entries,
            Err(e) => {
                let _ = tx.blocking_send(Err(io_error(prefix, e)));
                return;
            }
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            let Ok(kind) = entry.file_type() else { continue };
            let key = if at.is_empty() { name.clone() } else { format!("{at}/{name}") };
            let Ok(location) = Path::parse(&key) else { continue };
            if kind.is_symlink() {
                links.note(&location);
            } else if kind.is_dir() {
                if let Ok(sub) = dir.open_dir_nofollow(&name) {
                    stack.push((sub, key));
                }
            } else if kind.is_file() && valid_name(&name) {
                // Gone between the listing and the stat: not an object any more.
                if let Ok(metadata) = entry.metadata() {
                    batch.push(meta_of(location, &metadata));
                }
                if batch.len() == LIST_BATCH && tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
                    return;
                }
            }
        }
    }
    links.report(root_path);
    if !batch.is_empty() {
        let _ = tx.blocking_send(Ok(batch));
    }
}

fn stream_of(rx: tokio::sync::mpsc::Receiver<Result<Vec<ObjectMeta>>>) -> BoxStream<'static, Result<ObjectMeta>> {
    let mut rx = rx;
    // A closed channel keeps answering `None`, so the stream may be polled after its end.
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .flat_map(|batch| match batch {
            Ok(metas) => futures::stream::iter(metas.into_iter().map(Ok)).boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .fuse()
        .boxed()
}

/// Symlinks a listing met: reported once per listing, not once per link.
#[derive(Default)]
struct Skipped {
    count: usize,
    first: Option<String>,
}

impl Skipped {
    fn note(&mut self, location: &Path) {
        self.count += 1;
        self.first.get_or_insert_with(|| location.to_string());
    }

    fn report(&self, root: &std::path::Path) {
        if let Some(first) = &self.first {
            tracing::warn!(bucket = %root.display(), links = self.count, first = %first,
                "symlinks in a local bucket are not followed; skipped");
        }
    }
}

/// A multipart upload: parts written at their offsets into one pending file, placed on
/// completion.
struct Upload {
    state: Arc<UploadState>,
    next: u64,
}

struct UploadState {
    dir: Dir,
    name: String,
    /// Taken by `complete` or `abort`.
    pending: std::sync::Mutex<Option<Pending>>,
    location: PathBuf,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upload({})", self.state.location.display())
    }
}

#[async_trait]
impl MultipartUpload for Upload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let offset = self.next;
        self.next += data.content_length() as u64;
        let state = self.state.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let file = state.file()?;
                let mut at = offset;
                for chunk in data.iter() {
                    file.write_all_at(chunk, at).map_err(|e| state.error(e))?;
                    at += chunk.len() as u64;
                }
                Ok(())
            })
            .await?
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let pending = state.take()?;
            let written = pending.file.sync_data().and_then(|()| pending.metadata());
            let metadata = match written {
                Ok(metadata) => metadata,
                Err(e) => {
                    pending.discard(&state.dir);
                    return Err(state.error(e));
                }
            };
            let location = Path::from(state.name.as_str());
            pending.place(&state.dir, &state.name, false, &location)?;
            let e_tag = meta_of(Path::default(), &metadata).e_tag;
            Ok(PutResult { e_tag, version: None, extensions: Extensions::default() })
        })
        .await?
    }

    async fn abort(&mut self) -> Result<()> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            state.take()?.discard(&state.dir);
            Ok(())
        })
        .await?
    }
}

impl UploadState {
    fn file(&self) -> Result<std::fs::File> {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let pending = pending.as_ref().ok_or_else(|| self.error(io::Error::other("upload already finished")))?;
        pending.file.try_clone().map_err(|e| self.error(e))
    }

    fn take(&self) -> Result<Pending> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.take().ok_or_else(|| self.error(io::Error::other("upload already finished")))
    }

    fn error(&self, error: io::Error) -> Error {
        Error::Generic { store: STORE, source: format!("{}: {error}", self.location.display()).into() }
    }
}

#[cfg(test)]
mod tests {
    use object_store::{ObjectStoreExt, WriteMultipart};

    use super::*;

    /// A bucket with a link to a directory outside, a link to a file outside and a link
    /// inside, next to real files.
    fn planted() -> (tempfile::TempDir, tempfile::TempDir, LocalBucket) {
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(outside.path().join("keep")).unwrap();
        for name in ["a.txt", "b.txt", "c.txt"] {
            std::fs::write(outside.path().join("keep").join(name), "outside").unwrap();
        }
        let bucket = tempfile::tempdir().unwrap();
        let root = bucket.path();
        std::fs::create_dir_all(root.join("processed/real")).unwrap();
        std::fs::write(root.join("processed/real/x.jpg"), "inside").unwrap();
        std::fs::write(root.join("processed/top.jpg"), "inside").unwrap();
        std::os::unix::fs::symlink(outside.path().join("keep"), root.join("processed/cache")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("keep/a.txt"), root.join("processed/link.jpg")).unwrap();
        std::os::unix::fs::symlink(root.join("processed/real"), root.join("processed/alias")).unwrap();
        let store = LocalBucket::open(root).unwrap();
        (outside, bucket, store)
    }

    fn refused(result: Result<impl std::fmt::Debug>) {
        match result {
            Err(Error::PermissionDenied { .. }) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn listings_skip_links_and_never_walk_out() {
        let (_outside, _bucket, store) = planted();
        let mut listed: Vec<String> =
            store.list(Some(&Path::from("processed"))).map(|m| m.unwrap().location.to_string()).collect().await;
        listed.sort();
        assert_eq!(listed, ["processed/real/x.jpg", "processed/top.jpg"]);
        let level = store.list_with_delimiter(Some(&Path::from("processed"))).await.unwrap();
        let dirs: Vec<String> = level.common_prefixes.iter().map(|p| p.to_string()).collect();
        let files: Vec<String> = level.objects.iter().map(|m| m.location.to_string()).collect();
        assert_eq!((dirs, files), (vec!["processed/real".to_string()], vec!["processed/top.jpg".to_string()]));
    }

    #[tokio::test]
    async fn reads_writes_and_deletes_through_links_are_refused() {
        let (outside, _bucket, store) = planted();
        refused(store.get(&Path::from("processed/cache/a.txt")).await);
        refused(store.get(&Path::from("processed/link.jpg")).await);
        refused(store.head(&Path::from("processed/alias/x.jpg")).await);
        refused(store.put(&Path::from("processed/cache/new.jpg"), "x".into()).await);
        refused(store.delete(&Path::from("processed/cache/a.txt")).await);
        refused(store.copy(&Path::from("processed/link.jpg"), &Path::from("copied.jpg")).await);
        let mut kept: Vec<_> =
            std::fs::read_dir(outside.path().join("keep")).unwrap().map(|e| e.unwrap().file_name()).collect();
        kept.sort();
        assert_eq!(kept, ["a.txt", "b.txt", "c.txt"], "nothing outside was touched or added");
        // Writing over a link replaces the link, never what it points at.
        store.put(&Path::from("processed/link.jpg"), "new".into()).await.unwrap();
        assert_eq!(std::fs::read_to_string(outside.path().join("keep/a.txt")).unwrap(), "outside");
    }

    #[tokio::test]
    async fn objects_round_trip_with_local_file_system_etags() {
        let (_outside, bucket, store) = planted();
        let put = store.put(&Path::from("out/deep/o.bin"), "0123456789".into()).await.unwrap();
        let got = store.get(&Path::from("out/deep/o.bin")).await.unwrap();
        assert_eq!(got.meta.e_tag, put.e_tag);
        assert_eq!(got.bytes().await.unwrap(), "0123456789");
        let range = store.get_range(&Path::from("out/deep/o.bin"), 2..5).await.unwrap();
        assert_eq!(range, "234");
        let reference = object_store::local::LocalFileSystem::new_with_prefix(bucket.path()).unwrap();
        let theirs = reference.head(&Path::from("out/deep/o.bin")).await.unwrap();
        assert_eq!(theirs.e_tag, put.e_tag, "versions recorded with LocalFileSystem stay valid");

        let mut upload = WriteMultipart::new_with_chunk_size(
            store.put_multipart(&Path::from("out/big.bin")).await.unwrap(),
            1 << 20,
        );
        for _ in 0..5 {
            upload.write(&[7u8; 700_000]);
        }
        upload.finish().await.unwrap();
        let big = store.get(&Path::from("out/big.bin")).await.unwrap().bytes().await.unwrap();
        assert!(big.len() == 3_500_000 && big.iter().all(|b| *b == 7));

        store.copy(&Path::from("out/big.bin"), &Path::from("out/copy.bin")).await.unwrap();
        let exists = store.copy_if_not_exists(&Path::from("out/big.bin"), &Path::from("out/copy.bin")).await;
        assert!(matches!(exists, Err(Error::AlreadyExists { .. })), "{exists:?}");
        let names: Vec<String> = std::fs::read_dir(bucket.path().join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains('#')), "temp files left: {names:?}");
        store.delete(&Path::from("out/deep/o.bin")).await.unwrap();
        assert!(!bucket.path().join("out/deep").exists(), "emptied directories are removed");
        assert!(matches!(store.head(&Path::from("out/deep/o.bin")).await, Err(Error::NotFound { .. })));
    }

    /// The race a check-then-write loses: `out` flips between a real directory and a
    /// link to outside while outputs are written. Not one may land outside.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn swapping_a_directory_for_a_link_mid_burst_lands_nothing_outside() {
        let outside = tempfile::tempdir().unwrap();
        let bucket = tempfile::tempdir().unwrap();
        let store = LocalBucket::open(bucket.path()).unwrap();
        let (out, stop) = (bucket.path().join("out"), Arc::new(std::sync::atomic::AtomicBool::new(false)));
        let swapper = {
            let (out, target, stop) = (out.clone(), outside.path().to_path_buf(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = std::fs::create_dir(&out);
                    std::thread::yield_now();
                    let aside = out.with_extension("aside");
                    let _ = std::fs::remove_dir_all(&aside);
                    let _ = std::fs::rename(&out, &aside);
                    let _ = std::os::unix::fs::symlink(&target, &out);
                    std::thread::yield_now();
                    let _ = std::fs::remove_file(&out);
                }
            })
        };
        for i in 0..300 {
            let _ = store.put(&Path::from(format!("out/{i}.jpg")), "x".into()).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        let landed = std::fs::read_dir(outside.path()).unwrap().count();
        assert_eq!(landed, 0, "outputs written outside the bucket");
    }
}
