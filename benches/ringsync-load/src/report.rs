//! Results: one JSON object per run (appended as a line to `--json FILE`), printed as a table,
//! and the `report` subcommand, which turns JSON lines into Markdown tables with the median of
//! the runs that share a label (and the min–max range where noise matters), and for fan-out, each
//! shape's server CPU per delivery against the floor's (`floor-server`, runs labelled `floor …`)
//! and against Redis pub/sub's (`redis-fanout` runs) from the same files. A run's fields keep
//! the order they were inserted in (`serde_json`'s `preserve_order`); a figure that could not be
//! measured is `null`, never left out.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Map, Value};

/// One run's figures, in the order they are printed.
pub type Run = Map<String, Value>;

/// Inserts a figure that may be missing (`null`).
pub fn put(r: &mut Run, key: &str, v: Option<f64>) {
    r.insert(key.into(), v.map_or(Value::Null, Value::from));
}

/// `{prefix}_p50_ms`, `_p99_ms`, `_p999_ms`, `_max_ms`, `_count` from a µs histogram.
pub fn latency(r: &mut Run, prefix: &str, h: &Histogram<u64>) {
    let ms = |us: u64| us as f64 / 1000.0;
    let some = !h.is_empty();
    put(r, &format!("{prefix}_p50_ms"), some.then(|| ms(h.value_at_quantile(0.5))));
    put(r, &format!("{prefix}_p99_ms"), some.then(|| ms(h.value_at_quantile(0.99))));
    put(r, &format!("{prefix}_p999_ms"), some.then(|| ms(h.value_at_quantile(0.999))));
    put(r, &format!("{prefix}_max_ms"), some.then(|| ms(h.max())));
    r.insert(format!("{prefix}_count"), h.len().into());
}

/// How long connecting took: all of them, each one's connect-to-sync (p50, p99), and the
/// server's CPU seconds meanwhile.
pub fn connect_figures(r: &mut Run, all: Duration, sync: &Histogram<u64>, server_cpu_s: Option<f64>) {
    r.insert("connect_s".into(), all.as_secs_f64().into());
    let some = !sync.is_empty();
    put(r, "connect_p50_ms", some.then(|| sync.value_at_quantile(0.5) as f64 / 1000.0));
    put(r, "connect_p99_ms", some.then(|| sync.value_at_quantile(0.99) as f64 / 1000.0));
    put(r, "server_cpu_connect_s", server_cpu_s);
}

/// Prints a run as an aligned two-column table.
pub fn print_run(run: &Run) {
    let width = run.keys().map(String::len).max().unwrap_or(0);
    println!("{}", "-".repeat(width + 24));
    for (k, v) in run {
        if v.is_null() {
            continue;
        }
        let shown = match v {
            Value::Number(n) if n.is_f64() => fmt_num(n.as_f64().unwrap_or(0.0)),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        println!("{k:<width$}  {shown}");
    }
}

/// Appends a run to a JSON-lines file.
///
/// # Errors
/// When the file cannot be opened or written.
pub fn append(path: &Path, run: &Run) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{}", Value::Object(run.clone()))
}

fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if x.fract() == 0.0 || a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 0.1 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// Thousands separators for big figures (`1,234,567`).
fn fmt_big(x: f64) -> String {
    if x.abs() < 10_000.0 {
        return fmt_num(x);
    }
    let s = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 { format!("-{out}") } else { out }
}

/// A column: header, JSON key, how to show it.
struct Col(&'static str, &'static str, Show);

#[derive(Clone, Copy)]
enum Show {
    Num,
    Big,
    /// Median with the runs' min–max range.
    Range,
    /// A fraction shown as a percentage.
    Pct,
}

const FANOUT: &[Col] = &[
    Col("clients", "clients", Show::Big),
    Col("rooms", "rooms", Show::Num),
    Col("offered changes/s", "offered_per_s", Show::Big),
    Col("delivered/s", "delivered_per_s", Show::Range),
    Col("frames/s", "frames_per_s", Show::Big),
    Col("changes/frame", "changes_per_frame", Show::Num),
    Col("p50 ms", "lat_p50_ms", Show::Num),
    Col("p99 ms", "lat_p99_ms", Show::Range),
    Col("max ms", "lat_max_ms", Show::Num),
    Col("server CPU", "server_cpu_util", Show::Pct),
    Col("µs CPU/delivery", "server_cpu_us_per_delivery", Show::Range),
    Col("server RSS MB", "server_rss_mb", Show::Num),
    Col("connect+sync s", "connect_s", Show::Num),
    Col("loadgen CPU", "client_cpu_util", Show::Pct),
    Col("other CPU", "other_cpu_util", Show::Pct),
    Col("snapshots", "snapshots", Show::Num),
    Col("errors", "errors", Show::Num),
];

