//! Result lines and the summary tables.
//!
//! Each run prints one line `RESULT key=value key=value ...` with at least
//! `scenario`, `server`, `baseline` and `kind`; the script appends the lines
//! of all rounds to one file and `loadgen summarize FILE` prints, in
//! markdown:
//!
//! 1. the headline table: per scenario, the figure that matters for it
//!    (server CPU per message and msgs/s for echo, server CPU per delivery
//!    for broadcast, RSS per connection for idle), switchboard's median,
//!    the baseline's, and the ratio in words ("6.3x less CPU");
//! 2. when servers labelled `NAME@before` ran (`scripts/bench.sh --before
//!    DIR`), the before / after table: the same build's figures against
//!    the earlier one's, with the change in percent;
//! 3. every scenario's table: the median of every figure per server, and
//!    ratios to the baseline server of the same scenario.

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
    ("wire_bytes_per_msg", "wire B/msg", false, 0),
    ("deflate_conns", "deflate conns", true, 0),
    ("compressed_share", "compressed share", true, 2),
];

/// Which ratios to show per scenario kind: the figures the targets are about.
const RATIOS: &[&str] = &[
    "msgs_per_s",
    "mib_per_s",
    "p99_ms",
    "cpu_us_per_msg",
    "user_us_per_msg",
    "rss_kib_per_conn",
    "wire_bytes_per_msg",
];

/// The servers of one scenario: server -> field -> values of every run.
type Servers = BTreeMap<String, BTreeMap<String, Vec<f64>>>;

/// The `RESULT` lines of one results file, grouped by scenario.
#[derive(Default)]
struct Results {
    /// Scenarios in the order of their first line.
    order: Vec<String>,
    servers: BTreeMap<String, Servers>,
    /// Each scenario's baseline server and kind (`echo`, `broadcast`, `idle`).
    baselines: BTreeMap<String, String>,
    /// Each scenario's framework server, where the lines name it.
    frameworks: BTreeMap<String, String>,
    kinds: BTreeMap<String, String>,
}

impl Results {
    fn parse(text: &str) -> Self {
        let mut results = Results::default();
        for rec in text.lines().filter_map(Record::parse) {
            let (Some(scenario), Some(server)) = (rec.get("scenario"), rec.get("server")) else {
                continue;
            };
            if !results.order.iter().any(|s| s == scenario) {
                results.order.push(scenario.to_owned());
            }
            if let Some(b) = rec.get("baseline") {
                results.baselines.insert(scenario.to_owned(), b.to_owned());
            }
            if let Some(f) = rec.get("framework") {
                results.frameworks.insert(scenario.to_owned(), f.to_owned());
            }
            if let Some(k) = rec.get("kind") {
                results.kinds.insert(scenario.to_owned(), k.to_owned());
            }
            let fields = results
                .servers
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
        results
    }

    /// The median of `key` over the runs of `server` in `scenario`.
    fn median(&self, scenario: &str, server: &str, key: &str) -> Option<f64> {
        let mut v = self.servers.get(scenario)?.get(server)?.get(key)?.clone();
        median(&mut v)
    }

    /// The scenario's baseline, unless it is the framework's own server
    /// (`ws-idle-max` has none).
    fn baseline(&self, scenario: &str) -> Option<&str> {
        let baseline = self.baselines.get(scenario)?;
        (Some(baseline.as_str()) != self.framework(scenario)).then_some(baseline)
    }

    /// The scenario's switchboard server of this build: the one the lines
    /// name as `framework=` if it ran, else the first named `switchboard*`
    /// (else the first that is not the baseline), never an `@before` one.
    fn framework(&self, scenario: &str) -> Option<&str> {
        let servers = self.servers.get(scenario)?;
        if let Some(named) = self.frameworks.get(scenario)
            && !named.ends_with(BEFORE)
            && servers.contains_key(named)
        {
            return Some(named);
        }
        let names: Vec<&str> = servers
            .keys()
            .map(String::as_str)
            .filter(|s| !s.ends_with(BEFORE))
            .collect();
        let baseline = self.baselines.get(scenario).map(String::as_str);
        names
            .iter()
            .find(|s| s.starts_with("switchboard"))
            .or_else(|| names.iter().find(|s| Some(**s) != baseline))
            .copied()
    }
}

/// The label suffix of the servers of `scripts/bench.sh --before DIR`.
pub const BEFORE: &str = "@before";

/// A figure of the summary tables: its field, its name, whether higher is
/// better, its decimals, and the noun its ratio speaks of.
#[derive(Clone, Copy)]
struct Figure {
    key: &'static str,
    title: &'static str,
    higher_is_better: bool,
    decimals: usize,
    noun: &'static str,
}

const MSGS: Figure = Figure {
    key: "msgs_per_s",
    title: "msgs/s",
    higher_is_better: true,
    decimals: 0,
    noun: "msgs/s",
};
const CPU_PER_MSG: Figure = Figure {
    key: "cpu_us_per_msg",
    title: "server CPU µs/msg",
    higher_is_better: false,
    decimals: 2,
    noun: "CPU",
};
const CPU_PER_DELIVERY: Figure = Figure {
    title: "server CPU µs/delivery",
    ..CPU_PER_MSG
};
const P99: Figure = Figure {
    key: "p99_ms",
    title: "p99 ms",
    higher_is_better: false,
    decimals: 2,
    noun: "p99",
};
const RSS: Figure = Figure {
    key: "rss_kib_per_conn",
    title: "RSS KiB/conn",
    higher_is_better: false,
    decimals: 2,
    noun: "memory",
};
const HELD: Figure = Figure {
    key: "held",
    title: "conns held",
    higher_is_better: true,
    decimals: 0,
    noun: "connections",
};

/// The figures of a scenario's rows in the headline table, by its kind.
fn headline_figures(kind: &str, has_baseline: bool) -> &'static [Figure] {
    match (kind, has_baseline) {
        ("echo", _) => &[CPU_PER_MSG, MSGS],
        ("broadcast", _) => &[CPU_PER_DELIVERY],
        ("idle", true) => &[RSS],
        ("idle", false) => &[RSS, HELD],
        _ => &[],
    }
}

