//! Trace readers: recorded arrivals (and service times or token counts where the trace has
//! them) from the public formats gpuscale bundles or points at, plus a generic CSV and a rate
//! series expanded to Poisson arrivals. One function per format reads its rows ([`formats`]);
//! the header, row and field rules they share, with errors that name the row, are in
//! [`rows`].

mod formats;
mod rows;

pub use rows::parse_datetime;

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::rng::Rng;

use formats::{alibaba_genai, azure_functions, azure_llm, csv, rate};
use rows::{Header, RowReader, split};

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
