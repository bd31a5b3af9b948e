//! Trace readers: recorded arrivals (and service times or token counts where the trace has
//! them) from the public formats gpuscale bundles or points at, plus a generic CSV and a rate
//! series expanded to Poisson arrivals.

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::rng::Rng;

/// One request of a trace.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Request {
    /// Seconds since the trace's first arrival.
    pub arrival: f64,
    /// Service time in seconds, if the trace records one (NaN otherwise).
    pub service: f32,
    /// Prompt tokens (0 if unknown).
    pub input_tokens: u32,
    /// Output tokens (0 if unknown).
    pub output_tokens: u32,
}

impl Request {
    /// The recorded service time, if any.
    pub fn service(&self) -> Option<f64> {
        (!self.service.is_nan()).then_some(f64::from(self.service))
    }
}

/// Trace formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Azure LLM inference 2023: `TIMESTAMP,ContextTokens,GeneratedTokens`.
    AzureLlm,
    /// Alibaba GenAI request trace: `gmt_create`, `exec_time_seconds` as service time.
    AlibabaGenai,
    /// Azure Functions 2021 per-invocation: arrival = `end_timestamp - duration`.
    AzureFunctions,
    /// Any CSV, columns named by `--time-col` and friends.
    Csv,
    /// A rate series (time, requests/s) expanded to Poisson arrivals.
    Rate,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::AzureLlm => "azure-llm",
            Format::AlibabaGenai => "alibaba-genai",
            Format::AzureFunctions => "azure-functions",
            Format::Csv => "csv",
            Format::Rate => "rate",
        })
    }
}

/// Units of a time column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TimeUnit {
    /// Seconds (float).
    S,
    /// Milliseconds.
    Ms,
    /// Microseconds.
    Us,
    /// RFC 3339 / ISO 8601 date-times (`2024-11-15T16:57:50Z`, or with a space and no zone).
    Rfc3339,
}

/// How to read a trace.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    /// Forced format; detected from the header when `None`.
    pub format: Option<Format>,
    /// Generic CSV / rate: the time column (default: the first column).
    pub time_col: Option<String>,
    /// Unit of the time column (default: seconds, or date-times when they look like dates).
    pub time_unit: Option<TimeUnit>,
    /// Generic CSV: service time column (seconds).
    pub service_col: Option<String>,
    /// Generic CSV: prompt tokens column.
    pub input_tokens_col: Option<String>,
    /// Generic CSV: output tokens column.
    pub output_tokens_col: Option<String>,
    /// Rate series: the requests/s column (default: the second column).
    pub rate_col: Option<String>,
    /// Seed for the rate series' Poisson expansion.
    pub seed: u64,
    /// Count and skip malformed rows instead of failing.
    pub skip_bad_rows: bool,
    /// Most requests a trace may expand to (bounds memory on a rate series).
    pub max_requests: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            format: None,
            time_col: None,
            time_unit: None,
            service_col: None,
            input_tokens_col: None,
            output_tokens_col: None,
            rate_col: None,
            seed: 1,
            skip_bad_rows: false,
            max_requests: 50_000_000,
        }
    }
}

/// A trace ready to replay.
#[derive(Clone, Debug)]
pub struct Trace {
    /// Where it came from.
    pub path: PathBuf,
    /// Its format (detected or forced).
    pub format: Format,
    /// Requests sorted by arrival, the first at 0.
    pub requests: Vec<Request>,
    /// Rows skipped with `--skip-bad-rows`.
    pub skipped_rows: usize,
    /// The first skipped row's error, for the report.
    pub first_skipped: Option<String>,
}

impl Trace {
    /// Whether every request carries a service time.
    pub fn has_service_times(&self) -> bool {
        !self.requests.is_empty() && self.requests.iter().all(|r| !r.service.is_nan())
    }

    /// Whether requests carry token counts.
    pub fn has_tokens(&self) -> bool {
        self.requests
            .iter()
            .any(|r| r.input_tokens > 0 || r.output_tokens > 0)
    }

    /// Seconds from the first to the last arrival.
    pub fn span(&self) -> f64 {
        self.requests.last().map_or(0.0, |r| r.arrival)
    }

    /// `n` Poisson arrivals at `rate` per second from t = 0, without service times (for
    /// benchmarks and queueing-theory checks).
    pub fn poisson(rate: f64, n: usize, seed: u64) -> Trace {
        let mut rng = Rng::new(seed);
        let mut t = 0.0;
        let requests = (0..n)
            .map(|_| {
                let r = Request {
                    arrival: t,
                    service: f32::NAN,
                    input_tokens: 0,
                    output_tokens: 0,
                };
                t += rng.exp(1.0 / rate);
                r
            })
            .collect();
        Trace {
            path: PathBuf::from(format!("poisson({rate}/s, n={n}, seed={seed})")),
            format: Format::Rate,
            requests,
            skipped_rows: 0,
            first_skipped: None,
        }
    }
}

