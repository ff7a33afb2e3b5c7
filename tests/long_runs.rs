//! The longer encrypted runs, which `make test-all` (and CI) adds to `make test`: more images
//! through the library and the four commands, a run killed with SIGKILL and resumed, and
//! `pkn eval --fhe`.

mod common;

use std::path::Path;
use std::process::Command;

use common::cli::{assert_cli_fhe_equals_clear, fails, ok, ok_with_notes, prediction, sample, write_small_test_set};
use pkn::eval::fhe::Engine;
use serde_json::Value;

#[test]
fn fhe_output_equals_clear_output_on_two_more_test_images() {
    let (circuit, client, server) = common::tiny_pkn_with_keys();
    let key = server.expand();
    let samples = ["test-0-ankle-boot.png", "test-2-trouser.png"];
    common::assert_fhe_equals_clear(
        &circuit,
        &client,
        &Engine::new(&key),
        &common::samples(&circuit, &samples),
    );
}

#[test]
fn encrypted_inference_through_the_cli_equals_the_clear_reference_on_two_more_images() {
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["keygen"]);
    assert_cli_fhe_equals_clear(dir.path(), &["test-2-trouser.png", "test-3-trouser.png"]);
}

/// A run killed with SIGKILL after its first checkpoint resumes from it, and its result decrypts to
/// exactly the uninterrupted run's (and the clear circuit's); a second run on the same output is
/// refused meanwhile. (The ciphertexts themselves may differ in their noise bits between processes:
/// tfhe picks its FFT algorithm by timing it.)
#[test]
fn a_killed_inference_resumes_and_gives_the_same_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["keygen"]);
    ok(d, &["encrypt", &sample("test-0-ankle-boot.png")]);
    ok(d, &["infer", "-o", "whole.ct"]);

    let mut run = Command::new(env!("CARGO_BIN_EXE_pkn"))
        .args(["infer", "-o", "resumed.ct"])
        .current_dir(d)
        .env("PKN_WEIGHTS", Path::new(env!("CARGO_MANIFEST_DIR")).join("weights"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pkn runs");
    let checkpoint = d.join("resumed.ct.ckpt");
    while !checkpoint.exists() {
        assert!(
            run.try_wait().unwrap().is_none(),
            "infer ended before its first checkpoint"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    fails(
        d,
        &["infer", "-o", "resumed.ct"],
        "another pkn infer is writing resumed.ct",
    );
    run.kill().unwrap();
    run.wait().unwrap();
    assert!(!d.join("resumed.ct").exists());

    let resumed = ok(d, &["infer", "-o", "resumed.ct"]);
    assert!(resumed.contains("resuming from"), "did not resume: {resumed}");
    assert!(!checkpoint.exists(), "the checkpoint outlived the run");
    let whole = prediction(&ok(d, &["decrypt", "-i", "whole.ct"]));
    assert_eq!(whole.len(), 12, "unexpected output {whole:?}");
    assert_eq!(prediction(&ok(d, &["decrypt", "-i", "resumed.ct"])), whole);
    assert_eq!(
        prediction(&ok(d, &["infer", "--clear", &sample("test-0-ankle-boot.png")])),
        whole
    );
}

#[test]
fn eval_runs_chosen_images_encrypted_and_checks_them_against_the_clear_circuit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_small_test_set(d);
    let data = d.display().to_string();
    // With --json the lines go to stderr, and stdout carries the report.
    let (report, out) = ok_with_notes(
        d,
        &["eval", "--data", &data, "--fhe", "1", "--fhe-start", "2", "--json"],
    );
    assert!(out.contains("/3 test images)"), "unexpected output {out:?}");
    assert!(out.contains("test image 2: bit-exact"), "unexpected output {out:?}");
    assert!(out.contains("encrypted: 1/1 bit-exact"), "unexpected output {out:?}");
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["images"], 3);
    let fhe = &report["fhe"];
    assert_eq!((&fhe["images"], &fhe["matches"]), (&1.into(), &1.into()), "{report}");
    let verdict = &fhe["verdicts"][0];
    assert_eq!(
        (&verdict["image"], &verdict["bit_exact"], &verdict["label"]),
        (&2.into(), &true.into(), &1.into())
    );
    let line = format!("test image 2: bit-exact, predicted {}, label 1", verdict["predicted"]);
    assert!(out.contains(&line), "{line:?} not in {out:?}");
    assert!(fhe["seconds_per_image"].as_f64().unwrap() > 0.0, "{report}");
    fails(
        d,
        &["eval", "--data", &data, "--fhe", "2", "--fhe-start", "2"],
        "--fhe-start 2 --fhe 2 needs 4 test images, only 3 are evaluated",
    );
}
