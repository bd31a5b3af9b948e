//! KEDA's `externalscaler.ExternalScaler` service.
//!
//! Every RPC answers from the state the last poll tick published ([`crate::workloads`]):
//! nothing here waits on a collector or the API server. KEDA calls `GetMetricSpec` on every
//! reconcile, poll and HPA sync, so the common case (metadata already seen) is a hash-map
//! lookup and a fingerprint comparison. A trigger seen for the first time is registered and
//! decided at once on the collectors' current view (a read of it, never a collector read).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::keda::pb::external_scaler_server::ExternalScaler;
use crate::keda::pb::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec, MetricValue,
    ScaledObjectRef,
};
use crate::telemetry::Telemetry;
use gpuscale_contract::Clock;
use gpuscale_policies::answer::NotKnown;
use gpuscale_policies::spec::brief_to as quote;

use crate::keda::trigger::{Trigger, TriggerError, fingerprint};
use crate::sources::poll::Polled;
use crate::workloads::{RegisterError, Tracked, Workloads};
use gpuscale_contract::WorkloadKey;

/// The gRPC service.
#[derive(Clone)]
pub struct Scaler {
    workloads: Arc<Workloads>,
    telemetry: Arc<Telemetry>,
    clock: Clock,
    /// The collectors' view, to decide a workload the moment it is registered.
    polled: Option<Arc<Polled>>,
}

impl Scaler {
    /// A service over shared state.
    pub fn new(workloads: Arc<Workloads>, telemetry: Arc<Telemetry>, clock: Clock) -> Self {
        Scaler {
            workloads,
            telemetry,
            clock,
            polled: None,
        }
    }

    /// Decide each workload as it is registered, on the view the collectors' pages make
    /// (once a first complete read has made one): otherwise its first answer is "no decision
    /// yet" until the next changed page or periodic pass.
    pub fn with_view(mut self, polled: Arc<Polled>) -> Self {
        self.polled = Some(polled);
        self
    }

    /// The workload a ScaledObjectRef names, registering it (or its changed metadata).
    fn resolve(&self, r: &ScaledObjectRef) -> Result<Arc<Tracked>, Status> {
        let md = &r.scaler_metadata;
        let name = md
            .get("deployment")
            .ok_or_else(|| Status::invalid_argument(TriggerError::MissingDeployment.to_string()))?;
        let key = WorkloadKey {
            namespace: md.get("namespace").unwrap_or(&r.namespace).trim().to_string(),
            name: name.trim().to_string(),
        };
        let now = self.clock.now();
        if let Some(w) = self.workloads.get(&key, fingerprint(&r.namespace, md)) {
            w.touch(now);
            return Ok(w);
        }
        let so = format!(
            "ScaledObject {}/{}",
            quote(&r.namespace, 253),
            quote(&r.name, 253)
        );
        let trigger = Trigger::parse(&r.namespace, md)
            .map_err(|e| Status::invalid_argument(format!("{so}: trigger metadata: {e}")))?;
        let w = self.workloads.register(trigger, &so, now).map_err(|e| match e {
            RegisterError::Full(_) => Status::resource_exhausted(e.to_string()),
            RegisterError::Trigger(t) => Status::invalid_argument(format!("{so}: {t}")),
            RegisterError::TooManyTriggers { .. } => Status::invalid_argument(format!("{so}: {e}")),
        })?;
        if let Some(p) = self.polled.as_ref().filter(|p| p.ready.load(Ordering::Relaxed)) {
            let view = p.view.read().unwrap_or_else(|e| e.into_inner());
            w.decide_now(&view, now);
        }
        Ok(w)
    }

    fn timed<T>(&self, method: usize, started: Instant, r: Result<T, Status>) -> Result<T, Status> {
        self.telemetry.rpc(method, started.elapsed(), r.is_ok());
        r
    }
}

fn unavailable(key: &WorkloadKey, why: &NotKnown) -> Status {
    Status::unavailable(format!("{key}: {why}"))
}

type ActiveStream = Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalScaler for Scaler {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let started = Instant::now();
        // The published answer: read without the workload's lock, which a decision holds.
        let r = self
            .resolve(request.get_ref())
            .and_then(|w| match &w.answer().active {
                Ok(a) => Ok(Response::new(IsActiveResponse { result: *a })),
                Err(why) => Err(unavailable(&w.trigger.workload, why)),
            });
        self.timed(2, started, r)
    }

    type StreamIsActiveStream = ActiveStream;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let started = Instant::now();
        let w = match self.resolve(request.get_ref()) {
            Ok(w) => w,
            Err(e) => return self.timed(3, started, Err(e)),
        };
        let mut rx = w.subscribe();
        drop(w);
        let (tx, out) = mpsc::channel(4);
        let telemetry = self.telemetry.clone();
        telemetry.streams_open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            // The state is sent on open; after that `true` for every inactive-to-active edge
            // (counted by the workload, so none is lost if this task runs late), never repeated
            // while active. `false` is not pushed: KEDA ignores it since 2.18, and before that it
            // scaled down at once, which is the keep-alive's decision to make.
            let mut heard: Option<u64> = None;
            loop {
                let now = *rx.borrow_and_update();
                if let Some((active, edges)) = now {
                    let send = match heard {
                        None => Some(active),
                        Some(seen) if edges > seen => Some(true),
                        Some(_) => None,
                    };
                    if let Some(result) = send {
                        if tx.send(Ok(IsActiveResponse { result })).await.is_err() {
                            break;
                        }
                        if result {
                            telemetry.stream_pushes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    heard = Some(edges);
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { break },
                    () = tx.closed() => break,
                }
            }
            telemetry.streams_open.fetch_sub(1, Ordering::Relaxed);
        });
        let stream: ActiveStream = Box::pin(ReceiverStream::new(out));
        self.timed(3, started, Ok(Response::new(stream)))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let started = Instant::now();
        let r = self.resolve(request.get_ref()).map(|w| {
            let target = w.trigger.target();
            Response::new(GetMetricSpecResponse {
                metric_specs: vec![MetricSpec {
                    metric_name: w.trigger.metric_name(),
                    // The deprecated integer field for KEDA < 2.17; never 0, which KEDA rejects.
                    target_size: (target.ceil() as i64).max(1),
                    target_size_float: target,
                }],
            })
        });
        self.timed(0, started, r)
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let started = Instant::now();
        let req = request.get_ref();
        let r = match &req.scaled_object_ref {
            None => Err(Status::invalid_argument(
                "GetMetricsRequest.scaledObjectRef is missing: KEDA always sends it; check the client",
            )),
            Some(so) => self.resolve(so).and_then(|w| {
                let name = w.trigger.metric_name();
                if !req.metric_name.is_empty() && req.metric_name != name {
                    return Err(Status::not_found(format!(
                        "metric `{}` is not served for {}: its metric is `{name}` (from GetMetricSpec)",
                        req.metric_name, w.trigger.workload
                    )));
                }
                match &w.answer().value {
                    Ok(v) => Ok(Response::new(GetMetricsResponse {
                        metric_values: vec![MetricValue {
                            metric_name: name,
                            metric_value: v.ceil() as i64,
                            metric_value_float: *v,
                        }],
                    })),
                    Err(why) => Err(unavailable(&w.trigger.workload, why)),
                }
            }),
        };
        self.timed(1, started, r)
    }
}
