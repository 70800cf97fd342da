//! `socks4-chart RESULTS.jsonl OUT.svg`: draws `bench/compare.sh`'s results (the `socks4-load
//! --json` lines it keeps) as one SVG of three bar charts: handshakes/s, bulk MiB/s and KiB per
//! held connection, the median of each server's runs, servers in the order they first appear.

use std::collections::BTreeMap;
use std::process::ExitCode;

use plotters::prelude::*;
use serde_json::Value;

const USAGE: &str = "usage: socks4-chart RESULTS.jsonl OUT.svg";

/// One panel: the load mode, the field charted, its title.
const PANELS: [(&str, &str, &str); 3] = [
    ("rate", "handshakes_per_sec", "handshakes/s (higher is better)"),
    ("bulk", "mib_per_sec", "bulk MiB/s (higher is better)"),
    ("hold", "kib_per_conn", "KiB per held connection (lower is better)"),
];

/// The servers in first-seen order, and the values of each (label, mode, field) over good runs.
struct Runs {
    labels: Vec<String>,
    values: BTreeMap<(String, String, String), Vec<f64>>,
}

fn read_runs(text: &str) -> Result<Runs, String> {
    let mut runs = Runs { labels: Vec::new(), values: BTreeMap::new() };
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let run: Value = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        let (Some(label), Some(mode)) = (run["label"].as_str(), run["mode"].as_str()) else { continue };
        if !runs.labels.iter().any(|l| l == label) {
            runs.labels.push(label.to_owned());
        }
        if run["failed"].as_bool() == Some(true) {
            continue;
        }
        for (panel_mode, field, _) in PANELS {
            if let (true, Some(v)) = (mode == panel_mode, run[field].as_f64()) {
                runs.values.entry((label.to_owned(), mode.to_owned(), field.to_owned())).or_default().push(v);
            }
        }
    }
    Ok(runs)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// A bar's colour: ours blue, Dante orange, the direct ceiling grey.
fn colour(label: &str) -> RGBColor {
    match label {
        "dante" => RGBColor(230, 126, 34),
        "direct" => RGBColor(150, 150, 150),
        _ => RGBColor(52, 101, 164),
    }
}

fn draw(runs: &Runs, out: &str) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(out, (1080, 380)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = runs.labels.len();
    for ((mode, field, title), area) in PANELS.into_iter().zip(root.split_evenly((1, 3))) {
        let bars: Vec<(usize, &str, f64)> = (runs.labels.iter().enumerate())
            .filter_map(|(i, l)| {
                let v = runs.values.get(&(l.clone(), mode.to_owned(), field.to_owned()))?;
                Some((i, l.as_str(), median(v.clone())?))
            })
            .collect();
        let top = bars.iter().map(|b| b.2).fold(0.0, f64::max).max(1.0) * 1.15;
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(56)
            .build_cartesian_2d((0..n).into_segmented(), 0.0..top)?;
        let names = runs.labels.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        chart.draw_series(bars.iter().map(|&(i, label, v)| {
            let mut bar = Rectangle::new(
                [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), v)],
                colour(label).filled(),
            );
            bar.set_margin(0, 0, 6, 6);
            bar
        }))?;
        chart.draw_series(bars.iter().map(|&(i, _, v)| {
            let digits = if v < 10.0 { 1 } else { 0 };
            Text::new(format!("{v:.digits$}"), (SegmentValue::CenterOf(i), v + top * 0.02), ("sans-serif", 12))
        }))?;
    }
    root.present()?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, out] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let runs = match std::fs::read_to_string(input).map_err(|e| e.to_string()).and_then(|t| read_runs(&t)) {
        Ok(runs) if !runs.labels.is_empty() => runs,
        Ok(_) => {
            eprintln!("socks4-chart: no runs in {input}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("socks4-chart: {input}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match draw(&runs, out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("socks4-chart: drawing {out}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_good_runs_in_first_seen_order() {
        let text = r#"{"mode":"rate","label":"tokio","handshakes_per_sec":3.0}
{"mode":"rate","label":"dante","handshakes_per_sec":1.0}
{"mode":"rate","label":"tokio","handshakes_per_sec":5.0}
{"mode":"rate","label":"tokio","failed":true,"errors":1}
{"mode":"bulk","label":"tokio","mib_per_sec":7.0}"#;
        let runs = read_runs(text).unwrap();
        assert_eq!(runs.labels, ["tokio", "dante"]);
        let key = |l: &str, m: &str, f: &str| (l.to_owned(), m.to_owned(), f.to_owned());
        assert_eq!(median(runs.values[&key("tokio", "rate", "handshakes_per_sec")].clone()), Some(4.0));
        assert_eq!(runs.values[&key("tokio", "bulk", "mib_per_sec")], [7.0]);
        assert!(read_runs("{not json").is_err());
        assert_eq!(median(vec![]), None);
    }
}
