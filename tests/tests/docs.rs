//! Docs that cannot drift: every policy parameter and reason code in the code is documented,
//! with the same default, and the README shows the commands CI runs.

use std::fs;

use gpuscale_policies::spec::KEYS;
use gpuscale_tests::workspace_root;

fn read(rel: &str) -> String {
    let p = workspace_root().join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_parameter_is_documented_with_its_default() {
    let doc = read("docs/policies.md");
    for k in KEYS {
        let key = if k.policy.is_empty() {
            k.name.to_string()
        } else {
            format!("{}.{}", k.policy, k.name)
        };
        let row = format!("| `{key}` | `{}` |", k.default);
        assert!(
            doc.contains(&row),
            "docs/policies.md lacks the row starting {row:?}"
        );
    }
    // And no documented key that the code does not accept: every row of the parameter tables
    // (the section between these two headings) must name a real key.
    let section = doc
        .split("## Policy specs and parameters")
        .nth(1)
        .and_then(|s| s.split("## Keep-alive and scale-to-zero").next())
        .unwrap_or_default();
    let mut rows = 0;
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let key = line.split('`').nth(1).unwrap_or_default();
        rows += 1;
        let known = KEYS
            .iter()
            .any(|k| (k.policy.is_empty() && key == k.name) || key == format!("{}.{}", k.policy, k.name));
        assert!(
            known,
            "docs/policies.md documents `{key}`, which the code does not accept"
        );
    }
    assert_eq!(
        rows,
        KEYS.len(),
        "parameter rows in docs/policies.md vs spec::KEYS"
    );
}

#[test]
fn every_reason_code_is_documented() {
    let src = read("policies/src/decision.rs");
    let body = src
        .split("pub fn code(&self)")
        .nth(1)
        .and_then(|s| s.split("pub fn signal").next());
    let codes: Vec<&str> = body
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split("=> \"").nth(1))
        .filter_map(|l| l.split('"').next())
        .collect();
    assert!(
        codes.len() >= 30,
        "found only {} codes in Rule::code; did its shape change?",
        codes.len()
    );
    let doc = read("docs/policies.md");
    for c in codes {
        assert!(
            doc.contains(&format!("`{c}`")),
            "reason code `{c}` is not in docs/policies.md"
        );
    }
}

#[test]
fn readme_shows_the_commands_ci_runs() {
    let readme = read("README.md");
    let ci = read(".ci/run");
    let main = "cargo run --release -p gpuscale-sim -- replay --trace data/traces/AzureLLMInferenceTrace_conv.csv --policy hpa,kpa,default,queue,slo --oracle";
    assert!(
        readme.lines().any(|l| l.trim() == main),
        "README must show the main command `{main}` on its own line"
    );
    assert!(
        readme.lines().any(|l| l.trim() == "./scripts/test"),
        "README must show `./scripts/test` on its own line"
    );
    assert!(
        ci.lines().any(|l| l.trim() == "./scripts/test"),
        ".ci/run must run ./scripts/test"
    );
    let in_ci = main.replacen("cargo run --release", "cargo run --release --locked", 1);
    assert!(ci.contains(&in_ci), ".ci/run must run the main command: {in_ci}");
}
