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

    // Against a baseline made twice as fast, every cell regresses and is named.
    let mut fast = report.clone();
    for x in &mut fast.results {
        x.bandwidth_fraction *= 2.0;
        x.elements_per_second *= 2.0;
        x.spread = 0.01;
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