/// Why a trace could not be read.
#[derive(Debug, Error)]
pub enum TraceError {
    /// The file could not be read.
    #[error("{path}: {error} (check --trace)")]
    Io {
        /// The file.
        path: String,
        /// The error (shown once: not a `source`, so a cause chain does not repeat it).
        error: std::io::Error,
    },
    /// A row does not parse.
    #[error(
        "{path}:{line}: column `{column}`: expected {expected}, found `{found}` (--skip-bad-rows counts and skips such rows)"
    )]
    BadRow {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// Column name.
        column: String,
        /// What the column should hold.
        expected: String,
        /// What it held.
        found: String,
    },
    /// The header or options do not identify the columns.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// Read and parse a trace.
pub fn read(path: &Path, opts: &ReadOptions) -> Result<Trace, TraceError> {
    let text = std::fs::read_to_string(path).map_err(|error| TraceError::Io {
        path: path.display().to_string(),
        error,
    })?;
    parse(path, &text, opts)
}

/// Parse trace text (the file's contents): the header, then the rows in the trace's format.
pub fn parse(path: &Path, text: &str, opts: &ReadOptions) -> Result<Trace, TraceError> {
    let p = path.display().to_string();
    // Spreadsheet exports often start with a UTF-8 byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate();
    let names: Vec<String> = match lines.next() {
        Some((_, h)) if !h.trim().is_empty() => split(h).map(|c| c.trim().to_string()).collect(),
        _ => return Err(format_error(&p, "empty file: expected a CSV header row")),
    };
    let format = match opts.format {
        Some(f) => f,
        None => detect(&names).ok_or_else(|| {
            format_error(
                &p,
                format!(
                    "cannot tell the format from the header `{}`; pass --format \
                     azure-llm|alibaba-genai|azure-functions|csv|rate (csv with --time-col)",
                    names.join(",")
                ),
            )
        })?,
    };
    let header = Header {
        path: &p,
        names: &names,
        format,
    };
    let mut reader = RowReader {
        path: &p,
        header: &names,
        skip: opts.skip_bad_rows,
        skipped: 0,
        first: None,
    };
    let mut requests = match format {
        Format::AzureLlm => azure_llm(&header, &mut reader, lines)?,
        Format::AlibabaGenai => alibaba_genai(&header, &mut reader, lines)?,
        Format::AzureFunctions => azure_functions(&header, &mut reader, lines)?,
        Format::Csv => csv(&header, &mut reader, lines, opts)?,
        Format::Rate => rate(&header, &mut reader, lines, opts)?,
    };
    if requests.len() > opts.max_requests {
        return Err(format_error(
            &p,
            format!(
                "{} requests exceed the limit of {}",
                requests.len(),
                opts.max_requests
            ),
        ));
    }
    if requests.is_empty() {
        return Err(format_error(&p, "no requests in the trace"));
    }
    // Traces are sorted by arrival, except per-invocation Azure Functions rows, which are sorted
    // by arrival too but only after the subtraction; a stable sort keeps equal times in file order.
    requests.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    let t0 = requests[0].arrival;
    requests.iter_mut().for_each(|r| r.arrival -= t0);
    Ok(Trace {
        path: path.to_path_buf(),
        format,
        requests,
        skipped_rows: reader.skipped,
        first_skipped: reader.first,
    })
}

fn format_error(path: &str, message: impl Into<String>) -> TraceError {
    TraceError::Format {
        path: path.to_string(),
        message: message.into(),
    }
}

/// The header row, to find columns by name with errors that show it.
struct Header<'a> {
    path: &'a str,
    names: &'a [String],
    format: Format,
}

impl Header<'_> {
    fn col(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|h| h == name)
    }

    /// A column the format requires.
    fn need(&self, name: &str) -> Result<usize, TraceError> {
        self.col(name).ok_or_else(|| {
            format_error(
                self.path,
                format!(
                    "format {}: header has no column `{name}` (header: `{}`)",
                    self.format,
                    self.names.join(",")
                ),
            )
        })
    }

    /// The column a flag names, or `default` when the flag is not given.
    fn named(
        &self,
        flag: &str,
        name: &Option<String>,
        default: Option<usize>,
    ) -> Result<Option<usize>, TraceError> {
        match name {
            Some(n) => self.col(n).map(Some).ok_or_else(|| {
                format_error(
                    self.path,
                    format!(
                        "{flag} `{n}`: no such column; the header has `{}`",
                        self.names.join(",")
                    ),
                )
            }),
            None => Ok(default),
        }
    }
}

