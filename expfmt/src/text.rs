//! Prometheus text exposition (0.0.4) and OpenMetrics 1.0 parsing, shared by the collector
//! (scraping model servers) and the scaler (polling collectors).
//!
//! Two modes:
//! - [`parse_prometheus`], for scraping: as lenient as Prometheus where real servers are sloppy
//!   (blank lines, TYPE without HELP, trailing commas in label sets, `_sum` before buckets,
//!   no final newline) but it never misreads a value: a line it cannot read exactly fails the
//!   page, naming the line, rather than being skipped or half-read.
//! - [`parse_openmetrics`], strict: every rule of OpenMetrics 1.0 that the reference parser
//!   (Python `prometheus_client`) enforces, so it classifies the OpenMetrics conformance suite
//!   as upstream does. Exemplars are validated and skipped.
//!
//! `prometheus-parse` 0.2.5 is not usable here: it drops every metric whose name contains `:`
//! (all of vLLM's and SGLang's) and cuts label values at commas (a test pins that).
//!
//! Every page is bounded ([`Limits`]): bytes, samples, labels per sample, label value length.

use std::collections::HashSet;
use std::fmt;

/// A metric family: one name, one type, its samples.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricFamily {
    /// The family name (from TYPE/HELP, or the sample name for untyped samples).
    pub name: String,
    /// Its type.
    pub kind: Kind,
    /// HELP text, unescaped ("" when absent).
    pub help: String,
    /// UNIT (OpenMetrics; "" when absent).
    pub unit: String,
    /// Samples in page order.
    pub samples: Vec<Sample>,
}

/// Metric types of both formats (`untyped` is OpenMetrics' `unknown`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// counter
    Counter,
    /// gauge
    Gauge,
    /// histogram
    Histogram,
    /// gaugehistogram (OpenMetrics)
    GaugeHistogram,
    /// summary
    Summary,
    /// info (OpenMetrics)
    Info,
    /// stateset (OpenMetrics)
    StateSet,
    /// untyped / unknown
    Unknown,
}

impl Kind {
    /// The name as written in a TYPE line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::GaugeHistogram => "gaugehistogram",
            Kind::Summary => "summary",
            Kind::Info => "info",
            Kind::StateSet => "stateset",
            Kind::Unknown => "unknown",
        }
    }

    fn parse(s: &str, openmetrics: bool) -> Option<Kind> {
        Some(match s {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "summary" => Kind::Summary,
            "untyped" if !openmetrics => Kind::Unknown,
            "unknown" if openmetrics => Kind::Unknown,
            "gaugehistogram" if openmetrics => Kind::GaugeHistogram,
            "info" if openmetrics => Kind::Info,
            "stateset" if openmetrics => Kind::StateSet,
            _ => return None,
        })
    }

    /// Sample-name suffixes that belong to a family of this type.
    fn suffixes(self, openmetrics: bool) -> &'static [&'static str] {
        match (self, openmetrics) {
            (Kind::Counter, true) => &["_total", "_created"],
            (Kind::Summary, true) => &["", "_count", "_sum", "_created"],
            (Kind::Summary, false) => &["", "_count", "_sum"],
            (Kind::Histogram, true) => &["_count", "_sum", "_bucket", "_created"],
            (Kind::Histogram, false) => &["_count", "_sum", "_bucket"],
            (Kind::GaugeHistogram, _) => &["_gcount", "_gsum", "_bucket"],
            (Kind::Info, _) => &["_info"],
            _ => &[""],
        }
    }
}

/// One sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The sample name as written (`x_bucket`, `x_total`, ...).
    pub name: String,
    /// Labels in page order.
    pub labels: Labels,
    /// The value.
    pub value: f64,
    /// Timestamp in seconds (text format's milliseconds are converted).
    pub timestamp: Option<f64>,
}

impl Sample {
    /// A label's value.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name)
    }
}

/// A sample's labels in page order, names and values in one buffer: a page holds thousands,
/// and a `String` per name and value was most of what parsing a page cost.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Labels {
    text: String,
    /// Per label: where its name ends and where its value ends in `text`.
    ends: Vec<(u32, u32)>,
}

impl Labels {
    /// No labels.
    pub fn new() -> Self {
        Labels::default()
    }

    /// Appends a label (the caller keeps names unique; the parsers do).
    pub fn push(&mut self, name: &str, value: &str) {
        self.push_with(name, |text| text.push_str(value));
    }

    /// Appends a label whose value `write` appends to the buffer (the parser unescapes in place).
    fn push_with(&mut self, name: &str, write: impl FnOnce(&mut String)) {
        self.text.push_str(name);
        let n = self.text.len();
        write(&mut self.text);
        self.ends.push((offset(n), offset(self.text.len())));
    }

    /// A label's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// `(name, value)` in page order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + Clone + '_ {
        let mut start = 0usize;
        self.ends.iter().map(move |&(n, v)| {
            let (n, v) = (n as usize, v as usize);
            let pair = (&self.text[start..n], &self.text[n..v]);
            start = v;
            pair
        })
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// None at all.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// Offsets into one sample's label text, which [`Limits`] keeps far below 4 GiB.
fn offset(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for Labels {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(iter: I) -> Self {
        let mut l = Labels::new();
        for (k, v) in iter {
            l.push(k, v);
        }
        l
    }
}

/// Bounds on one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes in a page.
    pub max_bytes: usize,
    /// Most samples in a page.
    pub max_samples: usize,
    /// Most labels on one sample.
    pub max_labels: usize,
    /// Longest label value, bytes.
    pub max_label_value: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 16 << 20,
            max_samples: 200_000,
            max_labels: 64,
            max_label_value: 4096,
        }
    }
}

/// Why a page was rejected: the 1-based line and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    /// 1-based line number (0 for whole-page problems).
    pub line: usize,
    /// What is wrong.
    pub message: String,
    /// What kind of problem, for callers that act on it (the message is for people).
    pub kind: Problem,
}

/// What kind of problem a [`ParseError`] is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Problem {
    /// A line (or the page) is not the format.
    #[default]
    Malformed,
    /// An OpenMetrics page ended without `# EOF`: cut off in transit, or not finished.
    Truncated,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

impl ParseError {
    fn malformed(line: usize, message: impl Into<String>) -> Self {
        ParseError {
            line,
            message: message.into(),
            kind: Problem::Malformed,
        }
    }
}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError::malformed(line, message))
}

