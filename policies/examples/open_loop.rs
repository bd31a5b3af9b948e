//! Open-loop replay: what each policy asks for on a recorded LLM trace.
//!
//! Reads an Azure LLM inference trace (`TIMESTAMP,ContextTokens,GeneratedTokens`), gives every
//! request a service time from its token counts, and feeds each policy the workload's signals
//! second by second: in-flight requests, the arrival rate and mean service time of the last
//! minute, and the replica counts that follow the policy's own decisions through a cold start.
//!
//! "Open loop" means demand does not react to capacity: requests are never queued or slowed by
//! too few replicas, so this shows how each policy tracks real demand (replica-hours, scale
//! events, seconds short of capacity), not latency. The closed-loop what-if replay with queueing,
//! latency percentiles and cold-start waits is `gpuscale-sim` (issue #3).
//!
//! Usage: open_loop [TRACE.csv] [--policy hpa,kpa,queue,slo] [--slots N] [--cold-start SECS]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use gpuscale_policies::{Reading, Signals, build};

/// Prefill throughput of one replica, tokens/s (an H100-class GPU on a 7-13B model).
const PREFILL_TOKENS_PER_S: f64 = 8000.0;
/// Decode speed of one sequence, tokens/s (about 25 ms per output token).
const DECODE_TOKENS_PER_S: f64 = 40.0;

struct Args {
    trace: PathBuf,
    policies: Vec<String>,
    slots: u32,
    cold_start: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        trace: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/traces/AzureLLMInferenceTrace_conv.csv"
        )),
        policies: ["hpa", "kpa", "queue", "slo"].map(String::from).to_vec(),
        slots: 8,
        cold_start: 60,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--policy" => args.policies = value("--policy")?.split(',').map(String::from).collect(),
            "--slots" => {
                args.slots = value("--slots")?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--slots expects an integer >= 1 (requests one replica serves at once)")?
            }
            "--cold-start" => {
                args.cold_start = value("--cold-start")?
                    .parse()
                    .map_err(|_| "--cold-start expects whole seconds, e.g. 60")?
            }
            "-h" | "--help" => {
                return Err(
                    "usage: open_loop [TRACE.csv] [--policy hpa,kpa,queue,slo] [--slots N] \
                            [--cold-start SECS]\n\nReplays an Azure LLM trace open-loop through each \
                            policy and prints replica-hours, scale events and seconds short of capacity."
                        .into(),
                );
            }
            s if s.starts_with("--") => return Err(format!("unknown flag {s}; see --help")),
            path => args.trace = PathBuf::from(path),
        }
    }
    Ok(args)
}

/// `YYYY-MM-DD HH:MM:SS.fffffff` as seconds since 1970 (UTC), keeping all 7 fractional digits.
fn parse_timestamp(s: &str) -> Option<f64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac: f64 = format!("0.{frac}").parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60 + ss) as f64 + frac)
}

/// (arrival seconds from the first request, service seconds) per request.
fn read_trace(path: &PathBuf) -> Result<Vec<(f64, f64)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!("{}: {e}; pass the path of an Azure LLM inference CSV (e.g. data/traces/AzureLLMInferenceTrace_conv.csv)", path.display())
    })?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim_end_matches('\r') == "TIMESTAMP,ContextTokens,GeneratedTokens" => {}
        _ => {
            return Err(format!(
                "{}: line 1: expected the header TIMESTAMP,ContextTokens,GeneratedTokens (Azure LLM inference trace)",
                path.display()
            ));
        }
    }
    let mut out = Vec::new();
    for (i, line) in lines {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let bad = |col: &str, what: &str| {
            format!(
                "{}: line {}: column {col}: expected {what}",
                path.display(),
                i + 1
            )
        };
        let mut f = line.split(',');
        let ts = parse_timestamp(f.next().unwrap_or_default())
            .ok_or_else(|| bad("TIMESTAMP", "YYYY-MM-DD HH:MM:SS.fffffff"))?;
        let input: f64 = f
            .next()
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| bad("ContextTokens", "an integer"))?;
        let output: f64 = f
            .next()
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| bad("GeneratedTokens", "an integer"))?;
        out.push((ts, input / PREFILL_TOKENS_PER_S + output / DECODE_TOKENS_PER_S));
    }
    let t0 = out
        .first()
        .map(|r| r.0)
        .ok_or_else(|| format!("{}: no requests", path.display()))?;
    out.iter_mut().for_each(|r| r.0 -= t0);
    Ok(out)
}

/// Replicas that follow decisions: new ones become ready after the cold start.
struct Replicas {
    ready: u32,
    starting: Vec<u64>,
}

impl Replicas {
    fn apply(&mut self, now: u64, desired: u32, cold_start: u64) -> bool {
        let have = self.ready + self.starting.len() as u32;
        if desired > have {
            self.starting
                .extend(std::iter::repeat_n(now + cold_start, (desired - have) as usize));
        } else {
            let mut drop = have - desired;
            while drop > 0 && self.starting.pop().is_some() {
                drop -= 1;
            }
            self.ready -= drop.min(self.ready);
        }
        desired != have
    }

