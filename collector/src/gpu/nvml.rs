//! NVML through nvml-wrapper: utilization, memory, power, temperature, clocks, ECC, MIG
//! instances, per-process memory, and critical XID events.

use super::{GpuError, GpuReading, GpuSource};

/// NVML through nvml-wrapper. The library is loaded once (`dlopen` of `libnvidia-ml.so.1`)
/// and kept for the life of the process. When `nvmlInit` fails (the driver not loaded yet, as
/// on a node still booting), every read tries again, and until one succeeds the read fails with
/// the reason: the collector keeps serving queue depth meanwhile.
pub struct NvmlGpus {
    nvml: Option<&'static nvml_wrapper::Nvml>,
    /// Critical XID events of every GPU that reports them; set up on the first read.
    events: Option<nvml_wrapper::EventSet<'static>>,
    events_tried: bool,
    /// Per GPU UUID: (last XID, when, how many since start).
    xids: std::collections::HashMap<String, (u64, std::time::Instant, u64)>,
    /// GPUs registered for XID events.
    xid_capable: std::collections::HashSet<String>,
}

/// How long an XID stays the GPU's last one (dcgm-exporter's XID window).
const XID_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// Most XID events taken per read, so a storm cannot stall a tick.
const MAX_XID_EVENTS_PER_READ: usize = 1024;

static NVML: std::sync::OnceLock<nvml_wrapper::Nvml> = std::sync::OnceLock::new();

impl NvmlGpus {
    /// Load NVML. A missing library is an error now (the pod lacks the NVIDIA runtime: a
    /// configuration to fix); a failing `nvmlInit` is retried on each read.
    pub fn new() -> Result<Self, GpuError> {
        let gpus = |nvml| NvmlGpus {
            nvml,
            events: None,
            events_tried: false,
            xids: Default::default(),
            xid_capable: Default::default(),
        };
        match Self::init() {
            Ok(n) => Ok(gpus(Some(n))),
            Err(e @ GpuError::Unavailable(_)) => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "NVML did not initialize; retrying on every tick");
                Ok(gpus(None))
            }
        }
    }

    fn init() -> Result<&'static nvml_wrapper::Nvml, GpuError> {
        if let Some(n) = NVML.get() {
            return Ok(n);
        }
        match nvml_wrapper::Nvml::init() {
            Ok(nvml) => Ok(NVML.get_or_init(|| nvml)),
            Err(e @ nvml_wrapper::error::NvmlError::LibloadingError(_)) => {
                Err(GpuError::Unavailable(e.to_string()))
            }
            Err(e) => Err(GpuError::nvml(&e, "nvmlInit: ")),
        }
    }

    /// Register every GPU that supports them for critical XID events, once.
    fn watch_xids(&mut self, nvml: &'static nvml_wrapper::Nvml, count: u32) {
        use nvml_wrapper::bitmasks::event::EventTypes;
        self.events_tried = true;
        let mut set = match nvml.create_event_set() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "NVML event set: XID errors are not reported");
                return;
            }
        };
        for i in 0..count {
            let Ok(dev) = nvml.device_by_index(i) else {
                continue;
            };
            let supported = dev
                .supported_event_types()
                .is_ok_and(|t| t.contains(EventTypes::CRITICAL_XID_ERROR));
            let Ok(uuid) = dev.uuid() else { continue };
            if !supported {
                continue;
            }
            match dev.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                Ok(s) => {
                    set = s;
                    self.xid_capable.insert(uuid);
                }
                Err(e) => {
                    // A failed registration frees the set (NVML's rule): no XIDs at all.
                    tracing::warn!(error = %e, gpu = i, "registering XID events failed: XID errors are not reported");
                    self.xid_capable.clear();
                    return;
                }
            }
        }
        self.events = Some(set);
    }

    /// Take the XID events that arrived since the last read (never waiting).
    fn drain_xids(&mut self) {
        use nvml_wrapper::enums::event::XidError;
        let Some(set) = &self.events else { return };
        for _ in 0..MAX_XID_EVENTS_PER_READ {
            match set.wait(0) {
                Ok(ev) => {
                    let Ok(uuid) = ev.device.uuid() else { continue };
                    let xid = match ev.event_data {
                        Some(XidError::Value(v)) => v,
                        Some(XidError::Unknown) => 999,
                        None => continue,
                    };
                    tracing::warn!(%uuid, xid, "GPU raised a critical XID error");
                    let e = self.xids.entry(uuid).or_insert((0, std::time::Instant::now(), 0));
                    *e = (xid, std::time::Instant::now(), e.2 + 1);
                }
                Err(nvml_wrapper::error::NvmlError::Timeout) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for XID events failed");
                    return;
                }
            }
        }
    }

    fn with_xids(&self, mut r: GpuReading) -> GpuReading {
        if self.xid_capable.contains(&r.uuid) {
            let (last, count) = match self.xids.get(&r.uuid) {
                Some((x, at, n)) => (if at.elapsed() <= XID_WINDOW { *x } else { 0 }, *n),
                None => (0, 0),
            };
            r.xid_last = Some(last);
            r.xid_errors = Some(count);
        }
        r
    }

    fn reading(dev: &nvml_wrapper::Device<'_>, index: String) -> GpuReading {
        use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor};
        use nvml_wrapper::enums::device::UsedGpuMemory;
        let util = dev.utilization_rates().ok();
        let mem = dev.memory_info().ok();
        GpuReading {
            index,
            uuid: dev.uuid().unwrap_or_default(),
            model: dev.name().unwrap_or_default(),
            utilization: util.as_ref().map(|u| f64::from(u.gpu) / 100.0),
            memory_utilization: util.as_ref().map(|u| f64::from(u.memory) / 100.0),
            memory_used_bytes: mem.as_ref().map(|m| m.used),
            memory_free_bytes: mem.as_ref().map(|m| m.free),
            memory_total_bytes: mem.as_ref().map(|m| m.total),
            power_watts: dev.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
            temperature_celsius: dev.temperature(TemperatureSensor::Gpu).ok().map(f64::from),
            sm_clock_hertz: dev.clock_info(Clock::SM).ok().map(|mhz| f64::from(mhz) * 1e6),
            memory_clock_hertz: dev.clock_info(Clock::Memory).ok().map(|mhz| f64::from(mhz) * 1e6),
            // NOT_SUPPORTED on GPUs without ECC (or with it off): no series, not a zero.
            ecc_corrected: dev
                .total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)
                .ok(),
            ecc_uncorrected: dev
                .total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
                .ok(),
            xid_last: None,
            xid_errors: None,
            processes: dev
                .running_compute_processes()
                .unwrap_or_default()
                .into_iter()
                .map(|p| {
                    let used = match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => Some(b),
                        UsedGpuMemory::Unavailable => None,
                    };
                    (p.pid, used)
                })
                .collect(),
        }
    }
}