fn is_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn is_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// A number as Python's `float()` reads it (which both reference parsers use): decimal with
/// optional fraction and exponent, or `inf`/`infinity`/`nan` in any case, optionally signed.
/// No whitespace, no underscores, no hex.
pub fn parse_number(s: &str) -> Option<f64> {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let neg = s.starts_with('-');
    // Compared in place: this runs for every value on every page, so it must not allocate.
    if body.eq_ignore_ascii_case("inf") || body.eq_ignore_ascii_case("infinity") {
        return Some(if neg { f64::NEG_INFINITY } else { f64::INFINITY });
    }
    if body.eq_ignore_ascii_case("nan") {
        return Some(f64::NAN);
    }
    // digits [. digits] | . digits, then optional e[+-]digits
    let b = body.as_bytes();
    let mut i = 0;
    let int_digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    i += int_digits;
    let mut frac_digits = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        frac_digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        i += frac_digits;
    }
    if int_digits + frac_digits == 0 {
        return None;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if exp == 0 {
            return None;
        }
        i += exp;
    }
    if i != b.len() {
        return None;
    }
    s.parse::<f64>().ok()
}

/// Unescape a quoted label value's body: `\\`, `\"`, `\n`; other escapes are kept as written
/// (as both reference parsers do).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    unescape_into(s, &mut out);
    out
}

/// [`unescape`], appending to `out`.
fn unescape_into(s: &str, out: &mut String) {
    if !s.contains('\\') {
        out.push_str(s);
        return;
    }
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('n') => out.push('\n'),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
}

/// Where [`scan_labels`] puts each label it reads: kept ([`Labels`]) or only checked
/// ([`LabelNames`], for a sample the reader discards).
trait LabelSink<'a> {
    fn has(&self, name: &str) -> bool;
    fn count(&self) -> usize;
    /// `raw` as written, escapes and all.
    fn add(&mut self, name: &'a str, raw: &'a str);
}

impl<'a> LabelSink<'a> for Labels {
    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
    fn count(&self) -> usize {
        self.len()
    }
    fn add(&mut self, name: &'a str, raw: &'a str) {
        self.push_with(name, |text| unescape_into(raw, text));
    }
}

/// A label set's names only, to check it without keeping it: nothing is allocated for up to
/// 16 labels, so a discarded line costs a scan (most of a page's lines are discarded).
struct LabelNames<'a> {
    few: [&'a str; 16],
    n: usize,
    more: Vec<&'a str>,
}

impl LabelNames<'_> {
    fn new() -> Self {
        LabelNames {
            few: [""; 16],
            n: 0,
            more: Vec::new(),
        }
    }
}

impl<'a> LabelSink<'a> for LabelNames<'a> {
    fn has(&self, name: &str) -> bool {
        self.few[..self.n.min(16)].contains(&name) || self.more.contains(&name)
    }
    fn count(&self) -> usize {
        self.n
    }
    fn add(&mut self, name: &'a str, _raw: &'a str) {
        match self.few.get_mut(self.n) {
            Some(slot) => *slot = name,
            None => self.more.push(name),
        }
        self.n += 1;
    }
}

/// Parse `{...}` starting at `s[0] == '{'`; the labels and the rest after `}`.
fn parse_labels<'a>(s: &'a str, openmetrics: bool, limits: &Limits) -> Result<(Labels, &'a str), String> {
    // Room for the whole label set at once (it is shorter than the line): no regrowing.
    let mut labels = Labels {
        text: String::with_capacity(s.len()),
        ends: Vec::with_capacity(8),
    };
    let rest = scan_labels(s, openmetrics, limits, &mut labels)?;
    Ok((labels, rest))
}

/// Read `{...}` starting at `s[0] == '{'` into `sink`; the rest after `}`.
fn scan_labels<'a>(
    s: &'a str,
    openmetrics: bool,
    limits: &Limits,
    labels: &mut impl LabelSink<'a>,
) -> Result<&'a str, String> {
    let mut rest = &s[1..];
    let mut first = true;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            if openmetrics && !first && labels.count() == 0 {
                return Err("empty label term".into());
            }
            return Ok(r);
        }
        if !first {
            rest = rest
                .strip_prefix(',')
                .ok_or("expected `,` or `}` between labels")?;
            if let Some(r) = rest.strip_prefix('}') {
                if openmetrics {
                    return Err("trailing comma in label set".into());
                }
                return Ok(r); // Prometheus accepts `{a="b",}` (TorchServe writes it)
            }
        }
        first = false;
        if !openmetrics {
            rest = rest.trim_start();
        }
        let name_len = rest
            .bytes()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_')
            .count();
        let name = &rest[..name_len];
        if !is_label_name(name) {
            return Err(format!("invalid label name `{name}`"));
        }
        rest = &rest[name_len..];
        if !openmetrics {
            rest = rest.trim_start();
        }
        rest = rest
            .strip_prefix('=')
            .ok_or_else(|| format!("label `{name}` has no `=`"))?;
        if !openmetrics {
            rest = rest.trim_start();
        }
        rest = rest
            .strip_prefix('"')
            .ok_or_else(|| format!("label `{name}`: value must be quoted"))?;
        // Find the closing quote, skipping escaped characters.
        let bytes = rest.as_bytes();
        let mut i = 0;
        loop {
            match bytes.get(i) {
                None => return Err(format!("label `{name}`: missing closing quote")),
                Some(b'\\') => i += 2,
                Some(b'"') => break,
                Some(_) => i += 1,
            }
        }
        let raw = &rest[..i];
        if raw.len() > limits.max_label_value {
            return Err(format!(
                "label `{name}`: value longer than {} bytes",
                limits.max_label_value
            ));
        }
        rest = &rest[i + 1..];
        if !openmetrics {
            rest = rest.trim_start();
        }
        if name == "__name__" && openmetrics {
            return Err("`__name__` label".into());
        }
        if labels.has(name) {
            return Err(format!("duplicate label `{name}`"));
        }
        if labels.count() == limits.max_labels {
            return Err(format!("more than {} labels", limits.max_labels));
        }
        labels.add(name, raw);
    }
}

/// Python's `float(x).is_integer()` for a parsed value.
fn is_integer(v: f64) -> bool {
    v.is_finite() && v.fract() == 0.0
}

// ----------------------------------------------------------------------------------------------
// Prometheus text 0.0.4 (scrape mode)
// ----------------------------------------------------------------------------------------------

/// The page-size limit, checked before any parsing.
fn check_size(text: &str, limits: &Limits) -> Result<(), ParseError> {
    if text.len() > limits.max_bytes {
        return err(
            0,
            format!(
                "page of {} bytes exceeds the limit of {}",
                text.len(),
                limits.max_bytes
            ),
        );
    }
    Ok(())
}

