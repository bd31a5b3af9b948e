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
    let doc = doc();
    let flags = gpuscale_testkit::help_flags(env!("CARGO_BIN_EXE_gpuscale-scaler"), &[]);
    assert!(flags.len() >= 30, "{flags:?}");
    for f in flags {
        assert!(f.env.is_some(), "--{} has no env twin:\n{}", f.name, f.help);
        assert!(
            doc.contains(&format!("| `--{}` |", f.name)),
            "docs/scaler.md does not document --{}",
            f.name
        );
    }
}

#[test]
fn every_trigger_key_is_documented_with_its_default() {
    let doc = doc();
    for k in gpuscale_scaler::keda::trigger::TRIGGER_KEYS {
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
