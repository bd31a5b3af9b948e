//! docs/configuration.md lists every flag with its environment twin, every trigger key and
//! every policy parameter with its default; checked against the binaries and the parsers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

fn page() -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md"))
        .unwrap()
}

#[test]
fn every_flag_and_env_twin_is_in_the_reference() {
    let doc = page();
    let flags = gpuscale_testkit::help_flags(env!("CARGO_BIN_EXE_gpuscale-scaler"), &[]);
    assert!(flags.len() >= 12, "{flags:?}");
    for f in flags {
        let (name, env) = (&f.name, f.env.as_deref().unwrap_or("(none)"));
        assert!(
            doc.contains(&format!("| `--{name}` | `{env}` |")),
            "docs/configuration.md has no row `--{name}` with env `{env}`"
        );
    }
}

#[test]
fn every_trigger_key_and_policy_parameter_is_in_the_reference() {
    let doc = page();
    for k in gpuscale_scaler::keda::trigger::TRIGGER_KEYS {
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
    let bin = env!("CARGO_BIN_EXE_gpuscale-scaler");
    let out = std::process::Command::new(bin).arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(v.starts_with("gpuscale-scaler "), "{bin}: {v}");
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

/// SIGTERM ends the scaler cleanly: its servers stop because of the signal, which the task
/// supervisor must not take for a failure (exit 0, once).
#[test]
fn sigterm_ends_the_scaler_cleanly() {
    use std::time::{Duration, Instant};
    let port = gpuscale_testkit::free_port;
    let (grpc, http, dead) = (port(), port(), port());
    let http_addr = format!("127.0.0.1:{http}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gpuscale-scaler"))
        .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
        .args(["--http-listen", &http_addr])
        .args(["--collector", &format!("127.0.0.1:{dead}")])
        .args([
            "--activator-listen",
            &format!("127.0.0.1:{}", port()),
            "--activator-drain-timeout",
            "2s",
        ])
        .args(["--route", &format!("/=llm/qwen=http://127.0.0.1:{dead}")])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while gpuscale_testkit::http_status(&http_addr, "/healthz") != Some(200) {
        assert!(start.elapsed() < Duration::from_secs(10), "scaler not up");
        std::thread::sleep(Duration::from_millis(50));
    }
    gpuscale_testkit::sigterm(&child);
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("the scaler did not stop within 15 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?} after SIGTERM: {log}", out.status);
    assert_eq!(log.matches("shutting down").count(), 1, "{log}");
}