const PRESENCE: &[Col] = &[
    Col("clients", "clients", Show::Big),
    Col("Hz each", "hz", Show::Num),
    Col("updates sent/s", "sent_per_s", Show::Big),
    Col("entries delivered/s", "presence_entries_per_s", Show::Range),
    Col("frames/s", "frames_per_s", Show::Big),
    Col("p50 ms", "lat_p50_ms", Show::Num),
    Col("p99 ms", "lat_p99_ms", Show::Range),
    Col("max ms", "lat_max_ms", Show::Num),
    Col("server CPU", "server_cpu_util", Show::Pct),
    Col("µs CPU/entry", "server_cpu_us_per_delivery", Show::Num),
    Col("loadgen CPU", "client_cpu_util", Show::Pct),
    Col("other CPU", "other_cpu_util", Show::Pct),
    Col("errors", "errors", Show::Num),
];

const RECONNECT: &[Col] = &[
    Col("clients", "clients", Show::Big),
    Col("changes/s", "rate", Show::Num),
    Col("offline ms", "offline_ms", Show::Num),
    Col("resumed", "resumed_share", Show::Pct),
    Col("got delta", "delta_share", Show::Pct),
    Col("converge ms", "converge_ms", Show::Range),
    Col("resync p50 ms", "resync_p50_ms", Show::Num),
    Col("resync p99 ms", "resync_p99_ms", Show::Num),
    Col("server CPU s", "server_cpu_s", Show::Num),
    Col("other CPU", "other_cpu_util", Show::Pct),
    Col("errors", "errors", Show::Num),
];

const IDLE: &[Col] = &[
    Col("clients", "clients", Show::Big),
    Col("rooms", "rooms", Show::Num),
    Col("connect+sync s", "connect_s", Show::Range),
    Col("sync p99 ms", "connect_p99_ms", Show::Num),
    Col("server CPU s", "server_cpu_connect_s", Show::Num),
    Col("RSS before MB", "rss_before_mb", Show::Num),
    Col("RSS after MB", "rss_after_mb", Show::Num),
    Col("KiB/connection", "kib_per_conn", Show::Range),
    Col("errors", "errors", Show::Num),
];

const OVERLOAD: &[Col] = &[
    Col("clients", "clients", Show::Big),
    Col("slow", "slow", Show::Num),
    Col("changes/s", "rate", Show::Num),
    Col("payload B", "payload", Show::Num),
    Col("fast delivered/s", "fast_delivered_per_s", Show::Range),
    Col("fast got", "fast_delivered_share", Show::Pct),
    Col("fast p50 ms", "lat_p50_ms", Show::Num),
    Col("fast p99 ms", "lat_p99_ms", Show::Range),
    Col("fast max ms", "lat_max_ms", Show::Num),
    Col("slow p99 ms", "slow_lat_p99_ms", Show::Num),
    Col("slow frames each", "slow_frames_each", Show::Num),
    Col("slow snapshots each", "slow_snapshots_each", Show::Num),
    Col("changes", "changes_total", Show::Big),
    Col("not at final rev", "readers_not_at_final", Show::Num),
    Col("converge ms", "converge_ms", Show::Num),
    Col("RSS start MB", "rss_start_mb", Show::Num),
    Col("RSS peak MB", "rss_peak_mb", Show::Range),
    Col("RSS end MB", "rss_end_mb", Show::Num),
    Col("server CPU", "server_cpu_util", Show::Pct),
    Col("loadgen CPU", "client_cpu_util", Show::Pct),
    Col("other CPU", "other_cpu_util", Show::Pct),
    Col("errors", "errors", Show::Num),
    Col("server closes", "server_closes", Show::Num),
];

const COMMIT: &[Col] = &[
    Col("writers", "writers", Show::Num),
    Col("rooms", "rooms", Show::Num),
    Col("window K", "window", Show::Num),
    Col("committed/s", "committed_per_s", Show::Range),
    Col("ack p50 ms", "ack_p50_ms", Show::Num),
    Col("ack p99 ms", "ack_p99_ms", Show::Range),
    Col("ack max ms", "ack_max_ms", Show::Num),
    Col("fsyncs/s", "fsyncs_per_s", Show::Big),
    Col("changes/fsync", "changes_per_fsync", Show::Num),
    Col("fsync ms", "fsync_ms_mean", Show::Num),
    Col("server CPU", "server_cpu_util", Show::Pct),
    Col("µs CPU/change", "server_cpu_us_per_change", Show::Num),
    Col("loadgen CPU", "client_cpu_util", Show::Pct),
    Col("other CPU", "other_cpu_util", Show::Pct),
    Col("errors", "errors", Show::Num),
];