/// Parse a Prometheus text-format page (0.0.4), grouping samples into families the way
/// Prometheus' client libraries do.
pub fn parse_prometheus(text: &str, limits: &Limits) -> Result<Vec<MetricFamily>, ParseError> {
    parse_prometheus_keeping(text, limits, &|_| true)
}

/// [`parse_prometheus`], storing only the samples whose name `keep` accepts. Every line is
/// still checked (a page that does not parse is refused whole), but memory grows with what
/// is kept, not with the page.
pub fn parse_prometheus_keeping(
    text: &str,
    limits: &Limits,
    keep: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Vec<MetricFamily>, ParseError> {
    check_size(text, limits)?;
    let mut p = PromParser::new(limits, keep);
    for raw in text.split('\n') {
        p.line(raw)?;
    }
    Ok(p.finish())
}

/// An incremental Prometheus text parser: fed bytes as they arrive ([`PromParser::feed`]),
/// it keeps only the current partial line and the samples `keep` accepts, so a page of any
/// size is read in memory proportional to what is kept (a 15 MiB page of 190,000 series read
/// for three queue gauges costs kilobytes, not the page).
pub struct PromParser<'k> {
    limits: Limits,
    keep: &'k (dyn Fn(&str) -> bool + Sync),
    families: Vec<MetricFamily>,
    cur: Option<MetricFamily>,
    allowed: Vec<String>,
    total: usize,
    seen: HashedSet,
    line_no: usize,
    bytes: usize,
    partial: Vec<u8>,
}

impl<'k> PromParser<'k> {
    /// A parser within `limits`, keeping the samples `keep` accepts.
    pub fn new(limits: &Limits, keep: &'k (dyn Fn(&str) -> bool + Sync)) -> Self {
        PromParser {
            limits: *limits,
            keep,
            families: Vec::new(),
            cur: None,
            allowed: Vec::new(),
            total: 0,
            seen: HashedSet::default(),
            line_no: 0,
            bytes: 0,
            partial: Vec::new(),
        }
    }

    /// Feed the next bytes of the page.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), ParseError> {
        self.bytes += chunk.len();
        if self.bytes > self.limits.max_bytes {
            return err(
                0,
                format!("page of over {} bytes exceeds the limit", self.limits.max_bytes),
            );
        }
        while let Some(i) = chunk.iter().position(|b| *b == b'\n') {
            let (head, rest) = chunk.split_at(i);
            chunk = &rest[1..];
            if self.partial.is_empty() {
                let line = self.utf8(head)?;
                self.line(line)?;
            } else {
                self.partial.extend_from_slice(head);
                let whole = std::mem::take(&mut self.partial);
                let line = self.utf8(&whole)?;
                self.line(line)?;
            }
        }
        self.partial.extend_from_slice(chunk);
        Ok(())
    }

    fn utf8<'a>(&self, b: &'a [u8]) -> Result<&'a str, ParseError> {
        std::str::from_utf8(b).map_err(|_| ParseError::malformed(self.line_no + 1, "the page is not UTF-8"))
    }

    /// The page has ended: the last line (if it had no newline), then the families.
    pub fn end(mut self) -> Result<Vec<MetricFamily>, ParseError> {
        let rest = std::mem::take(&mut self.partial);
        let line = self.utf8(&rest)?;
        self.line(line)?;
        Ok(self.finish())
    }

    fn flush(&mut self) {
        if let Some(f) = self.cur.take() {
            self.families.push(f);
        }
    }

    /// The families read so far.
    pub fn finish(mut self) -> Vec<MetricFamily> {
        self.flush();
        self.families
    }

    /// One line (without its newline).
    pub fn line(&mut self, raw: &str) -> Result<(), ParseError> {
        self.line_no += 1;
        let line_no = self.line_no;
        let line = raw.trim_matches(|c: char| c == ' ' || c == '\t' || c == '\r');
        if line.is_empty() {
            return Ok(());
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, [' ', '\t']);
            let keyword = parts.next().unwrap_or("");
            if keyword != "HELP" && keyword != "TYPE" {
                return Ok(()); // other comments are comments
            }
            let rest = parts.next().unwrap_or("");
            let name = rest.trim();
            if name.is_empty() {
                return Ok(());
            }
            if !is_metric_name(name) {
                return err(line_no, format!("invalid metric name `{name}` in # {keyword}"));
            }
            let arg = parts.next().unwrap_or("").trim_start_matches([' ', '\t']);
            if self.cur.as_ref().is_none_or(|f| f.name != name) {
                self.flush();
                self.cur = Some(MetricFamily {
                    name: name.to_string(),
                    kind: Kind::Unknown,
                    help: String::new(),
                    unit: String::new(),
                    samples: Vec::new(),
                });
                self.allowed = vec![name.to_string()];
            }
            let Some(f) = self.cur.as_mut() else {
                return Ok(());
            };
            if keyword == "HELP" {
                f.help = unescape_help(arg);
            } else {
                let t = arg.trim();
                f.kind = Kind::parse(t, false).ok_or_else(|| ParseError::malformed(line_no, format!("unknown type `{t}` for `{name}`: expected counter, gauge, histogram, summary or untyped")))?;
                self.allowed = f
                    .kind
                    .suffixes(false)
                    .iter()
                    .map(|s| format!("{name}{s}"))
                    .collect();
            }
            return Ok(());
        }
        let malformed = |m: String| ParseError::malformed(line_no, m);
        let (name, name_len) = leading_metric_name(line).map_err(malformed)?;
        let after_name = &line[name_len..];
        // A discarded sample is checked as strictly, but nothing of it is kept or allocated.
        let sample = if (self.keep)(name) {
            Some(parse_prometheus_sample(name, after_name, &self.limits).map_err(malformed)?)
        } else {
            let rest = after_name.trim_start_matches([' ', '\t']);
            prometheus_sample_tail(name, rest, &self.limits, &mut LabelNames::new()).map_err(malformed)?;
            None
        };
        self.total += 1;
        if self.total > self.limits.max_samples {
            return err(line_no, format!("more than {} samples", self.limits.max_samples));
        }
        // A repeated series is refused, as Prometheus does: summing or keeping one would both
        // invent a value. Checked for the samples kept (the ones a reading adds up), by hash.
        if let Some(sample) = &sample
            && !self.seen.insert(series_hash(sample))
        {
            return err(
                line_no,
                format!(
                    "repeated series `{}` (same name, labels and timestamp as an earlier line)",
                    truncate(line)
                ),
            );
        }
        if self.allowed.iter().any(|a| a == name)
            && let Some(f) = self.cur.as_mut()
        {
            if let Some(sample) = sample {
                f.samples.push(sample);
            }
            return Ok(());
        }
        // A sample that belongs to no declared family is its own untyped family.
        self.flush();
        self.allowed.clear();
        if let Some(sample) = sample {
            self.families.push(MetricFamily {
                name: sample.name.clone(),
                kind: Kind::Unknown,
                help: String::new(),
                unit: String::new(),
                samples: vec![sample],
            });
        }
        Ok(())
    }
}

