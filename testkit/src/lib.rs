//! Test support shared by the workspace's tests and benches. It owns one rule: what a test
//! does when a peer it needs (a data file beside the checkout, a Python package, Prometheus)
//! is missing. Under `CI=true` the test fails, since `.ci/run` installs every peer and clones
//! `shared/` beside the checkout; elsewhere it prints `SKIPPED: ...`, so a skip shows in the
//! output instead of reading as a pass.

use std::fmt::Display;

/// Whether this run is CI's (`CI=true`), where nothing may be skipped.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A peer is missing: panics under CI, naming it and `fix` (how CI provides it); elsewhere
/// prints `SKIPPED: what`. The caller then returns without testing what needs the peer.
pub fn missing(what: impl Display, fix: &str) {
    if ci() {
        panic!("{what} (CI=true: {fix})");
    }
    eprintln!("SKIPPED: {what}");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_peer_fails_under_ci_and_is_reported_elsewhere() {
        let r = std::panic::catch_unwind(|| missing("promtool not found", "apt-get install prometheus"));
        if ci() {
            let e = r.unwrap_err();
            let msg = e.downcast_ref::<String>().unwrap();
            assert_eq!(msg, "promtool not found (CI=true: apt-get install prometheus)");
        } else {
            assert!(r.is_ok());
        }
    }
}
