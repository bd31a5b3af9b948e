//! Scripted GPUs (`--gpu-source fake:N`): documented starting values a test or demo changes
//! through a [`FakeGpusHandle`].

use std::sync::{Arc, Mutex};

use super::{GpuError, GpuReading, GpuSource};

/// Scripted GPUs. `fake:N` starts them at documented values (GPU i: utilization
/// `0.1 * (i + 1)`, 80 GiB of which `10 GiB * (i + 1)` used, 300 W, 50 C, SM 1.98 GHz, memory
/// 2.619 GHz, no ECC errors); a test
/// holds a [`FakeGpusHandle`] and sets whatever it needs.
pub struct FakeGpus {
    gpus: Arc<Mutex<Vec<GpuReading>>>,
}

/// Shared handle to the scripted values.
#[derive(Clone)]
pub struct FakeGpusHandle(Arc<Mutex<Vec<GpuReading>>>);

impl FakeGpusHandle {
    /// Change the scripted GPUs.
    pub fn update(&self, f: impl FnOnce(&mut Vec<GpuReading>)) {
        if let Ok(mut g) = self.0.lock() {
            f(&mut g);
        }
    }
}

impl FakeGpus {
    /// `n` GPUs at the documented starting values.
    pub fn new(n: u32) -> (Self, FakeGpusHandle) {
        const GIB: u64 = 1 << 30;
        let gpus: Vec<GpuReading> = (0..n)
            .map(|i| GpuReading {
                index: i.to_string(),
                uuid: format!("GPU-fake-{i:04}"),
                model: "Fake GPU 80GB".into(),
                utilization: Some(0.1 * f64::from(i + 1)),
                memory_utilization: Some(0.05 * f64::from(i + 1)),
                memory_used_bytes: Some(10 * GIB * u64::from(i + 1)),
                memory_free_bytes: Some((80 * GIB).saturating_sub(10 * GIB * u64::from(i + 1))),
                memory_total_bytes: Some(80 * GIB),
                power_watts: Some(300.0),
                temperature_celsius: Some(50.0),
                sm_clock_hertz: Some(1.98e9),
                memory_clock_hertz: Some(2.619e9),
                ecc_corrected: Some(0),
                ecc_uncorrected: Some(0),
                xid_last: Some(0),
                xid_errors: Some(0),
                processes: Vec::new(),
            })
            .collect();
        let shared = Arc::new(Mutex::new(gpus));
        (FakeGpus { gpus: shared.clone() }, FakeGpusHandle(shared))
    }
}

impl GpuSource for FakeGpus {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn read(&mut self) -> Result<Vec<GpuReading>, GpuError> {
        self.gpus.lock().map(|g| g.clone()).map_err(|_| GpuError::Nvml {
            reason: "error",
            message: "fake GPU state poisoned".into(),
        })
    }
}
