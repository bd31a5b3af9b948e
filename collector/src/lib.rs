//! gpuscale-collector: the DaemonSet that sees load where it happens.
//!
//! It owns the GPU sources ([`gpu`]: NVML, scripted fakes, none), which pod holds which GPU
//! ([`podresources`]: the kubelet's PodResources API), which model servers run on the node
//! ([`discovery`]: annotated pods through the API server) and how to read their queues
//! ([`scrape`]: presets), the node snapshot and its exposition ([`exposition`]: Prometheus text,
//! OpenMetrics, dcgm-exporter names), the process that ties them together ([`service`]), and
//! the Prometheus / OpenMetrics text parser ([`text`]) that the scaler uses too, and the
//! collector-to-scaler contract ([`contract`]): the series names, labels and rules both sides share,
//! the bounded HTTP serving every gpuscale server uses ([`server`]), the byte budgets that
//! bound memory in total ([`budget`]), and what every binary shares at its edge ([`cli`]).

pub mod budget;
pub mod check;
pub mod cli;
pub mod contract;
pub mod discovery;
pub mod exposition;
pub mod gpu;
pub mod podresources;
pub mod rate;
pub mod scrape;
pub mod server;
pub mod service;
pub mod text;
