//! The OpenMetrics 1.0 parser conformance suite (prometheus/OpenMetrics tests/testdata/parsers,
//! 148 cases, in ../shared/fixtures): strict mode must accept exactly the cases marked
//! `shouldParse: true`.

use std::path::PathBuf;

use gpuscale_expfmt::text::{Limits, parse_openmetrics};

fn suite() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/exposition-conformance/openmetrics");
    if p.is_dir() {
        return Some(p);
    }
    let msg = format!(
        "{} not found: the conformance suite is not beside this checkout",
        p.display()
    );
    gpuscale_testkit::missing(msg, "CI clones main with shared/ beside it");
    None
}

#[test]
fn every_conformance_case_is_classified_as_upstream_expects() {
    let Some(dir) = suite() else { return };
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|r| {
            r.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    cases.sort();
    assert_eq!(cases.len(), 148, "the suite has 148 cases");
    let mut wrong = Vec::new();
    for case in &cases {
        let spec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(case.join("test.json")).unwrap_or_default())
                .unwrap_or(serde_json::Value::Null);
        let should = spec["shouldParse"]
            .as_bool()
            .unwrap_or_else(|| panic!("{case:?}: no shouldParse"));
        let bytes = std::fs::read(case.join("metrics")).unwrap_or_default();
        // A page that is not UTF-8 cannot be OpenMetrics.
        let got = match std::str::from_utf8(&bytes) {
            Ok(text) => parse_openmetrics(text, &Limits::default()),
            Err(e) => Err(gpuscale_expfmt::text::ParseError {
                line: 0,
                message: e.to_string(),
                kind: Default::default(),
            }),
        };
        if got.is_ok() != should {
            let name = case
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            wrong.push(format!(
                "{name}: expected {}, got {:?}",
                if should { "parse" } else { "reject" },
                got.err()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases misclassified:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}
