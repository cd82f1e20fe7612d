//! Timeline charts of a failover (SVG, drawn with plotters): requests per second
//! per WAF node in 100 ms bins, by the time each request was sent, with failed
//! requests in red and the fault and its detection marked. The failover benchmark
//! draws xdplb and HAProxy side by side; the demo draws its own run.
#![expect(
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    reason = "bin indices and counts are small and non-negative (times before the range are skipped)"
)]

use std::{collections::BTreeMap, path::Path, time::Instant};

use anyhow::{Result, anyhow};
use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use crate::traffic::Record;

/// Width of a bin.
pub const BIN_SECS: f64 = 0.1;

/// A vertical line: a fault (dashed black) or its detection (purple).
#[derive(Clone, Debug)]
pub struct Marker {
    /// Seconds on the panel's x axis.
    pub at: f64,
    pub label: String,
    pub detection: bool,
}

/// One chart: request rates per series over `x` seconds, with markers.
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    /// x range in seconds.
    pub x: (f64, f64),
    /// Series name (`waf1`.., `failed`) -> requests/s per bin, the first bin at `x.0`.
    pub series: BTreeMap<String, Vec<f64>>,
    pub markers: Vec<Marker>,
}

/// Requests of `records` sent in `[origin + x.0, origin + x.1)`, in 100 ms bins
/// per answering node, failures as `failed`, as requests per second.
#[must_use]
pub fn bin(records: &[Record], origin: Instant, x: (f64, f64)) -> BTreeMap<String, Vec<f64>> {
    let bins = ((x.1 - x.0) / BIN_SECS).ceil().max(1.0) as usize;
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in records {
        let t = if r.start >= origin {
            r.start.duration_since(origin).as_secs_f64()
        } else {
            -origin.duration_since(r.start).as_secs_f64()
        };
        if t < x.0 || t >= x.1 {
            continue;
        }
        let i = (((t - x.0) / BIN_SECS) as usize).min(bins - 1);
        let name = r.outcome.clone().unwrap_or_else(|_| "failed".to_owned());
        out.entry(name).or_insert_with(|| vec![0.0; bins])[i] += 1.0 / BIN_SECS;
    }
    out
}

fn color(name: &str) -> RGBColor {
    match name {
        "failed" => RGBColor(0xd6, 0x27, 0x28),
        "waf1" => RGBColor(0x1f, 0x77, 0xb4),
        "waf2" => RGBColor(0xff, 0x7f, 0x0e),
        "waf3" => RGBColor(0x2c, 0xa0, 0x2c),
        _ => RGBColor(0x7f, 0x7f, 0x7f),
    }
}

/// Draws `panels` in a grid of `cols` columns under `title` into an SVG file.
pub fn write_svg(path: &Path, title: &str, panels: &[Panel], cols: usize) -> Result<()> {
    let cols = cols.max(1);
    let rows = panels.len().div_ceil(cols).max(1);
    let size = (460 * cols as u32, 60 + 300 * rows as u32);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(|e| anyhow!("{e}"))?;
    let y_max = panels
        .iter()
        .flat_map(|p| p.series.values().flatten())
        .fold(0.0_f64, |m, &v| m.max(v))
        .max(1.0)
        // Headroom above the data for the legend and the marker labels.
        * 1.6;
    for (area, panel) in root.split_evenly((rows, cols)).iter().zip(panels) {
        draw_panel(area, panel, y_max).map_err(|e| anyhow!("{}: {e}", panel.title))?;
    }
    root.present().map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    p: &Panel,
    y_max: f64,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 14))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(44)
        .build_cartesian_2d(p.x.0..p.x.1, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds after the fault")
        .y_desc("requests/s")
        .label_style(("sans-serif", 11))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    // Failures last, on top of the nodes' lines.
    let mut series: Vec<(&String, &Vec<f64>)> = p.series.iter().collect();
    series.sort_by_key(|(name, _)| *name == "failed");
    for (name, values) in series {
        let c = color(name);
        let width = if name == "failed" { 2 } else { 1 };
        // A step line: each bin's rate held over the bin.
        let points = values.iter().enumerate().flat_map(|(i, &v)| {
            let x0 = p.x.0 + i as f64 * BIN_SECS;
            [(x0, v), (x0 + BIN_SECS, v)]
        });
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(width)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
    }
    for m in &p.markers {
        let c = if m.detection { RGBColor(0x94, 0x67, 0xbd) } else { BLACK };
        if m.detection {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(m.at, 0.0), (m.at, y_max)],
                c.stroke_width(2),
            )))?;
        } else {
            // Dashed: short segments.
            let dashes = (0..40).map(|i| {
                let (a, b) = (y_max * f64::from(i) / 40.0, y_max * (f64::from(i) + 0.5) / 40.0);
                PathElement::new(vec![(m.at, a), (m.at, b)], c.stroke_width(2))
            });
            chart.draw_series(dashes)?;
        }
        let y = if m.detection { y_max * 0.86 } else { y_max * 0.94 };
        // Labels right of their line, or left of it near the right edge.
        let late = m.at > p.x.0 + 0.6 * (p.x.1 - p.x.0);
        let (text, h) = if late {
            (format!("{} ", m.label), HPos::Right)
        } else {
            (format!(" {}", m.label), HPos::Left)
        };
        chart.draw_series(std::iter::once(Text::new(
            text,
            (m.at, y),
            ("sans-serif", 11).into_font().color(&c).pos(Pos::new(h, VPos::Top)),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 11))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rec(origin: Instant, ms: i64, outcome: Result<&str, crate::traffic::Failure>) -> Record {
        let start = if ms >= 0 {
            origin + Duration::from_millis(ms.unsigned_abs())
        } else {
            origin.checked_sub(Duration::from_millis(ms.unsigned_abs())).expect("past")
        };
        Record { start, end: start, outcome: outcome.map(str::to_owned), connect: None }
    }

    #[test]
    fn requests_are_binned_by_send_time_per_node_as_rates() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let records = vec![
            rec(t0, -250, Ok("waf1")),
            rec(t0, -210, Ok("waf1")),
            rec(t0, 20, Ok("waf2")),
            rec(t0, 130, Err(crate::traffic::Failure::Refused)),
            rec(t0, 900, Ok("waf1")), // outside the range
        ];
        let b = bin(&records, t0, (-0.3, 0.2));
        assert_eq!(b["waf1"], [20.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(b["waf2"], [0.0, 0.0, 0.0, 10.0, 0.0]);
        assert_eq!(b["failed"], [0.0, 0.0, 0.0, 0.0, 10.0]);
    }

    #[test]
    fn the_svg_names_every_series_and_marker() {
        let path = std::env::temp_dir().join(format!("xdplb-chart-{}.svg", std::process::id()));
        let panel = Panel {
            title: "xdplb: nginx stopped".into(),
            x: (-0.5, 1.0),
            series: [("waf1".to_owned(), vec![100.0; 15]), ("failed".to_owned(), vec![0.0; 15])]
                .into(),
            markers: vec![
                Marker { at: 0.0, label: "fault".into(), detection: false },
                Marker { at: 0.4, label: "detected 400 ms".into(), detection: true },
            ],
        };
        write_svg(&path, "failover", &[panel.clone(), panel], 2).expect("svg");
        let svg = std::fs::read_to_string(&path).expect("written");
        for text in [
            "failover",
            "xdplb: nginx stopped",
            "waf1",
            "failed",
            "fault",
            "detected 400 ms",
            "requests/s",
        ] {
            assert!(svg.contains(text), "no {text:?} in the SVG");
        }
        let _ = std::fs::remove_file(path);
    }
}
