//! The activator's flags, shared by `gpuscale-scaler` (in-process) and `gpuscale-activator`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::proxy::{Activator, Config};
use crate::report::Reporter;
use crate::route::Route;

fn duration(v: &str) -> Result<Duration, String> {
    gpuscale_policies::spec::parse_duration("duration", v).map_err(|e| e.to_string())
}

/// The activator's flags, shared by `gpuscale-scaler` (in-process) and `gpuscale-activator`.
#[derive(clap::Args, Debug, Clone)]
pub struct ActivatorArgs {
    /// Address of the activator's proxy port. In gpuscale-scaler the activator runs only when
    /// this is set.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_LISTEN", value_parser = gpuscale_edge::cli::listen_addr)]
    pub activator_listen: Option<SocketAddr>,

    /// `HOST=NAMESPACE/WORKLOAD=http://UPSTREAM[:PORT]` or `/PREFIX=NAMESPACE/WORKLOAD=http://...`,
    /// repeatable (env: comma-separated). The Host match ignores the port; the longest prefix
    /// wins; paths are forwarded unchanged.
    #[arg(long = "route", env = "GPUSCALE_ACTIVATOR_ROUTES", value_delimiter = ',')]
    pub routes: Vec<String>,

    /// A file of routes, one per line in the --route syntax (`#` starts a comment); read at
    /// start, added to --route.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_ROUTES_FILE")]
    pub routes_file: Option<std::path::PathBuf>,

    /// Also route to Services annotated `gpuscale.io/activate: "true"` (any namespace), with
    /// readiness from their EndpointSlices; uses the in-cluster service account or KUBECONFIG.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_KUBE")]
    pub activator_kube: bool,

    /// Requests one ready replica takes at once (vLLM's max concurrent sequences is a good
    /// start; 0 = no limit once ready). Held requests are released at most this many per
    /// ready replica, so the first replica is not flooded.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_CONCURRENCY", default_value_t = 32)]
    pub activator_concurrency: usize,

    /// Most requests held per workload; beyond it 503 with Retry-After.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_MAX_HELD", default_value_t = 1000)]
    pub activator_max_held: usize,

    /// Longest a request is held before 503 with Retry-After (model load time plus margin).
    #[arg(long, env = "GPUSCALE_ACTIVATOR_COLD_START_TIMEOUT", default_value = "10m", value_parser = duration)]
    pub activator_cold_start_timeout: Duration,

    /// Largest request body held in memory while a workload wakes; larger gets 413.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub activator_max_body_bytes: usize,

    /// Request bodies held in memory while workloads wake, all together (bytes); beyond it a
    /// held request gets 503 with Retry-After. Keep it well under the container's memory limit.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_MAX_HELD_BYTES", default_value_t = 256 << 20)]
    pub activator_max_held_bytes: usize,

    /// Longest a held request's body may take to arrive; a slower upload gets 408 and never
    /// holds a release slot meanwhile.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_BODY_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub activator_body_timeout: Duration,

    /// Path probed on each upstream to tell it is ready (vLLM, SGLang and TGI serve /health).
    #[arg(long, env = "GPUSCALE_ACTIVATOR_PROBE_PATH", default_value = "/health")]
    pub activator_probe_path: String,

    /// Time between readiness probes.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_PROBE_INTERVAL", default_value = "500ms", value_parser = duration)]
    pub activator_probe_interval: Duration,

    /// On shutdown, how long held requests keep their chance to be served before 503.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_DRAIN_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub activator_drain_timeout: Duration,
}

impl ActivatorArgs {
    /// Build the activator, start its readiness and reporting tasks, and with
    /// `--activator-kube` its routes from annotated Services (in `tasks`). The caller binds and
    /// serves.
    pub async fn start(
        &self,
        reporter: Reporter,
        tasks: &mut gpuscale_edge::tasks::Tasks,
    ) -> anyhow::Result<Arc<Activator>> {
        let activator = Activator::new(self.config().map_err(anyhow::Error::msg)?);
        activator.spawn_readiness(reporter);
        if self.activator_kube {
            let client = kube::Client::try_default().await.map_err(|e| {
                anyhow::anyhow!(
                    "--activator-kube: {e}: run in a pod with a service account, or set KUBECONFIG"
                )
            })?;
            tasks.spawn_infallible(
                "activator routes",
                crate::kube_routes::activator_routes(
                    client,
                    activator.clone(),
                    self.activator_probe_interval,
                ),
            );
        }
        Ok(activator)
    }

    /// The config, with every route parsed.
    pub fn config(&self) -> Result<Config, String> {
        let mut lines: Vec<String> = self.routes.clone();
        if let Some(f) = &self.routes_file {
            let text =
                std::fs::read_to_string(f).map_err(|e| format!("--routes-file {}: {e}", f.display()))?;
            for (i, l) in text.lines().enumerate() {
                let l = l.split('#').next().unwrap_or("").trim();
                if l.is_empty() {
                    continue;
                }
                Route::parse(l).map_err(|e| format!("{}:{}: {e}", f.display(), i + 1))?;
                lines.push(l.to_string());
            }
        }
        if lines.is_empty() && !self.activator_kube {
            return Err("the activator needs at least one --route (or --routes-file, or --activator-kube), e.g. --route qwen.example.com=llm/qwen=http://qwen-predictor.llm:80".into());
        }
        if !self.activator_probe_path.starts_with('/') {
            return Err(format!(
                "--activator-probe-path `{}` must start with /",
                self.activator_probe_path
            ));
        }
        Ok(Config {
            routes: lines.iter().map(|r| Route::parse(r)).collect::<Result<_, _>>()?,
            concurrency: self.activator_concurrency,
            max_held: self.activator_max_held,
            cold_start_timeout: self.activator_cold_start_timeout,
            max_body_bytes: self.activator_max_body_bytes,
            max_held_bytes: self.activator_max_held_bytes,
            body_timeout: self.activator_body_timeout,
            probe_path: self.activator_probe_path.clone(),
            probe_interval: self.activator_probe_interval,
            drain_timeout: self.activator_drain_timeout,
        })
    }
}
