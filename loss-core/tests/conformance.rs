//! The reference backend against the vendored PyTorch vectors, and the kit against itself.

use std::path::Path;

use loss_core::conformance::{self, Expected, VectorFile};
use loss_core::{DType, ErrorKind, ReferenceBackend};

#[test]
fn reference_passes_every_vendored_case() {
    conformance::assert_conformance(&ReferenceBackend::new());
}

#[test]
fn vendored_files_have_all_cases() {
    let files = conformance::vendored_vectors().expect("vectors");
    let counts: Vec<usize> = files.iter().map(|f| f.cases.len()).collect();
    assert_eq!(counts, vec![101, 134]);
    assert_eq!(files[1].format, conformance::FORMAT_TAG_V2);
    for file in files {
        let errors = file
            .cases
            .iter()
            .filter(|c| matches!(c.expected, Expected::Error(_)))
            .count();
        assert!(errors >= 10, "only {errors} error cases");
    }
    // The half-gradient tolerances of format 2 are read, and format 1 has none.
    assert!(files[1].grad_tolerance(DType::Bf16).rtol > files[1].tolerance.rtol);
    assert_eq!(files[0].grad_tolerance(DType::Bf16), files[0].tolerance);
}

/// A format-2 case whose expected LSE is changed fails on the LSE output.
#[test]
fn a_changed_lse_fails() {
    let path = &conformance::vendored_vectors_paths()[1];
    let text = std::fs::read_to_string(path).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let victim = json["cases"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["expected"]["lse"].is_array() && c["dtype"] == "bfloat16")
        .unwrap();
    let v = victim["expected"]["lse"][0].as_f64().unwrap();
    victim["expected"]["lse"][0] = serde_json::json!(v + 0.01);
    let file = VectorFile::parse(&json.to_string(), Path::new("altered.json")).unwrap();
    let report = conformance::run_file(&ReferenceBackend::new(), &file);
    let failed: Vec<_> = report.failures().collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].worst.as_ref().unwrap().output, "lse");
}

/// A copy of the vectors with one expected number changed must fail, naming that case alone.
#[test]
fn a_changed_expectation_fails_and_is_named() {
    let path = conformance::vendored_vectors_paths()[0].clone();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = json["cases"].as_array_mut().unwrap();
    let victim = cases
        .iter_mut()
        .find(|c| {
            c["expected"]["loss"]
                .as_array()
                .is_some_and(|l| l[0].is_f64())
        })
        .unwrap();
    let name = victim["name"].as_str().unwrap().to_string();
    let v = victim["expected"]["loss"][0].as_f64().unwrap();
    victim["expected"]["loss"][0] = serde_json::json!(v * 1.01 + 0.01);
    let file = VectorFile::parse(&json.to_string(), Path::new("altered.json")).unwrap();
    let report = conformance::run_file(&ReferenceBackend::new(), &file);
    let failed: Vec<_> = report.failures().map(|c| c.name.clone()).collect();
    assert_eq!(failed, vec![name.clone()]);
    assert!(report.to_string().contains(&name));
    let worst = report.failures().next().unwrap().worst.clone().unwrap();
    assert_eq!(worst.output, "loss");
    assert!(worst.excess > 1.0);
}

/// An error case whose expected kind is changed must fail too.
#[test]
fn a_changed_error_kind_fails() {
    let text = std::fs::read_to_string(&conformance::vendored_vectors_paths()[0]).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let victim = json["cases"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["expected"]["error"] == "invalid_target")
        .unwrap();
    victim["expected"]["error"] = serde_json::json!("invalid_option");
    let file = VectorFile::parse(&json.to_string(), Path::new("altered.json")).unwrap();
    let report = conformance::run_file(&ReferenceBackend::new(), &file);
    assert_eq!(report.failures().count(), 1);
    let kinds: Vec<_> = file
        .cases
        .iter()
        .filter_map(|c| match c.expected {
            Expected::Error(k) => Some(k),
            _ => None,
        })
        .collect();
    assert!(kinds.contains(&ErrorKind::InvalidOption));
}

#[test]
fn unreadable_files_are_format_errors() {
    assert!(VectorFile::parse("not json", Path::new("x")).is_err());
    assert!(VectorFile::parse(r#"{"format": "other/1"}"#, Path::new("x")).is_err());
    let missing = r#"{"format": "cross-entropy-conformance/1", "tolerance": {"rtol": 1e-4, "atol": 1e-5},
        "cases": [{"name": "x", "shape": [1, 2], "logits": [0, "bogus"], "target": {"indices": [0], "shape": [1]},
        "expected": {"loss": [0], "loss_shape": []}}]}"#;
    assert!(VectorFile::parse(missing, Path::new("x")).is_err());
}
