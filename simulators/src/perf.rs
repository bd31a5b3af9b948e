//! Measured step times: the performance table behind the iteration-level LLM serving model.
//!
//! A table has SplitwiseSim's shape (`model,hardware,prompt_size,batch_size,token_size,...,
//! prompt_time,token_time,...,tensor_parallel`, times in milliseconds). For one (model,
//! hardware, TP) it yields measured curves, each the median of the repetitions of every
//! configuration, then piecewise-linear in between and linear beyond the last two points:
//! - prefill time of one prompt over its tokens (the `batch_size` 1 rows),
//! - prefill time of a batch of prompts over their tokens (`prompt_size * batch_size`, the
//!   rows with `batch_size` > 1): the table measures both, and at the same token count they
//!   differ by up to 20 % (either way), so a step that prefills one sequence uses the first
//!   and a step that prefills several the second,
//! - decode step time over the sequences in the batch (`batch_size`; the table shows context
//!   length changing it by under 10 % at batch 1, so context is not an input).
//!
//! Points that would make a curve fall as the load grows are dropped and listed (the bundled
//! table's batch-64 rows measure less time than batch 32, a change of regime rather than a
//! speed-up), so a bigger step never costs less. The table ships with the project
//! (`data/calibration/`, MIT, SplitwiseSim); `--perf-table FILE` reads a user's own.

use std::collections::BTreeMap;

use thiserror::Error;

/// The bundled table (SplitwiseSim `data/perf_model.csv`, MIT; see data/calibration/README.md).
pub const BUNDLED: &str = include_str!("../data/calibration/splitwise_perf_model.csv");

/// Where the bundled table is documented, for messages.
pub const BUNDLED_NAME: &str = "bundled SplitwiseSim table (simulators/data/calibration)";

/// A table that cannot be used, naming the file, line and fix.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PerfError {
    /// A header without a needed column.
    #[error(
        "{file}: no `{column}` column in the header; a performance table needs model,hardware,tensor_parallel,prompt_size,batch_size,prompt_time,token_time (times in ms)"
    )]
    MissingColumn {
        /// The table.
        file: String,
        /// The column.
        column: &'static str,
    },
    /// A cell that does not parse.
    #[error("{file}:{line}: column {column}: expected {expected}, found `{found}`")]
    BadCell {
        /// The table.
        file: String,
        /// 1-based line.
        line: usize,
        /// The column.
        column: &'static str,
        /// What would be accepted.
        expected: &'static str,
        /// What was there.
        found: String,
    },
    /// No rows for the configuration asked for.
    #[error("{file}: no rows for model `{model}`, hardware `{hardware}`, TP {tp}; it has: {available}")]
    NoRows {
        /// The table.
        file: String,
        /// Asked for.
        model: String,
        /// Asked for.
        hardware: String,
        /// Asked for.
        tp: u32,
        /// The configurations present.
        available: String,
    },
    /// Too few distinct points to draw a curve.
    #[error(
        "{file}: {what} for {model}/{hardware}/TP {tp} has {n} distinct point(s); at least 2 are needed (measure more batch sizes)"
    )]
    TooFewPoints {
        /// The table.
        file: String,
        /// Which curve.
        what: &'static str,
        /// Asked for.
        model: String,
        /// Asked for.
        hardware: String,
        /// Asked for.
        tp: u32,
        /// Points found.
        n: usize,
    },
}

/// A measured curve: piecewise linear through its points, linear beyond the ends.
#[derive(Clone, Debug, PartialEq)]
pub struct Curve {
    /// (x, seconds), x strictly increasing, seconds non-decreasing.
    pub points: Vec<(f64, f64)>,
}

impl Curve {
    /// Seconds at `x`: between points by their segment, beyond either end by the nearest
    /// segment's line, never negative.
    pub fn at(&self, x: f64) -> f64 {
        let p = &self.points;
        let i = p.partition_point(|(px, _)| *px < x);
        let (a, b) = if i == 0 {
            (p[0], p[1])
        } else if i >= p.len() {
            (p[p.len() - 2], p[p.len() - 1])
        } else {
            (p[i - 1], p[i])
        };
        let y = a.1 + (x - a.0) * (b.1 - a.1) / (b.0 - a.0);
        y.max(0.0)
    }
}

