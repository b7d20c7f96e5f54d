//! Group commit for SQLite: concurrent write transactions share one
//! connection and one durable COMMIT (one fsync) per batch.
//!
//! SQLite has one writer at a time. Left to itself, concurrent writers on
//! separate connections fail to get the lock and sleep in SQLite's busy
//! handler (1, 2, 5 … 100 ms steps), and every transaction pays its own fsync.
//! Here one dedicated thread owns the write connection, and callers send it
//! their transaction bodies:
//!
//! 1. The writer takes the first queued body and opens a batch with
//!    `BEGIN IMMEDIATE`.
//! 2. It runs each body inside its own `SAVEPOINT`. A body that fails is
//!    rolled back to its savepoint alone and its caller gets the error at
//!    once; the others in the batch are unaffected.
//! 3. After each body it takes the next one already queued, if any, so
//!    bodies that arrive while the batch runs (or while the previous COMMIT
//!    was syncing) join it, up to [`MAX_BATCH`]. When the queue is empty it
//!    commits once and answers every caller of the batch.
//!
//! Bodies run back to back on one thread: the connection never changes
//! hands, and each caller is woken exactly once, with its answer. That is
//! the point of the design; with callers taking turns on a shared
//! connection, every body paid a lock hand-off during which the serial
//! section stood idle, and that hand-off latency capped enrollment
//! throughput.
//!
//! Invariant: no caller sees `Ok` before the COMMIT that made its changes
//! durable (`synchronous=FULL`) has returned; when a COMMIT fails, every body
//! in the batch gets the error, refused ones included (what refused them may
//! have been rolled back too), and none of their changes exist.
//! Bodies see the uncommitted changes of earlier bodies in the same batch,
//! exactly as if the transactions had run one after another. Bodies must not
//! write through the [`super::Store`] themselves (that would wait on this
//! very thread); they get the connection instead.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use diesel::RunQueryDsl as _;

use super::connection::DbConnection;
use super::statements::{
    BeginImmediate, Commit, ReleaseSavepoint, Rollback, RollbackToSavepoint, Savepoint,
};
use super::StoreError;

/// Longest batch: bounds the latency of the first writer under a steady
/// stream of new writers.
pub(super) const MAX_BATCH: usize = 64;

/// The caller's side of the writer thread.
pub(super) struct GroupWriter {
    /// `None` only while dropping: closing the queue stops the thread.
    jobs: Option<Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
    counts: Arc<Counts>,
}

/// What the writer has done so far, for `/metrics`.
#[derive(Debug, Default)]
struct Counts {
    /// Batches ended (committed or rolled back).
    batches: AtomicU64,
    /// Transaction bodies run.
    writes: AtomicU64,
}

/// Totals since the writer started: `writes / batches` is the mean batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupCommitCounts {
    /// Batches ended (each one COMMIT, or one ROLLBACK after a broken body).
    pub batches: u64,
    /// Write transactions run in those batches.
    pub writes: u64,
}

impl GroupWriter {
    /// Starts the writer thread, which owns `connection` from now on.
    pub(super) fn new(connection: DbConnection) -> Result<Self, StoreError> {
        let (jobs, queue) = mpsc::channel::<Box<dyn Job>>();
        let counts = Arc::new(Counts::default());
        let writer_counts = counts.clone();
        let thread = std::thread::Builder::new()
            .name("certmint-db-writer".into())
            .spawn(move || run_writer(connection, queue, &writer_counts))
            .map_err(|error| StoreError::unavailable("start the database writer thread", error))?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
            counts,
        })
    }

    /// Batches and writes so far.
    pub(super) fn counts(&self) -> GroupCommitCounts {
        GroupCommitCounts {
            batches: self.counts.batches.load(Ordering::Relaxed),
            writes: self.counts.writes.load(Ordering::Relaxed),
        }
    }

    /// Runs `body` as one transaction of a group-committed batch and waits
    /// for the batch's COMMIT. A panic in `body` rolls its batch back and
    /// continues in the caller.
    pub(super) fn write<T, F>(&self, body: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Box::new(BodyJob { body, reply });
        self.jobs
            .as_ref()
            .ok_or_else(writer_gone)?
            .send(job)
            .map_err(|_| writer_gone())?;
        match answer.recv() {
            Ok(Reply::Done(result)) => result,
            Ok(Reply::Panicked(payload)) => std::panic::resume_unwind(payload),
            Err(_) => Err(writer_gone()),
        }
    }
}

