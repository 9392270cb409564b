//! Rendering a [`RunReport`]: aligned terminal table, Markdown, CSV, JSON; and the table helpers
//! the other reports (`ab`, `compare`) share.

use std::fmt::Write as _;

use crate::schema::{CellResult, RunReport};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
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

/// A duration in ns, in the unit that reads best.
pub fn human_time(ns: f64) -> String {
    if !ns.is_finite() {
        "-".into()
    } else if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// Aligned columns: the first `left` columns left-aligned, the rest right-aligned; a blank line
/// whenever the value of `group` (a column index) changes.
pub fn aligned<const N: usize>(headers: &[&str; N], rows: &[[String; N]], left: usize) -> String {
    aligned_grouped(headers, rows, left, None)
}

/// The key whose change starts a new block of rows.
type GroupKey<'a, const N: usize> = &'a dyn Fn(&[String; N]) -> String;

fn aligned_grouped<const N: usize>(
    headers: &[&str; N],
    rows: &[[String; N]],
    left: usize,
    group: Option<GroupKey<'_, N>>,
) -> String {
    let mut widths = headers.map(|h| h.chars().count());
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            let pad = " ".repeat(w - c.chars().count());
            if i < left {
                let _ = write!(s, "{c}{pad}  ");
            } else {
                let _ = write!(s, "{pad}{c}  ");
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&headers.map(String::from));
    let mut last = None;
    for r in rows {
        if let Some(g) = group {
            let key = g(r);
            if last.as_ref().is_some_and(|l| *l != key) {
                out.push('\n');
            }
            last = Some(key);
        }
        out.push_str(&line(r));
    }
    out
}

/// A GitHub-flavoured Markdown table.
pub fn markdown_table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) -> String {
    let mut out = format!("| {} |\n|{}\n", headers.join(" | "), "---|".repeat(N));
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out
}

const HEADERS: [&str; 15] = [
    "backend",
    "op",
    "batch",
    "classes",
    "thr",
    "cpu/wall",
    "G elem/s",
    "GB/s",
    "of bw",
    "calib",
    "median",
    "spread",
    "max rel err",
    "agrees",
    "cache",
];

const COUNT_HEADERS: [&str; 11] = [
    "backend",
    "op",
    "batch",
    "classes",
    "thr",
    "instr/call",
    "instr/elem",
    "L1 miss/call",
    "LL miss/call",
    "est. cycles/call",
    "agrees",
];

fn fraction(r: &CellResult) -> String {
    let f = format!("{:.0}%", r.bandwidth_fraction * 100.0);
    if r.over_ceiling { format!("{f}!") } else { f }
}

/// CPU time over wall time, marked where the row used more CPUs than its thread count.
fn cpu_per_wall(r: &CellResult) -> String {
    match (r.cpu_per_wall, r.honest) {
        (None, _) => "-".into(),
        (Some(c), Some(false)) => format!("{c:.2} NOT HONEST"),
        (Some(c), _) => format!("{c:.2}"),
    }
}

fn row(r: &CellResult) -> [String; 15] {
    [
        r.label(),
        r.op.to_string(),
        r.batch.to_string(),
        r.classes.to_string(),
        r.threads.to_string(),
        cpu_per_wall(r),
        format!("{:.3}", r.elements_per_second / 1e9),
        format!("{:.1}", r.bytes_per_second / 1e9),
        fraction(r),
        r.calibrated
            .map_or("-".into(), |c| format!("{:.0}%", c * 100.0)),
        human_time(r.median_ns),
        format!("±{:.0}%", r.spread * 50.0),
        format!("{:.1e}", r.max_rel_error),
        if r.agrees { "yes".into() } else { "NO".into() },
        if r.in_cache { "fits".into() } else { "".into() },
    ]
}