/// One configuration's measured curves.
#[derive(Clone, Debug, PartialEq)]
pub struct PerfTable {
    /// Where it came from (file, or [`BUNDLED_NAME`]).
    pub source: String,
    /// Model name as in the table.
    pub model: String,
    /// Hardware name as in the table.
    pub hardware: String,
    /// Tensor parallelism (GPUs per replica).
    pub tp: u32,
    /// Prefill seconds of one prompt over its tokens.
    pub prefill: Curve,
    /// Prefill seconds of several prompts over their tokens (`None`: the table has no batched
    /// prefill, and [`Self::prefill`] serves for all).
    pub prefill_batched: Option<Curve>,
    /// Decode step seconds over sequences in the batch.
    pub decode: Curve,
    /// Measured configurations left out to keep the curves monotone, as `prompt_size x batch_size`.
    pub dropped: Vec<String>,
    /// Every (prompt_size, batch_size) measured, with the median prefill and decode seconds:
    /// what the fidelity tests replay.
    pub measured: Vec<Measured>,
}

/// One measured configuration (medians of its repetitions).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    /// Prompt tokens per request.
    pub prompt_size: u32,
    /// Requests in the batch.
    pub batch_size: u32,
    /// Prefill of the whole batch, seconds.
    pub prompt_time: f64,
    /// One decode iteration of the batch, seconds.
    pub token_time: f64,
    /// On the curves (not left out to keep them monotone): what the fidelity test replays.
    pub kept: bool,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Keep the points of a sorted series that do not fall below an earlier one; the rest are
/// returned as dropped.
fn monotone(points: Vec<(f64, f64)>) -> (Vec<(f64, f64)>, Vec<f64>) {
    let mut kept: Vec<(f64, f64)> = Vec::new();
    let mut dropped = Vec::new();
    for (x, y) in points {
        if kept.last().is_some_and(|&(_, ly)| y < ly) {
            dropped.push(x);
        } else {
            kept.push((x, y));
        }
    }
    (kept, dropped)
}

impl PerfTable {
    /// The bundled table's configuration.
    pub fn bundled(model: &str, hardware: &str, tp: u32) -> Result<Self, PerfError> {
        Self::parse(BUNDLED_NAME, BUNDLED, model, hardware, tp)
    }

