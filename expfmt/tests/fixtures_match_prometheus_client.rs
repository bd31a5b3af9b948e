//! Every captured model-server and exporter page in ../shared/fixtures/metrics parses to the same
//! families, types, help, labels, values and timestamps as Python's `prometheus_client` reads
//! from it (run for real, through expfmt/tests/python/dump_families.py).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use gpuscale_expfmt::text::{Kind, Limits, MetricFamily, parse_prometheus};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn missing(msg: String) {
    gpuscale_testkit::missing(msg, "scripts/test sets this up");
}

/// The Python with prometheus_client: $GPUSCALE_PYTHON, or the venv scripts/test makes.
fn python() -> Option<PathBuf> {
    let p = std::env::var_os("GPUSCALE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    let ok = Command::new(&p)
        .args(["-c", "import prometheus_client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Some(p)
    } else {
        missing(format!(
            "{} with prometheus_client not found (run scripts/test once)",
            p.display()
        ));
        None
    }
}

fn number(v: f64) -> Value {
    if v.is_nan() {
        Value::from("NaN")
    } else if v.is_infinite() {
        Value::from(if v > 0.0 { "+Inf" } else { "-Inf" })
    } else {
        Value::from(v)
    }
}

/// Our families in the shape the Python script prints, with prometheus_client's own munging:
/// counter families lose a `_total` suffix and their samples gain one, `untyped` is spelled so.
fn ours_as_python(families: &[MetricFamily]) -> Value {
    let mut out = Vec::new();
    for f in families {
        let counter = f.kind == Kind::Counter;
        let (name, add_total) = match f.name.strip_suffix("_total") {
            Some(base) if counter => (base.to_string(), false),
            _ => (f.name.clone(), counter),
        };
        let samples: Vec<Value> = f
            .samples
            .iter()
            .map(|s| {
                let labels: BTreeMap<&str, &str> = s.labels.iter().collect();
                serde_json::json!({
                    "name": if add_total { format!("{}_total", s.name) } else { s.name.clone() },
                    "labels": labels,
                    "value": number(s.value),
                    "timestamp": s.timestamp,
                })
            })
            .collect();
        let kind = if f.kind == Kind::Unknown {
            "untyped"
        } else {
            f.kind.as_str()
        };
        out.push(serde_json::json!({"name": name, "type": kind, "help": f.help, "samples": samples}));
    }
    Value::Array(out)
}

/// Python prints ints as ints and floats as floats; compare numbers as f64.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Number(n) => n.as_f64().map_or(v.clone(), Value::from),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), normalize(v))).collect()),
        _ => v.clone(),
    }
}

fn pages() -> Option<Vec<PathBuf>> {
    let dir = root().join("../shared/fixtures/metrics");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        missing(format!(
            "{} not found: captured pages are not beside this checkout",
            dir.display()
        ));
        return None;
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    v.sort();
    Some(v)
}

fn python_reading(python: &Path, page: &Path) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/dump_families.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(page)
        .output()
        .unwrap_or_else(|e| panic!("{python:?}: {e}"));
    assert!(
        out.status.success(),
        "{page:?}: python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{page:?}: {e}"))
}

#[test]
fn every_captured_page_reads_as_prometheus_client_reads_it() {
    let (Some(python), Some(pages)) = (python(), pages()) else {
        return;
    };
    assert_eq!(pages.len(), 8, "{pages:?}");
    for page in pages {
        let text = std::fs::read_to_string(&page).unwrap_or_default();
        let ours = parse_prometheus(&text, &Limits::default()).unwrap_or_else(|e| panic!("{page:?}: {e}"));
        let (a, b) = (
            normalize(&ours_as_python(&ours)),
            normalize(&python_reading(&python, &page)),
        );
        if a != b {
            let (fa, fb) = (
                a.as_array().cloned().unwrap_or_default(),
                b.as_array().cloned().unwrap_or_default(),
            );
            let first = fa.iter().zip(&fb).find(|(x, y)| x != y);
            panic!(
                "{page:?}: {} families here, {} in prometheus_client; first difference:\nours:   {}\ntheirs: {}",
                fa.len(),
                fb.len(),
                first.map(|f| f.0.to_string()).unwrap_or_default(),
                first.map(|f| f.1.to_string()).unwrap_or_default()
            );
        }
        let samples: usize = ours.iter().map(|f| f.samples.len()).sum();
        eprintln!(
            "{}: {} families, {samples} samples, identical",
            page.display(),
            ours.len()
        );
    }
}

#[test]
fn queue_depth_signals_read_from_real_pages() {
    let Some(pages) = pages() else { return };
    let read = |name: &str| {
        let p = pages.iter().find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(name))
        });
        let text = std::fs::read_to_string(p.unwrap_or_else(|| panic!("{name}"))).unwrap_or_default();
        parse_prometheus(&text, &Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let value = |fams: &[MetricFamily], metric: &str| {
        fams.iter()
            .flat_map(|f| &f.samples)
            .find(|s| s.name == metric)
            .map(|s| s.value)
    };
    // vLLM and SGLang names contain `:`; SGLang's page is under heavy load (README: 2826 queued).
    assert_eq!(value(&read("vllm"), "vllm:num_requests_waiting"), Some(0.0));
    assert_eq!(value(&read("sglang"), "sglang:num_queue_reqs"), Some(2826.0));
    assert_eq!(value(&read("tgi"), "tgi_queue_size"), Some(0.0));
    let triton = read("triton-datadog");
    assert!(
        triton
            .iter()
            .any(|f| f.name == "nv_inference_pending_request_count" && !f.samples.is_empty())
    );
}
