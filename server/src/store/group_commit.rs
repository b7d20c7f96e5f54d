//! Group commit for SQLite: concurrent write transactions share one
//! connection and one durable COMMIT (one fsync) per batch.
//!
//! SQLite has one writer at a time. Left to itself, concurrent writers on
//! separate connections fail to get the lock and sleep in SQLite's busy
//! handler (1, 2, 5 … 100 ms steps), and every transaction pays its own fsync.
//! Here every write instead runs on one dedicated connection, serialised by
//! a mutex:
//!
//! 1. The first writer of a batch opens it with `BEGIN IMMEDIATE`.
//! 2. Each writer runs its body inside its own `SAVEPOINT`. A body that fails
//!    is rolled back to its savepoint alone and gets its error at once; the
//!    others in the batch are unaffected.
//! 3. A writer whose body succeeded waits for the batch's COMMIT. Whoever
//!    finishes a body while nobody else is queued to join (or once the
//!    batch is [`MAX_BATCH`] bodies long) commits, and wakes the batch.
//!
//! Invariant: no caller sees `Ok` before the COMMIT that made its changes
//! durable (`synchronous=FULL`) has returned; when a COMMIT fails, every body
//! in the batch gets the error, and none of their changes exist.
//! Bodies see the uncommitted changes of earlier bodies in the same batch,
//! exactly as if the transactions had run one after another.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use diesel::connection::SimpleConnection;

use super::connection::DbConnection;
use super::StoreError;

/// Longest batch: bounds the latency of the first writer under a steady
/// stream of new writers.
pub(super) const MAX_BATCH: usize = 64;

/// Outcomes of recently finished batches kept for writers still waking up.
const OUTCOMES_KEPT: usize = 256;

pub(super) struct GroupWriter {
    state: Mutex<State>,
    batch_done: Condvar,
    /// Writers blocked on `state` that will join the open batch.
    queued: AtomicUsize,
}

struct State {
    connection: DbConnection,
    /// The open batch and how many bodies ran in it, when a transaction is open.
    open: Option<(u64, usize)>,
    next_batch: u64,
    /// `(batch, Ok or the commit error's text)`, newest last.
    outcomes: VecDeque<(u64, Result<(), String>)>,
}