fn series_hash(s: &Sample) -> u64 {
    let ts = s.timestamp.map_or(0x5bd1_e995, |t| mix(t.to_bits()));
    mix(labels_hash(Some(&s.name), s.labels.iter()) ^ ts)
}

/// HELP in text 0.0.4 escapes only `\\` and `\n`.
fn unescape_help(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.peek() {
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                Some('n') => {
                    out.push('\n');
                    chars.next();
                }
                _ => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_prometheus_sample(name: &str, after_name: &str, limits: &Limits) -> Result<Sample, String> {
    let rest = after_name.trim_start_matches([' ', '\t']);
    let mut labels = Labels::new();
    if rest.starts_with('{') {
        // Room for the whole label set at once (it is shorter than the line): no regrowing.
        labels = Labels {
            text: String::with_capacity(rest.len()),
            ends: Vec::with_capacity(8),
        };
    }
    let (value, timestamp) = prometheus_sample_tail(name, rest, limits, &mut labels)?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
        timestamp,
    })
}

/// A sample line after its name, read into `labels`: its value and timestamp, with exactly the
/// errors whether the sample is kept or only checked.
fn prometheus_sample_tail<'a>(
    name: &str,
    mut rest: &'a str,
    limits: &Limits,
    labels: &mut impl LabelSink<'a>,
) -> Result<(f64, Option<f64>), String> {
    if rest.starts_with('{') {
        rest = scan_labels(rest, false, limits, labels).map_err(|e| format!("{name}: {e}"))?;
    }
    let mut tokens = rest.split([' ', '\t']).filter(|t| !t.is_empty());
    let value_text = tokens.next().ok_or_else(|| format!("{name}: missing value"))?;
    let value = parse_number(value_text).ok_or_else(|| format!("{name}: invalid value `{value_text}`"))?;
    let timestamp = match tokens.next() {
        None => None,
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| format!("{name}: invalid timestamp `{t}` (milliseconds expected)"))?
                as f64
                / 1000.0,
        ),
    };
    if let Some(extra) = tokens.next() {
        return Err(format!("{name}: unexpected `{extra}` after the timestamp"));
    }
    Ok((value, timestamp))
}

/// The metric name a sample line starts with, and its length.
fn leading_metric_name(line: &str) -> Result<(&str, usize), String> {
    let len = line
        .bytes()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b':')
        .count();
    let name = &line[..len];
    if !is_metric_name(name) {
        return Err(format!(
            "expected a metric name at the start of `{}`",
            truncate(line)
        ));
    }
    Ok((name, len))
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

// ----------------------------------------------------------------------------------------------
// OpenMetrics 1.0 (strict)
// ----------------------------------------------------------------------------------------------

/// Strictly parse an OpenMetrics 1.0 page (must end with `# EOF`).
pub fn parse_openmetrics(text: &str, limits: &Limits) -> Result<Vec<MetricFamily>, ParseError> {
    check_size(text, limits)?;
    let mut p = OmParser {
        limits,
        families: Vec::new(),
        seen: HashSet::new(),
        cur: None,
        total: 0,
    };
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut eof = false;
    for (n, line) in body.split('\n').enumerate() {
        let no = n + 1;
        if eof {
            return err(no, "text after # EOF");
        }
        if line.is_empty() {
            return err(no, "blank line");
        }
        if line == "# EOF" {
            eof = true;
        } else if line.starts_with('#') {
            p.metadata(no, line)?;
        } else {
            p.sample_line(no, line)?;
        }
    }
    if !eof {
        return Err(ParseError {
            kind: Problem::Truncated,
            ..ParseError::malformed(0, "missing # EOF at the end")
        });
    }
    p.finish_family()?;
    Ok(p.families)
}

struct OmFamily {
    fam: MetricFamily,
    typed: bool,
    has_help: bool,
    has_unit: bool,
    allowed: Vec<String>,
    /// The label-set groups as hashes ([`group_of`]): a page of thousands of samples would
    /// otherwise clone every label set three times over.
    group: Option<u64>,
    group_ts: Option<f64>,
    seen_groups: HashedSet,
    group_series: HashedSet,
}

struct OmParser<'a> {
    limits: &'a Limits,
    families: Vec<MetricFamily>,
    seen: HashSet<String>,
    cur: Option<OmFamily>,
    total: usize,
}

