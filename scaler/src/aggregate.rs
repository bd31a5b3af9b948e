//! From collector pages to per-workload observations: the scaler's view of the cluster.
//!
//! Pure: a [`View`] is built from the parsed pages of every collector (and when each was last
//! read), and knows nothing of HTTP or clocks beyond the instants it is given. Safety lives
//! here too: a view that is missing a collector, or in which one of a workload's targets could
//! not be scraped, gives that workload no reading at all rather than a smaller one.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use gpuscale_collector::text::MetricFamily;

use crate::trigger::WorkloadKey;

/// One workload as the collectors see it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Observed {
    /// Requests queued, summed over its replicas.
    pub waiting: f64,
    /// Requests in service, summed.
    pub running: f64,
    /// Mean KV-cache usage over the replicas that report it.
    pub kv_cache_usage: Option<f64>,
    /// Mean GPU utilization over the GPUs its pods hold.
    pub gpu_utilization: Option<f64>,
    /// Targets (replicas) scraped successfully.
    pub up: u32,
    /// Targets whose last scrape failed: the view of this workload is partial.
    pub down: u32,
}

/// GPUs of one product on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Capacity {
    /// GPUs (or MIG devices) the node has.
    pub allocatable: u32,
    /// Of which held by a pod.
    pub allocated: u32,
}

/// What one collector page says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    /// Per workload.
    pub workloads: BTreeMap<WorkloadKey, Observed>,
    /// Per (node, GPU model).
    pub capacity: BTreeMap<(String, String), Capacity>,
}

fn label<'a>(labels: &'a [(String, String)], name: &str) -> &'a str {
    labels
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

