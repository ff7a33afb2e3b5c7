//! Running the `pkn` command in the tests: its output, its failures, its predictions.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

pub fn pkn(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pkn"))
        .args(args)
        .current_dir(dir)
        .env("PKN_WEIGHTS", Path::new(env!("CARGO_MANIFEST_DIR")).join("weights"))
        .output()
        .expect("pkn runs")
}

pub fn ok(dir: &Path, args: &[&str]) -> String {
    ok_with_notes(dir, args).0
}

/// Stdout and stderr of a command that succeeds.
pub fn ok_with_notes(dir: &Path, args: &[&str]) -> (String, String) {
    let out = pkn(dir, args);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "pkn {args:?} failed: {err}");
    (String::from_utf8(out.stdout).unwrap(), err)
}

/// Stdout of a `--json` command: one JSON document and nothing else.
pub fn json(dir: &Path, args: &[&str]) -> Value {
    let out = ok(dir, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("pkn {args:?}: not one JSON document ({e}): {out}"))
}

/// The command fails with one clear error line containing `needle`, and does not panic.
pub fn fails(dir: &Path, args: &[&str], needle: &str) {
    let out = pkn(dir, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "pkn {args:?} should fail");
    assert!(err.contains(needle), "pkn {args:?}: expected {needle:?} in {err:?}");
    assert!(!err.contains("panicked"), "pkn {args:?} panicked: {err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "pkn {args:?}: one error line expected, got {err:?}"
    );
}

pub fn sample(name: &str) -> String {
    super::sample_path(name).display().to_string()
}

/// Score lines of a printed prediction (everything after the "prediction:" line).
pub fn prediction(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("prediction:"))
        .map(String::from)
        .collect()
}

/// `pkn decrypt --json` (or `infer --clear --json`) against the text of the same prediction: the
/// class is the highest score's, and the scores and logits are the printed ones.
pub fn check_prediction_json(report: &Value, text: &[String]) {
    let scores: Vec<i64> = report["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_i64().unwrap())
        .collect();
    let class = report["class"].as_u64().unwrap() as usize;
    let best = *scores.iter().max().unwrap();
    assert_eq!(scores.iter().position(|&s| s == best), Some(class), "{report}");
    let name = report["class_name"].as_str().unwrap();
    assert_eq!(report["classes"][class], name);
    assert_eq!(text[0], format!("prediction: {name} (class {class})"));
    let scale = report["scale"].as_f64().unwrap();
    for (i, line) in text[2..].iter().enumerate() {
        // "  <class name> <score> <logit>", and " <" after the predicted class.
        let fields: Vec<&str> = line.trim_end_matches(" <").split_whitespace().rev().take(2).collect();
        let logit = report["logits"][i].as_f64().unwrap();
        // serde_json's float parsing may be off by an ulp.
        assert!(
            (logit - scores[i] as f64 * scale).abs() <= 1e-12 * logit.abs(),
            "{report}"
        );
        assert_eq!(fields, [format!("{logit:.3}"), scores[i].to_string()], "{line}");
        assert!(
            line.trim_start().starts_with(report["classes"][i].as_str().unwrap()),
            "{line}"
        );
    }
}

/// Encrypts each named sample with the keys in `dir`, runs `pkn infer` and asserts that `pkn decrypt`
/// prints, and reports as JSON, exactly what `pkn infer --clear` does on the plaintext image.
pub fn assert_cli_fhe_equals_clear(dir: &Path, names: &[&str]) {
    for name in names {
        let img = sample(name);
        ok(dir, &["encrypt", &img]);
        ok(dir, &["infer"]);
        let fhe = prediction(&ok(dir, &["decrypt"]));
        let clear = prediction(&ok(dir, &["infer", "--clear", &img]));
        assert!(fhe.len() == 12, "unexpected output {fhe:?}");
        assert_eq!(fhe, clear, "FHE and clear differ on {name}");
        let fhe_json = json(dir, &["decrypt", "--json"]);
        assert_eq!(
            fhe_json,
            json(dir, &["infer", "--clear", &img, "--json"]),
            "FHE and clear differ on {name}"
        );
        check_prediction_json(&fhe_json, &fhe);
    }
}

/// Three test images (the first calibration images) and labels as IDX files in `dir`.
pub fn write_small_test_set(dir: &Path) {
    let mut images = vec![0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 28, 0, 0, 0, 28];
    images.extend(super::calibration()[..3].concat());
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), images).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), [0, 0, 8, 1, 0, 0, 0, 3, 4, 7, 1]).unwrap();
}