const FSYNC_RATE: &[Col] = &[
    Col("bytes", "bytes", Show::Num),
    Col("fsyncs/s", "fsyncs_per_s", Show::Range),
    Col("p50 ms", "fsync_p50_ms", Show::Num),
    Col("p99 ms", "fsync_p99_ms", Show::Range),
    Col("max ms", "fsync_max_ms", Show::Num),
];

const STARTUP: &[Col] = &[
    Col("rev", "rev", Show::Big),
    Col("listening ms", "listen_ms", Show::Range),
    Col("first GET ms", "first_get_ms", Show::Range),
    Col("load ms", "load_ms", Show::Num),
    Col("server CPU s", "server_cpu_s", Show::Num),
    Col("server RSS MB", "server_rss_mb", Show::Num),
    Col("SIGTERM → exit ms", "stop_ms", Show::Num),
];

/// Markdown tables for every run in `files`: one table per scenario kind, one row per label
/// (median of its runs).
///
/// # Errors
/// When a file cannot be read or a line is not a JSON object.
pub fn markdown(files: &[std::path::PathBuf]) -> anyhow::Result<String> {
    Ok(tables(&read_runs(files)?))
}

/// The tables for `runs`, in a fixed order of scenario kinds; a kind without runs has none.
fn tables(runs: &[Run]) -> String {
    let mut out = String::new();
    for (title, kinds, cols) in [
        ("Fan-out", &["fanout", "rooms", REDIS][..], FANOUT),
        ("Presence", &["presence"][..], PRESENCE),
        ("Reconnect storm", &["reconnect"][..], RECONNECT),
        ("Idle connections", &["idle"][..], IDLE),
        ("Overload (slow readers)", &["overload"][..], OVERLOAD),
        ("Commit throughput", &["commit"][..], COMMIT),
        ("Disk fsync rate", &["fsync-rate"][..], FSYNC_RATE),
        ("Start-up and recovery", &["startup"][..], STARTUP),
    ] {
        let mine: Vec<&Run> = runs.iter().filter(|r| kinds.contains(&text(r, "scenario").as_str())).collect();
        if !mine.is_empty() {
            table(&mut out, title, &mine, cols);
        }
        if title == "Fan-out" {
            against(&mut out, &mine, &FLOOR_TABLE);
            against(&mut out, &mine, &REDIS_TABLE);
        }
    }
    out
}

/// Runs whose label starts with this were measured against `floor-server`, not ringsync.
const FLOOR: &str = "floor";
/// The scenario of runs measured against Redis pub/sub (`redis-fanout`), not ringsync.
const REDIS: &str = "redis-fanout";

/// What makes two fan-out runs comparable.
fn shape(r: &Run) -> [String; 5] {
    ["scenario", "rooms", "clients", "rate", "payload"].map(|k| text(r, k))
}

/// A table of ringsync's fan-out against another server's runs of the same shape.
struct Against {
    /// `### Fan-out against {title}`.
    title: &'static str,
    /// The other server in the column headers (`floor µs CPU/delivery`, `× floor`).
    name: &'static str,
    /// Which runs are the other server's.
    is_other: fn(&Run) -> bool,
    /// An other server's run's shape, as the ringsync run it compares with has it.
    shape: fn(&Run) -> [String; 5],
}

const FLOOR_TABLE: Against =
    Against { title: "the floor", name: "floor", is_other: |r| text(r, "label").starts_with(FLOOR), shape };

const REDIS_TABLE: Against = Against {
    title: "Redis pub/sub",
    name: "redis",
    is_other: |r| text(r, "scenario") == REDIS,
    // One channel, N subscribers, M messages/s: `fanout`'s shape with one room.
    shape: |r| {
        let mut s = shape(r);
        s[0] = "fanout".into();
        s
    },
};

/// Runs of neither the floor nor Redis: ringsync's.
fn is_ringsync(r: &Run) -> bool {
    !(FLOOR_TABLE.is_other)(r) && !(REDIS_TABLE.is_other)(r)
}

