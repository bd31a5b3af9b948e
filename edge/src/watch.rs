//! Reading the API server the one way every gpuscale binary does: a cache of every object of a
//! kind, kept current by a watch that retries with backoff, with the watch handed back for the
//! caller to run supervised.

use futures_util::StreamExt as _;
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Api, Client};

/// A cache of every `K` in the cluster, and the watch that keeps it current (retrying with
/// backoff; it ends only if the stream does), for the caller to run supervised.
pub fn cached<K>(
    client: Client,
) -> (
    reflector::Store<K>,
    impl std::future::Future<Output = ()> + Send + 'static,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let api: Api<K> = Api::all(client);
    let watch = async move {
        let stream = reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .applied_objects();
        futures_util::pin_mut!(stream);
        while let Some(r) = stream.next().await {
            if let Err(e) = r {
                tracing::warn!(kind = %K::kind(&()), error = %e, "watch error; retrying");
            }
        }
    };
    (store, watch)
}
