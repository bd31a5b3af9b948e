//! `gpuscale-sim`: replay recorded traffic against autoscaling policies.

mod args;
mod recommend;
mod replay;
mod sweep;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use args::{RecommendArgs, ReplayArgs};
use recommend::run_recommend;
use replay::run_replay;
use sweep::run_sweep;

/// What would this autoscaling policy have cost, and how slow would it have been, on my real
/// traffic? Replays a recorded trace through a model of replicas (concurrency-limited, or LLM
/// continuous batching) driven by the same policy code the gpuscale scaler runs.
#[derive(Parser, Debug)]
#[command(name = "gpuscale-sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Replay a trace under one or more policies and compare them.
    ///
    /// Example: gpuscale-sim replay --trace data/traces/AzureLLMInferenceTrace_conv.csv
    /// --policy hpa,kpa,default,queue,slo --json out.json --report out.html
    Replay(ReplayArgs),
    /// Replay a trace over a grid of policy parameters and mark the cost / p99 Pareto frontier.
    ///
    /// Example: gpuscale-sim sweep --trace data/traces/AzureLLMInferenceTrace_code.csv
    /// --policy queue --param queue.target=2,4,8 --param queue.scaleDownWindow=60s,300s
    Sweep(ReplayArgs),
    /// Replay candidate policies and recommend the cheapest that meets a p99 latency objective,
    /// with its GPU-hours as a multiple of the lower bound, written as a ready KEDA ScaledObject
    /// and as direct-mode annotations.
    ///
    /// The candidates are hpa, kpa, default, queue and slo set up from the serving model, queue
    /// at half, one and twice the replica's slots, each with keepAlive 60s, 5m and 15m (or the
    /// --policy specs, if given).
    ///
    /// Example: gpuscale-sim recommend --trace data/traces/AzureLLMInferenceTrace_conv.csv
    /// --objective-p99 90s --deployment qwen --namespace llm --write-scaledobject so.yaml
    Recommend(RecommendArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Replay(a) => run_replay(a),
        Command::Sweep(a) => run_sweep(a),
        Command::Recommend(a) => run_recommend(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
