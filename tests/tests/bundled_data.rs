//! The bundled traces are the published files, unchanged: the README's main command depends on
//! them, and their CC-BY attribution only holds for an unmodified copy.

use std::fs;
use std::path::PathBuf;

use gpuscale_tests::workspace_root;

const TRACES: &[(&str, usize)] = &[
    ("AzureLLMInferenceTrace_conv.csv", 19_366),
    ("AzureLLMInferenceTrace_code.csv", 8_819),
];

#[test]
fn bundled_traces_have_their_published_shape() {
    for &(name, requests) in TRACES {
        let path = workspace_root().join("data/traces").join(name);
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.starts_with("TIMESTAMP,ContextTokens,GeneratedTokens\r\n"),
            "{name}: header"
        );
        assert!(
            !text.ends_with('\n'),
            "{name}: the published file has no final newline"
        );
        assert_eq!(text.matches("\r\n").count(), requests, "{name}: CRLF rows");
        assert_eq!(text.lines().count() - 1, requests, "{name}: request rows");
    }
    let readme = fs::read_to_string(workspace_root().join("data/traces/README.md")).unwrap_or_default();
    assert!(
        readme.contains("CC-BY 4.0") && readme.contains("Splitwise"),
        "attribution missing"
    );
}

#[test]
fn bundled_traces_match_the_shared_copies() {
    let shared: PathBuf = workspace_root().join("../shared/traces");
    if !shared.is_dir() {
        let msg = format!(
            "{} not found: cannot compare the bundled traces with their source",
            shared.display()
        );
        gpuscale_testkit::missing(msg, "CI clones main with shared/ beside it");
        return;
    }
    for &(name, _) in TRACES {
        let ours = fs::read(workspace_root().join("data/traces").join(name)).unwrap_or_default();
        let theirs = fs::read(shared.join(name)).unwrap_or_default();
        assert!(!theirs.is_empty(), "{name} missing from {}", shared.display());
        assert!(
            ours == theirs,
            "data/traces/{name} differs from shared/traces/{name}"
        );
    }
}
