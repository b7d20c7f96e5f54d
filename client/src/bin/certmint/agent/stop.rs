//! Stopping on SIGTERM/SIGINT without losing an enrollment, shared by
//! `certmint enroll` and `certmint agent`.
//!
//! The rule: a stop is honoured at once while nothing has been sent that
//! the server could act on (waiting, backing off, connecting: first
//! contact fetches only the CA chain). Once an enrollment or renewal is in
//! flight, the server may already have consumed a single-use bootstrap
//! token and be issuing the certificate, whether or not we read the answer;
//! dropping it would leave the workload with neither a certificate nor a
//! token. So [`finish_in_flight`] lets that request finish (bounded by
//! [`grace`]), and only a second stop request abandons it.
//!
//! Installing [`StopSignals`] replaces the default disposition of SIGTERM
//! and SIGINT for the rest of the process: from then on they only ever
//! reach the code that asks [`StopRequests::next`].

use std::future::Future;
use std::time::Duration as StdDuration;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// How much longer than the request timeout a stopping command waits for
/// an in-flight enrollment or renewal. The HTTP request itself cannot
/// outlive the request timeout (the client's total timeout, connect to
/// last body byte), so the margin only covers the local work around it
/// (key generation, building the mTLS client); with the defaults the
/// process is gone within 35 s of SIGTERM, plus the reload timeout when a
/// new certificate arrived, well inside systemd's default 90 s stop
/// timeout.
pub const STOP_GRACE_MARGIN: StdDuration = StdDuration::from_secs(5);

/// How long an in-flight request may still run after the first stop
/// request, for requests bounded by `request_timeout`.
pub fn grace(request_timeout: StdDuration) -> StdDuration {
    request_timeout.saturating_add(STOP_GRACE_MARGIN)
}

/// SIGTERM and SIGINT: the ways to ask `certmint` to stop.
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    /// Installs the handlers (needs a running tokio runtime).
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// Where requests to stop come from: [`StopSignals`] in the commands, a
/// channel in unit tests.
pub trait StopRequests {
    /// Waits for the next request to stop (cancel-safe: dropping the
    /// future loses no request); the signal's name, for the log.
    async fn next(&mut self) -> &'static str;
}

impl StopRequests for StopSignals {
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            Some(()) = self.term.recv() => "SIGTERM",
            Some(()) = self.int.recv() => "SIGINT",
            // Both streams end only when the runtime shuts down; nothing can
            // ask for a stop after that, and `select!` must not panic.
            else => std::future::pending().await,
        }
    }
}

/// Runs `work`, which has not sent anything the server could act on,
/// unless a stop is asked for first: `Err(signal)` then, and `work` is
/// dropped. A stop already pending wins, so nothing starts after it.
pub async fn unless_stopped<T>(
    work: impl Future<Output = T>,
    stops: &mut impl StopRequests,
) -> Result<T, &'static str> {
    tokio::select! {
        biased;
        signal = stops.next() => Err(signal),
        result = work => Ok(result),
    }
}

/// How an enrollment or renewal run through [`finish_in_flight`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum InFlight<T> {
    /// No stop was asked for: its result; carry on.
    Done(T),
    /// A stop was asked for while it ran and it was finished first: its
    /// result; stop after handling it.
    FinishedThenStop(T),
    /// A stop was already pending: the request was not started.
    NotStarted,
    /// A second stop request, or the end of the grace period: the request
    /// was dropped unfinished; stop now.
    Abandoned,
}

