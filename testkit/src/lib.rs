//! Test support shared by the workspace's tests and benches. It owns one rule: what a test
//! does when a peer it needs (a data file beside the checkout, a Python package, Prometheus)
//! is missing. Under `CI=true` the test fails, since `.ci/run` installs every peer and clones
//! `shared/` beside the checkout; elsewhere it prints `SKIPPED <test name>: ...`, so a skip shows
//! in the output, naming the test, instead of reading as a pass.
//!
//! Also what several crates' tests do the same way: a free loopback port ([`free_port`]), a
//! child process that dies with the test ([`Kill`]), a binary's flags from its `--help`
//! ([`help_flags`]), and another package's binary in the shared target directory
//! ([`workspace_bin`]).

use std::fmt::Display;
use std::path::{Path, PathBuf};

/// Whether this run is CI's (`CI=true`), where nothing may be skipped.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A peer is missing: panics under CI, naming it and `fix` (how CI provides it); elsewhere
/// prints `SKIPPED <test>: what`, with the test's name (libtest names each test's thread), so
/// `grep SKIPPED` lists which tests did not run. The caller then returns without testing what
/// needs the peer.
pub fn missing(what: impl Display, fix: &str) {
    if ci() {
        panic!("{what} (CI=true: {fix})");
    }
    skipped(what);
}

/// Report this test as skipped, CI or not: only for a peer no CI machine has (a GPU), where the
/// skip is the expected outcome. Prints `SKIPPED <test>: what`, past libtest's output capture,
/// so a plain `cargo test` shows it.
pub fn skipped(what: impl Display) {
    use std::io::Write as _;
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("(unnamed thread)");
    // Written to the process's stderr itself: libtest captures `eprintln!` of a passing test
    // and would hide the skip.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {what}");
}

/// A loopback port that was free a moment ago (bound, read, released), for a server a test
/// starts as a separate process.
///
/// Chosen below the kernel's ephemeral range (`ip_local_port_range`), never from it: between
/// this release and the child's bind, any `bind(":0")` or outgoing connection in the parallel
/// tests draws from the ephemeral range and could take the port (CI once saw
/// `--grpc-listen 127.0.0.1:38003: Address already in use`). Below it, only another
/// `free_port` could, and a process-wide counter keeps those apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    // 10,000 ports below the range; a kernel whose range starts too low for that gets the old way.
    let low = ephemeral_start.saturating_sub(10_000);
    if low >= 1024 {
        // Separate test binaries run one after another, but their children may outlive a
        // binary by a moment: start each process somewhere else in the window.
        let seed = std::process::id().wrapping_mul(2_654_435_761);
        for _ in 0..1_000 {
            let i = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = low + (seed.wrapping_add(i.wrapping_mul(7))) % 10_000;
            if let Ok(port) = u16::try_from(port)
                && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// A child process killed (and reaped) when the test ends, however it ends.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Send `child` SIGTERM, what the kubelet sends a container it stops.
pub fn sigterm(child: &std::process::Child) {
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap_or_else(|e| panic!("kill: {e}"));
    assert!(kill.success(), "kill -TERM {} failed", child.id());
}

/// A minimal HTTP/1.1 GET over a plain socket, for tests without an async runtime: the status
/// code, or `None` when nothing answers within 2 s.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_whitespace().nth(1)?.parse().ok()
}

/// One flag as a binary's `--help` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flag {
    /// The long name, without `--`.
    pub name: String,
    /// Its environment twin (`[env: NAME=...]`), if it has one.
    pub env: Option<String>,
    /// Its whole help text, as printed.
    pub help: String,
}

/// The long flags `bin [subcommand...] --help` lists, except `--help` and `--version`, in
/// order. Each flag's text runs until the next flag's line, so an env twin printed lines below
/// the flag is found.
pub fn help_flags(bin: impl AsRef<Path>, subcommand: &[&str]) -> Vec<Flag> {
    let bin = bin.as_ref();
    let out = std::process::Command::new(bin)
        .args(subcommand)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let help = String::from_utf8_lossy(&out.stdout);
    let mut flags = Vec::new();
    let mut chunk = String::new();
    let starts_flag = |t: &str| t.starts_with("--") || (t.starts_with('-') && t.get(2..4) == Some(", "));
    for line in help.lines().chain(std::iter::once("--")) {
        let t = line.trim_start();
        if starts_flag(t) {
            let name = chunk
                .split_once("--")
                .and_then(|(_, rest)| rest.split([' ', '<', '\n', '=']).next())
                .filter(|n| !n.is_empty() && *n != "help" && *n != "version");
            if let Some(name) = name {
                let env = chunk
                    .split_once("[env: ")
                    .and_then(|(_, rest)| rest.split(['=', ']']).next())
                    .map(str::to_string);
                flags.push(Flag {
                    name: name.to_string(),
                    env,
                    help: chunk.clone(),
                });
            }
            chunk.clear();
        }
        if starts_flag(t) || !chunk.is_empty() {
            chunk.push_str(t);
            chunk.push('\n');
        }
    }
    flags
}

/// Another workspace package's binary, from the target directory this test runs from (a
/// test's own package's binaries are `env!("CARGO_BIN_EXE_...")` instead). `None` when it is
/// not built: `cargo test --workspace` builds every package's binaries with its tests, `cargo
/// test -p` only that package's.
pub fn workspace_bin(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/<test>: the binaries are in target/<profile>.
    let dir = exe.parent()?.parent()?;
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    bin.is_file().then_some(bin)
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

    #[test]
    fn flags_are_read_from_help_with_their_env_twins() {
        // A shell script standing in for a binary, printing clap's layout.
        let dir = std::env::temp_dir().join(format!("gpuscale-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("fake-help");
        let help = "Usage: x [OPTIONS]\n\nOptions:\n      --listen <LISTEN>\n          Where to listen\n          \n          [env: X_LISTEN=]\n          [default: 0.0.0.0:1]\n\n      --dry-run\n          No env twin\n\n  -v, --verbose  Short and long [env: X_VERBOSE=]\n  -h, --help\n          Print help\n  -V, --version\n          Print version\n";
        std::fs::write(&bin, format!("#!/bin/sh\nprintf '%s' '{help}'\n")).unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&bin)
            .status()
            .unwrap();
        let got: Vec<(String, Option<String>)> = help_flags(&bin, &[])
            .into_iter()
            .map(|f| (f.name, f.env))
            .collect();
        assert_eq!(
            got,
            [
                ("listen".to_string(), Some("X_LISTEN".to_string())),
                ("dry-run".to_string(), None),
                ("verbose".to_string(), Some("X_VERBOSE".to_string())),
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Run by [`a_skip_shows_past_the_output_capture`] in a child test process.
    #[test]
    fn skip_in_a_child() {
        if std::env::var_os("GPUSCALE_TESTKIT_CHILD").is_some() {
            skipped("the peer this child pretends to need");
        }
    }

    #[test]
    fn a_skip_shows_past_the_output_capture() {
        let exe = std::env::current_exe().unwrap();
        // libtest captures a passing test's output unless told not to: run it the way
        // `cargo test` does.
        let out = std::process::Command::new(exe)
            .args(["tests::skip_in_a_child", "--exact", "--test-threads=1"])
            .env("GPUSCALE_TESTKIT_CHILD", "1")
            .env_remove("RUST_TEST_NOCAPTURE")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("SKIPPED tests::skip_in_a_child: the peer this child pretends to need"),
            "a plain `cargo test` must show the skip; stderr: {stderr}"
        );
    }
}
