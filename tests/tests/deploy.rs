//! deploy/: every kustomization renders with `kubectl kustomize`, every object validates against
//! its schema (kubernetes-validate --strict for built-in kinds on each supported Kubernetes
//! version; check-jsonschema with shared/spec's KEDA and KServe schemas), the hardening holds,
//! and every gpuscale trigger and annotation set is accepted by the scaler's own parser.

use std::path::{Path, PathBuf};
use std::process::Command;

use gpuscale_scaler::cluster::annotations_to_metadata;
use gpuscale_scaler::trigger::Trigger;
use gpuscale_tests::workspace_root;
use serde_json::Value;

/// The Kubernetes versions the manifests must validate on.
const VERSIONS: &str = "1.30.0,1.33.0,1.35.0";

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn python() -> Option<PathBuf> {
    let spec = workspace_root().join("../shared/spec");
    if !spec.is_dir() {
        let msg = format!(
            "{} not found: the schemas are not beside this checkout",
            spec.display()
        );
        assert!(!ci(), "{msg}");
        println!("SKIPPED: {msg}");
        return None;
    }
    let p = std::env::var("GPUSCALE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join(".venv/bin/python"));
    let ok = Command::new(&p)
        .args(["-c", "import kubernetes_validate, yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(p);
    }
    let msg = format!(
        "{} cannot import kubernetes_validate: run ./scripts/test, which installs tests/python-requirements.txt",
        p.display()
    );
    assert!(!ci(), "{msg}");
    println!("SKIPPED: {msg}");
    None
}

fn kustomizations(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            kustomizations(&p, out);
        } else if p.file_name().is_some_and(|n| n == "kustomization.yaml") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            // Components are rendered through the overlays that use them.
            if !text.contains("kind: Component") {
                out.push(dir.to_path_buf());
            }
        }
    }
}

fn render() -> Option<(PathBuf, Vec<PathBuf>)> {
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        let msg =
            "kubectl is not installed, so the kustomizations cannot be rendered (./scripts/test fetches it)";
        if ci() {
            panic!("{msg} (CI=true)");
        }
        println!("SKIPPED: {msg}");
        return None;
    }
    let root = workspace_root();
    let mut dirs = Vec::new();
    kustomizations(&root.join("deploy"), &mut dirs);
    assert!(dirs.len() >= 8, "expected bases, overlays and examples: {dirs:?}");
    let out = std::env::temp_dir().join(format!("gpuscale-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{e}"));
    let mut files = Vec::new();
    for d in &dirs {
        let r = Command::new("kubectl")
            .arg("kustomize")
            .arg(d)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            r.status.success(),
            "kubectl kustomize {}: {}",
            d.display(),
            String::from_utf8_lossy(&r.stderr)
        );
        let rel = d
            .strip_prefix(&root)
            .unwrap_or(d)
            .display()
            .to_string()
            .replace('/', "_");
        let f = out.join(format!("{rel}.yaml"));
        std::fs::write(&f, &r.stdout).unwrap_or_else(|e| panic!("{e}"));
        files.push(f);
    }
    Some((out, files))
}

fn validate(python: &Path, out: &Path, files: &[PathBuf]) -> (bool, String, Vec<Value>) {
    let json = out.join("objects.json");
    let r = Command::new(python)
        .arg(workspace_root().join("tests/python/validate_manifests.py"))
        .arg(workspace_root().join("../shared/spec"))
        .arg(VERSIONS)
        .arg(&json)
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let objects: Value = std::fs::read_to_string(&json)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null);
    (
        r.status.success(),
        String::from_utf8_lossy(&r.stderr).to_string(),
        objects.as_array().cloned().unwrap_or_default(),
    )
}

/// The pod spec of a workload object, if it has one.
fn pod_spec(o: &Value) -> Option<&Value> {
    match o["kind"].as_str()? {
        "Deployment" | "DaemonSet" | "StatefulSet" | "Job" => Some(&o["spec"]["template"]["spec"]),
        "InferenceService" => Some(&o["spec"]["predictor"]),
        _ => None,
    }
}