/// The rows of the before / after table for a scenario: each figure,
/// alone or as its ratio to the scenario's baseline.
fn before_after_figures(scenario: &str, kind: &str) -> &'static [(Figure, bool)] {
    match (scenario, kind) {
        ("ws-echo-32B", _) => &[(CPU_PER_MSG, false), (CPU_PER_MSG, true)],
        ("tcp-echo-32B", _) => &[(MSGS, false), (MSGS, true)],
        ("ws-idle-10k", _) => &[(RSS, false)],
        (_, "broadcast") => &[(CPU_PER_DELIVERY, false), (P99, false)],
        _ => &[],
    }
}

/// Builds the summary from `RESULT` lines, in markdown: the headline table
/// (switchboard against each scenario's baseline), the before / after
/// table when `@before` servers ran, then every scenario's medians.
pub fn summarize(text: &str) -> String {
    let results = Results::parse(text);
    let mut out = headline(&results);
    out.push_str(&before_after(&results));
    out.push_str(&per_scenario(&results));
    out
}

/// One row per scenario and figure: switchboard's median, the baseline's,
/// and the ratio in words.
fn headline(results: &Results) -> String {
    let mut out = String::from(
        "\n**switchboard against the baselines** (medians)\n\n\
         | scenario | figure | switchboard | baseline | ratio |\n\
         |---|---|---:|---:|---|\n",
    );
    for scenario in &results.order {
        let Some(framework) = results.framework(scenario) else {
            continue;
        };
        let baseline = results.baseline(scenario);
        let kind = results.kinds.get(scenario).map_or("", String::as_str);
        for figure in headline_figures(kind, baseline.is_some()) {
            let Some(value) = results.median(scenario, framework, figure.key) else {
                continue;
            };
            let base = baseline.and_then(|b| Some((b, results.median(scenario, b, figure.key)?)));
            let (base_cell, ratio) = match base {
                Some((name, b)) => (
                    format!("{} ({name})", group(b, figure.decimals)),
                    ratio_words(value, b, figure),
                ),
                None => ("–".to_owned(), "–".to_owned()),
            };
            let _ = writeln!(
                out,
                "| {scenario} | {} | {} | {base_cell} | {ratio} |",
                figure.title,
                group(value, figure.decimals)
            );
        }
    }
    out
}

