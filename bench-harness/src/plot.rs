//! `loss-bench plot`: throughput against classes, one panel per operation, one line per backend,
//! log axes, with the bandwidth ceilings the run measured drawn in.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::error::Error;
use crate::schema::{Op, RunReport};

/// The batch size plotted when none is asked for: the one measured at the most class counts
/// (the larger batch on a tie).
pub fn default_batch(report: &RunReport) -> Option<usize> {
    let mut counts: BTreeMap<usize, std::collections::BTreeSet<usize>> = BTreeMap::new();
    for r in &report.results {
        counts.entry(r.batch).or_default().insert(r.classes);
    }
    counts
        .into_iter()
        .max_by_key(|(b, c)| (c.len(), *b))
        .map(|(b, _)| b)
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Draws the SVG.
pub fn plot(report: &RunReport, batch: Option<usize>, out: &Path) -> Result<(), Error> {
    draw(report, batch, out).map_err(Error::Plot)
}

fn draw(report: &RunReport, batch: Option<usize>, out: &Path) -> Result<(), String> {
    let batch = batch
        .or_else(|| default_batch(report))
        .ok_or("the result file has no results")?;
    let rows: Vec<_> = report
        .results
        .iter()
        // f32 rows only: the ceilings drawn are f32's bytes per logit (the label keeps any
        // other type's rows apart, but their ceiling would differ).
        .filter(|r| r.batch == batch && r.agrees && r.dtype == "f32")
        .collect();
    if rows.is_empty() {
        return Err(format!("no agreeing results with batch {batch}"));
    }
    // Every series gets the same colour in every panel.
    let mut series_names: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {}T", r.label(), r.threads))
        .collect();
    series_names.sort();
    series_names.dedup();
    let colour = |name: &str| {
        PALETTE[series_names.iter().position(|n| n == name).unwrap_or(0) % PALETTE.len()]
    };

    let xs: Vec<f64> = rows.iter().map(|r| r.classes as f64).collect();
    let x_min = xs.iter().copied().fold(f64::INFINITY, f64::min) / 1.5;
    let x_max = xs.iter().copied().fold(0.0, f64::max) * 1.5;
    let bw_max = report
        .machine
        .bandwidth
        .iter()
        .map(|b| b.read_gbps.max(b.copy_gbps))
        .fold(0.0, f64::max);
    let y_max = rows
        .iter()
        .map(|r| r.elements_per_second)
        .fold(bw_max * 1e9 / 4.0, f64::max)
        * 12.0; // head room above the data for the legend
    let y_min = rows
        .iter()
        .map(|r| r.elements_per_second)
        .fold(f64::INFINITY, f64::min)
        / 2.0;

    let root = SVGBackend::new(out, (1500, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let title = format!(
        "cross-entropy throughput, batch {batch} — {} ({} {}), {}",
        report.machine.cpu,
        if report.config.weighted {
            "weighted"
        } else {
            "unweighted"
        },
        report.config.reduction,
        if report.config.quick {
            "quick timings"
        } else {
            "full timings"
        }
    );
    let (title_area, body) = root.split_vertically(40);
    title_area
        .titled(&title, ("sans-serif", 20))
        .map_err(|e| e.to_string())?;
    let panels = body.split_evenly((1, 3));
    for (panel, op) in panels.iter().zip(Op::ALL) {
        let mut chart = ChartBuilder::on(panel)
            .caption(op.as_str(), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d((x_min..x_max).log_scale(), (y_min..y_max).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("classes C")
            .y_desc("logits per second")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .draw()
            .map_err(|e| e.to_string())?;
        // The ceilings: bandwidth / bytes per logit, for each measured thread count.
        for (i, b) in report.machine.bandwidth.iter().enumerate() {
            let gbps = match op {
                Op::Forward => b.read_gbps,
                _ => b.copy_gbps,
            };
            let ceiling = gbps * 1e9 / op.bytes_per_element(loss_core::DType::F32);
            let style = ShapeStyle::from(&BLACK.mix(0.35 + 0.3 * i as f64)).stroke_width(1);
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(x_min, ceiling), (x_max, ceiling)],
                    6,
                    4,
                    style,
                ))
                .map_err(|e| e.to_string())?
                .label(format!(
                    "memory ceiling {}T ({:.1} GB/s {})",
                    b.threads,
                    gbps,
                    if op == Op::Forward { "read" } else { "copy" }
                ))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        }
        for name in &series_names {
            let mut pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.op == op && format!("{} {}T", r.label(), r.threads) == *name)
                .map(|r| (r.classes as f64, r.elements_per_second))
                .collect();
            if pts.is_empty() {
                continue;
            }
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let c = colour(name);
            let style = ShapeStyle::from(&c).stroke_width(2);
            chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}