/// Hardening problems of one object, in words.
fn hardening(o: &Value) -> Vec<String> {
    let name = format!(
        "{} {}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    );
    let mut bad = Vec::new();
    if let Some(spec) = pod_spec(o) {
        for list in ["containers", "initContainers"] {
            for c in spec[list].as_array().into_iter().flatten() {
                let cname = c["name"].as_str().unwrap_or("?");
                let sc = &c["securityContext"];
                if sc["privileged"] == Value::Bool(true) {
                    bad.push(format!("{name}/{cname}: privileged"));
                }
                if sc["allowPrivilegeEscalation"] != Value::Bool(false) {
                    bad.push(format!("{name}/{cname}: allowPrivilegeEscalation is not false"));
                }
                if sc["readOnlyRootFilesystem"] != Value::Bool(true) {
                    bad.push(format!("{name}/{cname}: root filesystem is writable"));
                }
                let limits = &c["resources"]["limits"];
                if limits["cpu"].is_null() || limits["memory"].is_null() {
                    bad.push(format!("{name}/{cname}: no cpu and memory limits"));
                }
            }
        }
    }
    if matches!(o["kind"].as_str(), Some("Role" | "ClusterRole")) {
        for rule in o["rules"].as_array().into_iter().flatten() {
            for field in ["apiGroups", "resources", "verbs"] {
                if rule[field].as_array().into_iter().flatten().any(|v| v == "*") {
                    bad.push(format!("{name}: wildcard in {field}"));
                }
            }
        }
    }
    bad
}

#[test]
fn every_manifest_renders_validates_and_is_hardened() {
    let Some(py) = python() else { return };
    let Some((out, files)) = render() else { return };
    let (ok, log, objects) = validate(&py, &out, &files);
    assert!(ok, "manifests do not validate:\n{log}");
    assert!(objects.len() >= 80, "{} objects", objects.len());

    let mut problems = Vec::new();
    let mut triggers = 0;
    let mut annotated = 0;
    for item in &objects {
        let o = &item["object"];
        problems.extend(hardening(o).into_iter().map(|p| format!("{}: {p}", item["file"])));
        // Every gpuscale trigger parses with the scaler's own metadata parser.
        if o["kind"] == "ScaledObject" {
            let ns = o["metadata"]["namespace"].as_str().unwrap_or("default");
            for t in o["spec"]["triggers"].as_array().into_iter().flatten() {
                let md: std::collections::HashMap<String, String> =
                    serde_json::from_value(t["metadata"].clone()).unwrap_or_default();
                if md
                    .get("scalerAddress")
                    .is_some_and(|a| a.contains("gpuscale-scaler"))
                {
                    triggers += 1;
                    if let Err(e) = Trigger::parse(ns, &md) {
                        problems.push(format!(
                            "{}: ScaledObject trigger refused by the scaler: {e}",
                            item["file"]
                        ));
                    }
                }
            }
        }
        if o["kind"] == "Deployment" {
            let d: k8s_openapi::api::apps::v1::Deployment =
                serde_json::from_value(o.clone()).unwrap_or_else(|e| panic!("{e}"));
            if let Some(md) = annotations_to_metadata(&d) {
                annotated += 1;
                if let Err(e) = Trigger::parse(o["metadata"]["namespace"].as_str().unwrap_or("default"), &md)
                {
                    problems.push(format!(
                        "{}: gpuscale.io annotations refused by the scaler: {e}",
                        item["file"]
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        triggers >= 2 && annotated >= 1,
        "examples must exercise both modes"
    );
    println!("{log}");
    let _ = std::fs::remove_dir_all(&out);
}

/// The checks can fail: a typo, a privileged container, a wildcard rule and a bad trigger are
/// each caught.
#[test]
fn the_checks_catch_mistakes() {
    let Some(py) = python() else { return };
    let out = std::env::temp_dir().join(format!("gpuscale-deploy-bad-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{e}"));
    let bad = out.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 1\n  selector: {matchLabels: {a: b}}\n  template: {metadata: {labels: {a: b}}, spec: {containers: [{name: c, image: i}]}}\n---\n\
         apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: y}\nspec:\n  scaleTargetRef: {name: x}\n  pollingIntervall: 5\n  triggers: [{type: external, metadata: {scalerAddress: a:1}}]\n---\n\
         apiVersion: apps/v1\nkind: Deploymnet\nmetadata: {name: z}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (ok, log, _) = validate(&py, &out, &[bad]);
    assert!(!ok);
    for want in [
        "'replica' was unexpected",
        "'pollingIntervall' was unexpected",
        "Deploymnet",
    ] {
        assert!(log.contains(want), "missing `{want}` in:\n{log}");
    }
    let privileged: Value = serde_json::json!({"kind": "Deployment", "metadata": {"name": "p"}, "spec": {"template": {"spec": {"containers": [
        {"name": "c", "securityContext": {"privileged": true, "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true},
         "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}}}});
    assert_eq!(
        hardening(&privileged),
        vec!["Deployment p/c: privileged".to_string()]
    );
    let open: Value = serde_json::json!({"kind": "Deployment", "metadata": {"name": "o"}, "spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}});
    assert_eq!(hardening(&open).len(), 3);
    let wildcard: Value = serde_json::json!({"kind": "ClusterRole", "metadata": {"name": "w"}, "rules": [{"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}]});
    assert_eq!(
        hardening(&wildcard),
        vec!["ClusterRole w: wildcard in resources".to_string()]
    );
    let _ = std::fs::remove_dir_all(&out);
}
