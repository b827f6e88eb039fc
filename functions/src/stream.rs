//! Streaming between object stores and a synchronous stage (CSV parsing, Parquet
//! encoding, decompression, archive reading).
//!
//! The stage runs on a blocking thread and sees plain `std::io` types: a [`ByteReader`]
//! over the input and [`Outputs`] to open objects or emit items. Async tasks download
//! and upload on the other side. Both directions are bounded channels of about a MiB
//! per message, so memory is a few chunks each way however large the input is and
//! however much it expands (a gzip bomb fills a channel and waits, it does not fill
//! memory). When the invocation is dropped (timed out, abandoned), the channels close
//! and the stage's next read or write fails, so the thread stops too.

use std::io::{self, Read, Write};

use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, WriteMultipart};
use tokio::sync::mpsc;

use crate::object::MULTIPART_THRESHOLD;
use crate::{Bucket, Emitter, FunctionError, Item};

/// Size of the messages between the two sides.
pub const CHUNK: usize = 1 << 20;
/// Messages in flight each way.
const DEPTH: usize = 4;

/// What a stage reads.
pub enum Input {
    /// Bytes already in memory (an item's payload, `weir invoke`).
    Bytes(Bytes),
    /// An object, read as a stream.
    Object { bucket: Bucket, key: String },
}

impl Input {
    /// The item's bytes, or the object it stands for when it carries none (a step that
    /// reads its event's object itself, see [`crate::Function::reads_source`]).
    pub fn of(item: &Item, ctx: &crate::Context) -> Result<Self, FunctionError> {
        match &item.payload {
            crate::Payload::Bytes(bytes) => Ok(Input::Bytes(bytes.clone())),
            crate::Payload::Empty => {
                let (bucket, key) = crate::object::source_object(item, ctx)?;
                Ok(Input::Object { bucket, key })
            }
            other => Err(FunctionError::permanent(format!(
                "needs bytes or an object, got a {} payload for {}",
                other.kind(),
                item.describe()
            ))),
        }
    }
}

/// A store failure carried through `std::io` to the stage and back, so its
/// classification (an outage waits, a missing object does not) survives the trip.
#[derive(Debug)]
struct Carried(FunctionError);

impl std::fmt::Display for Carried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.message())
    }
}

impl std::error::Error for Carried {}

/// Turns an I/O error met by a stage back into a function error: a store failure keeps
/// its class; anything else is the input's fault, named by `what`.
pub fn io_error(what: &str, err: io::Error) -> FunctionError {
    if err.get_ref().is_some_and(|inner| inner.is::<Carried>()) {
        let inner = err.into_inner().expect("checked").downcast::<Carried>().expect("checked");
        return inner.0;
    }
    if err.kind() == io::ErrorKind::BrokenPipe {
        return FunctionError::retryable(format!("{what}: the invocation stopped"));
    }
    FunctionError::permanent(format!("{what}: {err}"))
}

/// The input side of a stage: `Read` over the chunks a download task sends.
pub struct ByteReader {
    rx: mpsc::Receiver<Result<Bytes, FunctionError>>,
    current: Bytes,
    _pump: AbortOnDrop,
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

impl ByteReader {
    /// Starts reading `input`: an object is downloaded by a task, in chunks of about
    /// [`CHUNK`], at most a few ahead of the stage.
    pub fn start(input: Input) -> Self {
        let (tx, rx) = mpsc::channel(DEPTH);
        let pump = match input {
            Input::Bytes(bytes) => {
                let _ = tx.try_send(Ok(bytes));
                None
            }
            Input::Object { bucket, key } => Some(tokio::spawn(async move {
                if let Err(e) = pump(&bucket, &key, &tx).await {
                    let _ = tx.send(Err(e)).await;
                }
            })),
        };
        Self { rx, current: Bytes::new(), _pump: AbortOnDrop(pump) }
    }