/// For every ringsync fan-out label that has the other server's runs of the same shape: its
/// median server CPU per delivery over the other's (the ratio of the medians), with both
/// latencies and CPU shares.
fn against(out: &mut String, runs: &[&Run], t: &Against) {
    let mut labels: Vec<String> = Vec::new();
    for r in runs.iter().filter(|r| is_ringsync(r)) {
        let l = text(r, "label");
        if !labels.contains(&l) {
            labels.push(l);
        }
    }
    let med = |group: &[&Run], key: &str| {
        let mut xs: Vec<f64> = group.iter().filter_map(|r| r.get(key)?.as_f64()).collect();
        xs.sort_by(f64::total_cmp);
        median(&xs)
    };
    let num = |x: Option<f64>| x.map_or_else(|| "–".into(), fmt_num);
    let pct = |x: Option<f64>| x.map_or_else(|| "–".into(), |x| format!("{:.0} %", x * 100.0));
    let mut rows = String::new();
    for l in &labels {
        let ours: Vec<&Run> = runs.iter().copied().filter(|r| text(r, "label") == *l).collect();
        let want = shape(ours[0]);
        let other: Vec<&Run> =
            runs.iter().copied().filter(|r| (t.is_other)(r) && (t.shape)(r) == want).collect();
        let Some(f) = other.first() else { continue };
        let key = "server_cpu_us_per_delivery";
        let (a, b) = (med(&ours, key), med(&other, key));
        let ratio = a.zip(b).filter(|(_, b)| *b > 0.0).map(|(a, b)| format!("{}×", fmt_num(a / b)));
        let _ = writeln!(
            rows,
            "| {l} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} |",
            text(f, "label"),
            ours.len(),
            other.len(),
            num(a),
            num(b),
            ratio.unwrap_or_else(|| "–".into()),
            num(med(&ours, "lat_p99_ms")),
            num(med(&other, "lat_p99_ms")),
            pct(med(&ours, "server_cpu_util")),
            pct(med(&other, "server_cpu_util")),
        );
    }
    if rows.is_empty() {
        return;
    }
    let (title, n) = (t.title, t.name);
    let _ = writeln!(out, "### Fan-out against {title}\n");
    let _ = writeln!(
        out,
        "| run | {n} run | n | µs CPU/delivery | {n} µs CPU/delivery | × {n} | p99 ms | {n} p99 ms \
         | server CPU | {n} server CPU |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    let _ = writeln!(out, "{rows}");
}

/// Every run in the JSON-lines `files`, in order.
fn read_runs(files: &[std::path::PathBuf]) -> anyhow::Result<Vec<Run>> {
    let mut runs: Vec<Run> = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f)?;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            match serde_json::from_str(line) {
                Ok(Value::Object(m)) => runs.push(m),
                _ => anyhow::bail!("{}:{}: not a JSON object", f.display(), i + 1),
            }
        }
    }
    Ok(runs)
}

/// One scenario kind's table: a row per label, in the order the labels first appear.
fn table(out: &mut String, title: &str, runs: &[&Run], cols: &[Col]) {
    let mut labels: Vec<String> = Vec::new();
    for r in runs {
        let l = text(r, "label");
        if !labels.contains(&l) {
            labels.push(l);
        }
    }
    let _ = writeln!(out, "### {title}\n");
    let _ = write!(out, "| run | n ");
    for c in cols {
        let _ = write!(out, "| {} ", c.0);
    }
    let _ = writeln!(out, "|");
    let _ = writeln!(out, "|---|---{}|", "|---".repeat(cols.len()));
    for l in &labels {
        let group: Vec<&&Run> = runs.iter().filter(|r| &text(r, "label") == l).collect();
        let _ = write!(out, "| {l} | {} ", group.len());
        for Col(_, key, show) in cols {
            let mut xs: Vec<f64> = group.iter().filter_map(|r| r.get(*key)?.as_f64()).collect();
            xs.sort_by(f64::total_cmp);
            let _ = write!(out, "| {} ", cell(*show, &xs));
        }
        let _ = writeln!(out, "|");
    }
    let _ = writeln!(out);
}

/// A cell from the sorted values of one column for one label.
fn cell(show: Show, xs: &[f64]) -> String {
    match (show, median(xs)) {
        (_, None) => "–".into(),
        (Show::Num, Some(m)) => fmt_num(m),
        (Show::Big, Some(m)) => fmt_big(m),
        (Show::Pct, Some(m)) => format!("{:.0} %", m * 100.0),
        (Show::Range, Some(m)) if xs.len() > 1 && xs[0] != xs[xs.len() - 1] => {
            let (lo, hi) = (xs[0], xs[xs.len() - 1]);
            if m.abs() >= 10_000.0 {
                format!("{} ({}–{})", fmt_big(m), fmt_big(lo), fmt_big(hi))
            } else {
                format!("{} ({}–{})", fmt_num(m), fmt_num(lo), fmt_num(hi))
            }
        }
        (Show::Range, Some(m)) if m.abs() >= 10_000.0 => fmt_big(m),
        (Show::Range, Some(m)) => fmt_num(m),
    }
}