fn workload_of(labels: &[(String, String)]) -> Option<WorkloadKey> {
    let namespace = label(labels, "namespace");
    let name = label(labels, "workload");
    (!namespace.is_empty() && !name.is_empty()).then(|| WorkloadKey {
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

impl Page {
    /// Read a collector's families.
    pub fn read(families: &[MetricFamily]) -> Page {
        let mut page = Page::default();
        // (namespace, pod) -> workload, to attribute GPU series, which carry the pod only.
        let mut pods: HashMap<(String, String), WorkloadKey> = HashMap::new();
        let mut kv: BTreeMap<WorkloadKey, (f64, u32)> = BTreeMap::new();
        let mut targets: BTreeMap<WorkloadKey, Vec<&str>> = BTreeMap::new();
        for f in families {
            for s in &f.samples {
                let Some(w) = workload_of(&s.labels) else { continue };
                let pod = label(&s.labels, "pod");
                if !pod.is_empty() {
                    pods.insert((w.namespace.clone(), pod.to_string()), w.clone());
                }
                let o = page.workloads.entry(w.clone()).or_default();
                match s.name.as_str() {
                    "gpuscale_workload_requests_waiting" => o.waiting += s.value,
                    "gpuscale_workload_requests_running" => o.running += s.value,
                    "gpuscale_workload_kv_cache_usage_ratio" => {
                        let e = kv.entry(w).or_default();
                        e.0 += s.value;
                        e.1 += 1;
                    }
                    "gpuscale_scrape_up" => {
                        let target = label(&s.labels, "target");
                        let seen = targets.entry(w).or_default();
                        if !seen.contains(&target) {
                            seen.push(target);
                            if s.value == 1.0 {
                                o.up += 1;
                            } else {
                                o.down += 1;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        for (w, (sum, n)) in kv {
            if let Some(o) = page.workloads.get_mut(&w) {
                o.kv_cache_usage = Some(sum / f64::from(n));
            }
        }
        let mut gpu: BTreeMap<WorkloadKey, (f64, u32)> = BTreeMap::new();
        for f in families {
            for s in &f.samples {
                let node = label(&s.labels, "node");
                let pod = label(&s.labels, "pod");
                let namespace = label(&s.labels, "namespace");
                match s.name.as_str() {
                    "gpuscale_gpu_info" => {
                        let c = page
                            .capacity
                            .entry((node.to_string(), label(&s.labels, "model").to_string()))
                            .or_default();
                        c.allocatable += 1;
                        c.allocated += u32::from(!pod.is_empty());
                    }
                    "gpuscale_gpu_utilization_ratio" if !pod.is_empty() => {
                        if let Some(w) = pods.get(&(namespace.to_string(), pod.to_string())) {
                            let e = gpu.entry(w.clone()).or_default();
                            e.0 += s.value;
                            e.1 += 1;
                        }
                    }
                    _ => {}
                }
            }
        }
        for (w, (sum, n)) in gpu {
            if let Some(o) = page.workloads.get_mut(&w) {
                o.gpu_utilization = Some(sum / f64::from(n));
            }
        }
        page
    }
}

/// One collector's latest state.
#[derive(Clone, Debug, Default)]
pub struct Source {
    /// The last page read successfully, and when.
    pub last_ok: Option<(Duration, Page)>,
    /// Why the last read failed, if it did.
    pub error: Option<String>,
}

/// Every collector's latest page, combined.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// Per workload, summed over collectors.
    pub workloads: BTreeMap<WorkloadKey, Observed>,
    /// Per (node, model).
    pub capacity: BTreeMap<(String, String), Capacity>,
    /// When the oldest page in the view was read; `None` when a collector has never answered
    /// (or there are none): then nothing is known.
    pub oldest: Option<Duration>,
    /// Why the view is incomplete, naming the collector.
    pub fault: Option<String>,
}

/// What a workload's view says, for [`View::observe`].
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// Known, read at `at` (the oldest page it is built from).
    Known {
        /// The numbers.
        observed: Observed,
        /// When the oldest page behind them was read.
        at: Duration,
    },
    /// Not known, with the reason.
    Unknown(String),
}

impl View {
    /// Combine the collectors' latest pages. `sources` is keyed by collector address.
    pub fn combine<'a>(sources: impl IntoIterator<Item = (&'a str, &'a Source)>) -> View {
        let mut view = View::default();
        let mut oldest: Option<Duration> = None;
        let mut any = false;
        for (addr, src) in sources {
            any = true;
            let Some((at, page)) = &src.last_ok else {
                view.fault.get_or_insert_with(|| {
                    format!(
                        "collector {addr} has not answered yet{}",
                        src.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
                    )
                });
                continue;
            };
            if src.error.is_some() && view.fault.is_none() {
                view.fault = src.error.as_ref().map(|e| format!("collector {addr}: {e}"));
            }
            oldest = Some(oldest.map_or(*at, |o: Duration| o.min(*at)));
            for (w, o) in &page.workloads {
                let t = view.workloads.entry(w.clone()).or_default();
                t.waiting += o.waiting;
                t.running += o.running;
                t.up += o.up;
                t.down += o.down;
                // Means across collectors, weighted by replicas reporting.
                t.kv_cache_usage = weighted(t.kv_cache_usage, t.up - o.up, o.kv_cache_usage, o.up);
                t.gpu_utilization = weighted(t.gpu_utilization, t.up - o.up, o.gpu_utilization, o.up);
            }
            for (k, c) in &page.capacity {
                let t = view.capacity.entry(k.clone()).or_default();
                t.allocatable += c.allocatable;
                t.allocated += c.allocated;
            }
        }
        if !any {
            view.fault = Some("no collectors configured or discovered".into());
        }
        view.oldest = if view.fault.as_deref().is_some_and(|f| f.contains("not answered")) || !any {
            None
        } else {
            oldest
        };
        view
    }

    /// What is known of one workload. A workload no collector mentions has no load and no
    /// replicas as far as the collectors can tell: a fresh zero, provided every collector
    /// answered.
    pub fn observe(&self, w: &WorkloadKey) -> Seen {
        let Some(at) = self.oldest else {
            return Seen::Unknown(
                self.fault
                    .clone()
                    .unwrap_or_else(|| "no collector has answered yet".into()),
            );
        };
        match self.workloads.get(w) {
            Some(o) if o.down > 0 => Seen::Unknown(format!(
                "{} of {} targets of {w} could not be scraped; the view is partial",
                o.down,
                o.up + o.down
            )),
            Some(o) => Seen::Known {
                observed: o.clone(),
                at,
            },
            None => Seen::Known {
                observed: Observed::default(),
                at,
            },
        }
    }

    /// Free GPUs of `model` (any when empty) across nodes.
    pub fn free_gpus(&self, model: &str) -> u32 {
        self.capacity
            .iter()
            .filter(|((_, m), _)| model.is_empty() || m == model)
            .map(|(_, c)| c.allocatable.saturating_sub(c.allocated))
            .sum()
    }
}

fn weighted(a: Option<f64>, na: u32, b: Option<f64>, nb: u32) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if na + nb > 0 => {
            Some((a * f64::from(na) + b * f64::from(nb)) / f64::from(na + nb))
        }
        (Some(a), Some(_)) => Some(a),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use gpuscale_collector::text::{Limits, parse_prometheus};

    const PAGE: &str = r#"
gpuscale_gpu_info{gpu="0",uuid="GPU-a",model="NVIDIA H100",node="n1",namespace="llm",pod="qwen-abc",container="c"} 1
gpuscale_gpu_info{gpu="1",uuid="GPU-b",model="NVIDIA H100",node="n1"} 1
gpuscale_gpu_utilization_ratio{gpu="0",uuid="GPU-a",model="NVIDIA H100",node="n1",namespace="llm",pod="qwen-abc",container="c"} 0.9
gpuscale_gpu_utilization_ratio{gpu="1",uuid="GPU-b",model="NVIDIA H100",node="n1"} 0.0
gpuscale_workload_requests_waiting{namespace="llm",workload="qwen",pod="qwen-abc",target="http://a/metrics",node="n1"} 3
gpuscale_workload_requests_running{namespace="llm",workload="qwen",pod="qwen-abc",target="http://a/metrics",node="n1"} 8
gpuscale_workload_kv_cache_usage_ratio{namespace="llm",workload="qwen",pod="qwen-abc",target="http://a/metrics",node="n1"} 0.5
gpuscale_scrape_up{namespace="llm",workload="qwen",pod="qwen-abc",target="http://a/metrics",node="n1"} 1
gpuscale_scrape_up{namespace="llm",workload="llama",target="http://b/metrics",node="n1"} 0
"#;

    fn page() -> Page {
        Page::read(&parse_prometheus(PAGE, &Limits::default()).unwrap())
    }

    fn key(n: &str) -> WorkloadKey {
        WorkloadKey {
            namespace: "llm".into(),
            name: n.into(),
        }
    }

    #[test]
    fn reads_a_page() {
        let p = page();
        let q = &p.workloads[&key("qwen")];
        assert_eq!((q.waiting, q.running, q.up, q.down), (3.0, 8.0, 1, 0));
        assert_eq!(q.kv_cache_usage, Some(0.5));
        assert_eq!(q.gpu_utilization, Some(0.9));
        assert_eq!(p.workloads[&key("llama")].down, 1);
        let c = &p.capacity[&("n1".to_string(), "NVIDIA H100".to_string())];
        assert_eq!((c.allocatable, c.allocated), (2, 1));
    }

    #[test]
    fn partial_and_missing_views_are_unknown() {
        let ok = Source {
            last_ok: Some((Duration::from_secs(10), page())),
            error: None,
        };
        let never = Source {
            last_ok: None,
            error: Some("connection refused".into()),
        };
        let v = View::combine([("a:9400", &ok)]);
        assert!(matches!(v.observe(&key("qwen")), Seen::Known { at, .. } if at == Duration::from_secs(10)));
        let Seen::Unknown(why) = v.observe(&key("llama")) else {
            panic!()
        };
        assert!(why.contains("1 of 1 targets"), "{why}");
        // A workload nobody reports: a fresh zero.
        assert!(
            matches!(v.observe(&key("idle")), Seen::Known { observed, .. } if observed == Observed::default())
        );
        assert_eq!(v.free_gpus(""), 1);
        assert_eq!(v.free_gpus("NVIDIA A100"), 0);

        let v = View::combine([("a:9400", &ok), ("b:9400", &never)]);
        let Seen::Unknown(why) = v.observe(&key("idle")) else {
            panic!()
        };
        assert!(
            why.contains("b:9400") && why.contains("connection refused"),
            "{why}"
        );
        let v = View::combine(std::iter::empty());
        assert!(matches!(v.observe(&key("idle")), Seen::Unknown(_)));
    }

    #[test]
    fn sums_across_collectors() {
        let a = Source {
            last_ok: Some((Duration::from_secs(10), page())),
            error: None,
        };
        let b = Source {
            last_ok: Some((Duration::from_secs(8), page())),
            error: Some("timeout".into()),
        };
        let v = View::combine([("a", &a), ("b", &b)]);
        let Seen::Known { observed, at } = v.observe(&key("qwen")) else {
            panic!()
        };
        assert_eq!(
            (observed.waiting, observed.up, at),
            (6.0, 2, Duration::from_secs(8))
        );
        assert_eq!(observed.kv_cache_usage, Some(0.5));
    }
}
