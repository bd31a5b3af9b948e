//! A stand-in for the NVIDIA driver's `libnvidia-ml.so.1`, so the collector's real NVML path
//! (nvml-wrapper loading the library with `dlopen`, enumerating devices and MIG instances,
//! reading every field, mapping error codes) runs in CI on machines without a GPU.
//!
//! It exports the NVML entry points the collector calls, with the argument and struct types of
//! `nvml-wrapper-sys` itself: [`abi_matches`] coerces every export to the type nvml-wrapper
//! loads it as, so a signature that drifts from the bindings does not compile.
//!
//! What it answers comes from the JSON file named by `GPUSCALE_NVML_STUB`, re-read on every
//! call so a test can change the node under a running collector:
//!
//! ```json
//! {"init": "ok",                      // or "driver_not_loaded"
//!  "devices": [{"uuid": "GPU-...", "name": "NVIDIA H100 80GB HBM3",
//!               "gpu_util": 37, "mem_util": 12, "total": 85899345920, "used": 21474836480,
//!               "power_mw": 312000, "temp_c": 51, "sm_mhz": 1980, "mem_mhz": 2619,
//!               "ecc": [3, 0],                   // volatile corrected, uncorrected; omit: no ECC
//!               "xid": [79],                     // XID events, each delivered once; omit: unsupported
//!               "processes": [[4242, 7516192768]],
//!               "mig": [ {same fields, per MIG instance} ],
//!               "lost": false,          // every call for it answers NVML_ERROR_GPU_IS_LOST
//!               "block_ms": 0}]}        // nvmlDeviceGetUtilizationRates sleeps this long
//! ```
#![allow(unsafe_code, non_snake_case, clippy::missing_safety_doc)]

use std::ffi::{c_char, c_uint};

use nvml_wrapper_sys::bindings::{
    nvmlDevice_t, nvmlEventData_t, nvmlEventSet_t, nvmlMemory_v2_t, nvmlProcessInfo_t, nvmlReturn_t,
    nvmlUtilization_t,
};

const SUCCESS: nvmlReturn_t = 0;
const INVALID_ARGUMENT: nvmlReturn_t = 2;
const NOT_SUPPORTED: nvmlReturn_t = 3;
const INSUFFICIENT_SIZE: nvmlReturn_t = 7;
const TIMEOUT: nvmlReturn_t = 10;
const DRIVER_NOT_LOADED: nvmlReturn_t = 9;
const GPU_IS_LOST: nvmlReturn_t = 15;
const ARGUMENT_VERSION_MISMATCH: nvmlReturn_t = 25;
const UNKNOWN: nvmlReturn_t = 999;

/// The scripted node.
#[derive(serde::Deserialize, Default)]
pub struct Script {
    /// `ok` or `driver_not_loaded`.
    #[serde(default)]
    pub init: String,
    /// GPUs, by index.
    #[serde(default)]
    pub devices: Vec<Dev>,
}

/// One scripted GPU (or MIG instance).
#[derive(serde::Deserialize, Default, Clone)]
pub struct Dev {
    /// `GPU-...` or `MIG-...`.
    pub uuid: String,
    /// Product name.
    pub name: String,
    /// SM utilization, percent.
    #[serde(default)]
    pub gpu_util: u32,
    /// Memory-controller utilization, percent.
    #[serde(default)]
    pub mem_util: u32,
    /// Framebuffer bytes in total.
    #[serde(default)]
    pub total: u64,
    /// Framebuffer bytes used.
    #[serde(default)]
    pub used: u64,
    /// Board power, milliwatts.
    #[serde(default)]
    pub power_mw: u32,
    /// Core temperature, Celsius.
    #[serde(default)]
    pub temp_c: u32,
    /// SM clock, MHz.
    #[serde(default)]
    pub sm_mhz: u32,
    /// Memory clock, MHz (0: NOT_SUPPORTED).
    #[serde(default)]
    pub mem_mhz: u32,
    /// Critical XID errors the GPU has raised, oldest first; each is delivered once through
    /// the event API (append to raise another). `None`: the GPU does not support XID events.
    #[serde(default)]
    pub xid: Option<Vec<u64>>,
    /// Volatile ECC counts (corrected, uncorrected); `None`: the GPU has no ECC.
    #[serde(default)]
    pub ecc: Option<(u64, u64)>,
    /// Compute processes: (pid, bytes used).
    #[serde(default)]
    pub processes: Vec<(u32, u64)>,
    /// MIG instances; MIG mode is on when there are any.
    #[serde(default)]
    pub mig: Vec<Dev>,
    /// Every call answers GPU_IS_LOST.
    #[serde(default)]
    pub lost: bool,
    /// The utilization call sleeps this long first.
    #[serde(default)]
    pub block_ms: u64,
}

