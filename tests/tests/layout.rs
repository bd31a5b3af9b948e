//! The crate graph runs one way (docs/architecture.md draws it): read from every member's
//! Cargo.toml, no gpuscale crate depends on itself through others, and the ones that must stay
//! small do: the activator links no gRPC, Lease or NVML code, the scaler no collector, the
//! contract and the formats nothing but their one or two helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every workspace member's package name -> its `[dependencies]` (not dev or build).
fn members() -> BTreeMap<String, BTreeSet<String>> {
    let workspace = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let list = workspace
        .split_once("members = [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list)
        .unwrap();
    let mut out = BTreeMap::new();
    for dir in list
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
    {
        let manifest = std::fs::read_to_string(root().join(dir).join("Cargo.toml")).unwrap();
        let mut name = None;
        let mut deps = BTreeSet::new();
        let mut section = String::new();
        for line in manifest.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.to_string();
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim();
            match section.as_str() {
                "[package]" if key == "name" => name = Some(value.trim().trim_matches('"').to_string()),
                "[dependencies]" if !key.starts_with('#') => {
                    deps.insert(key.to_string());
                }
                _ => {}
            }
        }
        out.insert(
            name.unwrap_or_else(|| panic!("{dir}/Cargo.toml has no name")),
            deps,
        );
    }
    out
}

/// Every crate `name` links, through workspace members, itself excluded.
fn closure(graph: &BTreeMap<String, BTreeSet<String>>, name: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<&str> = graph[name].iter().map(String::as_str).collect();
    while let Some(d) = todo.pop() {
        if seen.insert(d.to_string())
            && let Some(next) = graph.get(d)
        {
            todo.extend(next.iter().map(String::as_str));
        }
    }
    seen
}

#[test]
fn dependencies_run_one_way() {
    let graph = members();
    assert!(graph.len() >= 10, "{graph:?}");
    for name in graph.keys() {
        assert!(
            !closure(&graph, name).contains(name),
            "{name} depends on itself through {:?}",
            graph[name]
        );
    }
    let forbidden = |crate_: &str, banned: &[&str]| {
        let all = closure(&graph, crate_);
        for b in banned {
            assert!(!all.contains(*b), "{crate_} links {b}: {all:?}");
        }
    };
    forbidden(
        "gpuscale-activator",
        &[
            "tonic",
            "kube-lease-manager",
            "nvml-wrapper",
            "gpuscale-scaler",
            "gpuscale-collector",
        ],
    );
    forbidden("gpuscale-scaler", &["gpuscale-collector", "nvml-wrapper"]);
    forbidden(
        "gpuscale-sim",
        &["tokio", "kube", "gpuscale-scaler", "gpuscale-collector"],
    );
    for (small, allowed) in [
        ("gpuscale-contract", &["serde"][..]),
        ("gpuscale-expfmt", &["thiserror"][..]),
        ("gpuscale-policies", &["serde", "thiserror"][..]),
    ] {
        let got: Vec<&str> = graph[small].iter().map(String::as_str).collect();
        assert_eq!(got, allowed, "{small} gained a dependency");
    }
}
