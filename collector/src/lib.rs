//! gpuscale-collector: the DaemonSet that sees load where it happens.
//!
//! It will own the GPU sources (NVML, scripted fakes), kubelet PodResources attribution,
//! model-server scraping and the node's `/metrics` exposition (issue #4). Nothing is
//! implemented here yet; the crate exists so the workspace layout is fixed from the start.