fn text(r: &Run, key: &str) -> String {
    match r.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(fmt_big(1_234_567.0), "1,234,567");
        assert_eq!(fmt_big(123_456.0), "123,456");
        assert_eq!(fmt_num(0.0123), "0.012");
        assert_eq!(fmt_num(100.0), "100");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(median(&[1.0, 2.0, 10.0]), Some(2.0));
        assert_eq!(median(&[1.0, 3.0]), Some(2.0));
    }

    #[test]
    fn one_row_per_label_with_median_and_range() {
        // Expected lines as the pre-workspace binary rendered the same runs.
        let run = |label: &str, connect_s: f64| -> Run {
            let v = serde_json::json!({"scenario": "idle", "label": label, "clients": 10000,
                "connect_s": connect_s, "kib_per_conn": 14.0, "errors": 0});
            v.as_object().expect("an object").clone()
        };
        let md = tables(&[run("a", 1.5), run("b", 5.0), run("a", 3.0), run("a", 2.25)]);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "### Idle connections");
        assert!(lines[2].starts_with("| run | n | clients | rooms | connect+sync s |"));
        assert_eq!(lines[4], "| a | 3 | 10,000 | – | 2.25 (1.50–3) | – | – | – | – | 14 | 0 |");
        assert_eq!(lines[5], "| b | 1 | 10,000 | – | 5 | – | – | – | – | 14 | 0 |");
        assert_eq!(lines[6..], [""], "a blank line after each table");
    }

    #[test]
    fn fanout_against_the_floor_of_the_same_shape() {
        let run = |label: &str, clients: u64, us: f64| -> Run {
            let v = serde_json::json!({"scenario": "fanout", "label": label, "clients": clients,
                "rooms": 1, "rate": 20.0, "payload": 100, "lat_p99_ms": 2.0,
                "server_cpu_util": 0.5, "server_cpu_us_per_delivery": us});
            v.as_object().expect("an object").clone()
        };
        let md = tables(&[
            run("fanout N=10", 10, 9.0),
            run("floor N=10", 10, 3.0),
            run("fanout N=10", 10, 10.0),
            run("floor N=10", 10, 5.0),
            run("fanout N=10", 10, 11.0),
            run("fanout N=20", 20, 8.0),
        ]);
        let rows: Vec<&str> = md.lines().skip_while(|l| !l.contains("against the floor")).collect();
        assert_eq!(rows[4], "| fanout N=10 | floor N=10 | 3 / 2 | 10 | 4 | 2.50× | 2 | 2 | 50 % | 50 % |");
        assert_eq!(rows[5], "", "N=20 has no floor run: no row");
        assert!(md.contains("| floor N=10 | 2 |"), "floor runs are rows of the fan-out table too");
    }

    #[test]
    fn fanout_against_redis_of_the_same_shape() {
        let run = |scenario: &str, label: &str, clients: u64, us: f64| -> Run {
            let v = serde_json::json!({"scenario": scenario, "label": label, "clients": clients,
                "rooms": 1, "rate": 20.0, "payload": 100, "lat_p99_ms": 2.0,
                "server_cpu_util": 0.5, "server_cpu_us_per_delivery": us});
            v.as_object().expect("an object").clone()
        };
        let md = tables(&[
            run("fanout", "fanout N=10", 10, 9.0),
            run("fanout", "floor N=10", 10, 3.0),
            run("redis-fanout", "redis N=10", 10, 6.0),
            run("redis-fanout", "redis N=20", 20, 6.0),
        ]);
        let floor: Vec<&str> = md.lines().skip_while(|l| !l.contains("against the floor")).collect();
        assert_eq!(floor[4], "| fanout N=10 | floor N=10 | 1 / 1 | 9 | 3 | 3× | 2 | 2 | 50 % | 50 % |");
        assert_eq!(floor[5], "", "redis runs are not compared with the floor");
        let rows: Vec<&str> = md.lines().skip_while(|l| !l.contains("against Redis pub/sub")).collect();
        assert!(
            rows[2]
                .starts_with("| run | redis run | n | µs CPU/delivery | redis µs CPU/delivery | × redis |")
        );
        assert_eq!(rows[4], "| fanout N=10 | redis N=10 | 1 / 1 | 9 | 6 | 1.50× | 2 | 2 | 50 % | 50 % |");
        assert_eq!(rows[5], "", "redis N=20 has no ringsync run: no row");
        assert!(md.contains("| redis N=10 | 1 |"), "redis runs are rows of the fan-out table too");
    }
}