fn script() -> Option<Script> {
    let path = std::env::var_os("GPUSCALE_NVML_STUB")?;
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Handles encode the device: GPU `i` is `(i + 1) << 8`, its MIG instance `j` adds `j + 1`.
fn handle(gpu: usize, mig: Option<usize>) -> nvmlDevice_t {
    (((gpu + 1) << 8) | mig.map_or(0, |j| j + 1)) as nvmlDevice_t
}

/// The scripted device behind a handle, and whether it is a MIG instance.
fn device(h: nvmlDevice_t) -> Result<(Dev, bool), nvmlReturn_t> {
    let s = script().ok_or(UNKNOWN)?;
    let v = h as usize;
    let (gpu, mig) = ((v >> 8).checked_sub(1).ok_or(INVALID_ARGUMENT)?, v & 0xff);
    let parent = s.devices.get(gpu).ok_or(INVALID_ARGUMENT)?;
    if parent.lost {
        return Err(GPU_IS_LOST);
    }
    if mig == 0 {
        return Ok((parent.clone(), false));
    }
    parent
        .mig
        .get(mig - 1)
        .cloned()
        .map(|d| (d, true))
        .ok_or(INVALID_ARGUMENT)
}

/// Run `f` on the device, answering its error code if the device cannot be had.
fn with(h: nvmlDevice_t, f: impl FnOnce(&Dev, bool) -> nvmlReturn_t) -> nvmlReturn_t {
    match device(h) {
        Ok((d, _)) if d.lost => GPU_IS_LOST,
        Ok((d, is_mig)) => f(&d, is_mig),
        Err(e) => e,
    }
}

unsafe fn write_str(s: &str, buf: *mut c_char, len: c_uint) -> nvmlReturn_t {
    if buf.is_null() || s.len() + 1 > len as usize {
        return INSUFFICIENT_SIZE;
    }
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr().cast::<c_char>(), buf, s.len());
        *buf.add(s.len()) = 0;
    }
    SUCCESS
}

/// `nvmlInit_v2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    match script() {
        Some(s) if s.init == "driver_not_loaded" => DRIVER_NOT_LOADED,
        Some(_) => SUCCESS,
        None => UNKNOWN,
    }
}

/// `nvmlInitWithFlags`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> nvmlReturn_t {
    unsafe { nvmlInit_v2() }
}

/// `nvmlShutdown`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlShutdown() -> nvmlReturn_t {
    SUCCESS
}

/// `nvmlErrorString`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlErrorString(result: nvmlReturn_t) -> *const c_char {
    let s: &'static [u8] = match result {
        SUCCESS => b"Success\0",
        INVALID_ARGUMENT => b"Invalid Argument\0",
        NOT_SUPPORTED => b"Not Supported\0",
        INSUFFICIENT_SIZE => b"Insufficient Size\0",
        DRIVER_NOT_LOADED => b"Driver Not Loaded\0",
        GPU_IS_LOST => b"GPU is lost\0",
        _ => b"Unknown Error\0",
    };
    s.as_ptr().cast()
}

/// `nvmlDeviceGetCount_v2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> nvmlReturn_t {
    let Some(s) = script() else { return UNKNOWN };
    if count.is_null() {
        return INVALID_ARGUMENT;
    }
    unsafe { *count = s.devices.len() as c_uint };
    SUCCESS
}

