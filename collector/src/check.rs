//! `gpuscale-collector check-page`: read one metrics page exactly as a scrape would and say what
//! gpuscale takes from it. This is how a user onboards a new model server: the families and
//! samples found, the server recognised, the queue reading (or why there is none), and the token
//! counters a capacity-aware policy could use.

use std::fmt::Write as _;

use crate::scrape::{CustomNames, Preset, QueueDepth, queue_depth, queue_metric_names};
use gpuscale_contract::check_reading;
use gpuscale_expfmt::text::{Limits, MetricFamily, ParseError, parse_openmetrics, parse_prometheus};

/// The exposition format to parse the page as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PageFormat {
    /// Prometheus text format 0.0.4 (what model servers serve by default).
    Prometheus,
    /// OpenMetrics 1.0, strictly (`# EOF` required): what the scaler asks collectors for.
    Openmetrics,
}

/// Every token counter name the collector reads ([`crate::scrape::TOKEN_COUNTERS`]).
fn token_counter_names() -> impl Iterator<Item = &'static str> {
    crate::scrape::TOKEN_COUNTERS
        .iter()
        .flat_map(|(_, a, b)| [*a, *b])
}

/// What a page holds and what gpuscale reads from it.
#[derive(Debug)]
pub struct Report {
    /// Families in page order.
    pub families: Vec<MetricFamily>,
    /// The queue reading, if the server is recognised.
    pub queue: Option<QueueDepth>,
    /// Why a scrape of this page would be marked not valid (`None`: valid).
    pub fault: Option<gpuscale_contract::Fault>,
    /// Token counters found, with their sums.
    pub tokens: Vec<(String, f64)>,
    /// The metric names gpuscale looks for with this preset.
    pub looked_for: Vec<String>,
}

/// Parse `text` as `format` and read it with `preset` and `custom`, under the scrape's limits.
pub fn check(
    text: &str,
    format: PageFormat,
    preset: Preset,
    custom: &CustomNames,
    limits: &Limits,
) -> Result<Report, ParseError> {
    let families = match format {
        PageFormat::Prometheus => parse_prometheus(text, limits)?,
        PageFormat::Openmetrics => parse_openmetrics(text, limits)?,
    };
    let queue = queue_depth(&families, preset, custom);
    let fault = match &queue {
        Some(q) => check_reading(q.waiting, q.running, q.kv_cache),
        None => Some(gpuscale_contract::Fault::NoQueueMetrics),
    };
    let mut tokens = Vec::new();
    for name in token_counter_names() {
        let vals: Vec<f64> = families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .collect();
        if !vals.is_empty() {
            tokens.push((name.to_string(), vals.iter().sum()));
        }
    }
    Ok(Report {
        families,
        queue,
        fault,
        tokens,
        looked_for: queue_metric_names(preset, custom),
    })
}

fn num(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |x| format!("{x}"))
}