    /// Read one configuration of a table in SplitwiseSim's shape (times in milliseconds).
    pub fn parse(file: &str, text: &str, model: &str, hardware: &str, tp: u32) -> Result<Self, PerfError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let header: Vec<&str> = lines
            .next()
            .map(|(_, h)| h.split(',').map(str::trim).collect())
            .unwrap_or_default();
        let col = |name: &'static str| {
            header
                .iter()
                .position(|h| *h == name)
                .ok_or(PerfError::MissingColumn {
                    file: file.to_string(),
                    column: name,
                })
        };
        let (c_model, c_hw, c_tp) = (col("model")?, col("hardware")?, col("tensor_parallel")?);
        let (c_ps, c_bs, c_pt, c_tt) = (
            col("prompt_size")?,
            col("batch_size")?,
            col("prompt_time")?,
            col("token_time")?,
        );
        let mut groups: BTreeMap<(u32, u32), (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        let mut available: Vec<String> = Vec::new();
        for (i, line) in lines {
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            let cell = |c: usize| cells.get(c).copied().unwrap_or("");
            let bad = |column: &'static str, expected: &'static str, found: &str| PerfError::BadCell {
                file: file.to_string(),
                line: i + 1,
                column,
                expected,
                found: crate::policies::spec::brief(found).into_owned(),
            };
            let int = |c: usize, column: &'static str| {
                cell(c)
                    .parse::<u32>()
                    .ok()
                    .filter(|v| *v >= 1)
                    .ok_or_else(|| bad(column, "an integer >= 1", cell(c)))
            };
            let ms = |c: usize, column: &'static str| {
                cell(c)
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .ok_or_else(|| bad(column, "milliseconds > 0", cell(c)))
            };
            let row_tp = int(c_tp, "tensor_parallel")?;
            let key = format!("{}/{}/TP {row_tp}", cell(c_model), cell(c_hw));
            if !available.contains(&key) {
                available.push(key);
            }
            if cell(c_model) != model || cell(c_hw) != hardware || row_tp != tp {
                continue;
            }
            let ps = int(c_ps, "prompt_size")?;
            let bs = int(c_bs, "batch_size")?;
            let pt = ms(c_pt, "prompt_time")? / 1000.0;
            let tt = ms(c_tt, "token_time")? / 1000.0;
            let g = groups.entry((ps, bs)).or_default();
            g.0.push(pt);
            g.1.push(tt);
        }
        if groups.is_empty() {
            return Err(PerfError::NoRows {
                file: file.to_string(),
                model: model.to_string(),
                hardware: hardware.to_string(),
                tp,
                available: if available.is_empty() {
                    "no rows".to_string()
                } else {
                    available.join(", ")
                },
            });
        }
        let mut measured: Vec<Measured> = groups
            .into_iter()
            .map(|((ps, bs), (mut pt, mut tt))| Measured {
                prompt_size: ps,
                batch_size: bs,
                prompt_time: median(&mut pt),
                token_time: median(&mut tt),
                kept: true,
            })
            .collect();
        // Configurations that share an x (decode at batch 1 over several prompt sizes): their
        // median.
        let curve_of =
            |keep: &dyn Fn(&Measured) -> bool, x: &dyn Fn(&Measured) -> u32, y: &dyn Fn(&Measured) -> f64| {
                let mut by_x: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
                for m in measured.iter().filter(|m| keep(m)) {
                    by_x.entry(x(m)).or_default().push(y(m));
                }
                by_x.into_iter()
                    .map(|(x, mut ys)| (f64::from(x), median(&mut ys)))
                    .collect::<Vec<_>>()
            };
        let tokens = |m: &Measured| m.prompt_size * m.batch_size;
        let single = curve_of(&|m| m.batch_size == 1, &tokens, &|m| m.prompt_time);
        let batched = curve_of(&|m| m.batch_size > 1, &tokens, &|m| m.prompt_time);
        let (prefill, dropped_p, batched_split) = if single.len() >= 2 {
            let (p, d) = monotone(single);
            (p, d, true)
        } else {
            let (p, d) = monotone(curve_of(&|_| true, &tokens, &|m| m.prompt_time));
            (p, d, false)
        };
        let (prefill_batched, dropped_b) = if batched_split && batched.len() >= 2 {
            let (p, d) = monotone(batched);
            (Some(p), d)
        } else {
            (None, Vec::new())
        };
        let (decode, dropped_d) = monotone(curve_of(&|_| true, &|m| m.batch_size, &|m| m.token_time));
        for (what, pts) in [("the prefill curve", &prefill), ("the decode curve", &decode)] {
            if pts.len() < 2 {
                return Err(PerfError::TooFewPoints {
                    file: file.to_string(),
                    what,
                    model: model.to_string(),
                    hardware: hardware.to_string(),
                    tp,
                    n: pts.len(),
                });
            }
        }
        let mut dropped = Vec::new();
        for m in &mut measured {
            let t = f64::from(tokens(m));
            let on_batched = m.batch_size > 1 && prefill_batched.is_some();
            let lost = if on_batched {
                dropped_b.contains(&t)
            } else {
                dropped_p.contains(&t)
            };
            m.kept = !(lost || dropped_d.contains(&f64::from(m.batch_size)));
            if !m.kept {
                dropped.push(format!("{} x {}", m.prompt_size, m.batch_size));
            }
        }
        Ok(PerfTable {
            source: file.to_string(),
            model: model.to_string(),
            hardware: hardware.to_string(),
            tp,
            prefill: Curve { points: prefill },
            prefill_batched: prefill_batched.map(|points| Curve { points }),
            decode: Curve { points: decode },
            dropped,
            measured,
        })
    }
}

/// What the model's architecture says about memory, for the default KV-cache size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelShape {
    /// Name as in the table.
    pub name: &'static str,
    /// Parameters, billions.
    pub params_b: f64,
    /// Transformer layers.
    pub layers: u32,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: u32,
    /// Dimension per head.
    pub head_dim: u32,
    /// Bytes per weight and per cached value (FP16).
    pub bytes: u32,
}

/// Models of the bundled table (architectures from their published configs).
pub const MODELS: &[ModelShape] = &[
    // Llama 2 70B: 80 layers, 8 KV heads of 128 (GQA), 68.98 B parameters.
    ModelShape {
        name: "llama2-70b",
        params_b: 68.98,
        layers: 80,
        kv_heads: 8,
        head_dim: 128,
        bytes: 2,
    },
    // BLOOM 176B: 70 layers, 112 heads of 128, no GQA, 176.2 B parameters.
    ModelShape {
        name: "bloom-176b",
        params_b: 176.2,
        layers: 70,
        kv_heads: 112,
        head_dim: 128,
        bytes: 2,
    },
];

