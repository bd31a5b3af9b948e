//! gpuscale-collector: the DaemonSet that sees load where it happens.
//!
//! It owns the Prometheus / OpenMetrics text parser ([`text`]) that the collector uses to scrape
//! model servers and the scaler uses to read collectors. The rest of the collector (GPU sources
//! through NVML, kubelet PodResources attribution, model-server scraping and the node's
//! `/metrics` exposition, issue #4) is not implemented yet.

pub mod text;
