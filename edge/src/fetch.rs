//! Fetching a metrics page over HTTP, bounded in time and size and parsed as it arrives: the
//! collector reading its model servers, the scaler reading its collectors. Also the one syntax
//! for a metrics address every flag accepts, and errors that carry their causes with every URL
//! redacted.

use std::time::Duration;

use gpuscale_contract::{Fault, redact_url};
use gpuscale_expfmt::text::{Limits, MetricFamily, PromParser, parse_openmetrics};
use gpuscale_policies::spec::brief_to as quote;
use thiserror::Error;

/// The forms `--collector`, `--scrape-target` and activator upstreams accept, for errors.
pub const URL_FORMS: &str = "HOST:PORT (means http://HOST:PORT/metrics), http://HOST:PORT (the same), or a full http://HOST:PORT/PATH";

/// Normalise a metrics address: `host:port` and `http://host:port` mean `/metrics` (as
/// Prometheus' `metrics_path` default), a URL with a path is kept as it is, and a bad scheme,
/// host or port is refused with the accepted forms. `flag` names the input in the error.
pub fn metrics_url(flag: &str, input: &str) -> Result<String, String> {
    normalize_url(flag, input, "/metrics")
}

/// As [`metrics_url`], with `default_path` for an address given without a path.
pub fn normalize_url(flag: &str, input: &str, default_path: &str) -> Result<String, String> {
    let input = input.trim();
    let shown = quote(&redact_url(input), 200).into_owned();
    let bad = |why: &str| format!("{flag} `{shown}`: {why}; accepted: {URL_FORMS}");
    let rest = match input.split_once("://") {
        Some(("http", rest)) => rest,
        Some(("https", _)) => {
            return Err(bad(
                "https is not supported (this build has no TLS client): use http on the cluster network",
            ));
        }
        Some((scheme, _)) => {
            return Err(bad(&format!("unsupported scheme `{}`", quote(scheme, 20))));
        }
        None => input,
    };
    if rest.contains("://") {
        return Err(bad("more than one scheme"));
    }
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return Err(bad("unclosed `[` in an IPv6 address")),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let host_ok = hostport.starts_with('[')
        || host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !host_ok {
        return Err(bad(&format!(
            "`{}` is not a host name or address",
            quote(host, 80)
        )));
    }
    match port {
        None if input.contains("://") => {}
        None => return Err(bad("no port")),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => {
                return Err(bad(&format!("`{}` is not a port (1-65535)", quote(p, 20))));
            }
        },
    }
    let path = match path {
        "" | "/" => default_path.to_string(),
        p if p.starts_with('?') => format!("{default_path}{p}"),
        p => p.to_string(),
    };
    Ok(format!("http://{authority}{path}"))
}

/// Why a scrape failed. URLs in messages are redacted.
#[derive(Debug, Error)]
pub enum ScrapeError {
    /// Connection or HTTP error.
    #[error("{url}: {message}")]
    Http {
        /// The target, redacted.
        url: String,
        /// What happened.
        message: String,
    },
    /// No complete answer in time.
    #[error("{url}: no complete answer within {seconds:.1} s")]
    Timeout {
        /// The target, redacted.
        url: String,
        /// The timeout.
        seconds: f64,
    },
    /// The page is larger than allowed.
    #[error("{url}: page larger than {limit} bytes (raise --max-page-bytes if this is expected)")]
    TooLarge {
        /// The target, redacted.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// OpenMetrics was asked for and required, and the answer is in another format.
    #[error("{url}: answered `{content_type}` when asked for OpenMetrics")]
    WrongFormat {
        /// The target, redacted.
        url: String,
        /// What it answered (bounded).
        content_type: String,
    },
    /// The page does not parse.
    #[error("{url}: {error}")]
    Parse {
        /// The target, redacted.
        url: String,
        /// The parser's error, with its line.
        error: gpuscale_expfmt::text::ParseError,
    },
}

impl ScrapeError {
    /// The contract's fault code for it.
    pub fn fault(&self) -> Fault {
        match self {
            ScrapeError::Http { .. } => Fault::Http,
            ScrapeError::Timeout { .. } => Fault::Timeout,
            ScrapeError::TooLarge { .. } => Fault::TooLarge,
            ScrapeError::Parse { .. } | ScrapeError::WrongFormat { .. } => Fault::Parse,
        }
    }
}

/// An error with every cause after it (`error sending request: client error (Connect):
/// tcp connect error: Connection refused (os error 111)`), so a log says what actually failed.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// How to fetch one page.
#[derive(Clone, Copy, Debug)]
pub struct Fetch<'a> {
    /// Ask for OpenMetrics (and require it: a page in another format is refused).
    pub openmetrics: bool,
    /// Whole answer, headers to last byte.
    pub timeout: Duration,
    /// Largest page.
    pub max_bytes: usize,
    /// Sent as `Authorization: Bearer ...`.
    pub bearer: Option<&'a str>,
    /// Keep only samples with these names (Prometheus text, parsed as it arrives); `None`
    /// keeps all.
    pub keep: Option<&'a [String]>,
}