/// `nvmlDeviceGetHandleByIndex_v2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    let Some(s) = script() else { return UNKNOWN };
    match s.devices.get(index as usize) {
        None => INVALID_ARGUMENT,
        Some(d) if d.lost => GPU_IS_LOST,
        Some(_) if device.is_null() => INVALID_ARGUMENT,
        Some(_) => {
            unsafe { *device = handle(index as usize, None) };
            SUCCESS
        }
    }
}

/// `nvmlDeviceGetUUID`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: nvmlDevice_t,
    uuid: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    with(device, |d, _| unsafe { write_str(&d.uuid, uuid, length) })
}

/// `nvmlDeviceGetName`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: nvmlDevice_t,
    name: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    with(device, |d, _| unsafe { write_str(&d.name, name, length) })
}

/// `nvmlDeviceGetUtilizationRates`; sleeps `block_ms` first, as a wedged driver call would.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: nvmlDevice_t,
    utilization: *mut nvmlUtilization_t,
) -> nvmlReturn_t {
    with(device, |d, _| {
        if d.block_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(d.block_ms));
        }
        if utilization.is_null() {
            return INVALID_ARGUMENT;
        }
        unsafe {
            (*utilization).gpu = d.gpu_util;
            (*utilization).memory = d.mem_util;
        }
        SUCCESS
    })
}

/// `nvmlDeviceGetMemoryInfo_v2`: the struct's version field must be
/// `NVML_STRUCT_VERSION(Memory, 2)`, as the real driver requires.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_v2_t,
) -> nvmlReturn_t {
    with(device, |d, _| {
        if memory.is_null() {
            return INVALID_ARGUMENT;
        }
        let want = (std::mem::size_of::<nvmlMemory_v2_t>() | (2 << 24)) as c_uint;
        unsafe {
            if (*memory).version != want {
                return ARGUMENT_VERSION_MISMATCH;
            }
            (*memory).total = d.total;
            (*memory).reserved = 0;
            (*memory).used = d.used;
            (*memory).free = d.total.saturating_sub(d.used);
        }
        SUCCESS
    })
}

/// `nvmlDeviceGetPowerUsage` (milliwatts; MIG instances have none).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(device: nvmlDevice_t, power: *mut c_uint) -> nvmlReturn_t {
    with(device, |d, is_mig| {
        if is_mig {
            return NOT_SUPPORTED;
        }
        unsafe { *power = d.power_mw };
        SUCCESS
    })
}

/// `nvmlDeviceGetTemperature` (the GPU sensor only).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    device: nvmlDevice_t,
    sensor: c_uint,
    temp: *mut c_uint,
) -> nvmlReturn_t {
    with(device, |d, is_mig| {
        if is_mig || sensor != 0 {
            return NOT_SUPPORTED;
        }
        unsafe { *temp = d.temp_c };
        SUCCESS
    })
}

/// `nvmlDeviceGetClockInfo`: the SM (1) and memory (2) clocks, MHz.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetClockInfo(
    device: nvmlDevice_t,
    kind: c_uint,
    clock: *mut c_uint,
) -> nvmlReturn_t {
    with(device, |d, is_mig| {
        let v = match kind {
            1 => d.sm_mhz,
            2 => d.mem_mhz,
            _ => return NOT_SUPPORTED,
        };
        if is_mig || v == 0 {
            return NOT_SUPPORTED;
        }
        unsafe { *clock = v };
        SUCCESS
    })
}

/// `nvmlDeviceGetTotalEccErrors`: corrected (0) or uncorrected (1), volatile (0) counts;
/// NOT_SUPPORTED on a GPU scripted without ECC, as the driver answers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEccErrors(
    device: nvmlDevice_t,
    error_type: c_uint,
    counter_type: c_uint,
    count: *mut u64,
) -> nvmlReturn_t {
    with(device, |d, is_mig| {
        let Some((corrected, uncorrected)) = d.ecc.filter(|_| !is_mig && counter_type == 0) else {
            return NOT_SUPPORTED;
        };
        if count.is_null() {
            return INVALID_ARGUMENT;
        }
        let v = match error_type {
            0 => corrected,
            1 => uncorrected,
            _ => return INVALID_ARGUMENT,
        };
        unsafe { *count = v };
        SUCCESS
    })
}

