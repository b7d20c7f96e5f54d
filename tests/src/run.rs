//! Running test bodies: [`run_test`] and [`run_test_on`] print the server's
//! log of a failed test and check [`TestServer::check_invariants`] after
//! every body; [`backend_tests!`] instantiates a body once per back end.
//!
//! Invariant: a skipped back end prints why; it never runs a body against a
//! server it did not start.

use std::sync::OnceLock;

use crate::builder::ServerOptions;
use crate::server::{Backend, Skip, TestServer};

/// Runs `body` against the shared server of `backend` (or skips), printing
/// the server's log lines from the test's run when it fails, then checks
/// [`TestServer::check_invariants`]. Used by [`backend_tests!`].
pub fn run_test(backend: Backend, name: &str, body: impl FnOnce(&TestServer)) {
    run_test_on(TestServer::shared(backend), name, body);
}

/// The server a test binary shares for `backend`, started with `options`
/// on first use and kept in `cell`; `None` (after printing why) when a
/// non-mandatory dependency is missing. Used by [`backend_tests!`]'s
/// `options = …;` form.
pub fn shared_with_options(
    cell: &'static OnceLock<Result<TestServer, Skip>>,
    backend: Backend,
    options: impl FnOnce() -> ServerOptions,
) -> Option<&'static TestServer> {
    match cell.get_or_init(|| TestServer::builder(backend).options(options()).try_start()) {
        Ok(server) => Some(server),
        Err(Skip(reason)) => {
            eprintln!("note: skipping {backend:?} end-to-end test: {reason}");
            None
        }
    }
}

/// [`run_test`] on a given server (`None`: skipped).
pub fn run_test_on(server: Option<&TestServer>, name: &str, body: impl FnOnce(&TestServer)) {
    let Some(server) = server else {
        return;
    };
    let backend = server.backend;
    let offset = server.log_len();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        body(server);
        server.check_invariants();
    }));
    if let Err(panic) = outcome {
        eprintln!(
            "---- {name} ({backend:?}) failed; server log since the test started ({}):\n{}\n---- end of server log",
            server.log_path.display(),
            server.log_since(offset)
        );
        std::panic::resume_unwind(panic);
    }
}

/// Instantiates each test body once per back end, rustls-style: `fn x` becomes
/// `sqlite::x` and `postgres::x`, both running the same body on that back end.
///
/// Four forms, one per invocation (each defines `mod sqlite` and `mod postgres`):
///
/// ```ignore
/// // The binary's shared default server of each back end.
/// backend_tests! {
///     fn ok_something(server: &TestServer) { ... }
/// }
/// // A server shared by this invocation's tests, started with options.
/// backend_tests! {
///     options = ServerOptions::default().log_format_json();
///     fn ok_something(server: &TestServer) { ... }
/// }
/// // The body starts its own servers (e.g. with `TestServer::builder(backend)`).
/// backend_tests! {
///     fn ok_something(backend: Backend) { ... }
/// }
/// // Bodies defined elsewhere (`fn ok_something(db: &Db)`), each handed to
/// // `run(backend, body)`, which builds what the bodies take (the server's
/// // store suite runs on its own in-process store this way).
/// backend_tests!(run = Db::run; ok_something, ok_other);
/// ```
#[macro_export]
macro_rules! backend_tests {
    (run = $run:path; $($name:ident),* $(,)?) => {
        $crate::backend_tests!(@run sqlite, Sqlite, $run, $($name),*);
        $crate::backend_tests!(@run postgres, Postgres, $run, $($name),*);
    };
    (@run $module:ident, $variant:ident, $run:path, $($name:ident),*) => {
        mod $module {
            #[allow(unused_imports, reason = "for `run`, which may or may not be named through the invoking module")]
            use super::*;
            $(
                #[test]
                fn $name() {
                    $run($crate::Backend::$variant, super::$name);
                }
            )*
        }
    };
    (options = $options:expr; $($(#[$meta:meta])* fn $name:ident($server:ident: &TestServer) $body:block)*) => {
        $crate::backend_tests!(@shared_with_options sqlite, Sqlite, $options, $($(#[$meta])* fn $name($server) $body)*);
        $crate::backend_tests!(@shared_with_options postgres, Postgres, $options, $($(#[$meta])* fn $name($server) $body)*);
    };
    (@shared_with_options $module:ident, $backend:ident, $options:expr, $($(#[$meta:meta])* fn $name:ident($server:ident) $body:block)*) => {
        mod $module {
            #[allow(unused_imports, reason = "unused where the bodies need nothing from the test file; `expect` fails elsewhere")]
            use super::*;

            fn shared_server() -> Option<&'static $crate::TestServer> {
                static SERVER: std::sync::OnceLock<Result<$crate::TestServer, $crate::Skip>> =
                    std::sync::OnceLock::new();
                $crate::shared_with_options(&SERVER, $crate::Backend::$backend, || $options)
            }
            $(
                $(#[$meta])*
                #[test]
                fn $name() {
                    $crate::run_test_on(
                        shared_server(),
                        stringify!($name),
                        |$server: &$crate::TestServer| $body,
                    );
                }
            )*
        }
    };
    ($($(#[$meta:meta])* fn $name:ident($backend:ident: Backend) $body:block)*) => {
        $crate::backend_tests!(@own_server sqlite, Sqlite, $($(#[$meta])* fn $name($backend) $body)*);
        $crate::backend_tests!(@own_server postgres, Postgres, $($(#[$meta])* fn $name($backend) $body)*);
    };
    (@own_server $module:ident, $variant:ident, $($(#[$meta:meta])* fn $name:ident($backend:ident) $body:block)*) => {
        mod $module {
            #[allow(unused_imports, reason = "unused where the bodies need nothing from the test file; `expect` fails elsewhere")]
            use super::*;
            $(
                $(#[$meta])*
                #[test]
                fn $name() {
                    let $backend: $crate::Backend = $crate::Backend::$variant;
                    $body
                }
            )*
        }
    };
    ($($(#[$meta:meta])* fn $name:ident($server:ident: &TestServer) $body:block)*) => {
        $crate::backend_tests!(@shared sqlite, Sqlite, $($(#[$meta])* fn $name($server) $body)*);
        $crate::backend_tests!(@shared postgres, Postgres, $($(#[$meta])* fn $name($server) $body)*);
    };
    (@shared $module:ident, $variant:ident, $($(#[$meta:meta])* fn $name:ident($server:ident) $body:block)*) => {
        mod $module {
            #[allow(unused_imports, reason = "unused where the bodies need nothing from the test file; `expect` fails elsewhere")]
            use super::*;
            $(
                $(#[$meta])*
                #[test]
                fn $name() {
                    $crate::run_test(
                        $crate::Backend::$variant,
                        stringify!($name),
                        |$server: &$crate::TestServer| $body,
                    );
                }
            )*
        }
    };
}
