//! gpuscale-collector: the DaemonSet that sees load where it happens.
//!
//! It owns the GPU sources ([`gpu`]: NVML, scripted fakes, none), the model-server scraping and
//! queue-depth presets ([`scrape`]), the node snapshot and its exposition ([`exposition`]:
//! Prometheus text, OpenMetrics, dcgm-exporter names), the process that ties them together
//! ([`service`]), and the Prometheus / OpenMetrics text parser ([`text`]) that the scaler uses
//! too. Not implemented yet (issue #4): kubelet PodResources attribution and `--kube` pod
//! discovery.

pub mod exposition;
pub mod gpu;
pub mod podresources;
pub mod scrape;
pub mod service;
pub mod text;