    /// A reader over bytes in memory, for stages run outside an invocation (tests).
    pub fn from_bytes(bytes: Bytes) -> Self {
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(Ok(bytes));
        Self { rx, current: Bytes::new(), _pump: AbortOnDrop(None) }
    }
}

async fn pump(
    bucket: &Bucket,
    key: &str,
    tx: &mpsc::Sender<Result<Bytes, FunctionError>>,
) -> Result<(), FunctionError> {
    let context = || format!("reading {key} from {}", bucket.url);
    let location = bucket.path(key)?;
    let result = bucket.store.get(&location).await.map_err(|e| FunctionError::from_store(context(), e))?;
    let mut stream = result.into_stream();
    let mut pending = BytesMut::new();
    while let Some(chunk) = stream.try_next().await.map_err(|e| FunctionError::from_store(context(), e))? {
        // Local files arrive in small pieces: coalesce, so the stage wakes per MiB.
        if pending.is_empty() && chunk.len() >= CHUNK {
            if tx.send(Ok(chunk)).await.is_err() {
                return Ok(());
            }
            continue;
        }
        pending.extend_from_slice(&chunk);
        if pending.len() >= CHUNK && tx.send(Ok(pending.split().freeze())).await.is_err() {
            return Ok(());
        }
    }
    if !pending.is_empty() {
        let _ = tx.send(Ok(pending.freeze())).await;
    }
    Ok(())
}

impl Read for ByteReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => return Err(io::Error::other(Carried(e))),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

enum Message {
    Open { id: usize, key: String },
    Data { id: usize, bytes: Bytes },
    Close { id: usize },
    Emit(Item),
}

/// The output side of a stage: objects it writes and items it passes on. Clones share
/// the same outputs.
#[derive(Clone)]
pub struct Outputs {
    tx: mpsc::Sender<Message>,
    next_id: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the invocation stopped taking outputs")
}

impl Outputs {
    /// Starts writing an object under `key` in the stage's output bucket.
    pub fn open(&mut self, key: String) -> io::Result<ObjectWriter> {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tx.blocking_send(Message::Open { id, key }).map_err(|_| closed())?;
        Ok(ObjectWriter { id, tx: self.tx.clone(), buffer: Vec::new(), written: 0 })
    }

    /// Passes an item to the next steps (fan-out), waiting while they are busy.
    pub fn emit(&self, item: Item) -> io::Result<()> {
        self.tx.blocking_send(Message::Emit(item)).map_err(|_| closed())
    }
}

/// One object being written by a stage. Dropping it without [`ObjectWriter::finish`]
/// abandons the object: nothing is written under its key.
pub struct ObjectWriter {
    id: usize,
    tx: mpsc::Sender<Message>,
    buffer: Vec<u8>,
    written: u64,
}

impl ObjectWriter {
    fn send(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            let bytes = Bytes::from(std::mem::take(&mut self.buffer));
            self.tx.blocking_send(Message::Data { id: self.id, bytes }).map_err(|_| closed())?;
        }
        Ok(())
    }

    /// Completes the object; returns its size.
    pub fn finish(mut self) -> io::Result<u64> {
        self.send()?;
        self.tx.blocking_send(Message::Close { id: self.id }).map_err(|_| closed())?;
        Ok(self.written)
    }
}

impl Write for ObjectWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        self.written += buf.len() as u64;
        if self.buffer.len() >= CHUNK {
            self.send()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An object a stage wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub key: String,
    pub size: u64,
}

/// Where a stage's outputs go.
pub struct Sink<'a> {
    /// The bucket its objects are written to (None: the stage opens no objects).
    pub bucket: Option<Bucket>,
    /// Where emitted items go; None collects them into the result.
    pub emitter: Option<&'a Emitter>,
}

/// What a stage produced besides its own result.
pub struct Produced {
    /// The objects written, in the order they were completed.
    pub written: Vec<Written>,
    /// Items emitted, when the sink had no emitter.
    pub items: Vec<Item>,
}

