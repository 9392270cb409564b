//! `loss-bench verify` end to end: the vendored vectors pass, another file runs through the same
//! path, and a copy with one expected value changed fails with that case named.

use std::process::Command;

fn loss_bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loss-bench"))
}

fn altered_copy(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    // The format-2 file: another file of that format runs through the same path.
    let text =
        std::fs::read_to_string(&loss_core::conformance::vendored_vectors_paths()[1]).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = json["cases"].as_array_mut().unwrap();
    // The last case with a finite gradient: change one gradient element.
    let victim = cases
        .iter_mut()
        .rev()
        .find(|c| {
            c["expected"]["grad_logits"]
                .as_array()
                .is_some_and(|g| g.len() > 3 && g[3].is_f64())
        })
        .unwrap();
    let name = victim["name"].as_str().unwrap().to_string();
    let g = victim["expected"]["grad_logits"][3].as_f64().unwrap();
    victim["expected"]["grad_logits"][3] = serde_json::json!(g + 0.5);
    let path = dir.join("altered.json");
    std::fs::write(&path, json.to_string()).unwrap();
    (path, name)
}

#[test]
fn verify_passes_vendored_and_fails_altered_copy() {
    let out = loss_bench()
        .args(["verify", "--backend", "reference"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("101 of 101 cases passed"), "{stdout}");
    assert!(stdout.contains("134 of 134 cases passed"), "{stdout}");

    let dir = std::env::temp_dir().join(format!("loss-bench-verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (path, name) = altered_copy(&dir);
    let out = loss_bench()
        .args(["verify", "--backend", "reference", "--vectors"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "an altered file must fail:\n{stdout}"
    );
    assert!(stdout.contains(&format!("FAIL {name}")), "{stdout}");
    assert!(stdout.contains("133 of 134 cases passed"), "{stdout}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn verify_rejects_unknown_backend() {
    let out = loss_bench()
        .args(["verify", "--backend", "no-such-backend"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("no-such-backend: not run"), "{stdout}");
}
