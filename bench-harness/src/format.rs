//! Rendering a [`RunReport`]: aligned terminal table, Markdown, CSV, JSON.

use std::fmt::Write as _;

use crate::schema::{CellResult, RunReport};

/// Output formats of `run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal.
    Table,
    /// The documented JSON schema.
    Json,
    /// One row per result.
    Csv,
    /// GitHub-flavoured Markdown tables.
    Markdown,
}

const HEADERS: [&str; 13] = [
    "backend",
    "op",
    "batch",
    "classes",
    "thr",
    "G elem/s",
    "GB/s",
    "of bw",
    "median",
    "spread",
    "max rel err",
    "agrees",
    "cache",
];

fn human_time(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

fn row(r: &CellResult) -> [String; 13] {
    [
        r.label(),
        r.op.to_string(),
        r.batch.to_string(),
        r.classes.to_string(),
        r.threads.to_string(),
        format!("{:.3}", r.elements_per_second / 1e9),
        format!("{:.1}", r.bytes_per_second / 1e9),
        format!("{:.0}%", r.bandwidth_fraction * 100.0),
        human_time(r.median_ns),
        format!("±{:.0}%", r.spread * 50.0),
        format!("{:.1e}", r.max_rel_error),
        if r.agrees { "yes".into() } else { "NO".into() },
        if r.in_cache { "fits".into() } else { "".into() },
    ]
}

fn sorted(report: &RunReport) -> Vec<&CellResult> {
    let mut rows: Vec<&CellResult> = report.results.iter().collect();
    rows.sort_by(|a, b| {
        (a.batch, a.classes, a.op, a.label(), a.threads).cmp(&(
            b.batch,
            b.classes,
            b.op,
            b.label(),
            b.threads,
        ))
    });
    rows
}

fn header(report: &RunReport) -> String {
    let m = &report.machine;
    let mut s = format!(
        "machine: {} ({} cores, LLC {} MiB); bandwidth measured in this run:",
        m.cpu,
        m.cores,
        m.llc_bytes >> 20
    );
    for b in &m.bandwidth {
        let _ = write!(
            s,
            " {}T read {:.1} GB/s, copy {:.1} GB/s;",
            b.threads, b.read_gbps, b.copy_gbps
        );
    }
    let c = &report.config;
    let _ = write!(
        s,
        "\ninputs: {} {}, seed {:#x}{}",
        if c.weighted { "weighted" } else { "unweighted" },
        c.reduction,
        c.seed,
        if c.quick { ", --quick timings" } else { "" }
    );
    s
}

/// The aligned terminal table, the summary and the skipped list.
pub fn table(report: &RunReport) -> String {
    let rows: Vec<[String; 13]> = sorted(report).into_iter().map(row).collect();
    let mut widths = HEADERS.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = header(report);
    out.push_str("\n\n");
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            let pad = w - c.chars().count();
            if i < 2 {
                let _ = write!(s, "{c}{}  ", " ".repeat(pad));
            } else {
                let _ = write!(s, "{}{c}  ", " ".repeat(pad));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    out.push_str(&line(&HEADERS.map(String::from)));
    let mut last = None;
    for r in &rows {
        let cell = (r[2].clone(), r[3].clone());
        if last.as_ref().is_some_and(|l| *l != cell) {
            out.push('\n');
        }
        last = Some(cell);
        out.push_str(&line(r));
    }
    out.push_str("\n(of bw: bytes/s over the bandwidth measured above — read for forward, copy otherwise;\n cache \"fits\": the timed data fits in the last-level cache, so the fraction can exceed 100%)\n");
    out.push_str("\nfastest agreeing backend per cell:\n");
    for f in &report.summary {
        let _ = writeln!(
            out,
            "  {:>16} {:>6} x {:<7} {} ({}T, {:.3} G elem/s)",
            f.op.as_str(),
            f.batch,
            f.classes,
            f.backend,
            f.threads,
            f.elements_per_second / 1e9
        );
    }
    if !report.skipped.is_empty() {
        out.push_str("\nskipped:\n");
        for s in &report.skipped {
            let what = match (s.backend.as_str(), s.batch) {
                ("", _) => format!("{}x{}", s.batch, s.classes),
                (b, 0) => b.to_string(),
                (b, _) => format!("{b} {}x{}", s.batch, s.classes),
            };
            let _ = writeln!(out, "  {what}: {}", s.reason);
        }
    }
    out
}

/// Markdown: the header as a paragraph, then one table.
pub fn markdown(report: &RunReport) -> String {
    let mut out = header(report).replace('\n', "  \n");
    out.push_str("\n\n| ");
    out.push_str(&HEADERS.join(" | "));
    out.push_str(" |\n|");
    out.push_str(&"---|".repeat(HEADERS.len()));
    out.push('\n');
    for r in sorted(report) {
        let _ = writeln!(out, "| {} |", row(r).join(" | "));
    }
    if !report.skipped.is_empty() {
        out.push_str("\nSkipped:\n\n");
        for s in &report.skipped {
            let _ = writeln!(
                out,
                "- {} {}x{}: {}",
                s.backend, s.batch, s.classes, s.reason
            );
        }
    }
    out
}

/// CSV with the JSON field names as the header.
pub fn csv(report: &RunReport) -> String {
    let mut out = String::from(
        "backend,variant,op,batch,classes,threads,elements,median_ns,min_ns,spread,reps,elements_per_second,bytes_per_second,bandwidth_gbps,bandwidth_fraction,in_cache,max_rel_error,agrees\n",
    );
    for r in sorted(report) {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{:.1},{:.1},{:.4},{},{:.6e},{:.6e},{:.3},{:.4},{},{:.3e},{}",
            r.backend,
            r.variant,
            r.op,
            r.batch,
            r.classes,
            r.threads,
            r.elements,
            r.median_ns,
            r.min_ns,
            r.spread,
            r.reps,
            r.elements_per_second,
            r.bytes_per_second,
            r.bandwidth_gbps,
            r.bandwidth_fraction,
            r.in_cache,
            r.max_rel_error,
            r.agrees
        );
    }
    out
}

/// Renders in the chosen format.
pub fn render(report: &RunReport, format: Format) -> String {
    match format {
        Format::Table => table(report),
        Format::Markdown => markdown(report),
        Format::Csv => csv(report),
        Format::Json => {
            // Non-finite floats have no JSON form; the schema writes them as null.
            serde_json::to_string_pretty(report)
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
        }
    }
}
