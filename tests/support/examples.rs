//! Where the examples that a plain `cargo test` builds are.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

/// `target/<profile>/examples/<name>`.
pub(crate) fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}
