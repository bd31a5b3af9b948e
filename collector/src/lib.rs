//! gpuscale-collector: the DaemonSet that sees load where it happens.
//!
//! It owns the GPU sources ([`gpu`]: NVML, scripted fakes, none), which pod holds which GPU
//! ([`podresources`]: the kubelet's PodResources API), which model servers run on the node
//! ([`discovery`]: annotated pods through the API server) and how to read their queues
//! ([`scrape`]: targets and presets; [`rate`]: token counters into rates; [`check`]: the
//! `check-page` command), the node snapshot and its exposition ([`exposition`]: gpuscale's
//! names, dcgm-exporter's, the contract's series), and the process that ties them together
//! ([`service`]: the tick and `/metrics`).
//!
//! What it shares with the scaler lives below it: the formats in `gpuscale_expfmt`, the series
//! names and fault codes in `gpuscale_contract`, the bounded serving and fetching in
//! `gpuscale_edge`.

pub mod check;
pub mod discovery;
pub mod exposition;
pub mod gpu;
pub mod podresources;
pub mod rate;
pub mod scrape;
pub mod service;