impl GpuSource for NvmlGpus {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn read(&mut self) -> Result<Vec<GpuReading>, GpuError> {
        let nvml = match self.nvml {
            Some(n) => n,
            None => {
                let n = Self::init()?;
                tracing::info!("NVML initialized");
                self.nvml = Some(n);
                n
            }
        };
        let n = nvml.device_count().map_err(|e| GpuError::nvml(&e, ""))?;
        if !self.events_tried {
            self.watch_xids(nvml, n);
        }
        self.drain_xids();
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            let dev = nvml
                .device_by_index(i)
                .map_err(|e| GpuError::nvml(&e, &format!("GPU {i}: ")))?;
            // A GPU that has fallen off the bus answers GPU_IS_LOST to every call: the node's
            // GPU view is unknown (never a GPU with blank fields).
            if let Err(e) = dev.uuid() {
                return Err(GpuError::nvml(&e, &format!("GPU {i}: ")));
            }
            // MIG instances, where the driver offers them, are reported alongside their parent.
            let mig = matches!(dev.mig_is_mig_device_handle(), Ok(false))
                && dev.mig_mode().is_ok_and(|m| m.current == 1);
            out.push(self.with_xids(Self::reading(&dev, i.to_string())));
            if mig {
                let count = dev.mig_device_count().unwrap_or(0);
                for j in 0..count {
                    if let Ok(m) = dev.mig_device_by_index(j) {
                        out.push(Self::reading(&m, format!("{i}/{j}")));
                    }
                }
            }
        }
        Ok(out)
    }
}
