//! Group commit: every ledger call runs on one thread that owns the connection, and
//! the calls that queue up while a transaction commits share the next one.
//!
//! An event makes a few small writes (run started, object done, run finished); each
//! in its own transaction, plus a hop through tokio's blocking pool per call, kept a
//! backfill of small objects near 1,600 objects/s. Batched, the cost of a commit is
//! paid once per batch, however many events are in flight. Each call still runs in
//! its own savepoint, so one call's error undoes only that call, and a call's answer
//! is sent only after the transaction holding it committed: nothing is acknowledged
//! on the strength of a write that is not in the file yet.

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

/// Calls waiting for the writer; callers await their answers, so at most one per
/// caller is ever queued.
const QUEUE: usize = 1024;
/// Most calls in one transaction: a bound on how long the first of them waits.
const BATCH: usize = 256;

/// Tells a caller how its call ended, once the transaction holding it ended: `None`
/// when it committed, the commit's error otherwise.
type Reply = Box<dyn FnOnce(Option<&rusqlite::Error>) + Send>;
/// A call: runs against the connection (or, when its transaction could not even
/// start, fails with that error); says whether it succeeded (its savepoint is kept)
/// and how to answer its caller.
type Job = Box<dyn FnOnce(Result<&Connection, &rusqlite::Error>) -> (bool, Reply) + Send>;

/// The sending half, held by every clone of a ledger; the thread ends (and closes the
/// connection) when the last one is dropped.
#[derive(Clone)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    pub(super) fn start(conn: Connection) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel(QUEUE);
        std::thread::Builder::new().name("weir-ledger".into()).spawn(move || run(conn, queue))?;
        Ok(Self { jobs })
    }

    /// Runs `work` in the next transaction; answers once that committed. `None` when
    /// the writer thread is gone.
    pub(super) async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Option<rusqlite::Result<T>> {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = match conn {
                Ok(conn) => work(conn),
                Err(e) => Err(copy(e)),
            };
            let ok = result.is_ok();
            let reply: Reply = Box::new(move |commit| {
                let result = match (result, commit) {
                    (Ok(_), Some(failed)) => Err(copy(failed)),
                    (result, _) => result,
                };
                let _ = answer.send(result);
            });
            (ok, reply)
        });
        self.jobs.send(job).await.ok()?;
        answered.await.ok()
    }
}

fn run(conn: Connection, mut queue: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = execute(&conn, "BEGIN IMMEDIATE") {
            // A locked or unwritable file: every call of the batch fails with it.
            batch.drain(..).for_each(|job| job(Err(&e)).1(None));
            continue;
        }
        let replies: Vec<Reply> = batch.drain(..).map(|job| in_savepoint(&conn, job)).collect();
        match execute(&conn, "COMMIT") {
            Ok(()) => replies.into_iter().for_each(|reply| reply(None)),
            Err(e) => {
                let _ = execute(&conn, "ROLLBACK");
                replies.into_iter().for_each(|reply| reply(Some(&e)));
            }
        }
    }
}

fn in_savepoint(conn: &Connection, job: Job) -> Reply {
    if let Err(e) = execute(conn, "SAVEPOINT call") {
        return job(Err(&e)).1;
    }
    // A call that panics fails alone (its caller sees the ledger call end without an
    // answer); the thread, and every other call, goes on.
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Ok(conn))));
    let (ok, reply) = ran.unwrap_or_else(|_| (false, Box::new(|_: Option<&rusqlite::Error>| {}) as Reply));
    if !ok {
        let _ = execute(conn, "ROLLBACK TO call");
    }
    let _ = execute(conn, "RELEASE call");
    reply
}

/// A statement without parameters, parsed once per connection: these run a few
/// times per call, and parsing them each time showed in profiles.
fn execute(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// rusqlite's errors are not `Clone`; every call of a failed commit gets its own copy.
fn copy(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => rusqlite::Error::SqliteFailure(*code, message.clone()),
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(format!("commit failed: {other}")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(dir: &std::path::Path) -> Connection {
        let conn = Connection::open(dir.join("t.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER PRIMARY KEY)").unwrap();
        conn
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_call_undoes_only_its_own_writes_and_answers_come_after_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Writer::start(table(dir.path())).unwrap();
        let path = dir.path().join("t.db");
        // Many calls at once, so that they share transactions; every third writes its
        // row and then fails on a duplicate.
        let calls = (0..300i64).map(|i| {
            let (writer, path) = (writer.clone(), path.clone());
            async move {
                let answer = writer
                    .call(move |c| {
                        c.execute("INSERT INTO t VALUES (?1)", [i])?;
                        if i % 3 == 0 {
                            c.execute("INSERT INTO t VALUES (?1)", [i])?;
                        }
                        Ok(i)
                    })
                    .await
                    .expect("the writer runs");
                // Another connection already sees a successful call's row: it was
                // committed before the answer came.
                let other = Connection::open(&path).unwrap();
                let seen: i64 = other.query_row("SELECT COUNT(*) FROM t WHERE v = ?1", [i], |r| r.get(0)).unwrap();
                (i, answer.is_ok(), seen)
            }
        });
        for (i, ok, seen) in futures::future::join_all(calls).await {
            assert_eq!(ok, i % 3 != 0, "call {i}");
            assert_eq!(seen, if ok { 1 } else { 0 }, "call {i}'s row");
        }
        let rows = writer.call(|c| c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0))).await;
        assert_eq!(rows.unwrap().unwrap(), 200);
    }

    #[tokio::test]
    async fn a_call_that_panics_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Writer::start(table(dir.path())).unwrap();
        let panicked = writer
            .call(|c| -> rusqlite::Result<()> {
                c.execute("INSERT INTO t VALUES (1)", [])?;
                panic!("a bug in a ledger call")
            })
            .await;
        assert!(panicked.is_none());
        let rows = writer.call(|c| c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0))).await;
        assert_eq!(rows.unwrap().unwrap(), 0, "the panicked call's write was undone; the writer still answers");
    }
}
