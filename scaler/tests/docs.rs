//! docs/scaler.md cannot drift from the binary's flags or the trigger keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

fn read(name: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../docs")
            .join(name),
    )
    .unwrap()
}

fn doc() -> String {
    read("scaler.md")
}

#[test]
fn every_flag_is_documented_with_an_env_twin() {
    check_flags(env!("CARGO_BIN_EXE_gpuscale-scaler"), "scaler.md", 30);
    check_flags(env!("CARGO_BIN_EXE_gpuscale-activator"), "activator.md", 12);
}

fn check_flags(bin: &str, page: &str, at_least: usize) {
    let out = std::process::Command::new(bin).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let doc = read(page);
    let mut flags = Vec::new();
    let mut chunk = String::new();
    // Each flag's help runs until the next flag; its env twin is inside.
    for line in help.lines().chain(std::iter::once("--end")) {
        let t = line.trim_start();
        if t.starts_with("--") || t.starts_with("-h,") || t.starts_with("-V,") {
            if let Some(f) = chunk
                .trim_start()
                .strip_prefix("--")
                .and_then(|l| l.split([' ', '<', '\n']).next())
            {
                flags.push(f.to_string());
                assert!(chunk.contains("[env: "), "--{f} has no env twin:\n{chunk}");
            }
            chunk.clear();
        }
        chunk.push_str(t);
        chunk.push('\n');
    }
    assert!(flags.len() >= at_least, "{flags:?}");
    for f in flags {
        assert!(
            doc.contains(&format!("| `--{f}` |")),
            "docs/{page} does not document --{f}"
        );
    }
}

#[test]
fn every_trigger_key_is_documented_with_its_default() {
    let doc = doc();
    for k in gpuscale_scaler::trigger::TRIGGER_KEYS {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", k.name)))
            .unwrap_or_else(|| panic!("docs/scaler.md has no row for `{}`", k.name));
        let default = k.default.split(' ').next().unwrap();
        let default = if k.default.is_empty() { "required" } else { default };
        assert!(
            row.contains(default),
            "row for `{}` does not show its default {default}: {row}",
            k.name
        );
    }
}