/// Azure LLM inference traces: arrival date-time and token counts; service from the model.
fn azure_llm<'t>(
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
fn alibaba_genai<'t>(
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
fn azure_functions<'t>(
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
fn csv<'t>(
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
fn rate<'t>(
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

fn detect(header: &[String]) -> Option<Format> {
    let has = |c: &str| header.iter().any(|h| h == c);
    if has("TIMESTAMP") && has("ContextTokens") && has("GeneratedTokens") {
        Some(Format::AzureLlm)
    } else if has("gmt_create") && has("exec_time_seconds") {
        Some(Format::AlibabaGenai)
    } else if has("end_timestamp") && has("duration") && has("func") {
        Some(Format::AzureFunctions)
    } else {
        None
    }
}

fn split(line: &str) -> impl Iterator<Item = &str> {
    line.split(',').map(|c| c.trim().trim_matches('"'))
}

struct RowReader<'a> {
    path: &'a str,
    header: &'a [String],
    skip: bool,
    skipped: usize,
    first: Option<String>,
}

/// A field error before the row's line is known.
struct FieldError {
    col: usize,
    expected: &'static str,
    found: String,
}

impl RowReader<'_> {
    /// Parse every line with `parse`, blank and skipped rows left out.
    fn rows<'t, T>(
        &mut self,
        lines: impl Iterator<Item = (usize, &'t str)>,
        parse: impl Fn(&[&str]) -> Result<T, FieldError>,
    ) -> Result<Vec<T>, TraceError> {
        let mut out = Vec::new();
        for (n, line) in lines {
            out.extend(self.row(n, line, &parse)?);
        }
        Ok(out)
    }

    /// Parse one line; `Ok(None)` for blank or skipped rows.
    fn row<T>(
        &mut self,
        n: usize,
        line: &str,
        parse: impl FnOnce(&[&str]) -> Result<T, FieldError>,
    ) -> Result<Option<T>, TraceError> {
        if line.trim().is_empty() {
            return Ok(None);
        }
        let fields: Vec<&str> = split(line).collect();
        match parse(&fields) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                let err = TraceError::BadRow {
                    path: self.path.to_string(),
                    line: n + 1,
                    column: self
                        .header
                        .get(e.col)
                        .cloned()
                        .unwrap_or_else(|| format!("#{}", e.col + 1)),
                    expected: e.expected.to_string(),
                    found: e.found,
                };
                if self.skip {
                    self.skipped += 1;
                    self.first.get_or_insert_with(|| err.to_string());
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }
}

fn field<T>(
    f: &[&str],
    col: usize,
    expected: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T, FieldError> {
    let s = f.get(col).copied().unwrap_or("");
    parse(s).ok_or_else(|| FieldError {
        col,
        expected,
        found: s.to_string(),
    })
}

fn nonneg(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0)
}

fn time_field(f: &[&str], col: usize, unit: Option<TimeUnit>) -> Result<f64, FieldError> {
    let num = |scale: f64| move |s: &str| s.parse::<f64>().ok().filter(|x| x.is_finite()).map(|x| x * scale);
    match unit {
        Some(TimeUnit::S) => field(f, col, "seconds", num(1.0)),
        Some(TimeUnit::Ms) => field(f, col, "milliseconds", num(1e-3)),
        Some(TimeUnit::Us) => field(f, col, "microseconds", num(1e-6)),
        Some(TimeUnit::Rfc3339) => field(f, col, "an RFC 3339 date-time", parse_datetime),
        None => field(f, col, "seconds or a date-time (set --time-unit)", |s| {
            s.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .or_else(|| parse_datetime(s))
        }),
    }
}