fn count_row(r: &CellResult) -> [String; 11] {
    let c = r.counts.as_ref();
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    [
        r.label(),
        r.op.to_string(),
        r.batch.to_string(),
        r.classes.to_string(),
        r.threads.to_string(),
        f(c.map(|c| c.instructions)),
        c.map_or("-".into(), |c| format!("{:.2}", c.instructions_per_element)),
        f(c.map(|c| c.l1_misses)),
        f(c.map(|c| c.ll_misses)),
        f(c.map(|c| c.estimated_cycles)),
        if r.agrees { "yes".into() } else { "NO".into() },
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

fn probe_line(label: &str, figures: &[crate::bandwidth::Bandwidth]) -> String {
    let mut s = format!("{label}:");
    for b in figures {
        let _ = write!(
            s,
            " {}T read {:.1} GB/s, copy {:.1} GB/s ({});",
            b.threads, b.measured_read_gbps, b.measured_copy_gbps, b.copy_kernel
        );
    }
    s
}

fn header(report: &RunReport) -> String {
    let m = &report.machine;
    let mut s = format!(
        "machine: {} ({} cores, LLC {} MiB)",
        m.cpu,
        m.cores,
        m.llc_bytes >> 20
    );
    if report.is_counts() {
        if let Some(c) = &report.config.counts {
            let _ = write!(
                s,
                "\ncounts: {} calls per configuration under {}, simulated caches {}",
                c.calls, c.tool, c.cache
            );
        }
    } else {
        s.push_str("\nceilings (the better of the two probes, monotone in threads):");
        for b in &m.bandwidth {
            let _ = write!(
                s,
                " {}T read {:.1} GB/s, copy {:.1} GB/s;",
                b.threads, b.read_gbps, b.copy_gbps
            );
        }
        if !m.bandwidth_start.is_empty() {
            s.push('\n');
            s.push_str(&probe_line("probe at start", &m.bandwidth_start));
        }
        if !m.bandwidth_end.is_empty() {
            s.push('\n');
            s.push_str(&probe_line("probe at end", &m.bandwidth_end));
        }
        for d in &m.devices {
            let _ = write!(
                s,
                "\ndevice {}: {}, copy {:.1} GB/s",
                d.backend, d.adapter, d.copy_bandwidth_gbps
            );
        }
    }
    let c = &report.config;
    let _ = write!(
        s,
        "\ninputs: {} {}, seed {:#x}{}{}",
        if c.weighted { "weighted" } else { "unweighted" },
        c.reduction,
        c.seed,
        if c.quick { ", --quick timings" } else { "" },
        if c.rounds > 1 && !report.is_counts() {
            format!(", {} rounds per configuration", c.rounds)
        } else {
            String::new()
        }
    );
    s
}

const NOTES: &str = "(cpu/wall: the process's CPU time over wall time while the calls ran, every \
thread; NOT HONEST: more than 10% over the thread count, and never counted as fastest;\n \
of bw: bytes/s over the ceiling above — read for forward, copy otherwise; \
\"!\": out of cache and over 100% of it, a defect of the probe, not a result;\n \
calib: fraction of the speed of a streaming read (forward) or copy of the same data, timed \
interleaved with the samples; cache \"fits\": the timed data fits in the last-level cache, so \
the fraction can exceed 100%)\n";

fn skipped_lines(report: &RunReport, out: &mut String) {
    if report.skipped.is_empty() {
        return;
    }
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

/// The aligned terminal table, the summary and the skipped list.
pub fn table(report: &RunReport) -> String {
    let mut out = header(report);
    out.push_str("\n\n");
    let group = |r: &[String; 11]| format!("{} {}", r[2], r[3]);
    if report.is_counts() {
        let rows: Vec<_> = sorted(report).into_iter().map(count_row).collect();
        out.push_str(&aligned_grouped(&COUNT_HEADERS, &rows, 2, Some(&group)));
        skipped_lines(report, &mut out);
        return out;
    }
    let rows: Vec<_> = sorted(report).into_iter().map(row).collect();
    let group = |r: &[String; 15]| format!("{} {}", r[2], r[3]);
    out.push_str(&aligned_grouped(&HEADERS, &rows, 2, Some(&group)));
    out.push('\n');
    out.push_str(NOTES);
    let over: Vec<_> = report.results.iter().filter(|r| r.over_ceiling).collect();
    if !over.is_empty() {
        let _ = writeln!(
            out,
            "\nWARNING: {} out-of-cache result(s) above 100% of the measured ceiling: the probe \
             underestimated this machine's bandwidth",
            over.len()
        );
    }
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
    skipped_lines(report, &mut out);
    out
}

/// Markdown: the header as a paragraph, then one table.
pub fn markdown(report: &RunReport) -> String {
    let mut out = header(report).replace('\n', "  \n");
    out.push_str("\n\n");
    if report.is_counts() {
        let rows: Vec<_> = sorted(report).into_iter().map(count_row).collect();
        out.push_str(&markdown_table(&COUNT_HEADERS, &rows));
    } else {
        let rows: Vec<_> = sorted(report).into_iter().map(row).collect();
        out.push_str(&markdown_table(&HEADERS, &rows));
        out.push('\n');
        out.push_str(&NOTES.replace('\n', " "));
        out.push('\n');
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
        "backend,variant,op,batch,classes,dtype,threads,elements,median_ns,min_ns,spread,reps,elements_per_second,bytes_per_second,bandwidth_gbps,bandwidth_fraction,over_ceiling,calibrated,in_cache,max_rel_error,agrees,instructions,estimated_cycles,cpu_per_wall,honest\n",
    );
    for r in sorted(report) {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{:.1},{:.1},{:.4},{},{:.6e},{:.6e},{:.3},{:.4},{},{},{},{:.3e},{},{},{},{},{}",
            r.backend,
            r.variant,
            r.op,
            r.batch,
            r.classes,
            r.dtype,
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
            r.over_ceiling,
            r.calibrated.map_or(String::new(), |c| format!("{c:.4}")),
            r.in_cache,
            r.max_rel_error,
            r.agrees,
            r.counts
                .as_ref()
                .map_or(String::new(), |c| format!("{:.0}", c.instructions)),
            r.counts
                .as_ref()
                .map_or(String::new(), |c| format!("{:.0}", c.estimated_cycles)),
            r.cpu_per_wall.map_or(String::new(), |c| format!("{c:.3}")),
            r.honest.map_or(String::new(), |h| h.to_string()),
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
        Format::Json => serde_json::to_string_pretty(report)
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")),
    }
}
