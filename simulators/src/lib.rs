//! gpuscale-sim: what-if replay of recorded traffic against gpuscale policies.
//!
//! It owns the trace readers ([`trace`]), the serving model ([`serving`]: replicas with a
//! concurrency limit or LLM continuous batching, cold starts, GPU cost), the replay engine and
//! its control-loop models ([`engine`]: gpuscale scaling directly, or [`keda`]: KEDA polling the
//! scaler and driving an HPA), and
//! the reports ([`report`]: table, JSON, HTML with SVG charts, sweeps with a Pareto frontier).
//! Every decision comes from [`gpuscale_policies`], unchanged, and so does what KEDA is told
//! of it (`gpuscale_policies::answer::activity` and `answer::value`), so a replay shows what
//! the scaler would have done.

pub mod engine;
pub mod keda;
pub mod llm;
pub mod oracle;
pub mod perf;
pub mod report;
pub mod rng;
pub mod run;
pub mod serving;
pub mod trace;

pub use gpuscale_policies as policies;
