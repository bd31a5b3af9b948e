//! Why gpuscale has its own parser: prometheus-parse 0.2.5 silently loses data that autoscaling
//! depends on. If a release fixes this, this test fails and the choice can be revisited.

use gpuscale_expfmt::text::{Limits, parse_prometheus};

fn scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("prometheus-parse: {e}"))
}

#[test]
fn prometheus_parse_drops_colon_names_and_cuts_commas() {
    let page = "# TYPE vllm:num_requests_waiting gauge\n\
                vllm:num_requests_waiting{model_name=\"m\"} 7\n\
                tgi_queue_size{model=\"m,1\"} 3\n";
    let theirs = scrape(page);
    assert!(
        !theirs.samples.iter().any(|s| s.metric.contains(':')),
        "prometheus-parse now keeps `:` names; revisit the custom parser"
    );
    let tgi = theirs.samples.iter().find(|s| s.metric == "tgi_queue_size");
    assert_eq!(
        tgi.and_then(|s| s.labels.get("model")),
        Some("m"),
        "prometheus-parse now keeps commas"
    );

    let ours = parse_prometheus(page, &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
    let all: Vec<_> = ours.iter().flat_map(|f| &f.samples).collect();
    assert_eq!(all[0].name, "vllm:num_requests_waiting");
    assert_eq!(all[0].value, 7.0);
    assert_eq!(all[1].label("model"), Some("m,1"));
}