/// `nvmlDeviceGetComputeRunningProcesses_v3`: with too small a buffer (or none) it answers the
/// count and INSUFFICIENT_SIZE, as the driver does.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    with(device, |d, _| unsafe {
        if count.is_null() {
            return INVALID_ARGUMENT;
        }
        let n = d.processes.len();
        if infos.is_null() || (*count as usize) < n {
            *count = n as c_uint;
            return if n == 0 { SUCCESS } else { INSUFFICIENT_SIZE };
        }
        for (i, (pid, used)) in d.processes.iter().enumerate() {
            let p = &mut *infos.add(i);
            p.pid = *pid;
            p.usedGpuMemory = *used;
            p.gpuInstanceId = u32::MAX;
            p.computeInstanceId = u32::MAX;
        }
        *count = n as c_uint;
        SUCCESS
    })
}

/// `nvmlDeviceIsMigDeviceHandle`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceIsMigDeviceHandle(
    device: nvmlDevice_t,
    is_mig: *mut c_uint,
) -> nvmlReturn_t {
    with(device, |_, m| {
        unsafe { *is_mig = c_uint::from(m) };
        SUCCESS
    })
}

/// `nvmlDeviceGetMigMode`: on when the script gives the GPU instances.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    device: nvmlDevice_t,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> nvmlReturn_t {
    with(device, |d, is_mig| {
        if is_mig {
            return NOT_SUPPORTED;
        }
        let on = c_uint::from(!d.mig.is_empty());
        unsafe {
            *current = on;
            *pending = on;
        }
        SUCCESS
    })
}

/// `nvmlDeviceGetMaxMigDeviceCount`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(
    device: nvmlDevice_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    with(device, |d, _| {
        unsafe { *count = d.mig.len() as c_uint };
        SUCCESS
    })
}

/// `nvmlDeviceGetMigDeviceHandleByIndex`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    device: nvmlDevice_t,
    index: c_uint,
    mig: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    let gpu = ((device as usize) >> 8).wrapping_sub(1);
    with(device, |d, is_mig| {
        if is_mig || index as usize >= d.mig.len() {
            return INVALID_ARGUMENT;
        }
        unsafe { *mig = handle(gpu, Some(index as usize)) };
        SUCCESS
    })
}

fn same<T, E>(_: &Result<T, E>, _: T) {}

/// Never called: compiles only while every export has exactly the type nvml-wrapper loads the
/// symbol as (`nvml_wrapper_sys::bindings::NvmlLib`'s fields).
#[allow(dead_code)]
pub fn abi_matches(lib: &nvml_wrapper_sys::bindings::NvmlLib) {
    same(&lib.nvmlInit_v2, nvmlInit_v2);
    same(&lib.nvmlInitWithFlags, nvmlInitWithFlags);
    same(&lib.nvmlShutdown, nvmlShutdown);
    same(&lib.nvmlErrorString, nvmlErrorString);
    same(&lib.nvmlDeviceGetCount_v2, nvmlDeviceGetCount_v2);
    same(&lib.nvmlDeviceGetHandleByIndex_v2, nvmlDeviceGetHandleByIndex_v2);
    same(&lib.nvmlDeviceGetUUID, nvmlDeviceGetUUID);
    same(&lib.nvmlDeviceGetName, nvmlDeviceGetName);
    same(&lib.nvmlDeviceGetUtilizationRates, nvmlDeviceGetUtilizationRates);
    same(&lib.nvmlDeviceGetMemoryInfo_v2, nvmlDeviceGetMemoryInfo_v2);
    same(&lib.nvmlDeviceGetPowerUsage, nvmlDeviceGetPowerUsage);
    same(&lib.nvmlDeviceGetTemperature, nvmlDeviceGetTemperature);
    same(&lib.nvmlDeviceGetTotalEccErrors, nvmlDeviceGetTotalEccErrors);
    same(&lib.nvmlEventSetCreate, nvmlEventSetCreate);
    same(
        &lib.nvmlDeviceGetSupportedEventTypes,
        nvmlDeviceGetSupportedEventTypes,
    );
    same(&lib.nvmlDeviceRegisterEvents, nvmlDeviceRegisterEvents);
    same(&lib.nvmlEventSetWait_v2, nvmlEventSetWait_v2);
    same(&lib.nvmlEventSetFree, nvmlEventSetFree);
    same(&lib.nvmlDeviceGetClockInfo, nvmlDeviceGetClockInfo);
    same(
        &lib.nvmlDeviceGetComputeRunningProcesses_v3,
        nvmlDeviceGetComputeRunningProcesses_v3,
    );
    same(&lib.nvmlDeviceIsMigDeviceHandle, nvmlDeviceIsMigDeviceHandle);
    same(&lib.nvmlDeviceGetMigMode, nvmlDeviceGetMigMode);
    same(
        &lib.nvmlDeviceGetMaxMigDeviceCount,
        nvmlDeviceGetMaxMigDeviceCount,
    );
    same(
        &lib.nvmlDeviceGetMigDeviceHandleByIndex,
        nvmlDeviceGetMigDeviceHandleByIndex,
    );
}