/// `YYYY-MM-DD[ T]HH:MM:SS[.fraction][Z|±HH:MM]` as seconds since 1970-01-01 UTC. Any number of
/// fractional digits (Azure's traces have 7, more than a microsecond parser takes).
pub fn parse_datetime(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.len() < 19 {
        return None;
    }
    let b = s.as_bytes();
    if b[4] != b'-' || b[7] != b'-' || !(b[10] == b' ' || b[10] == b'T') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| {
        s.get(r)
            .filter(|x| x.bytes().all(|c| c.is_ascii_digit()))?
            .parse::<i64>()
            .ok()
    };
    let (y, m, d, hh, mm, ss) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut frac = 0.0;
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        frac = format!("0.{}", &r[..digits]).parse().ok()?;
        rest = &r[digits..];
    }
    let offset = match rest {
        "" | "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let h: i64 = o[1..3].parse().ok()?;
            let m: i64 = o[4..6].parse().ok()?;
            let v = h * 3600 + m * 60;
            if o.starts_with('+') { v } else { -v }
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant).
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60 + ss - offset) as f64 + frac)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str, opts: &ReadOptions) -> Result<Trace, TraceError> {
        parse(Path::new("t.csv"), text, opts)
    }

    #[test]
    fn datetimes_keep_seven_fractional_digits_and_zones() {
        let a = parse_datetime("2023-11-16 18:17:03.9799600").unwrap_or_default();
        let b = parse_datetime("2023-11-16 18:17:03.9799601").unwrap_or_default();
        assert!(b > a && (b - a - 1e-7).abs() < 1e-6);
        assert_eq!(parse_datetime("1970-01-02T00:00:00Z"), Some(86_400.0));
        assert_eq!(parse_datetime("1970-01-01T01:00:00+01:00"), Some(0.0));
        assert_eq!(parse_datetime("2024-13-01 00:00:00"), None);
        assert_eq!(parse_datetime("yesterday"), None);
    }

    #[test]
    fn azure_llm_crlf_without_final_newline() {
        let t = parse_str(
            "TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:15:46.6805900,374,44\r\n2023-11-16 18:15:50.9951690,396,109",
            &ReadOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.format, Format::AzureLlm);
        assert_eq!(t.requests.len(), 2);
        assert!((t.requests[1].arrival - 4.314579).abs() < 1e-6);
        assert_eq!(
            (t.requests[1].input_tokens, t.requests[1].output_tokens),
            (396, 109)
        );
    }

    #[test]
    fn bad_rows_name_file_line_column_and_can_be_skipped() {
        let text = "app,func,end_timestamp,duration\na,f,10.5,0.5\na,f,oops,1\na,f,12,-1\na,f,20,2";
        let e = parse_str(text, &ReadOptions::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            e,
            "t.csv:3: column `end_timestamp`: expected seconds, found `oops` (--skip-bad-rows counts and skips such rows)"
        );
        let t = parse_str(
            text,
            &ReadOptions {
                skip_bad_rows: true,
                ..ReadOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.requests.len(), t.skipped_rows), (2, 2));
        // arrival = end - duration: 10.0 and 18.0, shifted to start at 0.
        assert_eq!(t.requests[1].arrival, 8.0);
        assert_eq!(t.requests[1].service(), Some(2.0));
    }

    #[test]
    fn generic_csv_with_mapped_columns_and_units() {
        let text = "ts_ms,svc,in,out\n1000,0.5,10,20\n2500,1.5,11,21";
        let opts = ReadOptions {
            format: Some(Format::Csv),
            time_col: Some("ts_ms".into()),
            time_unit: Some(TimeUnit::Ms),
            service_col: Some("svc".into()),
            input_tokens_col: Some("in".into()),
            output_tokens_col: Some("out".into()),
            ..ReadOptions::default()
        };
        let t = parse_str(text, &opts).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.requests[1].arrival, 1.5);
        assert_eq!(t.requests[1].service(), Some(1.5));
        assert_eq!(t.requests[1].output_tokens, 21);
        let e = parse_str(
            text,
            &ReadOptions {
                time_col: Some("nope".into()),
                ..opts
            },
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            e.contains("--time-col `nope`: no such column; the header has `ts_ms,svc,in,out`"),
            "{e}"
        );
    }

    #[test]
    fn undetectable_header_says_how_to_force() {
        let e = parse_str("a,b\n1,2", &ReadOptions::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("pass --format"), "{e}");
    }

    #[test]
    fn rate_series_expands_to_poisson_with_the_right_count() {
        // 100 s at 50/s then 100 s at 0 then 100 s at 20/s (same-time rows add up).
        let text = "time,rps\n0,30\n0,20\n100,0\n200,20\n300,0";
        let opts = ReadOptions {
            format: Some(Format::Rate),
            seed: 3,
            ..ReadOptions::default()
        };
        let t = parse_str(text, &opts).unwrap_or_else(|e| panic!("{e}"));
        let n = t.requests.len() as f64;
        assert!((n - 7000.0).abs() < 4.0 * 7000f64.sqrt(), "{n}");
        // Nothing in the zero-rate stretch (the shift to the first arrival is well under 1 s).
        assert!(!t.requests.iter().any(|r| r.arrival > 101.0 && r.arrival < 199.0));
        let again = parse_str(text, &opts).unwrap_or_else(|e| panic!("{e}"));
        // (service is NaN here, and NaN != NaN, so compare the arrivals)
        let arrivals = |t: &Trace| t.requests.iter().map(|r| r.arrival).collect::<Vec<_>>();
        assert!(arrivals(&t) == arrivals(&again), "same seed, different arrivals");
    }
}