    fn tick(&mut self, now: u64) {
        let before = self.starting.len();
        self.starting.retain(|&t| t > now);
        self.ready += (before - self.starting.len()) as u32;
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let reqs = match read_trace(&args.trace) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let horizon = reqs.iter().map(|r| r.0 + r.1).fold(0.0, f64::max).ceil() as u64 + 1;
    // Per second: in-flight requests, arrivals, and the service-time sum of those arrivals.
    let mut in_flight = vec![0f64; horizon as usize + 1];
    let mut arrivals = vec![0u32; horizon as usize + 1];
    let mut service_sum = vec![0f64; horizon as usize + 1];
    for &(a, s) in &reqs {
        let (start, end) = (a as usize, (a + s) as usize);
        in_flight[start..=end.min(horizon as usize)]
            .iter_mut()
            .for_each(|x| *x += 1.0);
        arrivals[start] += 1;
        service_sum[start] += s;
    }
    let slots = args.slots.to_string();
    let mut report = String::new();
    let _ = writeln!(
        report,
        "{} requests over {:.1} min from {}\nservice time = input/{PREFILL_TOKENS_PER_S} + output/{DECODE_TOKENS_PER_S} s; \
         capacity {} in flight per replica; cold start {} s\n",
        reqs.len(),
        horizon as f64 / 60.0,
        args.trace.display(),
        args.slots,
        args.cold_start
    );
    let _ = writeln!(
        report,
        "{:<12} {:>10} {:>7} {:>5} {:>13} {:>8}  last reason",
        "policy", "replica-h", "mean", "max", "scale events", "s short"
    );
    for policy in &args.policies {
        // The same capacity notion for every policy: `slots` in flight per replica.
        let params: Vec<(String, String)> = [
            ("maxReplicas", "200".to_string()),
            ("keepAlive", "300s".to_string()),
            ("queue.target", slots.clone()),
            ("hpa.target", slots.clone()),
            ("kpa.target", slots.clone()),
            ("slo.slots", slots.clone()),
            ("slo.target", slots.clone()),
        ]
        .into_iter()
        .filter(|(k, _)| {
            k.split_once('.')
                .is_none_or(|(p, _)| policy.split('+').any(|x| x == p))
        })
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut scaler = match build(policy, &params) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: --policy {policy}: {e}");
                return ExitCode::from(2);
            }
        };
        // How often the upstream controller decides: HPA syncs every 15 s, KPA ticks every 2 s.
        let period = match policy.as_str() {
            "hpa" => 15,
            "kpa" => 2,
            _ => 1,
        };
        let mut replicas = Replicas {
            ready: 1,
            starting: Vec::new(),
        };
        let (mut replica_secs, mut max, mut events, mut short) = (0u64, 0u32, 0u32, 0u64);
        let mut current = 1u32;
        let mut last = String::new();
        for t in 0..=horizon {
            replicas.tick(t);
            let lo = t.saturating_sub(59) as usize;
            let n: u32 = arrivals[lo..=t as usize].iter().sum();
            let svc: f64 = service_sum[lo..=t as usize].iter().sum();
            let window = (t as usize - lo + 1) as f64;
            let signals = Signals {
                current,
                ready: replicas.ready,
                starting: replicas.starting.len() as u32,
                waiting: Some(Reading::fresh(0.0)),
                running: Some(Reading::fresh(in_flight[t as usize])),
                arrival_rate: Some(Reading::fresh(f64::from(n) / window)),
                service_time: (n > 0).then(|| Reading::fresh(svc / f64::from(n))),
                ..Signals::default()
            };
            let now = Duration::from_secs(t);
            if t % period == 0 {
                let d = scaler.decide(now, &signals);
                if replicas.apply(t, d.desired, args.cold_start) {
                    events += 1;
                }
                current = d.desired;
                last = d.rule.to_string();
            } else {
                scaler.observe(now, &signals);
            }
            let total = replicas.ready + replicas.starting.len() as u32;
            replica_secs += u64::from(total);
            max = max.max(total);
            if in_flight[t as usize] > f64::from(replicas.ready * args.slots) {
                short += 1;
            }
        }
        let _ = writeln!(
            report,
            "{:<12} {:>10.2} {:>7.2} {:>5} {:>13} {:>8}  {}",
            policy,
            replica_secs as f64 / 3600.0,
            replica_secs as f64 / (horizon + 1) as f64,
            max,
            events,
            short,
            last
        );
    }
    let _ = writeln!(
        report,
        "\nreplica-h: replica-hours held (ready + starting); s short: seconds with more requests in flight\n\
         than ready replicas x capacity. Open loop: demand ignores capacity, so no latency is modelled."
    );
    print!("{report}");
    ExitCode::SUCCESS
}
