//! Result lines and the table of medians.
//!
//! Each run prints one line `RESULT key=value key=value ...` with at least
//! `scenario`, `server` and `baseline`; the script appends the lines of all
//! rounds to one file and `loadgen summarize FILE` prints the table: the
//! median of every figure per scenario and server, and ratios to the
//! baseline server of the same scenario.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One run's figures, printed as a `RESULT` line.
#[derive(Clone, Debug, Default)]
pub struct Record {
    fields: Vec<(String, String)>,
}

impl Record {
    /// An empty record.
    pub fn new() -> Self {
        Record::default()
    }

    /// Adds a text field.
    pub fn text(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        let value: String = value.into();
        self.fields.push((key.to_owned(), value.replace(' ', "_")));
        self
    }

    /// Adds a number, with up to three decimals.
    pub fn num(&mut self, key: &str, value: f64) -> &mut Self {
        let value = if value.fract() == 0.0 && value.abs() < 1e15 {
            format!("{value:.0}")
        } else {
            format!("{value:.3}")
        };
        self.fields.push((key.to_owned(), value));
        self
    }

    /// The `RESULT ...` line.
    pub fn line(&self) -> String {
        let mut s = String::from("RESULT");
        for (k, v) in &self.fields {
            let _ = write!(s, " {k}={v}");
        }
        s
    }

    /// Parses a `RESULT ...` line.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.trim().strip_prefix("RESULT")?;
        let fields = rest
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Some(Record { fields })
    }

    /// A field's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A numeric field.
    pub fn number(&self, key: &str) -> Option<f64> {
        self.get(key)?.parse().ok()
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// Columns of the table: field, heading, whether higher is better (for
/// ratios), decimals.
const COLUMNS: &[(&str, &str, bool, usize)] = &[
    ("msgs_per_s", "msgs/s", true, 0),
    ("mib_per_s", "MiB/s", true, 1),
    ("p50_ms", "p50 ms", false, 2),
    ("p99_ms", "p99 ms", false, 2),
    ("max_ms", "max ms", false, 1),
    ("missing", "missing", false, 0),
    ("cpu_us_per_msg", "server CPU µs/msg", false, 2),
    ("user_us_per_msg", "of it user space µs/msg", false, 3),
    ("rss_kib_per_conn", "RSS KiB/conn", false, 2),
    ("held", "conns held", true, 0),
];

/// Which ratios to show per scenario kind: the figures the targets are about.
const RATIOS: &[&str] = &[
    "msgs_per_s",
    "mib_per_s",
    "p99_ms",
    "cpu_us_per_msg",
    "user_us_per_msg",
    "rss_kib_per_conn",
];

/// Builds the markdown table of medians from `RESULT` lines.
pub fn summarize(text: &str) -> String {
    // scenario -> server -> field -> values; plus each scenario's baseline.
    let mut data: BTreeMap<String, BTreeMap<String, BTreeMap<String, Vec<f64>>>> = BTreeMap::new();
    let mut baselines: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for rec in text.lines().filter_map(Record::parse) {
        let (Some(scenario), Some(server)) = (rec.get("scenario"), rec.get("server")) else {
            continue;
        };
        if !order.iter().any(|s| s == scenario) {
            order.push(scenario.to_owned());
        }
        if let Some(b) = rec.get("baseline") {
            baselines.insert(scenario.to_owned(), b.to_owned());
        }
        let fields = data
            .entry(scenario.to_owned())
            .or_default()
            .entry(server.to_owned())
            .or_default();
        fields.entry("runs".into()).or_default().push(1.0);
        for (key, ..) in COLUMNS {
            if let Some(v) = rec.number(key) {
                fields.entry((*key).to_owned()).or_default().push(v);
            }
        }
    }

    let mut out = String::new();
    for scenario in &order {
        let servers = &data[scenario];
        let present: Vec<_> = COLUMNS
            .iter()
            .filter(|(k, ..)| servers.values().any(|f| f.contains_key(*k)))
            .collect();
        let baseline = baselines.get(scenario);
        let _ = writeln!(out, "\n**{scenario}**\n");
        let mut head = String::from("| server | runs |");
        let mut rule = String::from("|---|---:|");
        for (_, title, ..) in &present {
            let _ = write!(head, " {title} |");
            rule.push_str("---:|");
        }
        head.push_str(" vs baseline |");
        rule.push_str("---|");
        let _ = writeln!(out, "{head}\n{rule}");
        let med = |server: &str, key: &str| -> Option<f64> {
            let mut v = servers.get(server)?.get(key)?.clone();
            median(&mut v)
        };
        // Baseline last, so the framework's rows come first.
        let mut names: Vec<&String> = servers.keys().collect();
        names.sort_by_key(|s| Some(*s) == baseline);
        for server in names {
            let runs = servers[server].get("runs").map_or(0, Vec::len);
            let mut row = format!("| {server} | {runs} |");
            for (key, _, _, decimals) in &present {
                match med(server, key) {
                    Some(v) => {
                        let _ = write!(row, " {} |", group(v, *decimals));
                    }
                    None => row.push_str(" - |"),
                }
            }
            let mut ratios = Vec::new();
            if let Some(base) = baseline.filter(|b| *b != server) {
                for key in RATIOS {
                    if let (Some(v), Some(b)) = (med(server, key), med(base, key))
                        && b > 0.0
                    {
                        let title = COLUMNS
                            .iter()
                            .find(|(k, ..)| k == key)
                            .map_or(*key, |c| c.1);
                        ratios.push(format!("{:.2}x {title}", v / b));
                    }
                }
            } else if baseline.is_some() {
                ratios.push("(baseline)".into());
            }
            let _ = writeln!(row, " {} |", ratios.join(", "));
            out.push_str(&row);
        }
    }
    out
}

/// `1234567.8` as `1,234,568` (or with `decimals` places, no grouping).
fn group(v: f64, decimals: usize) -> String {
    if decimals > 0 {
        return format!("{v:.decimals$}");
    }
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let mut r = Record::new();
        r.text("scenario", "ws echo").num("msgs_per_s", 1234.5);
        let parsed = Record::parse(&r.line()).unwrap();
        assert_eq!(parsed.get("scenario"), Some("ws_echo"));
        assert_eq!(parsed.number("msgs_per_s"), Some(1234.5));
    }

    #[test]
    fn medians_and_ratios() {
        let text = "\
RESULT scenario=e server=fast baseline=slow msgs_per_s=300
RESULT scenario=e server=slow baseline=slow msgs_per_s=100
RESULT scenario=e server=fast baseline=slow msgs_per_s=330
RESULT scenario=e server=slow baseline=slow msgs_per_s=110
RESULT scenario=e server=fast baseline=slow msgs_per_s=900
RESULT scenario=e server=slow baseline=slow msgs_per_s=90
";
        let table = summarize(text);
        assert!(
            table.contains("| fast | 3 | 330 | 3.30x msgs/s |"),
            "{table}"
        );
        assert!(table.contains("| slow | 3 | 100 | (baseline) |"), "{table}");
        assert_eq!(median(&mut [3.0, 1.0, 2.0, 10.0]), Some(2.5));
        assert_eq!(group(1234567.0, 0), "1,234,567");
    }
}
