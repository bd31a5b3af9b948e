//! docs/configuration.md lists every flag with its environment twin, every trigger key and
//! every policy parameter with its default; checked against the binaries and the parsers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

fn page() -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md"))
        .unwrap()
}

/// (flag, env) pairs from `--help`.
fn flags(bin: &str) -> Vec<(String, String)> {
    let out = std::process::Command::new(bin).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    let mut rows = Vec::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("--") {
            current = rest.split([' ', '<']).next().map(String::from);
        }
        if let (Some(f), Some(i)) = (&current, line.find("[env: ")) {
            let env = line[i + 6..].split('=').next().unwrap().to_string();
            rows.push((f.clone(), env));
            current = None;
        }
    }
    rows
}

#[test]
fn every_flag_and_env_twin_is_in_the_reference() {
    let doc = page();
    for bin in [
        env!("CARGO_BIN_EXE_gpuscale-scaler"),
        env!("CARGO_BIN_EXE_gpuscale-activator"),
    ] {
        let rows = flags(bin);
        assert!(rows.len() >= 12, "{bin}: {rows:?}");
        for (f, env) in rows {
            assert!(
                doc.contains(&format!("| `--{f}` | `{env}` |")),
                "docs/configuration.md has no row `--{f}` with env `{env}` ({bin})"
            );
        }
    }
}

#[test]
fn every_trigger_key_and_policy_parameter_is_in_the_reference() {
    let doc = page();
    for k in gpuscale_scaler::trigger::TRIGGER_KEYS {
        assert!(
            doc.contains(&format!("| `{}` |", k.name)),
            "trigger key `{}` missing",
            k.name
        );
    }
    for k in gpuscale_scaler::policies::spec::KEYS {
        let name = if k.policy.is_empty() {
            k.name.to_string()
        } else {
            format!("{}.{}", k.policy, k.name)
        };
        assert!(
            doc.contains(&format!("| `{name}` | `{}` |", k.default)),
            "policy parameter `{name}` with default `{}` missing",
            k.default
        );
    }
    for a in [
        "gpuscale.io/scrape",
        "gpuscale.io/port",
        "gpuscale.io/path",
        "gpuscale.io/policy",
    ] {
        assert!(doc.contains(&format!("| `{a}` |")), "annotation {a} missing");
    }
}

#[test]
fn each_binary_names_itself() {
    for (bin, name) in [
        (env!("CARGO_BIN_EXE_gpuscale-scaler"), "gpuscale-scaler "),
        (env!("CARGO_BIN_EXE_gpuscale-activator"), "gpuscale-activator "),
    ] {
        let out = std::process::Command::new(bin).arg("--version").output().unwrap();
        let v = String::from_utf8_lossy(&out.stdout);
        assert!(v.starts_with(name), "{bin}: {v}");
    }
    // User errors: a message naming the input and the accepted forms, no backtrace.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gpuscale-scaler"))
        .args(["--http-listen", ":notaport"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not a port") && err.contains("HOST:PORT"),
        "{err}"
    );
    assert!(!err.contains("backtrace"), "{err}");
}

/// A minimal HTTP/1.1 GET over a plain socket: the status code, or None when nothing answers.
fn status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn the_activator_binary_drains_visibly_and_says_so_once() {
    use std::time::{Duration, Instant};
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (proxy, http, dead, scaler) = (port(), port(), port(), port());
    let http_addr = format!("127.0.0.1:{http}");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_gpuscale-activator"))
        .args(["--activator-listen", &format!("127.0.0.1:{proxy}")])
        .args(["--http-listen", &http_addr])
        .args(["--route", &format!("/=llm/qwen=http://127.0.0.1:{dead}")])
        .args(["--scaler-url", &format!("http://127.0.0.1:{scaler}")])
        .args(["--activator-drain-timeout", "3s"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while status(&http_addr, "/readyz") != Some(200) {
        assert!(start.elapsed() < Duration::from_secs(10), "activator not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A held request (no upstream), then SIGTERM: /readyz says 503 while it drains.
    let held = std::thread::spawn(move || status(&format!("127.0.0.1:{proxy}"), "/v1/completions"));
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    loop {
        match status(&http_addr, "/readyz") {
            Some(503) => break,
            other => assert!(
                start.elapsed() < Duration::from_secs(2),
                "readyz during drain: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let _ = held.join();
    let log = String::from_utf8_lossy(&out.stdout);
    assert_eq!(log.matches("shutting down").count(), 1, "{log}");
    assert!(
        log.contains("gpuscale_activator"),
        "logs under the activator's own target: {log}"
    );
}