impl OmParser<'_> {
    fn start(&mut self, name: &str, kind: Option<Kind>) -> Result<(), ParseError> {
        self.finish_family()?;
        let kind_known = kind.unwrap_or(Kind::Unknown);
        self.cur = Some(OmFamily {
            fam: MetricFamily {
                name: name.to_string(),
                kind: kind_known,
                help: String::new(),
                unit: String::new(),
                samples: Vec::new(),
            },
            typed: kind.is_some(),
            has_help: false,
            has_unit: false,
            allowed: vec![name.to_string()],
            group: None,
            group_ts: None,
            seen_groups: HashedSet::default(),
            group_series: HashedSet::default(),
        });
        Ok(())
    }

    fn metadata(&mut self, no: usize, line: &str) -> Result<(), ParseError> {
        let mut parts = line.splitn(4, ' ');
        let (hash, keyword, name, arg) = (parts.next(), parts.next(), parts.next(), parts.next());
        let (Some("#"), Some(keyword), Some(name), Some(arg)) = (hash, keyword, name, arg) else {
            return err(
                no,
                "invalid metadata line (expected `# HELP|TYPE|UNIT name text`)",
            );
        };
        if !is_metric_name(name) {
            return err(no, format!("invalid metric name `{name}`"));
        }
        let same = self.cur.as_ref().is_some_and(|f| f.fam.name == name);
        if same && self.cur.as_ref().is_some_and(|f| !f.fam.samples.is_empty()) {
            return err(no, format!("metadata for `{name}` after its samples"));
        }
        if !same {
            self.start(name, None)?;
        }
        let Some(f) = self.cur.as_mut() else {
            return err(no, "internal: no family");
        };
        match keyword {
            "HELP" => {
                if f.has_help {
                    return err(no, format!("second HELP for `{name}`"));
                }
                f.has_help = true;
                f.fam.help = unescape(arg);
            }
            "TYPE" => {
                if f.typed {
                    return err(no, format!("second TYPE for `{name}`"));
                }
                let kind = Kind::parse(arg, true)
                    .ok_or_else(|| ParseError::malformed(no, format!("invalid type `{arg}` for `{name}`")))?;
                f.typed = true;
                f.fam.kind = kind;
                f.allowed = kind.suffixes(true).iter().map(|s| format!("{name}{s}")).collect();
            }
            "UNIT" => {
                if f.has_unit {
                    return err(no, format!("second UNIT for `{name}`"));
                }
                f.has_unit = true;
                f.fam.unit = arg.to_string();
            }
            _ => return err(no, format!("unknown metadata `{keyword}`")),
        }
        Ok(())
    }

    fn finish_family(&mut self) -> Result<(), ParseError> {
        let Some(f) = self.cur.take() else { return Ok(()) };
        let fam = f.fam;
        let name = &fam.name;
        let mut names: Vec<&str> = fam.kind.suffixes(true).to_vec();
        if !names.contains(&"") {
            names.push("");
        }
        for s in names {
            let full = format!("{name}{s}");
            if !self.seen.insert(full.clone()) {
                return err(0, format!("clashing name `{full}`"));
            }
        }
        if !fam.unit.is_empty() {
            if !name.ends_with(&format!("_{}", fam.unit)) {
                return err(
                    0,
                    format!("unit `{}` does not match metric name `{name}`", fam.unit),
                );
            }
            if matches!(fam.kind, Kind::Info | Kind::StateSet) {
                return err(
                    0,
                    format!("units are not allowed for {} `{name}`", fam.kind.as_str()),
                );
            }
        }
        if matches!(fam.kind, Kind::Histogram | Kind::GaugeHistogram) {
            check_histogram(&fam).map_err(|m| ParseError::malformed(0, m))?;
        }
        self.families.push(fam);
        Ok(())
    }

    fn sample_line(&mut self, no: usize, line: &str) -> Result<(), ParseError> {
        let e = |m: String| ParseError::malformed(no, m);
        let (sample, exemplar) = parse_om_sample(line, self.limits).map_err(e)?;
        self.total += 1;
        if self.total > self.limits.max_samples {
            return err(no, format!("more than {} samples", self.limits.max_samples));
        }
        let belongs = self
            .cur
            .as_ref()
            .is_some_and(|f| f.allowed.contains(&sample.name));
        if !belongs {
            self.start(&sample.name, Some(Kind::Unknown))?;
            if let Some(f) = self.cur.as_mut() {
                f.typed = true;
                f.allowed = vec![sample.name.clone()];
            }
        }
        let Some(f) = self.cur.as_mut() else {
            return err(no, "internal: no family");
        };
        let name = f.fam.name.as_str();
        let kind = f.fam.kind;
        let suffix = &sample.name[name.len().min(sample.name.len())..];
        if kind == Kind::StateSet && sample.label(name).is_none() {
            return err(no, format!("stateset sample without a `{name}` label"));
        }
        if suffix == "_bucket" {
            match sample.label("le") {
                Some(le) if le != "NaN" && parse_number(le).is_some() && canonical(le) => {}
                _ => return err(no, "invalid or missing `le` label"),
            }
            if !is_integer(sample.value) {
                return err(no, "bucket value must be an integer");
            }
        }
        if (suffix == "_count" || suffix == "_gcount") && !is_integer(sample.value) {
            return err(no, "count value must be an integer");
        }
        if kind == Kind::Summary && sample.name == name {
            match sample.label("quantile") {
                Some(q) if parse_number(q).is_some_and(|x| (0.0..=1.0).contains(&x)) && canonical(q) => {}
                _ => return err(no, "invalid or missing `quantile` label"),
            }
        }
        // Grouping: a label set (less le / quantile / the stateset label) must be contiguous,
        // and timestamps within a group are all present or all absent and never go backwards.
        let (g, series) = group_and_series(&sample, name, kind);
        if f.group.is_some() && f.group.as_ref() != Some(&g) && f.seen_groups.contains(&g) {
            return err(no, "samples of one label set are not contiguous");
        }
        if f.group.as_ref() == Some(&g) {
            if sample.timestamp.is_none() != f.group_ts.is_none() {
                return err(no, "mix of samples with and without timestamps in one group");
            }
            if let (Some(prev), Some(ts)) = (f.group_ts, sample.timestamp)
                && prev > ts
                && kind != Kind::Info
            {
                return err(no, "timestamps went backwards within a group");
            }
        } else {
            f.group_series.clear();
        }
        let duplicate = sample.timestamp == f.group_ts && f.group_series.contains(&series);
        f.group_series.insert(series);
        f.seen_groups.insert(g);
        f.group = Some(g);
        f.group_ts = sample.timestamp;
        if kind == Kind::StateSet && sample.value != 0.0 && sample.value != 1.0 {
            return err(no, "stateset values must be 0 or 1");
        }
        if kind == Kind::Info && sample.value != 1.0 {
            return err(no, "info values must be 1");
        }
        if kind == Kind::Summary && sample.name == name && sample.value < 0.0 {
            return err(no, "quantile values cannot be negative");
        }
        let counter_like = ["_total", "_sum", "_count", "_bucket", "_gcount", "_gsum"].contains(&suffix);
        if counter_like && sample.value.is_nan() {
            return err(no, "counter-like samples cannot be NaN");
        }
        if counter_like && suffix != "_gsum" && sample.value < 0.0 {
            return err(no, "counter-like samples cannot be negative");
        }
        if exemplar {
            let ok = (matches!(kind, Kind::Histogram | Kind::GaugeHistogram)
                && sample.name.ends_with("_bucket"))
                || (kind == Kind::Counter && sample.name.ends_with("_total"));
            if !ok {
                return err(no, "only histogram buckets and counter totals can have exemplars");
            }
        }
        if duplicate {
            return err(
                no,
                "repeated series (same name, labels and timestamp as an earlier line)",
            );
        }
        f.fam.samples.push(sample);
        Ok(())
    }
}

/// Only +Inf has a canonical spelling that matters (`le="+Inf"`).
fn canonical(s: &str) -> bool {
    parse_number(s) != Some(f64::INFINITY) || s == "+Inf"
}

/// A label set (and a sample name, for series) as a hash, order-free. Two different sets
/// collide with probability about 2^-64: a false "not contiguous" or "repeated series" on a
/// valid page is that unlikely, and a real one is never missed.
fn labels_hash<'a>(name: Option<&str>, labels: impl Iterator<Item = (&'a str, &'a str)>) -> u64 {
    finish(name, labels.map(pair_hash).fold(0, u64::wrapping_add))
}

