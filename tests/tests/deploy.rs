//! deploy/: every kustomization renders with `kubectl kustomize`, and the Helm chart with `helm
//! template` (defaults and every `ci/` values file, after `helm lint --strict`); every object
//! validates against its schema (kubernetes-validate --strict for built-in kinds on each
//! supported Kubernetes version; check-jsonschema with shared/spec's KEDA and KServe schemas;
//! promtool for PrometheusRules), the hardening holds, every gpuscale trigger and annotation
//! set is accepted by the scaler's own parser, and the chart and the kustomize tree render the
//! same objects for the same choices.

use std::path::{Path, PathBuf};
use std::process::Command;

use gpuscale_scaler::keda::trigger::Trigger;
use gpuscale_scaler::kube::direct::annotations_to_metadata;
use gpuscale_tests::workspace_root;
use serde_json::Value;

/// The Kubernetes versions the manifests must validate on.
const VERSIONS: &str = "1.30.0,1.33.0,1.35.0";

fn python() -> Option<PathBuf> {
    let spec = workspace_root().join("../shared/spec");
    if !spec.is_dir() {
        let msg = format!(
            "{} not found: the schemas are not beside this checkout",
            spec.display()
        );
        gpuscale_testkit::missing(msg, "CI clones main with shared/ beside it");
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
    gpuscale_testkit::missing(msg, "./scripts/test installs tests/python-requirements.txt");
    None
}

/// `helm`: on PATH, or where ./scripts/test puts it.
fn helm() -> Option<PathBuf> {
    let local = workspace_root().join(".tools/bin/helm");
    for cand in [PathBuf::from("helm"), local] {
        if Command::new(&cand)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(cand);
        }
    }
    let msg = "helm is not installed (./scripts/test fetches it into .tools/bin)";
    gpuscale_testkit::missing(msg, "./scripts/test fetches helm");
    None
}

fn chart() -> PathBuf {
    workspace_root().join("deploy/helm/gpuscale")
}

/// `helm template` of the chart into gpuscale-system with these values files and `--set`s.
fn helm_template(helm: &Path, values: &[PathBuf], sets: &[&str]) -> String {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "gpuscale"])
        .arg(chart())
        .args(["--namespace", "gpuscale-system"]);
    for v in values {
        cmd.arg("-f").arg(v);
    }
    for s in sets {
        cmd.args(["--set", s]);
    }
    let r = cmd.output().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        r.status.success(),
        "helm template {values:?} {sets:?}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).into_owned()
}

fn ci_values() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
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

fn kustomize(dir: &Path) -> String {
    let r = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        r.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).into_owned()
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
        gpuscale_testkit::missing(msg, "./scripts/test fetches kubectl");
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
        let rendered = kustomize(d);
        let rel = d
            .strip_prefix(&root)
            .unwrap_or(d)
            .display()
            .to_string()
            .replace('/', "_");
        let f = out.join(format!("{rel}.yaml"));
        std::fs::write(&f, rendered).unwrap_or_else(|e| panic!("{e}"));
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

