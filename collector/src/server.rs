//! Serving HTTP with the bounds every gpuscale server shares (collector, scaler, activator):
//! a client must send its request headers within [`HEADER_READ_TIMEOUT`] of connecting, so
//! half-open or trickling connections are closed instead of piling up, and shutdown is
//! graceful within [`DRAIN`].

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};

/// Time from connect to the end of the request headers (and between requests on a kept-alive
/// HTTP/1 connection, to the end of the next request's headers).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long open connections get to finish after shutdown is asked for.
pub const DRAIN: Duration = Duration::from_secs(10);

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

/// The connection builder with the shared bounds.
pub fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    b
}

/// Wait for the client's first byte, within the header timeout: until then the protocol is not
/// known and hyper's own header timer has not started. `false`: close the connection.
pub async fn first_byte(tcp: &TcpStream) -> bool {
    // `peek`, not `readable`: readiness can be reported before any byte has arrived.
    let mut one = [0u8; 1];
    matches!(
        tokio::time::timeout(HEADER_READ_TIMEOUT, tcp.peek(&mut one)).await,
        Ok(Ok(n)) if n > 0
    )
}

/// Serve `app` on `listener` until `shutdown` resolves, then drain.
pub async fn serve(listener: TcpListener, app: axum::Router, shutdown: impl Future<Output = ()>) {
    let builder = builder();
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, say: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (b, app, watcher) = (builder.clone(), app.clone(), graceful.watcher());
        tokio::spawn(async move {
            if !first_byte(&tcp).await {
                return;
            }
            let svc = TowerToHyperService::new(app);
            let conn = b.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open {DRAIN:?} after shutdown; closing them");
    }
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
