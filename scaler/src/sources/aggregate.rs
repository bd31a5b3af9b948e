//! From collector pages to per-workload observations: the scaler's view of the cluster.
//!
//! Pure: a [`View`] is built from the parsed pages of every collector (and when each was
//! received), and knows nothing of HTTP or clocks beyond the instants it is given. Safety lives
//! here: a page that is not a gpuscale collector's is refused; a workload one of whose targets
//! has no valid reading, or that no collector reports at all, is *unknown*, never zero; and a
//! reading is aged from when the collector measured it, not from when its page arrived. The
//! series and rules read here are the collector's contract ([`gpuscale_contract`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use gpuscale_contract::{self as contract, Fault, label as l};
use gpuscale_expfmt::text::{Labels, MetricFamily};

use gpuscale_contract::WorkloadKey;

/// At most this many target faults are named in one reason.
const MAX_FAULTS_NAMED: usize = 3;

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
    /// Prompt tokens/s summed over its replicas; `None` unless every replica with a valid
    /// reading reports one (a partial sum is not the workload's rate).
    pub prompt_tokens_rate: Option<f64>,
    /// Output tokens/s, on the same rule.
    pub generation_tokens_rate: Option<f64>,
    /// Targets (replicas) with a valid reading.
    pub up: u32,
    /// Targets without one: the view of this workload is partial.
    pub down: u32,
    /// Why, per target (the first few).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<String>,
    /// When the oldest reading behind these numbers was measured, in seconds on the scaler's
    /// clock (negative: before the scaler started).
    pub measured: f64,
}

/// GPUs of one product on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Capacity {
    /// GPUs (or MIG devices) the node has.
    pub allocatable: u32,
    /// Of which held by a pod.
    pub allocated: u32,
}

/// Why a collector's page cannot be used.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PageError {
    /// The page lacks the collector's identity series.
    #[error(
        "{url} is not a gpuscale collector: its page has no `{}` series (a model server's or another exporter's page?); point --collector at a gpuscale-collector, e.g. HOST:9400",
        contract::COLLECTOR_INFO
    )]
    NotACollector {
        /// The collector, redacted.
        url: String,
    },
    /// The collector speaks another version of the contract.
    #[error(
        "{url} speaks collector contract version `{version}`; this scaler reads version `{}`: run matching releases",
        contract::CONTRACT_VERSION
    )]
    Contract {
        /// The collector, redacted.
        url: String,
        /// What it says.
        version: String,
    },
    /// The page has no render time, so nothing on it can be aged.
    #[error(
        "{url}: the page has no `{}`, so its readings cannot be aged",
        contract::LAST_TICK
    )]
    NoTime {
        /// The collector, redacted.
        url: String,
    },
}

/// When and where a page was received: the scaler's monotonic instant and its wall clock.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    /// Scaler clock (time since start).
    pub at: Duration,
    /// Unix seconds on the scaler's wall clock.
    pub wall: f64,
}

/// What one collector page says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    /// Per workload.
    pub workloads: BTreeMap<WorkloadKey, Observed>,
    /// Per (node, GPU model).
    pub capacity: BTreeMap<(String, String), Capacity>,
    /// When the collector rendered it, Unix seconds on its clock: what a reader asks for a
    /// newer page than (`?after=`).
    pub rendered: f64,
}

fn label<'a>(labels: &'a Labels, name: &str) -> &'a str {
    labels.get(name).unwrap_or("")
}

/// The workload a series names, as (namespace, name); a missing namespace is the contract's
/// default. Borrowed from the page: a page names each workload on many series.
fn workload_of(labels: &Labels) -> Option<(&str, &str)> {
    let name = label(labels, l::WORKLOAD);
    if name.is_empty() {
        return None;
    }
    let namespace = match label(labels, l::NAMESPACE) {
        "" => contract::DEFAULT_NAMESPACE,
        ns => ns,
    };
    Some((namespace, name))
}

/// One target as its series on one page describe it.
#[derive(Default)]
struct TargetRow<'a> {
    pod: &'a str,
    up: Option<bool>,
    valid: Option<bool>,
    reason: Option<Fault>,
    measured_at: Option<f64>,
    waiting: Option<f64>,
    running: Option<f64>,
    kv: Option<f64>,
    prompt_rate: Option<f64>,
    generation_rate: Option<f64>,
}

impl TargetRow<'_> {
    /// Why this target has no usable reading, if it has none.
    fn fault(&self) -> Option<String> {
        match (self.up, self.valid) {
            (None, _) => Some(format!("no `{}` series for it", contract::SCRAPE_UP)),
            (Some(false), _) | (_, Some(false)) => Some(
                self.reason
                    .map_or("its last scrape failed", Fault::explain)
                    .to_string(),
            ),
            (_, None) => Some(format!("no `{}` series for it", contract::READING_VALID)),
            _ if self.waiting.is_none() && self.running.is_none() => {
                Some("its queue series are missing from the collector's page".into())
            }
            _ if self.measured_at.is_none() => Some(format!(
                "no `{}`: its reading cannot be aged",
                contract::SCRAPE_TIMESTAMP
            )),
            _ => None,
        }
    }
}

fn mean(sum: f64, n: u32) -> Option<f64> {
    (n > 0).then(|| sum / f64::from(n))
}