impl Drop for GroupWriter {
    fn drop(&mut self) {
        // Closing the queue ends the writer's loop once it has drained it;
        // joining makes sure the connection is closed when the store is.
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the caller receives.
enum Reply<T> {
    Done(Result<T, StoreError>),
    Panicked(Box<dyn Any + Send>),
}

/// One caller's body on its way through the writer.
trait Job: Send {
    /// Runs the body in a savepoint; see [`Ran`].
    fn run(self: Box<Self>, connection: &mut DbConnection) -> Ran;
    /// Answers the caller with `error` without running the body.
    fn refuse(self: Box<Self>, error: StoreError);
}

/// How a body ended, as far as its batch is concerned.
enum Ran {
    /// The body succeeded and its savepoint was released: the caller is
    /// answered with this once the batch's COMMIT has returned.
    Succeeded(Answer),
    /// The body failed and was rolled back to its savepoint: its caller is
    /// answered with its error once the batch's COMMIT has returned, or
    /// with the COMMIT's error if that failed (what the body saw, e.g. a
    /// token use consumed by an earlier body, was then rolled back too, so
    /// its refusal would be wrong; "unavailable, retry" is right).
    Failed(Answer),
    /// The savepoint statements failed or the body panicked: the
    /// transaction is unusable and the whole batch must be rolled back. The
    /// caller has its error (or its panic) already.
    BrokeBatch,
}

/// Delivers a successful body's value, or the batch's COMMIT error.
type Answer = Box<dyn FnOnce(Result<(), &str>) + Send>;

struct BodyJob<F, T> {
    body: F,
    reply: SyncSender<Reply<T>>,
}

impl<F, T> Job for BodyJob<F, T>
where
    T: Send + 'static,
    F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
{
    fn run(self: Box<Self>, connection: &mut DbConnection) -> Ran {
        let BodyJob { body, reply } = *self;
        // A caller that went away (it cannot: it waits) would only mean an
        // answer nobody reads, so send errors are ignored throughout.
        let answer = |reply: &SyncSender<Reply<T>>, result| {
            let _ = reply.send(Reply::Done(result));
        };
        if let Err(error) = Savepoint.execute(connection) {
            answer(&reply, Err(StoreError::query(error)));
            return Ran::BrokeBatch;
        }
        // After a panic the connection is only used again after a full
        // ROLLBACK, so observing it mid-body cannot leak a broken invariant.
        let result =
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&mut *connection)))
            {
                Ok(result) => result,
                Err(payload) => {
                    let _ = reply.send(Reply::Panicked(payload));
                    return Ran::BrokeBatch;
                }
            };
        match result {
            Ok(value) => match ReleaseSavepoint.execute(connection) {
                Ok(_) => Ran::Succeeded(Box::new(move |outcome: Result<(), &str>| {
                    answer(&reply, outcome.map(|()| value).map_err(commit_failed));
                })),
                Err(error) => {
                    answer(&reply, Err(StoreError::query(error)));
                    Ran::BrokeBatch
                }
            },
            Err(error) => {
                let undone = RollbackToSavepoint
                    .execute(connection)
                    .and_then(|_| ReleaseSavepoint.execute(connection));
                match undone {
                    Ok(_) => Ran::Failed(Box::new(move |outcome: Result<(), &str>| {
                        answer(&reply, Err(outcome.map_or_else(commit_failed, |()| error)));
                    })),
                    Err(_) => {
                        answer(&reply, Err(error));
                        Ran::BrokeBatch
                    }
                }
            }
        }
    }

    fn refuse(self: Box<Self>, error: StoreError) {
        let _ = self.reply.send(Reply::Done(Err(error)));
    }
}