/// switchboard against a baseline in words: "6.3x less CPU" from 1.1x in
/// its favour, "3 % fewer msgs/s" closer than that or the other way.
fn ratio_words(value: f64, base: f64, figure: &Figure) -> String {
    if !(value > 0.0 && base > 0.0) {
        return "–".to_owned();
    }
    let (more, less) = if figure.noun == "msgs/s" || figure.noun == "connections" {
        ("more", "fewer")
    } else {
        ("more", "less")
    };
    let favour = if figure.higher_is_better {
        value / base
    } else {
        base / value
    };
    if favour >= 1.1 {
        let word = if figure.higher_is_better { more } else { less };
        let factor = if favour >= 10.0 {
            format!("{favour:.0}")
        } else {
            format!("{favour:.1}")
        };
        return format!("{factor}x {word} {}", figure.noun);
    }
    let pct = (value / base - 1.0) * 100.0;
    if pct.abs() < 0.5 {
        format!("the same {}", figure.noun)
    } else {
        let word = if pct > 0.0 { more } else { less };
        format!("{:.0} % {word} {}", pct.abs(), figure.noun)
    }
}

/// switchboard of this build against its `@before` twin: the figures of
/// [`before_after_figures`], with the change in percent.
fn before_after(results: &Results) -> String {
    let mut rows = String::new();
    for scenario in &results.order {
        let Some(after) = results.framework(scenario) else {
            continue;
        };
        let before = format!("{after}{BEFORE}");
        let baseline = results.baseline(scenario);
        let kind = results.kinds.get(scenario).map_or("", String::as_str);
        for (figure, vs_baseline) in before_after_figures(scenario, kind) {
            let value = |server: &str| {
                let v = results.median(scenario, server, figure.key)?;
                if !vs_baseline {
                    return Some(v);
                }
                let b = results.median(scenario, baseline?, figure.key)?;
                (b > 0.0).then(|| v / b)
            };
            let (Some(b), Some(a)) = (value(&before), value(after)) else {
                continue;
            };
            let (title, b_cell, a_cell) = if *vs_baseline {
                (
                    format!("{} vs {}", figure.title, baseline.unwrap_or("baseline")),
                    format!("{b:.3}x"),
                    format!("{a:.3}x"),
                )
            } else {
                (
                    figure.title.to_owned(),
                    group(b, figure.decimals),
                    group(a, figure.decimals),
                )
            };
            let _ = writeln!(
                rows,
                "| {scenario} | {title} | {b_cell} | {a_cell} | {} |",
                change(b, a, figure.higher_is_better)
            );
        }
    }
    if rows.is_empty() {
        return rows;
    }
    format!(
        "\n**before / after** (before: the `{BEFORE}` servers; medians of the same rounds)\n\n\
         | scenario | figure | before | after | change |\n\
         |---|---|---:|---:|---:|\n{rows}"
    )
}

/// `after` against `before` in percent, with whether that is better from
/// 1 % on (less is within any run's spread).
fn change(before: f64, after: f64, higher_is_better: bool) -> String {
    if before == 0.0 {
        return "–".to_owned();
    }
    let pct = (after / before - 1.0) * 100.0;
    let text = format!("{pct:+.1} %");
    if text == "+0.0 %" || text == "-0.0 %" {
        return "0.0 %".to_owned();
    }
    if pct.abs() < 1.0 {
        return text;
    }
    let better = (pct > 0.0) == higher_is_better;
    format!("{text} ({})", if better { "better" } else { "worse" })
}