/// XID events already delivered, per GPU index (the script is re-read on every call, so what
/// was delivered is kept here).
static DELIVERED: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());
/// GPUs registered on the one event set.
static REGISTERED: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());
const XID_EVENT: u64 = 8;

/// `nvmlEventSetCreate`: one set (the collector makes one).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut nvmlEventSet_t) -> nvmlReturn_t {
    if set.is_null() {
        return INVALID_ARGUMENT;
    }
    unsafe { *set = 0x5e7 as nvmlEventSet_t };
    SUCCESS
}

/// `nvmlDeviceGetSupportedEventTypes`: critical XID errors where the script lists `xid`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(
    device: nvmlDevice_t,
    types: *mut u64,
) -> nvmlReturn_t {
    with(device, |d, is_mig| {
        if types.is_null() {
            return INVALID_ARGUMENT;
        }
        unsafe { *types = if d.xid.is_some() && !is_mig { XID_EVENT } else { 0 } };
        SUCCESS
    })
}

/// `nvmlDeviceRegisterEvents` (critical XID errors only).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceRegisterEvents(
    device: nvmlDevice_t,
    types: u64,
    _set: nvmlEventSet_t,
) -> nvmlReturn_t {
    with(device, |d, is_mig| {
        if is_mig || d.xid.is_none() || types & !XID_EVENT != 0 {
            return NOT_SUPPORTED;
        }
        let gpu = ((device as usize) >> 8) - 1;
        if let Ok(mut r) = REGISTERED.lock()
            && !r.contains(&gpu)
        {
            r.push(gpu);
        }
        SUCCESS
    })
}

/// `nvmlEventSetWait_v2`: the oldest undelivered XID of a registered GPU, else TIMEOUT at once
/// (the stub never blocks).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    _set: nvmlEventSet_t,
    data: *mut nvmlEventData_t,
    _timeout_ms: c_uint,
) -> nvmlReturn_t {
    let Some(s) = script() else { return UNKNOWN };
    if data.is_null() {
        return INVALID_ARGUMENT;
    }
    let registered = REGISTERED.lock().map(|r| r.clone()).unwrap_or_default();
    let Ok(mut delivered) = DELIVERED.lock() else {
        return UNKNOWN;
    };
    for gpu in registered {
        let Some(xids) = s.devices.get(gpu).and_then(|d| d.xid.as_ref()) else {
            continue;
        };
        if delivered.len() <= gpu {
            delivered.resize(gpu + 1, 0);
        }
        if let Some(&xid) = xids.get(delivered[gpu]) {
            delivered[gpu] += 1;
            unsafe {
                *data = nvmlEventData_t {
                    device: handle(gpu, None),
                    eventType: XID_EVENT,
                    eventData: xid,
                    gpuInstanceId: 0xffff_ffff,
                    computeInstanceId: 0xffff_ffff,
                };
            }
            return SUCCESS;
        }
    }
    TIMEOUT
}

/// `nvmlEventSetFree`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetFree(_set: nvmlEventSet_t) -> nvmlReturn_t {
    if let Ok(mut r) = REGISTERED.lock() {
        r.clear();
    }
    SUCCESS
}