/// GPU memory in GiB as the driver reports it (`nvidia-smi`: 81,920 MiB on A100 80GB, 81,559
/// MiB on H100 80GB).
pub fn gpu_memory_gib(hardware: &str) -> Option<f64> {
    match hardware {
        "a100-80gb" => Some(81_920.0 / 1024.0),
        "h100-80gb" | "h100-80gb-pcap" => Some(81_559.0 / 1024.0),
        _ => None,
    }
}

/// vLLM's `gpu_memory_utilization` default.
pub const GPU_MEMORY_UTILIZATION: f64 = 0.9;

/// GiB per GPU assumed for activations, CUDA graphs and the allocator, outside the KV cache.
pub const ACTIVATION_GIB_PER_GPU: f64 = 2.0;

/// KV-cache tokens vLLM would find on `tp` GPUs: `(tp * memory * 0.9 - weights - tp * 2 GiB) /
/// (2 * layers * kv_heads * head_dim * bytes)`. `None` for a model or GPU not known here.
pub fn default_kv_tokens(model: &str, hardware: &str, tp: u32) -> Option<u64> {
    let m = MODELS.iter().find(|m| m.name == model)?;
    let mem = gpu_memory_gib(hardware)?;
    let gib = 1024.0 * 1024.0 * 1024.0;
    let weights = m.params_b * 1e9 * f64::from(m.bytes) / gib;
    let free = f64::from(tp) * (mem * GPU_MEMORY_UTILIZATION - ACTIVATION_GIB_PER_GPU) - weights;
    let per_token = 2.0 * f64::from(m.layers * m.kv_heads * m.head_dim * m.bytes);
    (free > 0.0).then(|| (free * gib / per_token) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_llama_h100_tp2_reads_its_medians() {
        let t = PerfTable::bundled("llama2-70b", "h100-80gb", 2).unwrap_or_else(|e| panic!("{e}"));
        // 8192 tokens were measured as 1 x 8192 (median 1.340 s) and 512 x 16 (1.192 s): one
        // curve for single prompts, one for batches.
        assert!(
            (t.prefill.at(8192.0) - 1.3398).abs() < 0.001,
            "{}",
            t.prefill.at(8192.0)
        );
        let b = t.prefill_batched.as_ref().map_or(0.0, |c| c.at(8192.0));
        assert!((b - 1.192).abs() < 0.001, "{b}");
        assert!((t.decode.at(1.0) - 0.0372).abs() < 0.001, "{}", t.decode.at(1.0));
        // batch 64 measures less than batch 32: dropped, and listed.
        assert!(t.dropped.iter().any(|d| d.ends_with(" x 64")), "{:?}", t.dropped);
        assert!(t.decode.at(64.0) > t.decode.at(32.0));
    }

    #[test]
    fn unknown_configuration_lists_what_the_table_has() {
        let e = PerfTable::bundled("llama2-70b", "h100-80gb", 3)
            .err()
            .map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(
            e.contains("TP 3") && e.contains("llama2-70b/h100-80gb/TP 2"),
            "{e}"
        );
    }

    #[test]
    fn bad_cells_name_file_line_and_column() {
        let text = "model,hardware,prompt_size,batch_size,prompt_time,token_time,tensor_parallel\nm,h,128,1,x,20,1\n";
        let e = PerfTable::parse("t.csv", text, "m", "h", 1)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("t.csv:2: column prompt_time: expected milliseconds > 0, found `x`")
        );
        let e = PerfTable::parse("t.csv", "model,hardware\n", "m", "h", 1)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("no `tensor_parallel` column")));
    }

    #[test]
    fn kv_cache_default_follows_the_memory_left_after_weights() {
        // 2 x 79.6 GiB x 0.9 - 4 GiB - 128.5 GiB of FP16 weights = 10.8 GiB at 320 KiB a token.
        let kv = default_kv_tokens("llama2-70b", "h100-80gb", 2).unwrap_or(0);
        assert!((30_000..40_000).contains(&kv), "{kv}");
        let kv4 = default_kv_tokens("llama2-70b", "h100-80gb", 4).unwrap_or(0);
        assert!(kv4 > 10 * kv, "{kv4}");
        assert_eq!(default_kv_tokens("llama2-70b", "mi300x", 2), None);
    }
}
