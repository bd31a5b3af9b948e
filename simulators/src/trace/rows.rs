//! What every format shares: the header row (columns found by name), the row reader (a bad
//! row names its line and column, or is skipped and counted with `--skip-bad-rows`), and the
//! field parsers (numbers, date-times, time units).

use super::{Format, TimeUnit, TraceError, format_error};

/// The header row, to find columns by name with errors that show it.
pub(super) struct Header<'a> {
    pub(super) path: &'a str,
    pub(super) names: &'a [String],
    pub(super) format: Format,
}

impl Header<'_> {
    pub(super) fn col(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|h| h == name)
    }

    /// A column the format requires.
    pub(super) fn need(&self, name: &str) -> Result<usize, TraceError> {
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
    pub(super) fn named(
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

pub(super) fn split(line: &str) -> impl Iterator<Item = &str> {
    line.split(',').map(|c| c.trim().trim_matches('"'))
}

pub(super) struct RowReader<'a> {
    pub(super) path: &'a str,
    pub(super) header: &'a [String],
    pub(super) skip: bool,
    pub(super) skipped: usize,
    pub(super) first: Option<String>,
}

/// A field error before the row's line is known.
pub(super) struct FieldError {
    col: usize,
    expected: &'static str,
    found: String,
}

impl RowReader<'_> {
    /// Parse every line with `parse`, blank and skipped rows left out.
    pub(super) fn rows<'t, T>(
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

pub(super) fn field<T>(
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

pub(super) fn nonneg(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0)
}

pub(super) fn time_field(f: &[&str], col: usize, unit: Option<TimeUnit>) -> Result<f64, FieldError> {
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