impl Report {
    /// The report as printed: the page, then what gpuscale reads.
    pub fn render(&self, source: &str, format: PageFormat, all: bool) -> String {
        let mut s = String::new();
        let samples: usize = self.families.iter().map(|f| f.samples.len()).sum();
        let _ = writeln!(
            s,
            "{source}: parses as {}: {} families, {samples} samples",
            match format {
                PageFormat::Prometheus => "Prometheus text",
                PageFormat::Openmetrics => "OpenMetrics",
            },
            self.families.len()
        );
        const SHOWN: usize = 30;
        let _ = writeln!(s, "\nfamilies:");
        for f in self.families.iter().take(if all { usize::MAX } else { SHOWN }) {
            let _ = writeln!(
                s,
                "  {:<50} {:<9} {:>6} sample{}",
                f.name,
                f.kind.as_str(),
                f.samples.len(),
                if f.samples.len() == 1 { "" } else { "s" }
            );
        }
        if !all && self.families.len() > SHOWN {
            let _ = writeln!(s, "  ... {} more (--all lists them)", self.families.len() - SHOWN);
        }
        let _ = writeln!(s, "\nwhat gpuscale reads:");
        match &self.queue {
            Some(q) => {
                let _ = writeln!(s, "  server:    {}", q.server.as_str());
                let _ = writeln!(s, "  waiting:   {}", num(q.waiting));
                let _ = writeln!(s, "  running:   {}", num(q.running));
                let _ = writeln!(s, "  KV-cache:  {}", num(q.kv_cache));
            }
            None => {
                let _ = writeln!(
                    s,
                    "  no server recognised: none of {} is on the page",
                    self.looked_for.join(", ")
                );
                let _ = writeln!(
                    s,
                    "  name the page's own metrics with --waiting-metric, --running-metric and --kv-metric"
                );
            }
        }
        if self.tokens.is_empty() {
            let _ = writeln!(
                s,
                "  tokens:    no token counters ({})",
                token_counter_names().collect::<Vec<_>>().join(", ")
            );
        } else {
            for (n, v) in &self.tokens {
                let _ = writeln!(s, "  tokens:    {n} = {v}");
            }
        }
        match self.fault {
            None => {
                let _ = writeln!(
                    s,
                    "\na scrape of this page is valid: gpuscale_scrape_reading_valid 1"
                );
            }
            Some(f) => {
                let _ = writeln!(
                    s,
                    "\na scrape of this page is NOT valid: gpuscale_scrape_reading_valid{{reason=\"{}\"}} 0 ({}), so its workload reads as unknown",
                    f.code(),
                    f.explain()
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VLLM: &str = "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"m\"} 3\n\
        # TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name=\"m\"} 2\n\
        # TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0.25\n\
        # TYPE vllm:prompt_tokens_total counter\nvllm:prompt_tokens_total{model_name=\"m\"} 1200\n";

    #[test]
    fn a_vllm_page_is_read_as_a_scrape_reads_it() {
        let r = check(
            VLLM,
            PageFormat::Prometheus,
            Preset::Auto,
            &CustomNames::default(),
            &Limits::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let q = r.queue.clone().unwrap_or_else(|| panic!("no queue"));
        assert_eq!(
            (q.server, q.waiting, q.running, q.kv_cache),
            (Preset::Vllm, Some(3.0), Some(2.0), Some(0.25))
        );
        assert_eq!(r.fault, None);
        assert_eq!(r.tokens, vec![("vllm:prompt_tokens_total".to_string(), 1200.0)]);
        let out = r.render("page.txt", PageFormat::Prometheus, false);
        assert!(
            out.contains("4 families, 4 samples") && out.contains("server:    vllm"),
            "{out}"
        );
    }

    #[test]
    fn strict_openmetrics_refuses_a_page_without_eof_with_its_line() {
        let e = check(
            VLLM,
            PageFormat::Openmetrics,
            Preset::Auto,
            &CustomNames::default(),
            &Limits::default(),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("EOF"), "{e}");
    }

    #[test]
    fn an_unknown_server_says_what_was_looked_for() {
        let page = "# TYPE my_queue gauge\nmy_queue 4\n";
        let r = check(
            page,
            PageFormat::Prometheus,
            Preset::Auto,
            &CustomNames::default(),
            &Limits::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(r.queue.is_none());
        let out = r.render("p", PageFormat::Prometheus, false);
        assert!(
            out.contains("vllm:num_requests_waiting")
                && out.contains("NOT valid")
                && out.contains("no_queue_metrics"),
            "{out}"
        );
        let custom = CustomNames {
            waiting: Some("my_queue".into()),
            ..CustomNames::default()
        };
        let r = check(
            page,
            PageFormat::Prometheus,
            Preset::Auto,
            &custom,
            &Limits::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.queue.and_then(|q| q.waiting), Some(4.0));
        assert_eq!(r.fault, None);
    }
}