/// Runs `stage` on a blocking thread over `input`, writing its objects to
/// `sink.bucket`. The stage's error wins over the uploader's, except that a failed
/// upload (a store outage) is reported as itself, not as the broken pipe it causes.
pub async fn run<T, F>(input: Input, sink: Sink<'_>, stage: F) -> Result<(T, Produced), FunctionError>
where
    T: Send + 'static,
    F: FnOnce(ByteReader, Outputs) -> Result<T, FunctionError> + Send + 'static,
{
    let reader = ByteReader::start(input);
    let (tx, rx) = mpsc::channel(DEPTH);
    let outputs = Outputs { tx, next_id: Default::default() };
    let work = tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stage(reader, outputs)))
            .unwrap_or_else(|_| Err(FunctionError::permanent("the stage panicked")))
    });
    let uploaded = drive(rx, sink).await;
    let staged = work.await.map_err(|e| FunctionError::permanent(format!("the stage failed: {e}")))?;
    match (staged, uploaded) {
        (Ok(value), Ok(produced)) => Ok((value, produced)),
        (Err(stage_error), Err(upload_error)) if stage_error.kind == crate::ErrorKind::Retryable => Err(upload_error),
        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
    }
}

enum Upload {
    Buffered { key: String, parts: Vec<Bytes>, size: usize },
    Multipart { key: String, writer: WriteMultipart, size: usize },
}

