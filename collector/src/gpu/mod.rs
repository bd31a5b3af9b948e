//! GPU sources: NVML on a GPU node ([`nvml`]), scripted fakes for tests and demos ([`fake`]),
//! or none; what a reading holds ([`GpuReading`]) and why one failed ([`GpuError`]).

pub mod fake;
pub mod nvml;

pub use fake::{FakeGpus, FakeGpusHandle};
pub use nvml::NvmlGpus;

use thiserror::Error;

/// One GPU (or MIG instance) at one instant. Fields a driver does not support are `None`.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuReading {
    /// Index as NVML numbers devices (`0`, `1`, ...; MIG instances `0/1`).
    pub index: String,
    /// `GPU-...` or `MIG-...` UUID.
    pub uuid: String,
    /// Product name, e.g. `NVIDIA H100 80GB HBM3`.
    pub model: String,
    /// SM (compute) utilization, 0-1.
    pub utilization: Option<f64>,
    /// Memory-controller utilization, 0-1.
    pub memory_utilization: Option<f64>,
    /// Framebuffer used, bytes.
    pub memory_used_bytes: Option<u64>,
    /// Framebuffer free, bytes.
    pub memory_free_bytes: Option<u64>,
    /// Framebuffer total, bytes.
    pub memory_total_bytes: Option<u64>,
    /// Board power, watts.
    pub power_watts: Option<f64>,
    /// Core temperature, degrees Celsius.
    pub temperature_celsius: Option<f64>,
    /// SM clock, hertz.
    pub sm_clock_hertz: Option<f64>,
    /// Memory clock, hertz.
    pub memory_clock_hertz: Option<f64>,
    /// ECC errors corrected since the driver loaded (volatile; `None` without ECC).
    pub ecc_corrected: Option<u64>,
    /// ECC errors not corrected since the driver loaded.
    pub ecc_uncorrected: Option<u64>,
    /// The last critical XID error raised in the past 5 minutes, 0 if none (dcgm-exporter's
    /// `DCGM_FI_DEV_XID_ERRORS`); `None` where the GPU cannot report XID events.
    pub xid_last: Option<u64>,
    /// Critical XID errors seen since the collector started.
    pub xid_errors: Option<u64>,
    /// Processes using the GPU: (pid, used bytes if known).
    pub processes: Vec<(u32, Option<u64>)>,
}

/// Why GPUs could not be read.
#[derive(Debug, Error)]
pub enum GpuError {
    /// NVML is not on this machine (no driver, or the container lacks the NVIDIA runtime).
    #[error(
        "NVML is not available ({0}); on a GPU node run the collector with the NVIDIA container runtime \
         (runtimeClassName: nvidia, NVIDIA_VISIBLE_DEVICES=all), or use --gpu-source none|fake:N"
    )]
    Unavailable(String),
    /// A call failed; `reason` is the `gpuscale_gpu_source_up` label.
    #[error("NVML: {message}")]
    Nvml {
        /// `driver_not_loaded`, `gpu_lost`, `not_initialized`, `error`.
        reason: &'static str,
        /// What NVML said, with the device.
        message: String,
    },
}

impl GpuError {
    /// The `reason` label of `gpuscale_gpu_source_up 0`.
    pub fn reason(&self) -> &'static str {
        match self {
            GpuError::Unavailable(_) => "library_not_found",
            GpuError::Nvml { reason, .. } => reason,
        }
    }

    fn nvml(e: &nvml_wrapper::error::NvmlError, context: &str) -> GpuError {
        use nvml_wrapper::error::NvmlError as E;
        let reason = match e {
            E::DriverNotLoaded => "driver_not_loaded",
            E::GpuLost => "gpu_lost",
            E::Uninitialized => "not_initialized",
            _ => "error",
        };
        GpuError::Nvml {
            reason,
            message: format!("{context}{e}"),
        }
    }
}

/// A source of GPU readings. `read` may block (NVML calls do); the collector calls it on a
/// dedicated thread, never on the request path.
pub trait GpuSource: Send {
    /// Short name for logs and the exposition (`nvml`, `fake`, `none`).
    fn name(&self) -> &'static str;
    /// Read every GPU now.
    fn read(&mut self) -> Result<Vec<GpuReading>, GpuError>;
}

/// No GPUs (CPU nodes, or queue-depth-only collectors).
pub struct NoGpus;

impl GpuSource for NoGpus {
    fn name(&self) -> &'static str {
        "none"
    }
    fn read(&mut self) -> Result<Vec<GpuReading>, GpuError> {
        Ok(Vec::new())
    }
}

/// Parse `--gpu-source`: `nvml`, `fake:N` or `none`.
pub fn from_flag(s: &str) -> Result<(Box<dyn GpuSource>, Option<FakeGpusHandle>), String> {
    match s {
        "none" => Ok((Box::new(NoGpus), None)),
        "nvml" => NvmlGpus::new()
            .map(|g| (Box::new(g) as Box<dyn GpuSource>, None))
            .map_err(|e| e.to_string()),
        f if f.starts_with("fake:") => {
            let n: u32 = f[5..]
                .parse()
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| format!("--gpu-source {f}: expected fake:N with N from 1 to 64"))?;
            let (g, h) = FakeGpus::new(n);
            Ok((Box::new(g), Some(h)))
        }
        other => Err(format!("--gpu-source {other}: expected nvml, fake:N or none")),
    }
}
