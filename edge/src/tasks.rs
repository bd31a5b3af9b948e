//! Supervised long-lived tasks: a binary's poll loop, HTTP servers, watches and reload loops
//! run in one [`Tasks`] set, and the process ends (non-zero, so Kubernetes restarts it) when
//! any of them fails, panics or stops while the process is not shutting down. A task that dies
//! quietly would leave a process that answers its health check and does nothing.
//!
//! Shutdown is the one time a task may end: [`Tasks::shutdown`] is the signal future every
//! server waits on, and once it has fired, tasks that end cleanly are let go.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::task::{Id, JoinError, JoinSet};

/// A set of named long-lived tasks, watched together.
#[derive(Default)]
pub struct Tasks {
    set: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, &'static str>,
    stopping: Arc<AtomicBool>,
}

impl Tasks {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Run `task` until the process ends. It is a failure for it to return before shutdown
    /// (with `Ok` or `Err`) or to panic.
    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let id = self.set.spawn(task).id();
        self.names.insert(id, name);
    }

    /// As [`Tasks::spawn`], for a task that has no error to return (a server, a loop).
    pub fn spawn_infallible(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.spawn(name, async move {
            task.await;
            Ok(())
        });
    }

    /// Resolves on SIGTERM or Ctrl-C (see [`crate::cli::shutdown_signal`]), and marks the set as
    /// shutting down first, so the servers that end because of it are not failures.
    pub fn shutdown(&self) -> impl Future<Output = ()> + Send + 'static {
        let stopping = self.stopping.clone();
        async move {
            crate::cli::shutdown_signal().await;
            stopping.store(true, Ordering::SeqCst);
        }
    }

    /// Drive `main` (the process's foreground work, e.g. the gRPC server) while watching every
    /// task: `main`'s result once it ends, or the first task failure, naming the task. The
    /// remaining tasks are aborted when this returns.
    pub async fn run(mut self, main: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
        tokio::pin!(main);
        loop {
            tokio::select! {
                biased;
                r = &mut main => return r,
                Some(done) = self.set.join_next_with_id(), if !self.set.is_empty() => {
                    if let Some(e) = self.failure(done) {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Wait for the first task to fail (there is no foreground work), or for every task to
    /// end cleanly after shutdown.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        while let Some(done) = self.set.join_next_with_id().await {
            if let Some(e) = self.failure(done) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// `None` when a task's end is not a failure: a clean end once shutdown began.
    fn failure(&mut self, done: Result<(Id, anyhow::Result<()>), JoinError>) -> Option<anyhow::Error> {
        let id = match &done {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        let name = self.names.remove(&id).unwrap_or("a task");
        let stopping = self.stopping.load(Ordering::SeqCst);
        match done {
            Ok((_, Ok(()))) if stopping => None,
            Ok((_, Ok(()))) => Some(anyhow::anyhow!("{name} stopped while the process was running")),
            Ok((_, Err(e))) => Some(e.context(format!("{name} failed"))),
            Err(e) if e.is_panic() => Some(anyhow::anyhow!("{name} panicked: {e}")),
            // Aborted: only this set aborts its tasks, and only when it is dropped.
            Err(e) => Some(anyhow::anyhow!("{name} was cancelled: {e}")),
        }
    }
}

/// For an owner that restarts its per-item tasks (a scrape target, a collector reader) rather
/// than supervise them in a [`Tasks`] set: whether `handle`'s task has ended, and the panic it
/// ended with, if it did (`Some(None)`: ended without one, e.g. aborted at shutdown).
pub fn ended<T>(handle: &mut tokio::task::JoinHandle<T>) -> Option<Option<JoinError>> {
    if !handle.is_finished() {
        return None;
    }
    match futures_util::FutureExt::now_or_never(handle) {
        Some(Err(e)) if e.is_panic() => Some(Some(e)),
        _ => Some(None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn forever() -> anyhow::Result<()> {
        std::future::pending::<()>().await;
        Ok(())
    }

    #[tokio::test]
    async fn a_task_that_fails_ends_the_process_naming_it() {
        let mut t = Tasks::new();
        t.spawn("poll loop", forever());
        t.spawn("route watch", async {
            Err(anyhow::anyhow!("the API server refused"))
        });
        let e = t.run(forever()).await.unwrap_err();
        let shown = format!("{e:#}");
        assert!(
            shown.contains("route watch failed") && shown.contains("refused"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn a_task_that_stops_or_panics_is_a_failure() {
        let mut t = Tasks::new();
        t.spawn_infallible("http server", async {});
        let e = t.run(forever()).await.unwrap_err();
        assert!(e.to_string().contains("http server stopped"), "{e}");

        let mut t = Tasks::new();
        t.spawn_infallible("tick loop", async { panic!("boom") });
        let e = t.run(forever()).await.unwrap_err();
        assert!(e.to_string().contains("tick loop panicked"), "{e}");
    }

    #[tokio::test]
    async fn main_ending_returns_its_result_and_stops_the_tasks() {
        let mut t = Tasks::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        t.spawn("holder", async move {
            let _tx = tx;
            forever().await
        });
        t.run(async { Ok(()) }).await.unwrap();
        // The set was dropped: its task is aborted, so the sender it held is gone.
        assert!(
            tokio::time::timeout(Duration::from_secs(5), rx)
                .await
                .unwrap()
                .is_err()
        );
        let t = Tasks::new();
        let e = t
            .run(async { Err(anyhow::anyhow!("bind failed")) })
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "bind failed");
    }

    #[tokio::test]
    async fn an_ended_task_tells_a_panic_from_a_clean_end() {
        let mut running = tokio::spawn(std::future::pending::<()>());
        assert!(ended(&mut running).is_none());
        let mut panicked = tokio::spawn(async { panic!("boom") });
        let mut returned = tokio::spawn(async {});
        while !(panicked.is_finished() && returned.is_finished()) {
            tokio::task::yield_now().await;
        }
        assert!(ended(&mut panicked).is_some_and(|p| p.is_some_and(|e| e.is_panic())));
        assert!(ended(&mut returned).is_some_and(|p| p.is_none()));
        running.abort();
    }

    #[tokio::test]
    async fn a_clean_end_after_shutdown_is_not_a_failure() {
        let mut t = Tasks::new();
        t.stopping.store(true, Ordering::SeqCst);
        t.spawn_infallible("http server", async {});
        t.wait().await.unwrap();
        let mut t = Tasks::new();
        t.stopping.store(true, Ordering::SeqCst);
        t.spawn("watch", async { Err(anyhow::anyhow!("still an error")) });
        assert!(t.wait().await.is_err());
    }
}