impl Page {
    /// Read a collector's families, received as `received` from `url` (redacted by the caller).
    pub fn read(families: &[MetricFamily], url: &str, received: Received) -> Result<Page, PageError> {
        let samples = || families.iter().flat_map(|f| &f.samples);
        let info = samples()
            .find(|s| s.name == contract::COLLECTOR_INFO)
            .ok_or_else(|| PageError::NotACollector { url: url.into() })?;
        let version = label(&info.labels, l::CONTRACT);
        if version != contract::CONTRACT_VERSION {
            return Err(PageError::Contract {
                url: url.into(),
                version: version.into(),
            });
        }
        let rendered = samples()
            .find(|s| s.name == contract::LAST_TICK)
            .map(|s| s.value)
            .filter(|v| v.is_finite())
            .ok_or_else(|| PageError::NoTime { url: url.into() })?;

        // (namespace, workload, target) -> its series.
        let mut rows: BTreeMap<(&str, &str, &str), TargetRow> = BTreeMap::new();
        for s in samples() {
            let kind = match s.name.as_str() {
                n if n == contract::SCRAPE_UP => 0,
                n if n == contract::READING_VALID => 1,
                n if n == contract::SCRAPE_TIMESTAMP => 2,
                n if n == contract::WAITING => 3,
                n if n == contract::RUNNING => 4,
                n if n == contract::KV_CACHE => 5,
                n if n == contract::PROMPT_TOKENS_RATE => 6,
                n if n == contract::GENERATION_TOKENS_RATE => 7,
                _ => continue,
            };
            let Some((namespace, name)) = workload_of(&s.labels) else {
                continue;
            };
            let target = label(&s.labels, l::TARGET);
            let r = rows.entry((namespace, name, target)).or_default();
            if r.pod.is_empty() {
                r.pod = label(&s.labels, l::POD);
            }
            match kind {
                0 => r.up = Some(s.value == 1.0),
                1 => {
                    r.valid = Some(s.value == 1.0);
                    r.reason = Fault::from_code(label(&s.labels, l::REASON));
                }
                2 => r.measured_at = Some(s.value),
                3 => r.waiting = Some(s.value),
                4 => r.running = Some(s.value),
                5 => r.kv = Some(s.value),
                6 => r.prompt_rate = Some(s.value),
                _ => r.generation_rate = Some(s.value),
            }
        }

        let mut page = Page {
            rendered,
            ..Page::default()
        };
        // (namespace, pod) -> workload, to attribute GPU series, which carry the pod only.
        let mut pods: HashMap<(&str, &str), WorkloadKey> = HashMap::new();
        let mut kv: BTreeMap<WorkloadKey, (f64, u32)> = BTreeMap::new();
        // Token rates per workload: the sums, and whether every valid target had one.
        let mut tokens: BTreeMap<WorkloadKey, (f64, f64, bool)> = BTreeMap::new();
        for (&(namespace, name, target), r) in &rows {
            let w = WorkloadKey {
                namespace: namespace.to_string(),
                name: name.to_string(),
            };
            if !r.pod.is_empty() {
                pods.insert((namespace, r.pod), w.clone());
            }
            let o = page.workloads.entry(w.clone()).or_insert_with(|| Observed {
                measured: f64::INFINITY,
                ..Observed::default()
            });
            // Values are checked again here: one that cannot be real is no reading, whoever sent it.
            let fault = r.fault().or_else(|| {
                contract::check_reading(r.waiting, r.running, r.kv).map(|f| f.explain().to_string())
            });
            if let Some(why) = fault {
                o.down += 1;
                if o.faults.len() < MAX_FAULTS_NAMED {
                    o.faults.push(format!("target {target}: {why}"));
                }
                continue;
            }
            o.up += 1;
            o.waiting += r.waiting.unwrap_or(0.0);
            o.running += r.running.unwrap_or(0.0);
            let t = tokens.entry(w.clone()).or_insert((0.0, 0.0, true));
            match (r.prompt_rate, r.generation_rate) {
                (Some(p), Some(g))
                    if contract::plausible_tokens_rate(p) && contract::plausible_tokens_rate(g) =>
                {
                    t.0 += p;
                    t.1 += g;
                }
                _ => t.2 = false,
            }
            if let Some(v) = r.kv {
                let e = kv.entry(w.clone()).or_default();
                e.0 += v;
                e.1 += 1;
            }
            // Aged by the collector's own clock and by the scaler's, whichever says older:
            // a page rendered an hour ago is an hour old even if it arrived just now.
            let measured_at = r.measured_at.unwrap_or(f64::NEG_INFINITY);
            let age = (rendered - measured_at).max(received.wall - measured_at).max(0.0);
            o.measured = o.measured.min(received.at.as_secs_f64() - age);
        }
        for o in page.workloads.values_mut() {
            if !o.measured.is_finite() {
                o.measured = received.at.as_secs_f64();
            }
        }
        for (w, (sum, n)) in kv {
            if let Some(o) = page.workloads.get_mut(&w) {
                o.kv_cache_usage = mean(sum, n);
            }
        }
        for (w, (p, g, all)) in tokens {
            if let Some(o) = page.workloads.get_mut(&w).filter(|_| all) {
                (o.prompt_tokens_rate, o.generation_tokens_rate) = (Some(p), Some(g));
            }
        }
        let mut gpu: BTreeMap<WorkloadKey, (f64, u32)> = BTreeMap::new();
        for s in samples() {
            let node = label(&s.labels, l::NODE);
            let pod = label(&s.labels, l::POD);
            let namespace = label(&s.labels, l::NAMESPACE);
            match s.name.as_str() {
                n if n == contract::GPU_INFO => {
                    let c = page
                        .capacity
                        .entry((node.to_string(), label(&s.labels, l::MODEL).to_string()))
                        .or_default();
                    c.allocatable += 1;
                    c.allocated += u32::from(!pod.is_empty());
                }
                n if n == contract::GPU_UTILIZATION && !pod.is_empty() => {
                    if let Some(w) = pods.get(&(namespace, pod)) {
                        let e = gpu.entry(w.clone()).or_default();
                        e.0 += s.value;
                        e.1 += 1;
                    }
                }
                _ => {}
            }
        }
        for (w, (sum, n)) in gpu {
            if let Some(o) = page.workloads.get_mut(&w) {
                o.gpu_utilization = mean(sum, n);
            }
        }
        Ok(page)
    }
}