/// The chart lints clean, and what it renders with the defaults and with every `ci/` values file
/// passes the same validation and hardening as the kustomize tree.
#[test]
fn the_helm_chart_lints_renders_validates_and_is_hardened() {
    let Some(py) = python() else { return };
    let Some(helm) = helm() else { return };
    let out = std::env::temp_dir().join(format!("gpuscale-helm-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{e}"));
    let mut files = Vec::new();
    let mut cases: Vec<Vec<PathBuf>> = vec![Vec::new()];
    cases.extend(ci_values().into_iter().map(|v| vec![v]));
    assert!(
        cases.len() >= 4,
        "ci/ should hold direct, mtls and monitoring values: {cases:?}"
    );
    for values in &cases {
        let mut lint = Command::new(&helm);
        lint.args(["lint", "--strict"]).arg(chart());
        for v in values {
            lint.arg("-f").arg(v);
        }
        let r = lint.output().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            r.status.success(),
            "helm lint --strict {values:?}:\n{}{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
        let name = values
            .first()
            .and_then(|v| v.file_stem())
            .map_or("defaults".to_string(), |s| s.to_string_lossy().into_owned());
        let f = out.join(format!("helm-{name}.yaml"));
        std::fs::write(&f, helm_template(&helm, values, &[])).unwrap_or_else(|e| panic!("{e}"));
        files.push(f);
    }
    let (ok, log, objects) = validate(&py, &out, &files);
    assert!(ok, "the chart's objects do not validate:\n{log}");
    let problems: Vec<String> = objects
        .iter()
        .flat_map(|item| {
            hardening(&item["object"])
                .into_iter()
                .map(move |p| format!("{}: {p}", item["file"]))
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let kinds = |file: &str| -> Vec<String> {
        objects
            .iter()
            .filter(|o| o["file"].as_str().is_some_and(|f| f.ends_with(file)))
            .map(|o| o["object"]["kind"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert!(kinds("helm-monitoring-values.yaml").contains(&"PrometheusRule".to_string()));
    assert!(kinds("helm-mtls-values.yaml").contains(&"Certificate".to_string()));
    assert!(
        kinds("helm-direct-values.yaml")
            .iter()
            .filter(|k| *k == "Role")
            .count()
            == 2
    );
    println!("{log}");

    // Bad values are refused with the fix.
    let r = Command::new(&helm)
        .args(["template", "x"])
        .arg(chart())
        .args(["--set", "mode=kedda"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("mode: expected keda or direct"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// An object with what the two renderers legitimately differ on removed: labels and annotations
/// (Helm adds its release labels; comments are not objects).
fn normalized(o: &Value) -> Value {
    fn strip(v: &mut Value) {
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("labels");
            m.remove("annotations");
        }
        if let Some(t) = v.pointer_mut("/spec/template") {
            strip(t);
        }
    }
    let mut o = o.clone();
    strip(&mut o);
    o
}

fn objects_of(py: &Path, out: &Path, name: &str, yaml: &str) -> std::collections::BTreeMap<String, Value> {
    let f = out.join(format!("{name}.yaml"));
    std::fs::write(&f, yaml).unwrap_or_else(|e| panic!("{e}"));
    let (_, log, objects) = validate(py, out, &[f]);
    assert!(!objects.is_empty(), "{name}: nothing rendered\n{log}");
    objects
        .iter()
        .map(|i| {
            let o = &i["object"];
            let key = format!(
                "{} {}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["namespace"].as_str().unwrap_or("-"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            );
            (key, normalized(o))
        })
        .collect()
}

/// The chart and the kustomize tree cannot drift: for each choice both offer, they render the
/// same objects, field for field (labels and annotations aside).
#[test]
fn helm_and_kustomize_render_the_same_objects_for_the_same_choices() {
    let Some(py) = python() else { return };
    let Some(helm) = helm() else { return };
    if render().is_none() {
        return;
    }
    let out = std::env::temp_dir().join(format!("gpuscale-parity-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{e}"));
    let root = workspace_root();
    let cases: [(&str, &[&str]); 5] = [
        ("overlays/keda", &[]),
        ("overlays/direct", &["mode=direct"]),
        (
            "overlays/monitoring",
            &[
                "prometheus.serviceMonitor.enabled=true",
                "prometheusRules.enabled=true",
                "grafanaDashboard.enabled=true",
            ],
        ),
        ("overlays/mtls", &["mtls.enabled=true"]),
        ("overlays/nvidia-runtime", &["collector.runtimeClassName=nvidia"]),
    ];
    for (overlay, sets) in cases {
        let mut sets = sets.to_vec();
        sets.push("namespace.create=true");
        let k = objects_of(
            &py,
            &out,
            &format!("k-{}", overlay.replace('/', "_")),
            &kustomize(&root.join("deploy").join(overlay)),
        );
        let h = objects_of(
            &py,
            &out,
            &format!("h-{}", overlay.replace('/', "_")),
            &helm_template(&helm, &[], &sets),
        );
        let kk: Vec<&String> = k.keys().collect();
        let hk: Vec<&String> = h.keys().collect();
        assert_eq!(kk, hk, "{overlay} vs helm {sets:?}: different objects");
        for (key, ko) in &k {
            assert_eq!(
                ko, &h[key],
                "{overlay} vs helm {sets:?}: {key} differs\nkustomize: {ko}\nhelm:      {}",
                h[key]
            );
        }
        println!("{overlay} = helm {sets:?}: {} objects, field for field", k.len());
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// One rule file, one dashboard: the copies in the chart and the kustomize component are the
/// same.
#[test]
fn the_chart_and_the_component_carry_the_same_rules_and_dashboard() {
    let root = workspace_root();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(
        read("deploy/monitoring/gpuscale.rules.yaml"),
        read("deploy/helm/gpuscale/files/gpuscale.rules.yaml"),
        "copy deploy/monitoring/gpuscale.rules.yaml to the chart's files/"
    );
    assert_eq!(
        read("deploy/monitoring/gpuscale-dashboard.json"),
        read("deploy/helm/gpuscale/files/gpuscale-dashboard.json"),
        "copy deploy/monitoring/gpuscale-dashboard.json to the chart's files/"
    );
    let Some(py) = python() else { return };
    // The PrometheusRule's groups are the rule file's, read as YAML by the validator's Python.
    let r = Command::new(&py)
        .args([
            "-c",
            "import sys, yaml; a = yaml.safe_load(open(sys.argv[1]))['groups']; b = yaml.safe_load(open(sys.argv[2]))['spec']['groups']; sys.exit(0 if a == b else 1)",
        ])
        .arg(root.join("deploy/monitoring/gpuscale.rules.yaml"))
        .arg(root.join("deploy/monitoring/prometheusrule.yaml"))
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        r.success(),
        "deploy/monitoring/prometheusrule.yaml's groups differ from gpuscale.rules.yaml: regenerate it"
    );
}
