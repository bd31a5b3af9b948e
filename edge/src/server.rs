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