/// Every scenario's table: the median of every figure per server, and
/// ratios to the baseline.
fn per_scenario(results: &Results) -> String {
    let mut out = String::new();
    for scenario in &results.order {
        let servers = &results.servers[scenario];
        let present: Vec<_> = COLUMNS
            .iter()
            .filter(|(k, ..)| servers.values().any(|f| f.contains_key(*k)))
            .collect();
        let baseline = results.baselines.get(scenario);
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
        let med = |server: &str, key: &str| results.median(scenario, server, key);
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

    /// A canned results file: two rounds of ws-echo-32B, one of a few other
    /// scenarios, each with a switchboard server of an earlier build.
    const CANNED: &str = include_str!("../tests/data/results-before-after.txt");

    #[test]
    fn headline_table() {
        let summary = summarize(CANNED);
        let headline = summary
            .split("**before / after**")
            .next()
            .unwrap_or_default();
        for row in [
            "| scenario | figure | switchboard | baseline | ratio |",
            "| ws-echo-32B | server CPU µs/msg | 0.48 | 3.10 (naive-ws-echo) | 6.5x less CPU |",
            "| ws-echo-32B | msgs/s | 2,100,000 | 330,000 (naive-ws-echo) | 6.4x more msgs/s |",
            "| tcp-echo-32B | server CPU µs/msg | 0.36 | 0.35 (plain-tcp-echo) | 3 % more CPU |",
            "| tcp-echo-32B | msgs/s | 2,700,000 | 2,800,000 (plain-tcp-echo) | 4 % fewer msgs/s |",
            "| ws-bcast-1k | server CPU µs/delivery | 2.80 | 10.00 (naive-ws-chat) | 3.6x less CPU |",
            "| ws-idle-10k | RSS KiB/conn | 2.56 | 134.01 (naive-ws-echo) | 52x less memory |",
            "| ws-idle-max | conns held | 19,988 | – | – |",
        ] {
            assert!(headline.contains(row), "{row} missing from:\n{summary}");
        }
        // The earlier build's servers are in the second table, not here.
        assert!(!headline.contains("@before"), "{summary}");
        // The headline comes first, the per-scenario tables after both.
        let first_scenario = summary.find("**ws-echo-32B**").unwrap();
        assert!(summary.find("**before / after**").unwrap() < first_scenario);
    }

    #[test]
    fn before_after_table() {
        let summary = summarize(CANNED);
        let table = summary
            .split("**before / after**")
            .nth(1)
            .and_then(|rest| rest.split("**ws-echo-32B**").next())
            .unwrap_or_else(|| panic!("no before / after table in:\n{summary}"));
        let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(
            rows,
            [
                "| scenario | figure | before | after | change |",
                "| ws-echo-32B | server CPU µs/msg | 0.53 | 0.48 | -9.4 % (better) |",
                "| ws-echo-32B | server CPU µs/msg vs naive-ws-echo | 0.171x | 0.155x | -9.4 % (better) |",
                "| tcp-echo-32B | msgs/s | 2,500,000 | 2,700,000 | +8.0 % (better) |",
                "| tcp-echo-32B | msgs/s vs plain-tcp-echo | 0.893x | 0.964x | +8.0 % (better) |",
                "| ws-bcast-1k | server CPU µs/delivery | 3.20 | 2.80 | -12.5 % (better) |",
                "| ws-bcast-1k | p99 ms | 3.40 | 3.20 | -5.9 % (better) |",
                "| ws-idle-10k | RSS KiB/conn | 2.54 | 2.56 | +0.8 % |",
            ],
            "{summary}"
        );
        // The per-scenario tables keep both builds' rows.
        assert!(summary.contains("| switchboard-tcp-echo@before | 1 | 2,500,000 |"));
    }

    #[test]
    fn no_before_after_table_without_before_servers() {
        let current: String = CANNED
            .lines()
            .filter(|l| !l.contains(BEFORE))
            .map(|l| format!("{l}\n"))
            .collect();
        let summary = summarize(&current);
        assert!(!summary.contains("before / after"), "{summary}");
        assert!(summary.contains("| ws-idle-10k | RSS KiB/conn | 2.56 |"));
    }

    #[test]
    fn the_named_framework_leads_the_headline() {
        let text = "\
RESULT scenario=z kind=broadcast server=switchboard-a framework=switchboard-b-deflate baseline=node cpu_us_per_msg=3 wire_bytes_per_msg=1028
RESULT scenario=z kind=broadcast server=switchboard-b-deflate framework=switchboard-b-deflate baseline=node cpu_us_per_msg=3.5 wire_bytes_per_msg=790
RESULT scenario=z kind=broadcast server=node framework=switchboard-b-deflate baseline=node cpu_us_per_msg=35 wire_bytes_per_msg=576
";
        let summary = summarize(text);
        assert!(
            summary.contains("| z | server CPU µs/delivery | 3.50 | 35.00 (node) | 10x less CPU |"),
            "{summary}"
        );
        assert!(
            summary.contains("| switchboard-b-deflate | 1 | 3.50 | 790 |"),
            "{summary}"
        );
    }

    #[test]
    fn ratios_in_words() {
        assert_eq!(ratio_words(0.47, 2.98, &CPU_PER_MSG), "6.3x less CPU");
        assert_eq!(ratio_words(2.0, 1.0, &MSGS), "2.0x more msgs/s");
        assert_eq!(ratio_words(100.0, 101.0, &MSGS), "1 % fewer msgs/s");
        assert_eq!(ratio_words(1.0, 1.002, &CPU_PER_MSG), "the same CPU");
        assert_eq!(ratio_words(1.0, 0.0, &CPU_PER_MSG), "–");
        assert_eq!(change(2.0, 2.0, true), "0.0 %");
        assert_eq!(change(2.0, 2.1, false), "+5.0 % (worse)");
        assert_eq!(change(200.0, 199.0, true), "-0.5 %");
    }
}