/// Fetch and parse one Prometheus text page, within `timeout` and `max_bytes`.
pub async fn fetch(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Vec<MetricFamily>, ScrapeError> {
    let how = Fetch {
        openmetrics: false,
        timeout,
        max_bytes,
        bearer: None,
        keep: None,
    };
    fetch_page(client, url, &how).await
}

/// Fetch and parse one page as `how` says. The body is read in chunks and refused as soon as
/// it passes the limit, so a large page never sits in memory whole beyond `max_bytes`.
pub async fn fetch_page(
    client: &reqwest::Client,
    url: &str,
    how: &Fetch<'_>,
) -> Result<Vec<MetricFamily>, ScrapeError> {
    let shown = redact_url(url);
    let http = |message: String| ScrapeError::Http {
        url: shown.clone(),
        message,
    };
    let accept = if how.openmetrics {
        "application/openmetrics-text;version=1.0.0"
    } else {
        "text/plain;version=0.0.4"
    };
    let work = async {
        let mut req = client.get(url).header("accept", accept);
        if let Some(token) = how.bearer {
            req = req.bearer_auth(token);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| http(with_causes(&e.without_url())))?;
        if !resp.status().is_success() {
            return Err(http(format!("HTTP {}", resp.status())));
        }
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let too_large = || ScrapeError::TooLarge {
            url: shown.clone(),
            limit: how.max_bytes,
        };
        let limits = Limits {
            max_bytes: how.max_bytes,
            ..Limits::default()
        };
        let mut next = async || {
            resp.chunk()
                .await
                .map_err(|e| http(with_causes(&e.without_url())))
        };
        let parsed = if how.openmetrics {
            // A collector's page, small and read whole: OpenMetrics needs the end (`# EOF`).
            if !content_type.starts_with("application/openmetrics-text") {
                return Err(ScrapeError::WrongFormat {
                    url: shown.clone(),
                    content_type: quote(&content_type, 80).into_owned(),
                });
            }
            let mut body: Vec<u8> = Vec::new();
            while let Some(chunk) = next().await? {
                if body.len() + chunk.len() > how.max_bytes {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            let text = String::from_utf8(body).map_err(|_| http("page is not UTF-8".into()))?;
            parse_openmetrics(&text, &limits)
        } else {
            // A model server's page, of any size: parsed as it arrives, keeping only the series
            // asked for, so memory does not grow with the page.
            let all = |_: &str| true;
            let wanted = |n: &str| how.keep.is_some_and(|k| k.iter().any(|w| w == n));
            let keep: &(dyn Fn(&str) -> bool + Sync) = if how.keep.is_some() { &wanted } else { &all };
            let mut parser = PromParser::new(&limits, keep);
            let mut read = 0usize;
            let mut outcome = Ok(());
            while let Some(chunk) = next().await? {
                read += chunk.len();
                if read > how.max_bytes {
                    return Err(too_large());
                }
                outcome = parser.feed(&chunk);
                if outcome.is_err() {
                    break;
                }
            }
            outcome.and_then(|()| parser.end())
        };
        parsed.map_err(|error| ScrapeError::Parse {
            url: shown.clone(),
            error,
        })
    };
    match tokio::time::timeout(how.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(ScrapeError::Timeout {
            url: shown.clone(),
            seconds: how.timeout.as_secs_f64(),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn metrics_urls() {
        let ok = |s: &str| metrics_url("--collector", s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok("h:9400"), "http://h:9400/metrics");
        assert_eq!(ok("http://h:9400"), "http://h:9400/metrics");
        assert_eq!(ok("http://h:9400/"), "http://h:9400/metrics");
        assert_eq!(ok("h:9400/metrics"), "http://h:9400/metrics");
        assert_eq!(ok("http://h:9400/metrics"), "http://h:9400/metrics");
        assert_eq!(ok("http://h/custom?x=1"), "http://h/custom?x=1");
        assert_eq!(ok("[::1]:9400"), "http://[::1]:9400/metrics");
        let bad = |s: &str| metrics_url("--collector", s).unwrap_err();
        let e = bad("htp://h:1");
        assert!(
            e.contains("unsupported scheme `htp`") && e.contains("HOST:PORT"),
            "{e}"
        );
        assert!(bad("h:99999").contains("not a port"));
        assert!(bad("h").contains("no port"));
        assert!(bad("http://:1").contains("no host"));
        assert!(bad("https://h:1").contains("https"));
        assert!(bad("http://http://h:1").contains("more than one scheme"));
        // Secrets never reach the message.
        let e = bad("http://user:hunter2@h:99999/?token=s3cret");
        assert!(!e.contains("hunter2") && !e.contains("s3cret"), "{e}");
    }
}