/// One collector's latest state.
#[derive(Clone, Debug, Default)]
pub struct Source {
    /// The last page read successfully, and when it was received.
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
    /// When the oldest page in the view was received; `None` when a collector has never
    /// answered (or there are none): then nothing is known.
    pub oldest: Option<Duration>,
    /// Why the view is incomplete, naming the collector.
    pub fault: Option<String>,
    /// Workload name -> namespaces the collectors report it in, for near-miss reasons.
    by_name: HashMap<String, Vec<String>>,
    /// Which collectors (addresses, in order) report each workload, and each (node, model):
    /// what [`View::update`] combines a changed entry again from, without a pass over the fleet.
    reporters: HashMap<WorkloadKey, Vec<String>>,
    capacity_reporters: HashMap<(String, String), Vec<String>>,
}

/// What a workload's view says, for [`View::observe`].
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// Known from the collectors.
    Known {
        /// The numbers.
        observed: Observed,
        /// When the oldest reading behind them was measured, seconds on the scaler's clock.
        at: f64,
    },
    /// Every collector answered and none reports the workload: not zero, only not seen. At
    /// zero replicas an activator's report can still make it known (see `workloads`).
    Absent(String),
    /// Not known, with the reason.
    Unknown(String),
}

impl View {
    /// Combine the collectors' latest pages. `sources` is keyed by collector address.
    pub fn combine<'a>(sources: impl IntoIterator<Item = (&'a str, &'a Source)>) -> View {
        let mut view = View::default();
        let mut oldest: Option<Duration> = None;
        let mut any = false;
        let mut never = false;
        for (raw, src) in sources {
            any = true;
            let addr = contract::redact_url(raw);
            let Some((at, page)) = &src.last_ok else {
                never = true;
                view.fault.get_or_insert_with(|| {
                    format!(
                        "collector {addr} has not answered yet{}",
                        src.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
                    )
                });
                continue;
            };
            // The collector's latest read failed: what it reports now is unknown, so every
            // workload its last good page held is unknown too, naming the failure.
            let failed = src.error.as_ref().map(|e| format!("collector {addr}: {e}"));
            if failed.is_some() && view.fault.is_none() {
                view.fault = failed.clone();
            }
            oldest = Some(oldest.map_or(*at, |o: Duration| o.min(*at)));
            for (w, o) in &page.workloads {
                let t = view
                    .workloads
                    .entry(w.clone())
                    .or_insert_with(|| part_zero(failed.is_some()));
                add(t, o, failed.as_deref());
                view.reporters.entry(w.clone()).or_default().push(raw.to_string());
            }
            for (k, c) in &page.capacity {
                let t = view.capacity.entry(k.clone()).or_default();
                t.allocatable += c.allocatable;
                t.allocated += c.allocated;
                view.capacity_reporters
                    .entry(k.clone())
                    .or_default()
                    .push(raw.to_string());
            }
        }
        for w in view.workloads.keys() {
            let e = view.by_name.entry(w.name.clone()).or_default();
            if !e.contains(&w.namespace) {
                e.push(w.namespace.clone());
            }
        }
        if !any {
            view.fault = Some("no collectors configured or discovered".into());
        }
        view.oldest = if never || !any { None } else { oldest };
        view
    }

    /// Bring a view combined from `sources` up to date with `changed` (not `everything`):
    /// only the workloads and nodes on the changed pages are combined again, each from the
    /// collectors that report it, in the order [`View::combine`] takes them, so the result is
    /// the view `combine` would give. Its cost grows with the change, not with the fleet: a
    /// newer page from one node re-combines that node's workloads, not the 40,000 of a
    /// 5,000-node fleet.
    pub fn update(&mut self, sources: &BTreeMap<String, Source>, changed: &Changed) {
        debug_assert!(!changed.everything, "a change to everything needs View::combine");
        let page_of = |addr: &str| sources.get(addr).and_then(|s| s.last_ok.as_ref()).map(|(_, p)| p);
        let mut workloads: BTreeSet<&WorkloadKey> = BTreeSet::new();
        let mut nodes: BTreeSet<&(String, String)> = BTreeSet::new();
        for (addr, (ws, cs)) in &changed.pages {
            let page = page_of(addr);
            for w in ws {
                let on = page.is_some_and(|p| p.workloads.contains_key(w));
                reported(&mut self.reporters, w, addr, on);
                workloads.insert(w);
            }
            for k in cs {
                let on = page.is_some_and(|p| p.capacity.contains_key(k));
                reported(&mut self.capacity_reporters, k, addr, on);
                nodes.insert(k);
            }
        }
        for w in workloads {
            let mut sum: Option<Observed> = None;
            for addr in self.reporters.get(w).into_iter().flatten() {
                let Some(src) = sources.get(addr) else { continue };
                let Some(o) = src.last_ok.as_ref().and_then(|(_, p)| p.workloads.get(w)) else {
                    continue;
                };
                let failed = src
                    .error
                    .as_ref()
                    .map(|e| format!("collector {}: {e}", contract::redact_url(addr)));
                add(
                    sum.get_or_insert_with(|| part_zero(failed.is_some())),
                    o,
                    failed.as_deref(),
                );
            }
            match sum {
                Some(o) => match self.workloads.get_mut(w) {
                    Some(slot) => *slot = o,
                    None => {
                        let e = self.by_name.entry(w.name.clone()).or_default();
                        if !e.contains(&w.namespace) {
                            e.push(w.namespace.clone());
                        }
                        self.workloads.insert(w.clone(), o);
                    }
                },
                None => {
                    self.workloads.remove(w);
                    if let Some(e) = self.by_name.get_mut(&w.name) {
                        e.retain(|ns| *ns != w.namespace);
                        if e.is_empty() {
                            self.by_name.remove(&w.name);
                        }
                    }
                }
            }
        }
        for k in nodes {
            let mut sum: Option<Capacity> = None;
            for addr in self.capacity_reporters.get(k).into_iter().flatten() {
                if let Some(c) = page_of(addr).and_then(|p| p.capacity.get(k)) {
                    let t = sum.get_or_insert_with(Capacity::default);
                    t.allocatable += c.allocatable;
                    t.allocated += c.allocated;
                }
            }
            match sum {
                Some(c) => self.capacity.insert(k.clone(), c),
                None => self.capacity.remove(k),
            };
        }
        if self.oldest.is_some() {
            self.oldest = sources
                .values()
                .filter_map(|src| src.last_ok.as_ref().map(|(at, _)| *at))
                .min();
        }
    }

    /// What is known of one workload.
    pub fn observe(&self, w: &WorkloadKey) -> Seen {
        if self.oldest.is_none() {
            return Seen::Unknown(
                self.fault
                    .clone()
                    .unwrap_or_else(|| "no collector has answered yet".into()),
            );
        }
        match self.workloads.get(w) {
            Some(o) if o.down > 0 => Seen::Unknown(format!(
                "{} of {} targets of {w} have no valid reading, so the view is partial: {}",
                o.down,
                o.up + o.down,
                o.faults.join("; ")
            )),
            Some(o) => Seen::Known {
                observed: o.clone(),
                at: o.measured,
            },
            None => Seen::Absent(self.absent_reason(w)),
        }
    }

    /// Why `w` is not seen, naming near misses (the same name in another namespace).
    fn absent_reason(&self, w: &WorkloadKey) -> String {
        let mut why = format!("no collector reports {w}");
        if let Some(namespaces) = self.by_name.get(&w.name) {
            let shown: Vec<String> = namespaces
                .iter()
                .take(MAX_FAULTS_NAMED)
                .map(|ns| format!("`{ns}/{}`", w.name))
                .collect();
            why.push_str(&format!(
                "; a collector reports {} (a target without a namespace is in `{}`): set the trigger's `namespace`, or NAMESPACE/ in the collector's --scrape-target",
                shown.join(", "),
                contract::DEFAULT_NAMESPACE
            ));
        } else if let Some(f) = &self.fault {
            why.push_str(&format!("; {f}"));
        }
        why
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

/// A sum that is known only while every part is: `first` when `a` holds no part with valid
/// targets yet; a part with no valid target (`up == 0`) has no rate to give and changes nothing.
fn sum_known(first: bool, a: Option<f64>, b: Option<f64>, up: u32) -> Option<f64> {
    match (up, first, a, b) {
        (0, ..) => a,
        (_, true, _, b) => b,
        (_, false, Some(a), Some(b)) => Some(a + b),
        _ => None,
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

/// A workload's sum before any part is added: `measured` is the oldest of its parts' (a first
/// part from a failed collector leaves it at 0; the workload is unknown then anyway).
fn part_zero(failed: bool) -> Observed {
    Observed {
        measured: if failed { 0.0 } else { f64::INFINITY },
        ..Observed::default()
    }
}

/// Add one collector's part `o` of a workload to its sum `t`; `failed` is why that collector's
/// latest read failed, which makes every target of its part a target without a reading.
fn add(t: &mut Observed, o: &Observed, failed: Option<&str>) {
    if let Some(why) = failed {
        t.down += o.up + o.down;
        if t.faults.len() < MAX_FAULTS_NAMED {
            t.faults.push(why.to_string());
        }
        return;
    }
    t.waiting += o.waiting;
    t.running += o.running;
    // Rates add across collectors only while every part is known: the first part with valid
    // targets makes the sum, a later one without a rate makes it unknown.
    let first = t.up == 0;
    t.prompt_tokens_rate = sum_known(first, t.prompt_tokens_rate, o.prompt_tokens_rate, o.up);
    t.generation_tokens_rate = sum_known(first, t.generation_tokens_rate, o.generation_tokens_rate, o.up);
    t.up += o.up;
    t.down += o.down;
    for f in &o.faults {
        if t.faults.len() < MAX_FAULTS_NAMED {
            t.faults.push(f.clone());
        }
    }
    t.measured = t.measured.min(o.measured);
    // Means across collectors, weighted by replicas reporting.
    t.kv_cache_usage = weighted(t.kv_cache_usage, t.up - o.up, o.kv_cache_usage, o.up);
    t.gpu_utilization = weighted(t.gpu_utilization, t.up - o.up, o.gpu_utilization, o.up);
}

/// Record whether collector `addr` reports `key`, keeping each list in address order.
fn reported<K: std::hash::Hash + Eq + Clone>(
    index: &mut HashMap<K, Vec<String>>,
    key: &K,
    addr: &str,
    on: bool,
) {
    // Looked up before inserting: the key is almost always there, and cloning it (two
    // strings) for every entry of every changed page is wasted work.
    let Some(list) = index.get_mut(key) else {
        if on {
            index.insert(key.clone(), vec![addr.to_string()]);
        }
        return;
    };
    match (list.binary_search_by(|a| a.as_str().cmp(addr)), on) {
        (Err(i), true) => list.insert(i, addr.to_string()),
        (Ok(i), false) => {
            list.remove(i);
        }
        _ => {}
    }
    if list.is_empty() {
        index.remove(key);
    }
}

/// The workloads and (node, GPU model) entries named on a collector's changed pages.
pub type OnPages = (BTreeSet<WorkloadKey>, BTreeSet<(String, String)>);

/// What changed in the collectors' pages since a view was combined, for [`View::update`]: per
/// collector whose newer page replaced a good one, the workloads and nodes named on any page
/// replaced or replacing. Anything else (a failure, a recovery, a first answer, a changed
/// collector list) changes the view as a whole, and is `everything`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changed {
    /// Collector address -> the workloads and (node, GPU model) entries on its changed pages.
    pub pages: BTreeMap<String, OnPages>,
    /// The view must be combined again as a whole.
    pub everything: bool,
}

impl Changed {
    /// Collector `addr`'s page `old` (its last good one, if its last read succeeded) is
    /// replaced by `new`.
    pub fn replaced(&mut self, addr: &str, old: Option<&Page>, new: &Page) {
        let Some(old) = old else {
            self.everything = true;
            return;
        };
        if self.everything {
            return;
        }
        if !self.pages.contains_key(addr) {
            self.pages.insert(addr.to_string(), Default::default());
        }
        let Some((ws, cs)) = self.pages.get_mut(addr) else {
            return;
        };
        // A node's pages name the same workloads from one to the next: clone only new ones.
        for p in [old, new] {
            for k in p.workloads.keys() {
                if !ws.contains(k) {
                    ws.insert(k.clone());
                }
            }
            for k in p.capacity.keys() {
                if !cs.contains(k) {
                    cs.insert(k.clone());
                }
            }
        }
    }

    /// The workloads on the changed pages.
    pub fn workloads(&self) -> BTreeSet<&WorkloadKey> {
        self.pages.values().flat_map(|(ws, _)| ws).collect()
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.everything && self.pages.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use gpuscale_expfmt::text::{Limits, parse_prometheus};

    const NOW: f64 = 1.7e9;

    /// A collector page rendered at `rendered`, its targets measured at `measured`.
    fn text(rendered: f64, measured: f64) -> String {
        format!(
            r#"
gpuscale_collector_info{{node="n1",version="0.1.0",contract="1"}} 1
gpuscale_collector_last_tick_timestamp_seconds{{node="n1"}} {rendered}
gpuscale_gpu_info{{gpu="0",uuid="GPU-a",model="NVIDIA H100",node="n1",namespace="llm",pod="qwen-abc",container="c"}} 1
gpuscale_gpu_info{{gpu="1",uuid="GPU-b",model="NVIDIA H100",node="n1"}} 1
gpuscale_gpu_utilization_ratio{{gpu="0",uuid="GPU-a",model="NVIDIA H100",node="n1",namespace="llm",pod="qwen-abc",container="c"}} 0.9
gpuscale_gpu_utilization_ratio{{gpu="1",uuid="GPU-b",model="NVIDIA H100",node="n1"}} 0.0
gpuscale_workload_requests_waiting{{namespace="llm",workload="qwen",pod="qwen-abc",target="http://a/metrics",node="n1"}} 3
gpuscale_workload_requests_running{{namespace="llm",workload="qwen",pod="qwen-abc",target="http://a/metrics",node="n1"}} 8
gpuscale_workload_kv_cache_usage_ratio{{namespace="llm",workload="qwen",pod="qwen-abc",target="http://a/metrics",node="n1"}} 0.5
gpuscale_scrape_up{{namespace="llm",workload="qwen",pod="qwen-abc",target="http://a/metrics",node="n1"}} 1
gpuscale_scrape_reading_valid{{namespace="llm",workload="qwen",pod="qwen-abc",target="http://a/metrics",node="n1"}} 1
gpuscale_scrape_timestamp_seconds{{namespace="llm",workload="qwen",pod="qwen-abc",target="http://a/metrics",node="n1"}} {measured}
gpuscale_scrape_up{{namespace="llm",workload="llama",target="http://b/metrics",node="n1"}} 0
gpuscale_scrape_reading_valid{{namespace="llm",workload="llama",target="http://b/metrics",node="n1",reason="timeout"}} 0
gpuscale_scrape_up{{workload="mistral",target="http://c/metrics",node="n1"}} 1
gpuscale_scrape_reading_valid{{workload="mistral",target="http://c/metrics",node="n1"}} 1
gpuscale_scrape_timestamp_seconds{{workload="mistral",target="http://c/metrics",node="n1"}} {measured}
gpuscale_workload_requests_waiting{{workload="mistral",target="http://c/metrics",node="n1"}} 7
gpuscale_scrape_up{{namespace="llm",workload="phi",target="http://d/metrics",node="n1"}} 1
gpuscale_scrape_reading_valid{{namespace="llm",workload="phi",target="http://d/metrics",node="n1"}} 1
gpuscale_scrape_timestamp_seconds{{namespace="llm",workload="phi",target="http://d/metrics",node="n1"}} {measured}
"#
        )
    }

    fn read(text: &str, at: u64) -> Result<Page, PageError> {
        let f = parse_prometheus(text, &Limits::default()).unwrap();
        Page::read(
            &f,
            "http://c:9400/metrics",
            Received {
                at: Duration::from_secs(at),
                wall: NOW,
            },
        )
    }

    fn page() -> Page {
        read(&text(NOW, NOW - 1.0), 10).unwrap()
    }

    fn key(ns: &str, n: &str) -> WorkloadKey {
        WorkloadKey {
            namespace: ns.into(),
            name: n.into(),
        }
    }

    fn unknown(s: Seen) -> String {
        match s {
            Seen::Unknown(why) | Seen::Absent(why) => why,
            Seen::Known { .. } => panic!("known: {s:?}"),
        }
    }

    #[test]
    fn reads_a_page() {
        let p = page();
        let q = &p.workloads[&key("llm", "qwen")];
        assert_eq!((q.waiting, q.running, q.up, q.down), (3.0, 8.0, 1, 0));
        assert_eq!(q.kv_cache_usage, Some(0.5));
        assert_eq!(q.gpu_utilization, Some(0.9));
        // Measured 1 s before the page arrived at scaler time 10 s.
        assert_eq!(q.measured, 9.0);
        assert_eq!(p.workloads[&key("llm", "llama")].down, 1);
        // No namespace label: `default`, the collector's rule too.
        assert_eq!(p.workloads[&key("default", "mistral")].waiting, 7.0);
        let c = &p.capacity[&("n1".to_string(), "NVIDIA H100".to_string())];
        assert_eq!((c.allocatable, c.allocated), (2, 1));
    }

    /// One valid target of `llm/qwen` at `url`, with the token rates given (`None`: absent).
    fn qwen_target(url: &str, rates: Option<(f64, f64)>) -> String {
        let l = format!(
            r#"{{namespace="llm",workload="qwen",pod="qwen-{url}",target="http://{url}/metrics",node="n1"}}"#
        );
        let mut t = format!(
            "gpuscale_scrape_up{l} 1\ngpuscale_scrape_reading_valid{l} 1\ngpuscale_scrape_timestamp_seconds{l} {NOW}\n\
             gpuscale_workload_requests_waiting{l} 1\ngpuscale_workload_requests_running{l} 4\n"
        );
        if let Some((p, g)) = rates {
            t.push_str(&format!(
                "gpuscale_workload_prompt_tokens_per_second{l} {p}\ngpuscale_workload_generation_tokens_per_second{l} {g}\n"
            ));
        }
        t
    }

    fn collector_page(targets: &[String]) -> Page {
        let mut t = format!(
            "gpuscale_collector_info{{node=\"n1\",version=\"0.1.0\",contract=\"1\"}} 1\n\
             gpuscale_collector_last_tick_timestamp_seconds{{node=\"n1\"}} {NOW}\n"
        );
        for x in targets {
            t.push_str(x);
        }
        read(&t, 10).unwrap()
    }

    #[test]
    fn token_rates_are_summed_only_when_every_replica_has_one() {
        let qwen = |p: &Page| p.workloads[&key("llm", "qwen")].clone();
        let both = collector_page(&[
            qwen_target("a", Some((1000.0, 200.0))),
            qwen_target("b", Some((500.0, 50.0))),
        ]);
        let q = qwen(&both);
        assert_eq!(
            (q.prompt_tokens_rate, q.generation_tokens_rate),
            (Some(1500.0), Some(250.0))
        );
        // One replica without a rate (just started, or its counter reset): the workload's rate
        // is unknown, not the other replica's.
        let partial = collector_page(&[qwen_target("a", Some((1000.0, 200.0))), qwen_target("b", None)]);
        let q = qwen(&partial);
        assert_eq!(
            (q.prompt_tokens_rate, q.generation_tokens_rate, q.up),
            (None, None, 2)
        );
        // An implausible rate is no rate.
        let wild = collector_page(&[qwen_target("a", Some((1e12, 200.0)))]);
        assert_eq!(qwen(&wild).prompt_tokens_rate, None);
        // Across collectors, by the same rule.
        let src = |p: Page| Source {
            last_ok: Some((Duration::from_secs(10), p)),
            error: None,
        };
        let (x, y) = (
            src(collector_page(&[qwen_target("a", Some((1000.0, 200.0)))])),
            src(collector_page(&[qwen_target("b", Some((10.0, 2.0)))])),
        );
        let z = src(collector_page(&[qwen_target("c", None)]));
        let v = View::combine([("x:9400", &x), ("y:9400", &y)]);
        assert_eq!(v.workloads[&key("llm", "qwen")].prompt_tokens_rate, Some(1010.0));
        let v = View::combine([("x:9400", &x), ("z:9400", &z), ("y:9400", &y)]);
        assert_eq!(v.workloads[&key("llm", "qwen")].prompt_tokens_rate, None);
        let v = View::combine([("z:9400", &z), ("x:9400", &x)]);
        assert_eq!(v.workloads[&key("llm", "qwen")].generation_tokens_rate, None);
    }

    #[test]
    fn pages_that_are_not_a_collectors_are_refused() {
        let vllm = "vllm:num_requests_waiting{engine=\"0\"} 7\n";
        let e = read(vllm, 1).unwrap_err();
        assert!(matches!(e, PageError::NotACollector { .. }));
        assert!(e.to_string().contains("not a gpuscale collector") && e.to_string().contains("HOST:9400"));
        let other = text(NOW, NOW).replace("contract=\"1\"", "contract=\"9\"");
        assert!(matches!(read(&other, 1), Err(PageError::Contract { .. })));
        let untimed: String = text(NOW, NOW)
            .lines()
            .filter(|l| !l.starts_with("gpuscale_collector_last_tick"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(matches!(read(&untimed, 1), Err(PageError::NoTime { .. })));
    }

    #[test]
    fn readings_age_from_when_the_collector_measured_them() {
        // A page rendered an hour ago arriving now is an hour old, by either clock.
        let old = read(&text(NOW - 3600.0, NOW - 3600.0), 10).unwrap();
        assert_eq!(old.workloads[&key("llm", "qwen")].measured, 10.0 - 3600.0);
        // A target measured 20 s before a fresh render: 20 s old.
        let lagging = read(&text(NOW, NOW - 20.0), 10).unwrap();
        assert_eq!(lagging.workloads[&key("llm", "qwen")].measured, -10.0);
    }

    #[test]
    fn partial_absent_and_missing_views_are_unknown() {
        let ok = Source {
            last_ok: Some((Duration::from_secs(10), page())),
            error: None,
        };
        let never = Source {
            last_ok: None,
            error: Some("connection refused".into()),
        };
        let v = View::combine([("a:9400", &ok)]);
        assert!(matches!(v.observe(&key("llm", "qwen")), Seen::Known { at, .. } if at == 9.0));
        let why = unknown(v.observe(&key("llm", "llama")));
        assert!(
            why.contains("1 of 1 targets") && why.contains("timed out"),
            "{why}"
        );
        // Up, valid, but no queue series: unknown, never zero waiting.
        let why = unknown(v.observe(&key("llm", "phi")));
        assert!(why.contains("queue series are missing"), "{why}");
        // A workload nobody reports is absent, not a fresh zero; near misses are named.
        assert!(matches!(v.observe(&key("llm", "idle")), Seen::Absent(_)));
        let why = unknown(v.observe(&key("prod", "mistral")));
        assert!(
            why.contains("`default/mistral`") && why.contains("namespace"),
            "{why}"
        );
        assert_eq!(v.free_gpus(""), 1);
        assert_eq!(v.free_gpus("NVIDIA A100"), 0);

        let v = View::combine([("a:9400", &ok), ("b:9400", &never)]);
        let why = unknown(v.observe(&key("llm", "idle")));
        assert!(
            why.contains("b:9400") && why.contains("connection refused"),
            "{why}"
        );
        let v = View::combine(std::iter::empty());
        assert!(matches!(v.observe(&key("llm", "idle")), Seen::Unknown(_)));
    }

    #[test]
    fn implausible_values_are_no_reading() {
        let waiting = "gpuscale_workload_requests_waiting{namespace=\"llm\",workload=\"qwen\",pod=\"qwen-abc\",target=\"http://a/metrics\",node=\"n1\"} ";
        for (bad, says) in [("NaN", "NaN"), ("-2", "negative"), ("5e6", "implausibly")] {
            let t = text(NOW, NOW).replace(&format!("{waiting}3"), &format!("{waiting}{bad}"));
            let src = Source {
                last_ok: Some((Duration::from_secs(10), read(&t, 10).unwrap())),
                error: None,
            };
            let why = unknown(View::combine([("a", &src)]).observe(&key("llm", "qwen")));
            assert!(why.contains(says), "{bad}: {why}");
        }
    }

    #[test]
    fn sums_across_collectors() {
        let a = Source {
            last_ok: Some((Duration::from_secs(10), page())),
            error: None,
        };
        let mut b = Source {
            last_ok: Some((Duration::from_secs(8), read(&text(NOW, NOW - 3.0), 8).unwrap())),
            error: None,
        };
        let v = View::combine([("a", &a), ("b", &b)]);
        let Seen::Known { observed, at } = v.observe(&key("llm", "qwen")) else {
            panic!()
        };
        assert_eq!((observed.waiting, observed.up, at), (6.0, 2, 5.0));
        assert_eq!(observed.kv_cache_usage, Some(0.5));
        // b's latest read failed: what it reports now is unknown, so is every workload it held.
        b.error = Some("no complete answer within 2.0 s".into());
        let v = View::combine([("a", &a), ("b", &b)]);
        let why = unknown(v.observe(&key("llm", "qwen")));
        assert!(why.contains("collector b: no complete answer"), "{why}");
    }

    fn part(waiting: f64, up: u32, kv: Option<f64>, rate: Option<f64>, measured: f64) -> Observed {
        Observed {
            waiting,
            running: 1.0,
            kv_cache_usage: kv,
            prompt_tokens_rate: rate,
            generation_tokens_rate: rate.map(|r| r / 4.0),
            up,
            down: u32::from(up == 0),
            faults: if up == 0 {
                vec!["target t: timeout".into()]
            } else {
                Vec::new()
            },
            measured,
            ..Observed::default()
        }
    }

    fn page_of(parts: &[(&str, Observed)], nodes: &[(&str, u32, u32)]) -> Page {
        Page {
            workloads: parts.iter().map(|(n, o)| (key("llm", n), o.clone())).collect(),
            capacity: nodes
                .iter()
                .map(|(n, all, used)| {
                    (
                        (n.to_string(), "NVIDIA H100".to_string()),
                        Capacity {
                            allocatable: *all,
                            allocated: *used,
                        },
                    )
                })
                .collect(),
            rendered: NOW,
        }
    }

    fn all(s: &BTreeMap<String, Source>) -> Vec<(&str, &Source)> {
        s.iter().map(|(k, v)| (k.as_str(), v)).collect()
    }

    fn by_name(v: &View) -> BTreeMap<String, BTreeSet<String>> {
        v.by_name
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
            .collect()
    }

    #[test]
    fn an_updated_view_is_the_view_combine_gives() {
        // qwen runs behind collectors a and b (and was on c, whose latest read failed).
        let old_a = page_of(
            &[
                ("qwen", part(3.0, 1, Some(0.5), Some(100.0), 4.0)),
                ("mistral", part(1.0, 1, None, None, 4.5)),
            ],
            &[("n1", 8, 2)],
        );
        let b = page_of(
            &[
                ("qwen", part(2.0, 2, Some(0.8), None, 3.0)),
                ("llama", part(0.0, 0, None, None, 3.0)),
            ],
            &[("n2", 8, 8)],
        );
        let c = page_of(&[("phi", part(5.0, 1, None, None, 1.0))], &[("n3", 4, 0)]);
        let mut sources: BTreeMap<String, Source> = BTreeMap::new();
        for (addr, p, at) in [("a", old_a.clone(), 5), ("b", b, 8), ("c", c, 6)] {
            sources.insert(
                addr.into(),
                Source {
                    last_ok: Some((Duration::from_secs(at), p)),
                    error: None,
                },
            );
        }
        sources.get_mut("c").unwrap().error = Some("connection refused".into());
        let mut view = View::combine(all(&sources));
        assert_eq!(view.oldest, Some(Duration::from_secs(5)));

        // a renders a newer page: qwen's queue grows, mistral is gone, gemma is new, and a pod
        // on n1 took two more GPUs; a node appears.
        let new_a = page_of(
            &[
                ("qwen", part(9.0, 1, Some(0.9), Some(300.0), 9.0)),
                ("gemma", part(4.0, 1, None, None, 9.0)),
            ],
            &[("n1", 8, 4), ("n4", 2, 0)],
        );
        let mut changed = Changed::default();
        changed.replaced("a", Some(&old_a), &new_a);
        assert!(!changed.everything);
        sources.get_mut("a").unwrap().last_ok = Some((Duration::from_secs(20), new_a.clone()));
        view.update(&sources, &changed);

        let fresh = View::combine(all(&sources));
        assert_eq!(view.workloads, fresh.workloads);
        assert_eq!(view.capacity, fresh.capacity);
        assert_eq!((view.oldest, &view.fault), (fresh.oldest, &fresh.fault));
        assert_eq!(
            view.oldest,
            Some(Duration::from_secs(6)),
            "a's page is no longer the oldest"
        );
        assert_eq!(by_name(&view), by_name(&fresh));
        assert_eq!(view.reporters, fresh.reporters);
        assert_eq!(view.capacity_reporters, fresh.capacity_reporters);
        for n in ["qwen", "mistral", "gemma", "llama", "phi", "absent"] {
            assert_eq!(view.observe(&key("llm", n)), fresh.observe(&key("llm", n)), "{n}");
        }
        // What the update had to get right: qwen sums a's new part with b's, and a mixed
        // token rate is unknown; mistral is gone; phi is still unknown through c's failure.
        let Seen::Known { observed, .. } = view.observe(&key("llm", "qwen")) else {
            panic!("qwen: {:?}", view.observe(&key("llm", "qwen")))
        };
        assert_eq!(
            (observed.waiting, observed.up, observed.prompt_tokens_rate),
            (11.0, 3, None)
        );
        assert!(matches!(view.observe(&key("llm", "mistral")), Seen::Absent(_)));
        assert!(unknown(view.observe(&key("llm", "phi"))).contains("connection refused"));
        assert_eq!(view.free_gpus(""), 4 + 4 + 2);

        // A first page, or one after a failed read, changes the view as a whole.
        let mut first = Changed::default();
        first.replaced("a", None, &new_a);
        assert!(first.everything);
    }
}