/// One label's hash. Pair hashes are added, which makes a set's hash order-free without
/// sorting; this runs for every label of every sample, so it neither allocates nor uses
/// SipHash (there is no hostile-key concern: a collision can only make a page's own series
/// look alike, never hide a real repeat).
fn pair_hash((k, v): (&str, &str)) -> u64 {
    mix(words(
        words(0x243f_6a88_85a3_08d3, k.as_bytes()) ^ 0xff,
        v.as_bytes(),
    ))
}

/// A set hash from its pairs' sum, and the sample name for a series.
fn finish(name: Option<&str>, sum: u64) -> u64 {
    let n = name.map_or(0x9e37_79b9_7f4a_7c15, |n| {
        mix(words(0x1319_8a2e_0370_7344, n.as_bytes()))
    });
    mix(sum ^ n)
}

/// FxHash-style, eight bytes at a time (the length is mixed in, so `"a"` and `"a\0"` differ).
fn words(mut h: u64, bytes: &[u8]) -> u64 {
    let step = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        h = step(h, u64::from_le_bytes(b));
    }
    let mut b = [0u8; 8];
    b[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = step(h, u64::from_le_bytes(b));
    step(h, bytes.len() as u64)
}

/// splitmix64's finalizer: spreads the bits before pair hashes are added.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The label that does not split a sample's group: `le` of a bucket, `quantile` of a
/// summary's quantiles, the state label of a stateset. `None` for an info (one group).
fn group_drop<'a>(s: &Sample, name: &'a str, kind: Kind) -> Option<Option<&'a str>> {
    Some(match kind {
        Kind::Info => return None,
        Kind::Summary if s.name == name => Some("quantile"),
        Kind::StateSet => Some(name),
        Kind::Histogram | Kind::GaugeHistogram if s.name.strip_prefix(name) == Some("_bucket") => Some("le"),
        _ => None,
    })
}

/// A sample's group (its labels less [`group_drop`]'s) and series (name and every label)
/// hashes, from one pass over its labels.
fn group_and_series(s: &Sample, name: &str, kind: Kind) -> (u64, u64) {
    let drop = group_drop(s, name, kind);
    let (mut all, mut kept) = (0u64, 0u64);
    for (k, v) in s.labels.iter() {
        let h = pair_hash((k, v));
        all = all.wrapping_add(h);
        if drop.is_some_and(|d| d != Some(k)) {
            kept = kept.wrapping_add(h);
        }
    }
    let group = if drop.is_some() { finish(None, kept) } else { 0 };
    (group, finish(Some(&s.name), all))
}

fn group_of(s: &Sample, name: &str, kind: Kind) -> u64 {
    group_and_series(s, name, kind).0
}

/// Sets of [`labels_hash`] values, which are hashes already: hashing them again with SipHash
/// was a tenth of a page's parse.
type HashedSet = HashSet<u64, std::hash::BuildHasherDefault<Prehashed>>;

/// A [`std::hash::Hasher`] for keys that are already well-mixed `u64`s.
#[derive(Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = words(self.0, bytes);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

fn check_histogram(f: &MetricFamily) -> Result<(), String> {
    struct State {
        count: Option<f64>,
        bucket: Option<f64>,
        neg_buckets: bool,
        has_sum: bool,
        has_gsum: bool,
        neg_gsum: bool,
        value: f64,
    }
    let name = &f.name;
    let check = |s: &State| -> Result<(), String> {
        if s.bucket != Some(f64::INFINITY) {
            return Err(format!("+Inf bucket missing: {name}"));
        }
        if s.count.is_some_and(|c| c != s.value) {
            return Err(format!("count does not match the +Inf bucket: {name}"));
        }
        if s.has_sum && s.count.is_none() {
            return Err(format!("_sum without _count: {name}"));
        }
        if s.has_gsum && s.count.is_none() {
            return Err(format!("_gsum without _gcount: {name}"));
        }
        if !(s.has_sum || s.has_gsum) && s.count.is_some() {
            return Err(format!("_count without _sum: {name}"));
        }
        if s.neg_buckets && s.has_sum {
            return Err(format!("_sum with negative buckets: {name}"));
        }
        if !s.neg_buckets && s.neg_gsum {
            return Err(format!("negative _gsum with non-negative buckets: {name}"));
        }
        Ok(())
    };
    let mut group: Option<u64> = None;
    let mut ts: Option<Option<f64>> = None;
    let fresh = || State {
        count: None,
        bucket: None,
        neg_buckets: false,
        has_sum: false,
        has_gsum: false,
        neg_gsum: false,
        value: 0.0,
    };
    let mut st = fresh();
    for s in &f.samples {
        let suffix = &s.name[name.len()..];
        if suffix.is_empty() {
            continue;
        }
        let g = group_of(s, name, Kind::Histogram);
        if Some(&g) != group.as_ref() || Some(s.timestamp) != ts {
            if group.is_some() {
                check(&st)?;
            }
            st = fresh();
        }
        group = Some(g);
        ts = Some(s.timestamp);
        match suffix {
            "_bucket" => {
                let b = s.label("le").and_then(parse_number).unwrap_or(f64::NAN);
                if b < 0.0 {
                    st.neg_buckets = true;
                }
                if st.bucket.is_some_and(|prev| b <= prev) {
                    return Err(format!("buckets out of order: {name}"));
                }
                if s.value < st.value {
                    return Err(format!("bucket values out of order: {name}"));
                }
                st.bucket = Some(b);
                st.value = s.value;
            }
            "_count" | "_gcount" => st.count = Some(s.value),
            "_sum" => st.has_sum = true,
            "_gsum" => {
                st.has_gsum = true;
                if s.value < 0.0 {
                    st.neg_gsum = true;
                }
            }
            _ => {}
        }
    }
    if group.is_some() {
        check(&st)?;
    }
    Ok(())
}