impl GroupWriter {
    pub(super) fn new(connection: DbConnection) -> Self {
        Self {
            state: Mutex::new(State {
                connection,
                open: None,
                next_batch: 1,
                outcomes: VecDeque::with_capacity(OUTCOMES_KEPT),
            }),
            batch_done: Condvar::new(),
            queued: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A body that panics rolls the whole batch back before the panic
        // continues (see `write`), so a poisoned lock guards a clean state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `body` as one transaction of a group-committed batch.
    pub(super) fn write<T>(
        &self,
        body: impl FnOnce(&mut DbConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let mut state = self.lock();
        self.queued.fetch_sub(1, Ordering::SeqCst);

        let batch = match state.open {
            Some((batch, _)) => batch,
            None => {
                state
                    .connection
                    .batch_execute("BEGIN IMMEDIATE")
                    .map_err(StoreError::query)?;
                let batch = state.next_batch;
                state.next_batch += 1;
                state.open = Some((batch, 0));
                batch
            }
        };
        if let Some((_, bodies)) = state.open.as_mut() {
            *bodies += 1;
        }

        let result = match run_in_savepoint(&mut state.connection, body) {
            BodyOutcome::Finished(result) => result,
            BodyOutcome::Broken(error) => {
                // The savepoint machinery itself failed: the transaction is
                // unusable, so the whole batch ends here.
                let _ = self.finish(&mut state, batch, false);
                return Err(error);
            }
            BodyOutcome::Panicked(payload) => {
                let _ = self.finish(&mut state, batch, false);
                drop(state);
                std::panic::resume_unwind(payload);
            }
        };

        let batch_full = state.open.is_some_and(|(_, bodies)| bodies >= MAX_BATCH);
        if self.queued.load(Ordering::SeqCst) == 0 || batch_full {
            let committed = self.finish(&mut state, batch, true);
            return match (result, committed) {
                (Ok(value), Ok(())) => Ok(value),
                (Ok(_), Err(error)) => Err(error),
                (Err(error), _) => Err(error),
            };
        }
        if let Err(error) = result {
            // Rolled back to its savepoint; nothing of it will be committed.
            return Err(error);
        }
        let value = result?;
        loop {
            state = self
                .batch_done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            if let Some((_, outcome)) = state.outcomes.iter().find(|(done, _)| *done == batch) {
                return match outcome {
                    Ok(()) => Ok(value),
                    Err(message) => Err(commit_failed(message)),
                };
            }
            if state
                .outcomes
                .front()
                .is_some_and(|(oldest, _)| *oldest > batch)
            {
                // Should not happen (OUTCOMES_KEPT exceeds any plausible
                // number of sleepers); refuse rather than guess.
                return Err(commit_failed("batch outcome no longer known"));
            }
        }
    }

    /// Commits (or, after a broken savepoint, rolls back) the open batch and
    /// wakes its writers.
    fn finish(&self, state: &mut State, batch: u64, commit: bool) -> Result<(), StoreError> {
        let outcome = if commit {
            match state.connection.batch_execute("COMMIT") {
                Ok(()) => Ok(()),
                Err(error) => {
                    let _ = state.connection.batch_execute("ROLLBACK");
                    Err(StoreError::query(error))
                }
            }
        } else {
            let _ = state.connection.batch_execute("ROLLBACK");
            Err(commit_failed(
                "an earlier write in the batch broke the transaction",
            ))
        };
        state.open = None;
        if state.outcomes.len() == OUTCOMES_KEPT {
            state.outcomes.pop_front();
        }
        state.outcomes.push_back((
            batch,
            outcome.as_ref().map(|_| ()).map_err(ToString::to_string),
        ));
        self.batch_done.notify_all();
        outcome
    }
}

enum BodyOutcome<T> {
    /// The body ran; its savepoint was released or rolled back.
    Finished(Result<T, StoreError>),
    /// The savepoint statements failed: the transaction is broken.
    Broken(StoreError),
    /// The body panicked; the batch must be rolled back.
    Panicked(Box<dyn std::any::Any + Send>),
}

/// Runs `body` inside a savepoint.
fn run_in_savepoint<T>(
    connection: &mut DbConnection,
    body: impl FnOnce(&mut DbConnection) -> Result<T, StoreError>,
) -> BodyOutcome<T> {
    if let Err(error) = connection.batch_execute("SAVEPOINT certmint_write") {
        return BodyOutcome::Broken(StoreError::query(error));
    }
    // The connection is only ever used again after a full ROLLBACK when the
    // body panics, so observing it mid-body cannot leak a broken invariant.
    let result =
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&mut *connection))) {
            Ok(result) => result,
            Err(payload) => return BodyOutcome::Panicked(payload),
        };
    let closing = if result.is_ok() {
        "RELEASE certmint_write"
    } else {
        "ROLLBACK TO certmint_write; RELEASE certmint_write"
    };
    match connection.batch_execute(closing) {
        Ok(()) => BodyOutcome::Finished(result),
        Err(error) => BodyOutcome::Broken(StoreError::query(error)),
    }
}

fn commit_failed(message: &str) -> StoreError {
    StoreError::Unavailable {
        what: "group commit",
        source: message.to_owned().into(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use diesel::r2d2::ManageConnection as _;
    use diesel::sql_types::BigInt;
    use diesel::RunQueryDsl as _;

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
        (GroupWriter::new(connection), manager)
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
                std::thread::spawn(move || writer.write(|conn| insert(conn, id)))
            })
            .collect();
        for thread in threads {
            thread.join().unwrap().unwrap();
        }
        assert_eq!(count(&manager), 32);
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
                    writer.write(|conn| {
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