/// Runs `request` (an enrollment or renewal, named `what` in the log) to
/// completion even if a stop is asked for meanwhile: once it is sent, the
/// server may consume a single-use token and issue a certificate whether or
/// not we read the answer. A stop already pending is honoured before the
/// request starts. After the first stop request the request gets `grace`
/// more; a second one, or the end of `grace`, abandons it.
pub async fn finish_in_flight<T>(
    request: impl Future<Output = T>,
    stops: &mut impl StopRequests,
    grace: StdDuration,
    what: &str,
) -> InFlight<T> {
    let pending = tokio::select! {
        biased;
        signal = stops.next() => Some(signal),
        () = std::future::ready(()) => None,
    };
    if let Some(signal) = pending {
        tracing::info!("{signal}: stopping before the {what} starts");
        return InFlight::NotStarted;
    }
    let mut request = std::pin::pin!(request);
    // Biased towards the request: a result that is already here costs
    // nothing to keep.
    let signal = tokio::select! {
        biased;
        result = &mut request => return InFlight::Done(result),
        signal = stops.next() => signal,
    };
    tracing::info!(
        "{signal}: finishing the in-flight {what} before stopping (at most {grace:.0?}; \
         signal again to stop at once)"
    );
    tokio::select! {
        biased;
        result = &mut request => InFlight::FinishedThenStop(result),
        signal = stops.next() => {
            tracing::warn!(
                "{signal} again: abandoned the in-flight {what}, stopping now \
                 (the server may still complete it)"
            );
            InFlight::Abandoned
        }
        () = tokio::time::sleep(grace) => {
            tracing::warn!(
                "the in-flight {what} did not finish within {grace:.0?}: abandoned it, \
                 stopping now (the server may still complete it)"
            );
            InFlight::Abandoned
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::pin::Pin;
    use std::task::Poll;

    use tokio::sync::{mpsc, oneshot};

    use super::*;

    const GRACE: StdDuration = StdDuration::from_secs(35);

    /// Stop requests sent by the test.
    struct Channel(mpsc::UnboundedReceiver<&'static str>);

    impl StopRequests for Channel {
        async fn next(&mut self) -> &'static str {
            match self.0.recv().await {
                Some(signal) => signal,
                None => std::future::pending().await,
            }
        }
    }

    fn stops() -> (mpsc::UnboundedSender<&'static str>, Channel) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (sender, Channel(receiver))
    }

    /// A request that records that it started and finishes when the test
    /// sends its result.
    fn request(
        started: &Cell<bool>,
    ) -> (oneshot::Sender<u32>, impl Future<Output = Option<u32>> + '_) {
        let (sender, receiver) = oneshot::channel();
        let request = async move {
            started.set(true);
            receiver.await.ok()
        };
        (sender, request)
    }

    /// Polls `future` once, with the test task's waker.
    async fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *future).poll(cx))).await
    }

    #[tokio::test]
    async fn ok_request_without_a_stop_is_done() {
        let started = Cell::new(false);
        let (result, request) = request(&started);
        let (_stop, mut stops) = stops();
        let mut run = std::pin::pin!(finish_in_flight(request, &mut stops, GRACE, "enrollment"));
        assert!(poll_once(&mut run).await.is_pending());
        result.send(7).unwrap();
        assert_eq!(
            poll_once(&mut run).await,
            Poll::Ready(InFlight::Done(Some(7)))
        );
    }

    #[tokio::test]
    async fn ok_first_stop_lets_the_request_finish_then_stops() {
        let started = Cell::new(false);
        let (result, request) = request(&started);
        let (stop, mut stops) = stops();
        let mut run = std::pin::pin!(finish_in_flight(request, &mut stops, GRACE, "enrollment"));
        assert!(poll_once(&mut run).await.is_pending());
        assert!(started.get(), "the request is in flight");
        stop.send("SIGTERM").unwrap();
        assert!(
            poll_once(&mut run).await.is_pending(),
            "the first stop does not drop the request"
        );
        result.send(7).unwrap();
        assert_eq!(
            poll_once(&mut run).await,
            Poll::Ready(InFlight::FinishedThenStop(Some(7)))
        );
    }

    #[tokio::test]
    async fn fail_second_stop_abandons_the_request_at_once() {
        let started = Cell::new(false);
        let (result, request) = request(&started);
        let (stop, mut stops) = stops();
        let mut run = std::pin::pin!(finish_in_flight(request, &mut stops, GRACE, "renewal"));
        assert!(poll_once(&mut run).await.is_pending());
        stop.send("SIGTERM").unwrap();
        assert!(poll_once(&mut run).await.is_pending());
        stop.send("SIGINT").unwrap();
        assert_eq!(poll_once(&mut run).await, Poll::Ready(InFlight::Abandoned));
        assert!(result.is_closed(), "the request was dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn fail_request_still_running_after_the_grace_period_is_abandoned() {
        let started = Cell::new(false);
        let (result, request) = request(&started);
        let (stop, mut stops) = stops();
        let mut run = std::pin::pin!(finish_in_flight(request, &mut stops, GRACE, "enrollment"));
        assert!(poll_once(&mut run).await.is_pending());
        stop.send("SIGTERM").unwrap();
        assert!(poll_once(&mut run).await.is_pending());
        tokio::time::advance(GRACE - StdDuration::from_millis(1)).await;
        assert!(
            poll_once(&mut run).await.is_pending(),
            "abandoned before the grace period ended"
        );
        tokio::time::advance(StdDuration::from_millis(1)).await;
        assert_eq!(poll_once(&mut run).await, Poll::Ready(InFlight::Abandoned));
        assert!(result.is_closed(), "the request was dropped");
    }

    #[tokio::test]
    async fn ok_stop_already_pending_is_honoured_without_starting_the_request() {
        let started = Cell::new(false);
        let (_result, request) = request(&started);
        let (stop, mut stops) = stops();
        stop.send("SIGTERM").unwrap();
        let outcome = finish_in_flight(request, &mut stops, GRACE, "enrollment").await;
        assert_eq!(outcome, InFlight::NotStarted);
        assert!(!started.get(), "nothing may be sent after a stop");
    }

    #[tokio::test]
    async fn ok_work_without_a_stop_runs_to_its_end() {
        let started = Cell::new(false);
        let (result, work) = request(&started);
        let (_stop, mut stops) = stops();
        result.send(7).unwrap();
        assert_eq!(unless_stopped(work, &mut stops).await, Ok(Some(7)));
    }

    #[tokio::test]
    async fn ok_stop_ends_work_that_sent_nothing_at_once() {
        let started = Cell::new(false);
        let (result, work) = request(&started);
        let (stop, mut stops) = stops();
        let mut run = std::pin::pin!(unless_stopped(work, &mut stops));
        assert!(poll_once(&mut run).await.is_pending());
        stop.send("SIGINT").unwrap();
        assert_eq!(poll_once(&mut run).await, Poll::Ready(Err("SIGINT")));
        assert!(result.is_closed(), "the work was dropped");
    }

    #[tokio::test]
    async fn ok_stop_already_pending_wins_over_ready_work() {
        let started = Cell::new(false);
        let (result, work) = request(&started);
        let (stop, mut stops) = stops();
        result.send(7).unwrap();
        stop.send("SIGTERM").unwrap();
        assert_eq!(unless_stopped(work, &mut stops).await, Err("SIGTERM"));
        assert!(!started.get(), "nothing may start after a stop");
    }
}