/// `name[{labels}] value[ timestamp][ # {labels} value[ timestamp]]`, single spaces, strict.
/// Returns the sample and whether it carried an exemplar (validated, then dropped).
fn parse_om_sample(line: &str, limits: &Limits) -> Result<(Sample, bool), String> {
    let (name, name_len) = leading_metric_name(line)?;
    let mut rest = &line[name_len..];
    let mut labels = Labels::new();
    if rest.starts_with('{') {
        let (l, r) = parse_labels(rest, true, limits).map_err(|e| format!("{name}: {e}"))?;
        labels = l;
        rest = r;
    }
    let rest = rest
        .strip_prefix(' ')
        .ok_or_else(|| format!("{name}: expected one space before the value"))?;
    // The first ` # ` (a `#` is searched for alone: far cheaper than a substring search).
    let hash = rest
        .match_indices('#')
        .map(|(i, _)| i)
        .find(|&i| i > 0 && rest.as_bytes()[i - 1] == b' ' && rest.as_bytes().get(i + 1) == Some(&b' '));
    let (main, exemplar) = match hash {
        Some(i) => (&rest[..i - 1], Some(&rest[i + 2..])),
        None => (rest, None),
    };
    let mut it = main.split(' ');
    let value_text = it.next().unwrap_or("");
    let value = parse_number(value_text).ok_or_else(|| format!("{name}: invalid value `{value_text}`"))?;
    let timestamp = match it.next() {
        None => None,
        Some(t) => Some(om_timestamp(t).ok_or_else(|| format!("{name}: invalid timestamp `{t}`"))?),
    };
    if it.next().is_some() {
        return Err(format!("{name}: unexpected text after the timestamp"));
    }
    if let Some(ex) = exemplar {
        if !ex.starts_with('{') {
            return Err(format!("{name}: exemplar must start with a label set"));
        }
        let (ex_labels, r) = parse_labels(ex, true, limits).map_err(|e| format!("{name}: exemplar: {e}"))?;
        let chars: usize = ex_labels
            .iter()
            .map(|(k, v)| k.chars().count() + v.chars().count())
            .sum();
        if chars > 128 {
            return Err(format!("{name}: exemplar labels longer than 128 characters"));
        }
        let r = r
            .strip_prefix(' ')
            .ok_or_else(|| format!("{name}: exemplar: expected a value"))?;
        let mut parts = r.split(' ');
        let v = parts.next().unwrap_or("");
        parse_number(v).ok_or_else(|| format!("{name}: exemplar: invalid value `{v}`"))?;
        if let Some(t) = parts.next() {
            om_timestamp(t).ok_or_else(|| format!("{name}: exemplar: invalid timestamp `{t}`"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{name}: exemplar: unexpected text"));
        }
    }
    Ok((
        Sample {
            name: name.to_string(),
            labels,
            value,
            timestamp,
        },
        exemplar.is_some(),
    ))
}

/// OpenMetrics timestamps: seconds, finite.
fn om_timestamp(t: &str) -> Option<f64> {
    parse_number(t).filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prom(text: &str) -> Vec<MetricFamily> {
        parse_prometheus(text, &Limits::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A line the reader discards is only scanned, not parsed into a sample, and must still be
    /// refused exactly as a kept one would be.
    #[test]
    fn a_discarded_line_is_checked_as_strictly_as_a_kept_one() {
        let many: String = (0..20).map(|i| format!("l{i}=\"v\",")).collect();
        let dup_late = format!("x{{{many}l3=\"w\"}} 1");
        let bad = [
            "x{a=\"1\",a=\"2\"} 1",
            dup_late.as_str(),
            "x{a=\"1\" 1",
            "x{a=1} 1",
            "x{a=\"1\"} one",
            "x 1 12.5",
            "x 1 2 3",
            "x{9a=\"1\"} 1",
            "x",
        ];
        let limits = Limits::default();
        for line in bad {
            let page = format!("keep_me 1\n{line}\n");
            let kept = parse_prometheus(&page, &limits).err();
            let discarded = parse_prometheus_keeping(&page, &limits, &|n| n == "keep_me").err();
            assert!(kept.is_some(), "`{line}` should be refused");
            assert_eq!(discarded, kept, "`{line}`");
        }
        // More labels than the limit, on a discarded line.
        let tight = Limits {
            max_labels: 3,
            ..Limits::default()
        };
        let page = "keep_me 1\nx{a=\"1\",b=\"2\",c=\"3\",d=\"4\"} 1\n";
        let e = parse_prometheus_keeping(page, &tight, &|n| n == "keep_me").err();
        assert_eq!(e.map(|e| e.message), Some("x: more than 3 labels".to_string()));
        // 20 distinct labels are fine, and what is kept is kept.
        let page = format!("x{{{many}}} 1\nkeep_me{{a=\"b\"}} 2\n");
        let f =
            parse_prometheus_keeping(&page, &limits, &|n| n == "keep_me").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].samples[0].label("a"), Some("b"));
    }

    #[test]
    fn colons_commas_escapes_and_trailing_commas() {
        let f = prom(
            "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"m,1\",engine=\"0\"} 3\n\
             ts_x{Level=\"Host\",a=\"q\\\"uote\\\\ \\n\",} 1.5e+03 1700000000000\n",
        );
        assert_eq!(f[0].name, "vllm:num_requests_waiting");
        assert_eq!(f[0].kind, Kind::Gauge);
        assert_eq!(f[0].samples[0].label("model_name"), Some("m,1"));
        assert_eq!(f[0].samples[0].value, 3.0);
        assert_eq!(f[1].samples[0].label("a"), Some("q\"uote\\ \n"));
        assert_eq!(f[1].samples[0].value, 1500.0);
        assert_eq!(f[1].samples[0].timestamp, Some(1_700_000_000.0));
    }

    #[test]
    fn never_misreads_a_value() {
        for bad in [
            "x 1,5",
            "x 0x10",
            "x 1_000",
            "x",
            "x{a=\"b\"}",
            "x{a=b} 1",
            "x 1 2 3",
            "x 1 1.5",
        ] {
            assert!(
                parse_prometheus(bad, &Limits::default()).is_err(),
                "{bad} should fail"
            );
        }
        let f = prom("x +Inf\ny -inf\nz NaN\n");
        assert!(f[0].samples[0].value.is_infinite() && f[2].samples[0].value.is_nan());
    }

    #[test]
    fn limits_hold() {
        let small = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        assert!(parse_prometheus("x 1\ny 2\nz 3\n", &small).is_err());
        let few = Limits {
            max_samples: 2,
            ..Limits::default()
        };
        let e = parse_prometheus("x 1\ny 2\nz 3\n", &few)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(e, "line 3: more than 2 samples");
        let labels = Limits {
            max_labels: 1,
            ..Limits::default()
        };
        assert!(parse_prometheus("x{a=\"1\",b=\"2\"} 1", &labels).is_err());
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn labels_keep_order_values_and_escapes() {
        let f =
            parse_openmetrics("x{b=\"2\",a=\"q\\\"z\\n\",c=\"\"} 1\n# EOF\n", &Limits::default()).unwrap();
        let l = &f[0].samples[0].labels;
        let pairs: Vec<(&str, &str)> = l.iter().collect();
        assert_eq!(pairs, [("b", "2"), ("a", "q\"z\n"), ("c", "")]);
        assert_eq!(
            (l.get("a"), l.get("c"), l.get("d"), l.len()),
            (Some("q\"z\n"), Some(""), None, 3)
        );
        assert_eq!(format!("{l:?}"), r#"{"b": "2", "a": "q\"z\n", "c": ""}"#);
        let built: Labels = [("b", "2"), ("a", "q\"z\n"), ("c", "")].into_iter().collect();
        assert_eq!(&built, l);
        assert_ne!(built, [("b", "2"), ("a", "q\"z\n")].into_iter().collect());
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn label_set_hashes_ignore_order_and_nothing_else() {
        let h = |pairs: &[(&str, &str)]| labels_hash(None, pairs.iter().copied());
        assert_eq!(h(&[("a", "1"), ("b", "2")]), h(&[("b", "2"), ("a", "1")]));
        // Where one label ends and the next begins is part of the hash.
        assert_ne!(h(&[("a", "1b"), ("c", "2")]), h(&[("a", "1"), ("bc", "2")]));
        assert_ne!(h(&[("ab", "")]), h(&[("a", "b")]));
        assert_ne!(h(&[("a", "1")]), h(&[("a", "1"), ("a", "1")]));
        assert_ne!(h(&[("a", "x\0")]), h(&[("a", "x")]));
        assert_ne!(h(&[]), labels_hash(Some("x"), std::iter::empty()));
        // Long values, past the eight-byte steps, and one byte apart.
        let long = "v".repeat(37);
        let other = format!("{}w", &long[..36]);
        assert_ne!(h(&[("k", &long)]), h(&[("k", &other)]));
        // Repeats and interleaving are still caught through the hashes.
        let repeated = "x{a=\"1\",b=\"2\"} 1\nx{b=\"2\",a=\"1\"} 2\n# EOF\n";
        assert!(
            parse_openmetrics(repeated, &Limits::default())
                .unwrap_err()
                .message
                .contains("repeated series")
        );
        let split = "# TYPE x gauge\nx{a=\"1\"} 1\nx{a=\"2\"} 1\nx{a=\"1\"} 1\n# EOF\n";
        assert!(parse_openmetrics(split, &Limits::default()).is_err());
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn exemplar_split_finds_the_first_spaced_hash() {
        let ok = "# TYPE c counter\nc_total 1 # {t=\"a#b\"} 0.5\n# EOF\n";
        assert_eq!(
            parse_openmetrics(ok, &Limits::default()).unwrap()[0].samples[0].value,
            1.0
        );
        for bad in [
            "c_total 1#{t=\"a\"} 0.5",
            "c_total 1 #{t=\"a\"} 0.5",
            "c_total 1 # ",
        ] {
            let page = format!("# TYPE c counter\n{bad}\n# EOF\n");
            assert!(parse_openmetrics(&page, &Limits::default()).is_err(), "{bad}");
        }
    }

    #[test]
    fn openmetrics_basics() {
        let ok = "# TYPE a counter\n# HELP a help\na_total 1 # {t=\"1\"} 2 3\na_created 10\n# EOF\n";
        let f = parse_openmetrics(ok, &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (f[0].name.as_str(), f[0].kind, f[0].samples.len()),
            ("a", Kind::Counter, 2)
        );
        for bad in [
            "a 1\n",
            "a 1\n\n# EOF\n",
            "a 1\n# EOF\nb 2\n",
            "# TYPE a counter\na_total -1\n# EOF\n",
        ] {
            assert!(parse_openmetrics(bad, &Limits::default()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_a_missing_eof_is_truncation() {
        let kind = |page: &str| {
            parse_openmetrics(page, &Limits::default())
                .map(|_| ())
                .map_err(|e| e.kind)
        };
        assert_eq!(kind("a 1\n"), Err(Problem::Truncated));
        assert_eq!(kind("# TYPE a gauge\na 1\n"), Err(Problem::Truncated));
        // Whole pages with something wrong are malformed, whatever the message mentions.
        assert_eq!(kind("a 1\n# EOF\nb 2\n"), Err(Problem::Malformed));
        assert_eq!(kind("a x\n# EOF\n"), Err(Problem::Malformed));
        assert_eq!(kind("a 1\n# EOF\n"), Ok(()));
    }
}

#[cfg(test)]
mod no_panic {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Arbitrary bytes, and mutations of a realistic page, never panic either parser.
        #[test]
        fn arbitrary_input_never_panics(s in "\\PC{0,200}", cut in 0usize..400, junk in "[{}\",=# \\\\\\n+a-zA-Z0-9._:]{0,20}") {
            let _ = parse_prometheus(&s, &Limits::default());
            let _ = parse_openmetrics(&s, &Limits::default());
            let page = "# HELP x_total h\n# TYPE x counter\nx_total{a=\"b\",c=\"d\\\\\"} 1 # {t=\"1\"} 2 3\n\
                        # TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 2\n# EOF\n";
            let mut cut = cut.min(page.len());
            while !page.is_char_boundary(cut) { cut -= 1; }
            let mutated = format!("{}{}{}", &page[..cut], junk, &page[cut..]);
            let _ = parse_prometheus(&mutated, &Limits::default());
            let _ = parse_openmetrics(&mutated, &Limits::default());
        }

        /// Fed in chunks of any size, split anywhere (inside a UTF-8 character too), the
        /// incremental parser reads exactly what the whole-page parser reads, errors included.
        #[test]
        fn chunked_input_reads_as_the_whole_page(cuts in proptest::collection::vec(1usize..40, 1..60), junk in "[{}\",=# \\\na-z0-9._:é]{0,12}", at in 0usize..300) {
            let base = "# HELP vllm:num_requests_waiting Queue é.\n# TYPE vllm:num_requests_waiting gauge\n\
                        vllm:num_requests_waiting{engine=\"0\",model_name=\"q,é\"} 3\n\
                        vllm:num_requests_waiting{engine=\"1\",model_name=\"q\"} 4\n\
                        # TYPE other counter\nother_total{a=\"b\"} 1\nuntyped_thing 2 1700000000000\n";
            let mut at = at.min(base.len());
            while !base.is_char_boundary(at) { at -= 1; }
            let page = format!("{}{}{}", &base[..at], junk, &base[at..]);
            let keep = |n: &str| n.starts_with("vllm:") || n.starts_with("untyped");
            let whole = parse_prometheus_keeping(&page, &Limits::default(), &keep);
            let mut p = PromParser::new(&Limits::default(), &keep);
            let bytes = page.as_bytes();
            let (mut i, mut k) = (0, 0);
            let mut fed = Ok(());
            while i < bytes.len() && fed.is_ok() {
                let n = cuts[k % cuts.len()].min(bytes.len() - i);
                fed = p.feed(&bytes[i..i + n]);
                i += n;
                k += 1;
            }
            let chunked = fed.and_then(|()| p.end());
            prop_assert_eq!(whole, chunked);
        }
    }
}
