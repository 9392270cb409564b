//! `loss-bench run`, `compare`, `recommend` and `plot` end to end on a small grid.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bench_harness::profile::Profile;
use bench_harness::schema::{Op, RunReport};

fn loss_bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loss-bench"))
        .args(args)
        .output()
        .unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loss-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_small(dir: &Path) -> (PathBuf, RunReport) {
    let out = dir.join("r.json");
    let o = loss_bench(&[
        "run",
        "--quick",
        "--backend",
        "reference",
        "--no-peers",
        "--batch",
        "1,16",
        "--classes",
        "10,300",
        "--format",
        "json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report = RunReport::load(&out).unwrap();
    (out, report)
}

#[test]
fn run_compare_recommend_plot() {
    let dir = scratch("run");
    let (r, report) = run_small(&dir);

    // Every backend × cell × op, with agreement and bandwidth fraction.
    assert_eq!(report.results.len(), 2 * 2 * 3);
    for batch in [1, 16] {
        for classes in [10, 300] {
            for op in Op::ALL {
                let hit = report
                    .results
                    .iter()
                    .find(|x| x.batch == batch && x.classes == classes && x.op == op)
                    .unwrap_or_else(|| panic!("missing {batch}x{classes} {op}"));
                assert!(hit.agrees && hit.max_rel_error < 1e-4);
                assert!(hit.bandwidth_fraction > 0.0 && hit.elements_per_second > 0.0);
                assert_eq!(hit.elements, batch * classes);
            }
        }
    }
    assert!(report.machine.read_bandwidth_gbps > 0.0 && report.machine.copy_bandwidth_gbps > 0.0);
    assert_eq!(report.summary.len(), 12);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&r).unwrap()).unwrap();
    for key in [
        "backend",
        "op",
        "batch",
        "classes",
        "threads",
        "elements_per_second",
        "bandwidth_fraction",
        "median_ns",
        "max_rel_error",
        "agrees",
    ] {
        assert!(json["results"][0].get(key).is_some(), "results lack {key}");
    }
    for key in [
        "cpu",
        "cores",
        "read_bandwidth_gbps",
        "copy_bandwidth_gbps",
        "crate_versions",
    ] {
        assert!(json["machine"].get(key).is_some(), "machine lacks {key}");
    }

    // A file compared with itself has no regression.
    let o = loss_bench(&["compare", r.to_str().unwrap(), r.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));

    // Every configuration was timed in rounds, each with its calibration.
    for x in &report.results {
        assert_eq!(x.rounds.len(), report.config.rounds, "{x:?}");
        assert!(
            x.rounds
                .iter()
                .all(|r| r.calibration_ns.is_some_and(|c| c > 0.0))
        );
        assert!(x.calibrated.is_some_and(|c| c > 0.0) && !x.over_ceiling);
    }
    assert!(report.config.rounds >= 3);
    assert_eq!(
        report.machine.bandwidth_start.len(),
        report.machine.bandwidth_end.len()
    );

    // Against a baseline made twice as fast in every round, every cell regresses and is named.
    let mut fast = report.clone();
    for x in &mut fast.results {
        x.elements_per_second *= 2.0;
        for r in &mut x.rounds {
            r.median_ns /= 2.0;
            r.min_ns /= 2.0;
        }
    }
    let base = dir.join("fast.json");
    std::fs::write(&base, serde_json::to_string(&fast).unwrap()).unwrap();
    let o = loss_bench(&[
        "compare",
        base.to_str().unwrap(),
        r.to_str().unwrap(),
        "--max-regression",
        "10%",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("REGRESSED"), "{stdout}");
    assert!(stdout.contains("reference forward 16x300 1T"), "{stdout}");

    // The profile picks a backend that code can build.
    let profile_path = dir.join("profile.json");
    let o = loss_bench(&[
        "recommend",
        r.to_str().unwrap(),
        "--out",
        profile_path.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let profile = Profile::load(&profile_path).unwrap();
    let backend = profile.backend_for(Op::ForwardBackward, 3, 500).unwrap();
    assert_eq!(backend.name(), "reference");

    // The plot is an SVG with the backend and the ceilings in it.
    let svg = dir.join("r.svg");
    let o = loss_bench(&["plot", r.to_str().unwrap(), "--out", svg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<svg")
            && text.contains("reference 1T")
            && text.contains("memory ceiling")
    );

    // The other formats render the same results.
    for format in ["csv", "markdown", "table"] {
        let o = loss_bench(&[
            "run",
            "--quick",
            "--backend",
            "reference",
            "--no-peers",
            "--batch",
            "2",
            "--classes",
            "5",
            "--op",
            "forward",
            "--format",
            format,
        ]);
        assert!(o.status.success());
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(s.contains("reference"), "{format}: {s}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unknown_backend_is_reported_as_skipped() {
    let o = loss_bench(&[
        "run",
        "--quick",
        "--backend",
        "nope",
        "--backend",
        "reference",
        "--no-peers",
        "--batch",
        "2",
        "--classes",
        "5",
        "--op",
        "forward",
    ]);
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("skipped:") && s.contains("nope"), "{s}");
}

fn valgrind_present() -> bool {
    let found = Command::new("valgrind").arg("--version").output().is_ok();
    // CI installs it (scripts/setup.sh): there a missing valgrind fails instead of skipping.
    assert!(
        found || std::env::var_os("CI").is_none(),
        "CI is set but valgrind is missing"
    );
    if !found {
        eprintln!("SKIPPED: valgrind is not installed");
    }
    found
}

fn counts_run(dir: &Path, name: &str) -> (PathBuf, RunReport) {
    let out = dir.join(name);
    let o = loss_bench(&[
        "run",
        "--counts",
        "--backend",
        "cpu",
        "--cells",
        "16x300,3x2000",
        "--format",
        "json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report = RunReport::load(&out).unwrap();
    (out, report)
}

#[test]
fn counts_are_deterministic_and_gate_on_growth() {
    if !valgrind_present() {
        return;
    }
    let dir = scratch("counts");
    let (a_path, a) = counts_run(&dir, "a.json");
    let (b_path, b) = counts_run(&dir, "b.json");
    assert!(a.is_counts());
    assert_eq!(a.results.len(), 2 * 3);
    for (x, y) in a.results.iter().zip(&b.results) {
        let (cx, cy) = (x.counts.as_ref().unwrap(), y.counts.as_ref().unwrap());
        assert!(
            x.agrees && cx.instructions > 1000.0 && cx.calls > 0,
            "{x:?}"
        );
        assert_eq!(cx, cy, "{}", x.label());
        assert!((cx.instructions_per_element - cx.instructions / x.elements as f64).abs() < 1e-9);
    }
    let o = loss_bench(&[
        "compare",
        a_path.to_str().unwrap(),
        b_path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));

    // A baseline whose counts are 5% lower: every cell grew beyond the default 2%.
    let mut lower = a.clone();
    for x in &mut lower.results {
        let c = x.counts.as_mut().unwrap();
        c.instructions *= 0.95;
        c.estimated_cycles *= 0.95;
    }
    let base = dir.join("lower.json");
    std::fs::write(&base, serde_json::to_string(&lower).unwrap()).unwrap();
    let o = loss_bench(&["compare", base.to_str().unwrap(), b_path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("cpu forward 16x300 1T") && stdout.contains("instructions +5.26%"),
        "{stdout}"
    );
    // Counts and timings do not mix.
    let (timings, _) = run_small(&dir);
    let o = loss_bench(&[
        "compare",
        a_path.to_str().unwrap(),
        timings.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn ab_against_the_same_build_checks_both_sides() {
    let dir = scratch("ab");
    let out = dir.join("ab.json");
    let o = loss_bench(&[
        "ab",
        "--against",
        env!("CARGO_BIN_EXE_loss-bench"),
        "--quick",
        "--backend",
        "cpu",
        "--backend",
        "nope",
        "--cells",
        "4x100",
        "--op",
        "forward,forward_backward",
        "--format",
        "json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: bench_harness::ab::AbReport =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report.schema, bench_harness::ab::AB_SCHEMA);
    assert_eq!(report.results.len(), 2);
    for r in &report.results {
        assert!(r.current_agrees && r.against_agrees);
        let p = r.paired.unwrap();
        assert!(
            p.pairs >= 10 && p.low <= p.ratio && p.ratio <= p.high,
            "{r:?}"
        );
        assert!(r.current_ns > 0.0 && r.against_ns > 0.0 && !r.fails);
    }
    assert!(report.skipped.iter().any(|s| s.backend == "nope"));

    // Something that is not a loss-bench worker is refused with a message, not a hang.
    let o = loss_bench(&["ab", "--against", "/bin/true", "--quick", "--cells", "2x5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a loss-bench worker"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn dtype_axis_and_extensions_are_run_checked_and_labelled() {
    let dir = scratch("dtype");
    let out = dir.join("run.json");
    let o = loss_bench(&[
        "run",
        "--quick",
        "--no-peers",
        "--backend",
        "cpu",
        "--cells",
        "16x300",
        "--dtype",
        "f32,bf16,f16",
        "--z-loss",
        "1e-3",
        "--softcap",
        "20",
        "--position-weights",
        "--op",
        "forward,forward_backward",
        "--format",
        "json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: bench_harness::schema::RunReport =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let mut labels: Vec<&str> = report.results.iter().map(|r| r.dtype.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(
        labels,
        vec![
            "bf16+z0.001+cap20+posw",
            "f16+z0.001+cap20+posw",
            "f32+z0.001+cap20+posw"
        ]
    );
    for r in &report.results {
        assert!(r.agrees, "{r:?}");
        // Bandwidth counts the real bytes: 2 a logit read for the half types, 4 for f32.
        let per = r.bytes_per_second / r.elements_per_second;
        let want = match (r.dtype.starts_with("f32"), r.op) {
            (true, bench_harness::schema::Op::Forward) => 4.0,
            (true, _) => 8.0,
            (false, bench_harness::schema::Op::Forward) => 2.0,
            (false, _) => 4.0,
        };
        assert!((per - want).abs() < 1e-9, "{} {:?}: {per}", r.dtype, r.op);
    }
    // A bad option value is a usage error (exit 2), never a panic in a cell.
    for bad in [["--z-loss", "-1"], ["--softcap", "0"], ["--dtype", "f64"]] {
        let o = loss_bench(&[
            "run",
            "--quick",
            "--no-peers",
            "--cells",
            "2x5",
            bad[0],
            bad[1],
        ]);
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Peers run pinned to exactly their thread count, and every peer row says how many CPUs it kept
/// busy: at "1 thread" no peer may use more than one (JAX's CPU client ignores its single-thread
/// flags; unpinned it used two). Needs PyTorch and JAX (`$PYTHON`, default python3); where they
/// are missing the test says so and checks nothing, unless `LOSS_BENCH_REQUIRE_PEERS=1` (set by
/// `scripts/test.sh` once the project's Python environment exists), which makes that a failure.
#[test]
fn peers_are_pinned_to_their_thread_count() {
    let dir = scratch("peers");
    let out = dir.join("p.json");
    let o = loss_bench(&[
        "run",
        "--quick",
        "--backend",
        "cpu",
        "--cells",
        "512x2000",
        "--op",
        "forward,forward_backward",
        "--threads",
        "1",
        "--format",
        "json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report = RunReport::load(&out).unwrap();
    let peers: Vec<_> = report
        .results
        .iter()
        .filter(|r| r.backend == "pytorch" || r.backend == "jax")
        .collect();
    let found: std::collections::BTreeSet<&str> =
        peers.iter().map(|r| r.backend.as_str()).collect();
    if found.len() < 2 {
        assert!(
            std::env::var("LOSS_BENCH_REQUIRE_PEERS").as_deref() != Ok("1"),
            "LOSS_BENCH_REQUIRE_PEERS=1 but the peers did not run: {:?}",
            report.skipped
        );
        eprintln!(
            "SKIPPED: PyTorch and JAX are not both importable: {:?}",
            report.skipped
        );
        return;
    }
    for r in &peers {
        let c = r
            .cpu_per_wall
            .expect("every peer row carries its CPU time over wall time");
        assert!(
            r.threads == 1 && c <= 1.1,
            "{} {}: {c} CPUs at 1 thread",
            r.backend,
            r.op
        );
        assert_eq!(r.honest, Some(true));
        assert!(r.agrees, "{} {}", r.backend, r.op);
    }
    // Ours carry it too.
    let cpu = report.results.iter().find(|r| r.backend == "cpu").unwrap();
    assert!(
        cpu.cpu_per_wall.is_some_and(|c| c <= 1.1),
        "{:?}",
        cpu.cpu_per_wall
    );
}