async fn drive(mut rx: mpsc::Receiver<Message>, sink: Sink<'_>) -> Result<Produced, FunctionError> {
    let mut open: std::collections::HashMap<usize, Upload> = Default::default();
    let mut produced = Produced { written: Vec::new(), items: Vec::new() };
    let outcome: Result<(), FunctionError> = async {
        while let Some(message) = rx.recv().await {
            match message {
                Message::Emit(item) => match sink.emitter {
                    Some(emitter) => emitter.emit(item).await?,
                    None => produced.items.push(item),
                },
                Message::Open { id, key } => {
                    let bucket = output_bucket(&sink)?;
                    bucket.output_path(&key)?;
                    open.insert(id, Upload::Buffered { key, parts: Vec::new(), size: 0 });
                }
                Message::Data { id, bytes } => {
                    let bucket = output_bucket(&sink)?;
                    let upload = open.remove(&id).ok_or_else(|| FunctionError::permanent("data for no object"))?;
                    open.insert(id, append(bucket, upload, bytes).await?);
                }
                Message::Close { id } => {
                    let bucket = output_bucket(&sink)?;
                    let upload = open.remove(&id).ok_or_else(|| FunctionError::permanent("closing no object"))?;
                    produced.written.push(complete(bucket, upload).await?);
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        rx.close();
        for (_, upload) in open {
            if let Upload::Multipart { writer, .. } = upload {
                let _ = writer.abort().await;
            }
        }
        return Err(e);
    }
    // Objects a stage left open when it stopped (its error is reported) are abandoned.
    for (_, upload) in open {
        if let Upload::Multipart { writer, .. } = upload {
            let _ = writer.abort().await;
        }
    }
    Ok(produced)
}

fn output_bucket<'a>(sink: &'a Sink<'_>) -> Result<&'a Bucket, FunctionError> {
    sink.bucket.as_ref().ok_or_else(|| FunctionError::permanent("this stage has no output bucket"))
}

async fn append(bucket: &Bucket, upload: Upload, bytes: Bytes) -> Result<Upload, FunctionError> {
    match upload {
        Upload::Buffered { key, mut parts, size } if size + bytes.len() <= MULTIPART_THRESHOLD => {
            let size = size + bytes.len();
            parts.push(bytes);
            Ok(Upload::Buffered { key, parts, size })
        }
        Upload::Buffered { key, parts, size } => {
            let context = || format!("writing {key} to {}", bucket.url);
            let path = bucket.output_path(&key)?;
            let multipart =
                bucket.store.put_multipart(&path).await.map_err(|e| FunctionError::from_store(context(), e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(multipart, MULTIPART_THRESHOLD);
            for part in parts {
                writer.write(&part);
            }
            let upload = Upload::Multipart { key, writer, size };
            Box::pin(append(bucket, upload, bytes)).await
        }
        Upload::Multipart { key, mut writer, size } => {
            let context = || format!("writing {key} to {}", bucket.url);
            writer.wait_for_capacity(2).await.map_err(|e| FunctionError::from_store(context(), e))?;
            writer.write(&bytes);
            Ok(Upload::Multipart { key, writer, size: size + bytes.len() })
        }
    }
}

async fn complete(bucket: &Bucket, upload: Upload) -> Result<Written, FunctionError> {
    match upload {
        Upload::Buffered { key, parts, size } => {
            let path = bucket.output_path(&key)?;
            let mut all = BytesMut::with_capacity(size);
            for part in parts {
                all.extend_from_slice(&part);
            }
            crate::object::write_object(bucket, &path, all.freeze(), || format!("writing {key} to {}", bucket.url))
                .await?;
            Ok(Written { key, size: size as u64 })
        }
        Upload::Multipart { key, writer, size } => {
            writer
                .finish()
                .await
                .map_err(|e| FunctionError::from_store(format!("writing {key} to {}", bucket.url), e))?;
            Ok(Written { key, size: size as u64 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Stores;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stage_streams_an_object_through_to_objects() {
        let bucket = Stores::new().resolve("memory://stream-through").unwrap();
        let big: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        bucket.store.put(&bucket.path("in.bin").unwrap(), big.clone().into()).await.unwrap();
        let input = Input::Object { bucket: bucket.clone(), key: "in.bin".into() };
        let sink = Sink { bucket: Some(bucket.clone()), emitter: None };
        let (copied, produced) = run(input, sink, |mut reader, mut outputs| {
            let mut out = outputs.open("out/copy.bin".into()).map_err(|e| io_error("open", e))?;
            let n = std::io::copy(&mut reader, &mut out).map_err(|e| io_error("copy", e))?;
            out.finish().map_err(|e| io_error("finish", e))?;
            Ok(n)
        })
        .await
        .unwrap();
        assert_eq!(copied as usize, big.len());
        assert_eq!(produced.written, vec![Written { key: "out/copy.bin".into(), size: big.len() as u64 }]);
        let back = bucket.store.get(&bucket.path("out/copy.bin").unwrap()).await.unwrap().bytes().await.unwrap();
        assert_eq!(back.as_ref(), big.as_slice());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_object_keeps_its_class_through_the_stage() {
        let bucket = Stores::new().resolve("memory://stream-missing").unwrap();
        let input = Input::Object { bucket: bucket.clone(), key: "nope.csv".into() };
        let err = run(input, Sink { bucket: None, emitter: None }, |mut reader, _| {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).map_err(|e| io_error("nope.csv", e))?;
            Ok(())
        })
        .await
        .err()
        .unwrap();
        assert!(!err.is_retryable(), "{err:?}");
        assert!(err.message().contains("nope.csv"), "{}", err.message());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_object_is_not_written() {
        let bucket = Stores::new().resolve("memory://stream-abandoned").unwrap();
        let sink = Sink { bucket: Some(bucket.clone()), emitter: None };
        let err = run(Input::Bytes(Bytes::from_static(b"x")), sink, |_, mut outputs| {
            let mut out = outputs.open("half.bin".into()).map_err(|e| io_error("open", e))?;
            out.write_all(&vec![7u8; 2 * MULTIPART_THRESHOLD]).map_err(|e| io_error("write", e))?;
            Err::<(), _>(FunctionError::permanent("bad row"))
        })
        .await
        .err()
        .unwrap();
        assert_eq!(err.message(), "bad row");
        assert!(bucket.store.head(&bucket.path("half.bin").unwrap()).await.is_err());
    }
}
