//! The end-to-end suites of checkpoint, as modules of one test binary: one link instead of
//! thirteen (each linked librdkafka, OpenSSL and the three database drivers on its own). Every
//! suite runs against real parts: SQLite files, the PostgreSQL and MariaDB servers, librdkafka's
//! mock cluster (in a process of its own where a test kills consumers) and headless Chromium.
//!
//! Run one suite with `cargo test -p checkpoint-tests --test integration kafka::`.

#[macro_use]
mod support;

mod api;
mod batch;
mod chaos;
mod console;
mod engine;
mod faults;
mod kafka;
mod limits;
mod macro_handlers;
mod processes;
mod retention;
mod store;
mod tls;