/// The writer thread: one batch per turn of the loop, until the queue closes.
fn run_writer(mut connection: DbConnection, queue: Receiver<Box<dyn Job>>, counts: &Counts) {
    while let Ok(first) = queue.recv() {
        if let Err(error) = BeginImmediate.execute(&mut connection) {
            first.refuse(StoreError::query(error));
            continue;
        }
        // Every body's answer waits for the batch's outcome.
        let mut answers = Vec::new();
        let mut broken = false;
        let mut next = Some(first);
        let mut bodies = 0;
        while let Some(job) = next.take() {
            bodies += 1;
            match job.run(&mut connection) {
                Ran::Succeeded(answer) | Ran::Failed(answer) => answers.push(answer),
                Ran::BrokeBatch => {
                    broken = true;
                    break;
                }
            }
            if bodies < MAX_BATCH {
                next = queue.try_recv().ok();
            }
        }
        let outcome = if broken {
            let _ = Rollback.execute(&mut connection);
            Err("an earlier write in the batch broke the transaction".to_owned())
        } else {
            match Commit.execute(&mut connection) {
                Ok(_) => Ok(()),
                Err(error) => {
                    let _ = Rollback.execute(&mut connection);
                    tracing::error!(error = %error, bodies, "group commit failed");
                    Err(error.to_string())
                }
            }
        };
        counts.batches.fetch_add(1, Ordering::Relaxed);
        counts.writes.fetch_add(bodies as u64, Ordering::Relaxed);
        for answer in answers {
            answer(outcome.as_ref().map(|_| ()).map_err(String::as_str));
        }
    }
}

fn commit_failed(message: &str) -> StoreError {
    StoreError::Unavailable {
        what: "group commit",
        source: message.to_owned().into(),
    }
}

