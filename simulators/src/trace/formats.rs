//! One reader per trace format: which columns it needs and what a row means.

use super::rows::{Header, RowReader, field, nonneg, parse_datetime, time_field};
use super::{ReadOptions, Request, TraceError, format_error};
use crate::rng::Rng;

/// Azure LLM inference traces: arrival date-time and token counts; service from the model.
pub(super) fn azure_llm<'t>(
    h: &Header,
    reader: &mut RowReader,
    lines: impl Iterator<Item = (usize, &'t str)>,
) -> Result<Vec<Request>, TraceError> {
    let (t, i, o) = (
        h.need("TIMESTAMP")?,
        h.need("ContextTokens")?,
        h.need("GeneratedTokens")?,
    );
    reader.rows(lines, |f| {
        Ok(Request {
            arrival: field(f, t, "a date-time YYYY-MM-DD HH:MM:SS.fffffff", parse_datetime)?,
            service: f32::NAN,
            input_tokens: field(f, i, "a token count", |s| s.parse().ok())?,
            output_tokens: field(f, o, "a token count", |s| s.parse().ok())?,
        })
    })
}

/// Alibaba's GenAI trace: arrival date-time and measured execution time.
pub(super) fn alibaba_genai<'t>(
    h: &Header,
    reader: &mut RowReader,
    lines: impl Iterator<Item = (usize, &'t str)>,
) -> Result<Vec<Request>, TraceError> {
    let (t, e) = (h.need("gmt_create")?, h.need("exec_time_seconds")?);
    reader.rows(lines, |f| {
        Ok(Request {
            arrival: field(f, t, "a date-time YYYY-MM-DD HH:MM:SS", parse_datetime)?,
            service: field(f, e, "seconds >= 0", nonneg)? as f32,
            input_tokens: 0,
            output_tokens: 0,
        })
    })
}

/// Azure Functions invocations: end time and duration, so arrival is their difference.
pub(super) fn azure_functions<'t>(
    h: &Header,
    reader: &mut RowReader,
    lines: impl Iterator<Item = (usize, &'t str)>,
) -> Result<Vec<Request>, TraceError> {
    let (e, d) = (h.need("end_timestamp")?, h.need("duration")?);
    reader.rows(lines, |f| {
        let end = field(f, e, "seconds", |s| {
            s.parse::<f64>().ok().filter(|x| x.is_finite())
        })?;
        let dur = field(f, d, "seconds >= 0", nonneg)?;
        Ok(Request {
            arrival: end - dur,
            service: dur as f32,
            input_tokens: 0,
            output_tokens: 0,
        })
    })
}

/// Any CSV: a time column, and service and token columns when named.
pub(super) fn csv<'t>(
    h: &Header,
    reader: &mut RowReader,
    lines: impl Iterator<Item = (usize, &'t str)>,
    opts: &ReadOptions,
) -> Result<Vec<Request>, TraceError> {
    let t = h.named("--time-col", &opts.time_col, Some(0))?.unwrap_or(0);
    let s = h.named("--service-col", &opts.service_col, None)?;
    let i = h.named("--input-tokens-col", &opts.input_tokens_col, None)?;
    let o = h.named("--output-tokens-col", &opts.output_tokens_col, None)?;
    let unit = opts.time_unit;
    reader.rows(lines, |f| {
        let arrival = time_field(f, t, unit)?;
        let service = match s {
            Some(c) => field(f, c, "seconds >= 0", nonneg)? as f32,
            None => f32::NAN,
        };
        let tokens = |c: Option<usize>| match c {
            Some(c) => field(f, c, "a token count", |s| s.parse().ok()),
            None => Ok(0),
        };
        Ok(Request {
            arrival,
            service,
            input_tokens: tokens(i)?,
            output_tokens: tokens(o)?,
        })
    })
}

/// A requests/s series (a QPS gauge), expanded into Poisson arrivals.
pub(super) fn rate<'t>(
    h: &Header,
    reader: &mut RowReader,
    lines: impl Iterator<Item = (usize, &'t str)>,
    opts: &ReadOptions,
) -> Result<Vec<Request>, TraceError> {
    let t = h.named("--time-col", &opts.time_col, Some(0))?.unwrap_or(0);
    let r = h.named("--rate-col", &opts.rate_col, Some(1))?.unwrap_or(1);
    if r >= h.names.len() {
        return Err(format_error(
            h.path,
            "a rate series needs two columns: time and requests/s (--rate-col)",
        ));
    }
    let series = reader.rows(lines, |f| {
        Ok((
            time_field(f, t, opts.time_unit)?,
            field(f, r, "requests/s >= 0", nonneg)?,
        ))
    })?;
    expand_rate(series, opts.seed, opts.max_requests).map_err(|message| format_error(h.path, message))
}

/// Piecewise-constant rate series to Poisson arrivals. Rows with the same time add up (one row
/// per container in Alibaba's QPS gauge); each rate holds until the next time, the last one for
/// the median step.
fn expand_rate(mut series: Vec<(f64, f64)>, seed: u64, max: usize) -> Result<Vec<Request>, String> {
    if series.is_empty() {
        return Err("the rate series has no rows".into());
    }
    series.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(series.len());
    for (t, r) in series {
        match merged.last_mut() {
            Some(last) if last.0 == t => last.1 += r,
            _ => merged.push((t, r)),
        }
    }
    let mut steps: Vec<f64> = merged.windows(2).map(|w| w[1].0 - w[0].0).collect();
    steps.sort_by(f64::total_cmp);
    let last_step = steps.get(steps.len() / 2).copied().unwrap_or(1.0);
    let expected: f64 = merged
        .iter()
        .enumerate()
        .map(|(i, &(t, r))| r * (merged.get(i + 1).map_or(t + last_step, |n| n.0) - t))
        .sum();
    if expected > max as f64 * 0.99 {
        return Err(format!(
            "the rate series expands to about {expected:.0} requests, over the limit of {max}"
        ));
    }
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(expected as usize + 16);
    for (i, &(t, rate)) in merged.iter().enumerate() {
        let end = merged.get(i + 1).map_or(t + last_step, |n| n.0);
        if rate <= 0.0 {
            continue;
        }
        // Memorylessness: restarting the exponential clock at each boundary is exact.
        let mut at = t + rng.exp(1.0 / rate);
        while at < end {
            out.push(Request {
                arrival: at,
                service: f32::NAN,
                input_tokens: 0,
                output_tokens: 0,
            });
            at += rng.exp(1.0 / rate);
        }
    }
    Ok(out)
}
