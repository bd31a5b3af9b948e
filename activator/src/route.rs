//! Routes: which requests go to which workload's upstream, from flags (`--route`, a routes
//! file) or from annotated Services (`gpuscale.io/activate`).

use gpuscale_contract::WorkloadKey;
use http::Uri;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt as _;

/// What a route matches.
#[derive(Clone, Debug, PartialEq)]
pub enum Match {
    /// The request's Host (port ignored).
    Host(String),
    /// A path prefix (longest wins); the path is forwarded unchanged.
    Prefix(String),
}

/// One route.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// What it matches.
    pub matches: Match,
    /// The workload behind it.
    pub workload: WorkloadKey,
    /// `http://host:port` of the workload's Service.
    pub upstream: Uri,
}

impl Route {
    /// Parse `HOST=NAMESPACE/WORKLOAD=URL` or `/PREFIX=NAMESPACE/WORKLOAD=URL`.
    pub fn parse(s: &str) -> Result<Route, String> {
        let usage = "expected HOST=NAMESPACE/WORKLOAD=http://UPSTREAM[:PORT] or /PATH-PREFIX=NAMESPACE/WORKLOAD=http://UPSTREAM[:PORT], e.g. qwen.example.com=llm/qwen=http://qwen-predictor.llm:80";
        let mut parts = s.splitn(3, '=');
        let (Some(m), Some(w), Some(u)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("route `{s}`: {usage}"));
        };
        let (ns, name) = w
            .split_once('/')
            .filter(|(a, b)| !a.is_empty() && !b.is_empty())
            .ok_or_else(|| format!("route `{s}`: workload `{w}` is not NAMESPACE/NAME; {usage}"))?;
        let normalized = gpuscale_edge::fetch::normalize_url("upstream", u, "")
            .map_err(|e| format!("route `{}`: {e}", gpuscale_policies::spec::brief_to(s, 200)))?;
        let upstream: Uri = normalized
            .parse()
            .map_err(|e| format!("route `{s}`: upstream `{u}`: {e}; {usage}"))?;
        if upstream.scheme_str() != Some("http") || upstream.authority().is_none() {
            return Err(format!(
                "route `{s}`: upstream `{u}` must be http://host[:port] (TLS to the upstream is not supported)"
            ));
        }
        let matches = if m.starts_with('/') {
            Match::Prefix(m.to_string())
        } else if m.is_empty() {
            return Err(format!("route `{s}`: empty host; {usage}"));
        } else {
            Match::Host(m.to_ascii_lowercase())
        };
        Ok(Route {
            matches,
            workload: WorkloadKey {
                namespace: ns.to_string(),
                name: name.to_string(),
            },
            upstream,
        })
    }
}

/// Annotation that puts a Service behind the activator.
pub const ACTIVATE: &str = "gpuscale.io/activate";

/// The activator routes an annotated Service gives: Host routes for its cluster DNS names (or
/// `gpuscale.io/host`, comma-separated), to `gpuscale.io/upstream` or the Service's first port,
/// for the workload `gpuscale.io/workload` (default: the Service's name).
pub fn service_routes(svc: &Service) -> Result<Vec<Route>, String> {
    let ann = svc.metadata.annotations.clone().unwrap_or_default();
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let port = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p.first())
        .map(|p| p.port)
        .unwrap_or(80);
    let upstream = ann
        .get("gpuscale.io/upstream")
        .cloned()
        .unwrap_or_else(|| format!("http://{name}.{ns}.svc:{port}"));
    let upstream: http::Uri = upstream
        .parse()
        .map_err(|e| format!("Service {ns}/{name}: gpuscale.io/upstream `{upstream}`: {e}"))?;
    let hosts: Vec<String> = match ann.get("gpuscale.io/host") {
        Some(h) => h
            .split(',')
            .map(|x| x.trim().to_ascii_lowercase())
            .filter(|x| !x.is_empty())
            .collect(),
        None => vec![
            format!("{name}.{ns}.svc.cluster.local"),
            format!("{name}.{ns}.svc"),
        ],
    };
    let workload = WorkloadKey {
        namespace: ns.clone(),
        name: ann
            .get("gpuscale.io/workload")
            .cloned()
            .unwrap_or_else(|| name.clone()),
    };
    Ok(hosts
        .into_iter()
        .map(|h| Route {
            matches: Match::Host(h),
            workload: workload.clone(),
            upstream: upstream.clone(),
        })
        .collect())
}
