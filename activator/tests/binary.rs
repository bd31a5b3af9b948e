//! The gpuscale-activator binary: its flags are in the references with their env twins, it
//! names itself, and on SIGTERM it drains visibly (readyz 503) and exits cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gpuscale_testkit::free_port as port;

const BIN: &str = env!("CARGO_BIN_EXE_gpuscale-activator");

fn docs(page: &str) -> String {
    std::fs::read_to_string(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../docs")
            .join(page),
    )
    .unwrap()
}

#[test]
fn every_flag_is_documented_with_its_env_twin() {
    let (reference, page) = (docs("configuration.md"), docs("activator.md"));
    let flags = gpuscale_testkit::help_flags(BIN, &[]);
    assert!(flags.len() >= 12, "{flags:?}");
    for f in flags {
        let Some(env) = &f.env else {
            panic!("--{} has no env twin:\n{}", f.name, f.help)
        };
        assert!(
            reference.contains(&format!("| `--{}` | `{env}` |", f.name)),
            "docs/configuration.md has no row `--{}` with env `{env}`",
            f.name
        );
        assert!(
            page.contains(&format!("| `--{}` |", f.name)),
            "docs/activator.md does not document --{}",
            f.name
        );
    }
}

#[test]
fn it_names_itself() {
    let out = std::process::Command::new(BIN).arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(v.starts_with("gpuscale-activator "), "{v}");
}

#[test]
fn the_activator_binary_drains_visibly_and_says_so_once() {
    use std::time::{Duration, Instant};
    let (proxy, http, dead, scaler) = (port(), port(), port(), port());
    let http_addr = format!("127.0.0.1:{http}");
    let child = std::process::Command::new(BIN)
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
    while gpuscale_testkit::http_status(&http_addr, "/readyz") != Some(200) {
        assert!(start.elapsed() < Duration::from_secs(10), "activator not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A held request (no upstream), then SIGTERM: /readyz says 503 while it drains.
    let held = std::thread::spawn(move || {
        gpuscale_testkit::http_status(&format!("127.0.0.1:{proxy}"), "/v1/completions")
    });
    std::thread::sleep(Duration::from_millis(300));
    gpuscale_testkit::sigterm(&child);
    let start = Instant::now();
    loop {
        match gpuscale_testkit::http_status(&http_addr, "/readyz") {
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
    assert!(out.status.success(), "exit {:?} after SIGTERM: {log}", out.status);
    assert_eq!(log.matches("shutting down").count(), 1, "{log}");
    assert!(
        log.contains("gpuscale_activator"),
        "logs under the activator's own target: {log}"
    );
}
