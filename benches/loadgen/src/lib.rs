//! Load generator, baseline servers and measurement helpers for switchboard.
//!
//! A tool, not a library: the binaries are `loadgen` (the client) and
//! `bench-server` (switchboard's echo and chat servers, and the baselines),
//! and `scripts/bench.sh` runs the comparison. See `docs/performance.md`.
//!
//! # Layout
//!
//! - [`args`]: a tiny `--key value` parser shared by both binaries;
//! - [`procfs`]: a process's CPU time, resident memory and open files, from `/proc`;
//! - [`report`]: one result line (`key=value ...`) per run, and the table of medians;
//! - [`payload`]: the payloads: the broadcast message format (publisher,
//!   sequence, send time), plain or as chat JSON;
//! - [`deflate`]: permessage-deflate on the load generator's side.

#![allow(clippy::unwrap_used)]

pub mod args;
pub mod deflate;
pub mod payload;
pub mod procfs;
pub mod report;
