//! gpuscale-tests: cross-component tests that start real processes and real peers.
//!
//! The tests live in `tests/tests/`; this library holds what they share.

use std::path::PathBuf;

/// The workspace root, found from this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}
