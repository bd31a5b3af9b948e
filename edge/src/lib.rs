//! gpuscale-edge: what every gpuscale binary (collector, scaler, activator) shares where it meets
//! the world. [`server`] serves HTTP with the shared bounds (header deadline, graceful drain);
//! [`fetch`] reads one metrics page, bounded in time and bytes and parsed as it arrives, with the
//! one address syntax every `--collector`/`--scrape-target`/upstream flag accepts; [`budget`]
//! bounds the bytes many concurrent readers hold in total; [`cli`] holds the flag syntax
//! (durations, listen addresses), the shutdown signal (SIGTERM and Ctrl-C) and the one-line
//! start-up error; [`tasks`] supervises every long-lived task, ending the process when one fails;
//! [`watch`] caches a kind of Kubernetes object behind a retrying watch.
//!
//! It owns no domain logic: the formats are `gpuscale_expfmt`'s, the fault codes
//! `gpuscale_contract`'s.

pub mod budget;
pub mod cli;
pub mod fetch;
pub mod server;
pub mod tasks;
pub mod watch;
