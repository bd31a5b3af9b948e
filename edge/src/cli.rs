//! What every gpuscale binary shares at its edge: the duration and listen-address syntax of
//! its flags, the shutdown signal, and how a failed start is reported (one line naming the
//! input and the fix, never a backtrace).

/// The forms every `--*-listen` flag accepts, for errors.
pub const LISTEN_FORMS: &str =
    "HOST:PORT (e.g. 0.0.0.0:9400, 127.0.0.1:9400, [::]:9400, localhost:9400) or :PORT for every interface";

/// Parse a listen address: `ip:port`, `[ipv6]:port`, `name:port` (resolved now, first address
/// wins) or `:port` (all interfaces).
pub fn listen_addr(v: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    let v = v.trim();
    let shown = gpuscale_policies::spec::brief(v);
    let full = match v.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => v.to_string(),
    };
    if let Ok(a) = full.parse() {
        return Ok(a);
    }
    let Some((host, port)) = full.rsplit_once(':') else {
        return Err(format!("`{shown}` has no port; expected {LISTEN_FORMS}"));
    };
    let Ok(port_number) = port.parse::<u16>() else {
        return Err(format!(
            "`{shown}`: `{port}` is not a port (0-65535); expected {LISTEN_FORMS}"
        ));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match (host, port_number).to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("`{shown}`: `{host}` resolves to no address; expected {LISTEN_FORMS}")),
        Err(e) => Err(format!(
            "`{shown}`: cannot resolve `{host}` ({e}); expected {LISTEN_FORMS}"
        )),
    }
}

/// The duration syntax of every gpuscale flag (`250ms`, `30s`, `5m`, `1h`, or a bare number
/// of seconds), as seconds, for clap's `value_parser`.
pub use gpuscale_policies::spec::duration_secs;

/// Resolves on SIGTERM (what the kubelet sends) or Ctrl-C. Several servers may wait on it;
/// the news is logged once.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    static TOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !TOLD.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::info!("shutting down");
    }
}

/// The process's exit: `name: error: ...` with every cause on one line, whatever
/// RUST_BACKTRACE says (a user error is a message, not a backtrace).
pub fn exit(name: &str, result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logging for every binary: `RUST_LOG` filter (default `info`), JSON lines when `json`.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
}

/// Read a bearer token from a file named by `flag`: trimmed, and refused when empty.
pub fn read_token_file(flag: &str, path: &std::path::Path) -> anyhow::Result<String> {
    let token =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))?;
    let token = token.trim();
    if token.is_empty() {
        anyhow::bail!(
            "{flag} {}: the file is empty; put the token in it",
            path.display()
        );
    }
    Ok(token.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(listen_addr(":9400").unwrap().to_string(), "0.0.0.0:9400");
        assert_eq!(listen_addr("127.0.0.1:1").unwrap().to_string(), "127.0.0.1:1");
        assert_eq!(listen_addr("[::1]:2").unwrap().to_string(), "[::1]:2");
        assert_eq!(listen_addr("localhost:3").unwrap().port(), 3);
        let e = listen_addr("9400").unwrap_err();
        assert!(e.contains("has no port") && e.contains(":PORT"), "{e}");
        assert!(listen_addr("h:99999").unwrap_err().contains("not a port"));
    }
}