fn writer_gone() -> StoreError {
    commit_failed("the database writer thread has stopped")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use diesel::r2d2::ManageConnection as _;
    use diesel::sql_types::BigInt;
    use diesel::RunQueryDsl as _;

    use diesel::connection::SimpleConnection;

    use super::*;
    use crate::store::connection::{Manager, Target};

    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }

    fn writer(dir: &tempfile::TempDir) -> (GroupWriter, Manager) {
        let url = format!("sqlite://{}", dir.path().join("group.db").display());
        let manager = Manager::new(Target::parse(&url).unwrap());
        let mut connection = manager.connect().unwrap();
        connection
            .batch_execute("CREATE TABLE items (id INTEGER PRIMARY KEY, value TEXT NOT NULL)")
            .unwrap();
        (GroupWriter::new(connection).unwrap(), manager)
    }

    fn count(manager: &Manager) -> i64 {
        let mut reader = manager.connect().unwrap();
        diesel::sql_query("SELECT COUNT(*) AS n FROM items")
            .get_result::<Count>(&mut reader)
            .unwrap()
            .n
    }

    fn insert(connection: &mut DbConnection, id: i64) -> Result<(), StoreError> {
        connection
            .batch_execute(&format!("INSERT INTO items (id, value) VALUES ({id}, 'v')"))
            .map_err(StoreError::query)
    }

    #[test]
    fn ok_concurrent_writes_are_all_committed_and_visible_to_other_connections() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, manager) = writer(&dir);
        let writer = Arc::new(writer);
        let threads: Vec<_> = (0..32)
            .map(|id| {
                let writer = writer.clone();
                std::thread::spawn(move || writer.write(move |conn| insert(conn, id)))
            })
            .collect();
        for thread in threads {
            thread.join().unwrap().unwrap();
        }
        assert_eq!(count(&manager), 32);
    }

    #[test]
    fn ok_writes_queued_while_a_batch_runs_share_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, manager) = writer(&dir);
        let writer = Arc::new(writer);
        let (started, running) = std::sync::mpsc::channel::<()>();
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let first = {
            let writer = writer.clone();
            std::thread::spawn(move || {
                writer.write(move |conn| {
                    started.send(()).unwrap();
                    hold.recv().unwrap();
                    insert(conn, 0)
                })
            })
        };
        // The first body holds its batch open; ten more writes queue behind it.
        running.recv().unwrap();
        let queued: Vec<_> = (1..=10)
            .map(|id| {
                let writer = writer.clone();
                std::thread::spawn(move || writer.write(move |conn| insert(conn, id)))
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(300));
        release.send(()).unwrap();
        first.join().unwrap().unwrap();
        for thread in queued {
            thread.join().unwrap().unwrap();
        }
        assert_eq!(count(&manager), 11);
        assert_eq!(writer.counts().writes, 11);
        // One commit each would be 11 batches; writes queued while a batch
        // runs join it (here all ten, unless one was slower than 300 ms).
        assert!(
            writer.counts().batches <= 2,
            "{:?} for 11 writes",
            writer.counts()
        );
    }

    #[test]
    fn fail_one_body_in_a_batch_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, manager) = writer(&dir);
        let writer = Arc::new(writer);
        // Ids 0..8 twice: exactly one of each pair wins the primary key.
        let threads: Vec<_> = (0..16)
            .map(|n| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    writer.write(move |conn| {
                        insert(conn, n % 8)?;
                        insert(conn, 100 + n)
                    })
                })
            })
            .collect();
        let refused = threads
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .filter(Result::is_err)
            .count();
        assert_eq!(refused, 8, "one of each pair of duplicate ids is refused");
        // 8 winners, each with both rows; the 8 losers left no second row.
        assert_eq!(count(&manager), 16);
    }

    #[test]
    fn fail_a_refused_body_hears_of_a_failed_commit_not_its_own_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, manager) = writer(&dir);
        // A foreign key checked at COMMIT: a body can break it and still
        // succeed, so the COMMIT of its batch fails.
        manager
            .connect()
            .unwrap()
            .batch_execute(
                "CREATE TABLE parents (id INTEGER PRIMARY KEY); \
                 CREATE TABLE children (id INTEGER PRIMARY KEY, parent INTEGER NOT NULL \
                   REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED)",
            )
            .unwrap();
        writer.write(|conn| insert(conn, 1)).unwrap();
        let writer = Arc::new(writer);
        let (started, running) = std::sync::mpsc::channel::<()>();
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let orphan = {
            let writer = writer.clone();
            std::thread::spawn(move || {
                writer.write(move |conn| {
                    started.send(()).unwrap();
                    hold.recv().unwrap();
                    conn.batch_execute("INSERT INTO children (id, parent) VALUES (1, 42)")
                        .map_err(StoreError::query)
                })
            })
        };
        running.recv().unwrap();
        // Refused on its own (id 1 exists), in the same batch.
        let duplicate = {
            let writer = writer.clone();
            std::thread::spawn(move || writer.write(|conn| insert(conn, 1)))
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        release.send(()).unwrap();
        let orphan = orphan.join().unwrap();
        let duplicate = duplicate.join().unwrap();
        assert!(
            matches!(orphan, Err(StoreError::Unavailable { .. })),
            "{orphan:?}"
        );
        assert!(
            matches!(duplicate, Err(StoreError::Unavailable { .. })),
            "{duplicate:?}"
        );
        assert_eq!(writer.counts().batches, 2, "{:?}", writer.counts());
        // The writer goes on.
        writer.write(|conn| insert(conn, 2)).unwrap();
        assert_eq!(count(&manager), 2);
    }

    #[test]
    fn ok_a_panicking_body_rolls_its_batch_back_and_the_writer_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, manager) = writer(&dir);
        let shared = std::panic::AssertUnwindSafe(&writer);
        let panicked = std::panic::catch_unwind(move || {
            let _ = shared.write(|conn| -> Result<(), StoreError> {
                insert(conn, 1)?;
                panic!("a bug inside a write body");
            });
        });
        assert!(panicked.is_err());
        writer.write(|conn| insert(conn, 2)).unwrap();
        assert_eq!(count(&manager), 1, "only the write after the panic exists");
    }
}
