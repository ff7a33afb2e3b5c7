//! The four user commands end to end, and every kind of bad input the CLI must refuse cleanly.

mod common;

use std::path::Path;

use common::cli::{assert_cli_fhe_equals_clear, fails, json, ok, sample, write_small_test_set};
use serde_json::Value;

#[test]
fn encrypted_inference_through_the_cli_equals_the_clear_reference() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["keygen"]);
    assert_cli_fhe_equals_clear(d, &["test-1-pullover.png"]);
    // The result can only be decrypted with its own key.
    ok(
        d,
        &[
            "keygen",
            "--client-key",
            "other.key",
            "--server-key",
            "other-server.key",
        ],
    );
    fails(d, &["decrypt", "--key", "other.key"], "wrong key");
    // Keys are not silently replaced.
    fails(d, &["keygen"], "already exists");
}

/// A build without the `gpu` feature refuses `--gpu` at once, pointing at the GPU build.
#[cfg(not(feature = "gpu"))]
#[test]
fn infer_gpu_without_gpu_support_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    fails(
        dir.path(),
        &["infer", "--gpu"],
        "this pkn was built without GPU support; rebuild with `make gpu`",
    );
}

#[test]
fn bad_inputs_give_one_clear_error_and_keep_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["keygen"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("client.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let img = sample("test-0-ankle-boot.png");
    ok(d, &["encrypt", &img]);
    let good_ct = std::fs::read(d.join("input.ct")).unwrap();

    // Images: missing, not a PNG, wrong size; the existing ciphertext is left intact.
    fails(d, &["encrypt", "missing.png"], "missing.png");
    std::fs::write(d.join("text.png"), b"definitely not a png").unwrap();
    fails(d, &["encrypt", "text.png"], "not a valid PNG");
    write_png(&d.join("small.png"), 20, 20);
    fails(d, &["encrypt", "small.png"], "is 20x20, the model takes 28x28");
    assert_eq!(std::fs::read(d.join("input.ct")).unwrap(), good_ct);

    // Keys: a server key where a client key belongs, truncated and corrupted keys.
    fails(
        d,
        &["encrypt", &img, "--key", "server.key"],
        "this is a server (evaluation) key, expected a client (secret) key",
    );
    let key = std::fs::read(d.join("client.key")).unwrap();
    std::fs::write(d.join("short.key"), &key[..key.len() / 2]).unwrap();
    fails(d, &["encrypt", &img, "--key", "short.key"], "truncated");
    let mut flipped = key.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x55;
    std::fs::write(d.join("flipped.key"), &flipped).unwrap();
    fails(d, &["encrypt", &img, "--key", "flipped.key"], "checksum mismatch");

    // Ciphertexts: corrupted, made for another model, made under another key.
    let mut bad_ct = good_ct.clone();
    bad_ct[100] ^= 1;
    std::fs::write(d.join("bad.ct"), &bad_ct).unwrap();
    fails(d, &["infer", "--input", "bad.ct"], "checksum mismatch");
    ok(d, &["encrypt", &img, "--worst-case", "-o", "worst.ct"]);
    fails(d, &["infer", "--input", "worst.ct"], "encrypted for another model");
    ok(d, &["keygen", "--client-key", "b.key", "--server-key", "b-server.key"]);
    ok(d, &["encrypt", &img, "--key", "b.key", "-o", "b.ct"]);
    fails(d, &["infer", "--input", "b.ct"], "encrypted under key");
    fails(
        d,
        &["decrypt", "--input", "input.ct"],
        "this is an encrypted input, expected an encrypted result",
    );

    // Models: missing, corrupted.
    fails(d, &["inspect", "--model", "no-such-model"], "no model");
    std::fs::write(
        d.join("broken.safetensors"),
        b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage",
    )
    .unwrap();
    fails(
        d,
        &["inspect", "--model", "broken.safetensors"],
        "not a valid pkn model",
    );
}

fn write_png(path: &Path, w: usize, h: usize) {
    pkn::io::image::save_gray_png(path, &vec![128u8; w * h], w, h).unwrap();
}

/// Writes tiny-pkn to `path` with `setting` set to `bits` in its quantization.
fn tiny_with_widths(path: &Path, setting: &str, bits: serde_json::Value) {
    let bytes = std::fs::read(common::tiny_pkn_path()).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let arch = &mut header["__metadata__"]["architecture"];
    let mut parsed: serde_json::Value = serde_json::from_str(arch.as_str().unwrap()).unwrap();
    parsed["quantization"][setting] = bits;
    *arch = serde_json::Value::String(parsed.to_string());
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn table_widths_per_layer_come_from_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_with_widths(
        &d.join("mixed.safetensors"),
        "table_bits",
        serde_json::json!({"conv2": 5}),
    );
    let out = ok(d, &["inspect", "--model", "mixed.safetensors"]);
    let widths: Vec<(&str, &str)> = table_rows(&out).iter().map(|f| (f[0], f[f.len() - 5])).collect();
    assert_eq!(widths, [("conv1", "4"), ("conv2", "5")], "{out}");
    // The command line overrides the model for every layer.
    let out = ok(d, &["inspect", "--model", "mixed.safetensors", "--lut-bits", "3"]);
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("truncate") && l.contains(" 3 "))
            .count(),
        2,
        "{out}"
    );
    tiny_with_widths(
        &d.join("typo.safetensors"),
        "table_bits",
        serde_json::json!({"conv9": 5}),
    );
    fails(
        d,
        &["inspect", "--model", "typo.safetensors"],
        "table_bits names layer conv9, which has no table (layers with tables: conv1, conv2)",
    );
    tiny_with_widths(&d.join("wide.safetensors"), "table_bits", serde_json::json!(6));
    fails(
        d,
        &["inspect", "--model", "wide.safetensors"],
        "table input of 6 bits is not supported (1..=5)",
    );
}

/// The whitespace-separated fields of each table layer's row in `pkn inspect`'s output (its
/// last five: B, W, bootstraps, log2 p-fail, estimated seconds).
fn table_rows(inspect: &str) -> Vec<Vec<&str>> {
    inspect
        .lines()
        .filter(|l| l.contains("truncate"))
        .map(|l| l.split_whitespace().collect())
        .collect()
}

/// Accumulator width B of each table layer, as `pkn inspect` prints it.
fn window_bits(inspect: &str) -> Vec<u32> {
    table_rows(inspect)
        .iter()
        .map(|f| f[f.len() - 6].parse().unwrap())
        .collect()
}

/// The number after `label` in the line of `text` that starts with it.
fn number_after(text: &str, label: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} in {text}"));
    line[label.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn inspect_json_agrees_with_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = ok(d, &["inspect"]);
    let report = json(d, &["inspect", "--json"]);
    let layers = report["layers"].as_array().unwrap();
    let per_layer: u64 = layers.iter().map(|l| l["bootstraps"].as_u64().unwrap()).sum();
    let total = report["totals"]["bootstraps"].as_u64().unwrap();
    assert_eq!(per_layer, total, "{report}");
    assert_eq!(number_after(&text, "bootstraps: "), total, "{text}");
    let truncation = report["totals"]["truncation_bootstraps"].as_u64().unwrap();
    assert_eq!(
        number_after(&text, &format!("bootstraps: {total} (")),
        truncation,
        "{text}"
    );
    let tables: Vec<&Value> = layers.iter().filter(|l| l["kind"] == "table").collect();
    let acc_bits: Vec<u32> = tables.iter().map(|l| l["acc_bits"].as_u64().unwrap() as u32).collect();
    assert_eq!(acc_bits, window_bits(&text), "{report}");
    for (row, layer) in table_rows(&text).iter().zip(&tables) {
        assert_eq!(row[0], layer["name"], "{text}");
        assert_eq!(row[row.len() - 4], layer["bootstraps"].to_string(), "{text}");
        assert_eq!(row[row.len() - 3], layer["table_key"], "{text}");
    }
    let chosen = report["parameters"]["name"].as_str().unwrap();
    assert!(text.contains(&format!("parameters: {chosen} (")), "{text}");
    let candidates = report["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), text.matches("  candidate ").count(), "{text}");
    assert!(candidates
        .iter()
        .any(|c| c["name"] == chosen && c["meets_limit"] == true));
}

#[test]
fn weight_and_activation_widths_per_layer_come_from_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plain = window_bits(&ok(d, &["inspect", "--model", "tiny-pkn"]));
    // Wider weights widen that layer's accumulators only.
    tiny_with_widths(
        &d.join("w6.safetensors"),
        "weight_bits",
        serde_json::json!({"conv1": 6}),
    );
    let out = ok(d, &["inspect", "--model", "w6.safetensors"]);
    let wide = window_bits(&out);
    assert!(wide[0] > plain[0] && wide[1] == plain[1], "{out}");
    // Narrower activations narrow the accumulators of the layer that reads them.
    tiny_with_widths(
        &d.join("a3.safetensors"),
        "activation_bits",
        serde_json::json!({"conv1": 3}),
    );
    let out = ok(d, &["inspect", "--model", "a3.safetensors"]);
    let narrow = window_bits(&out);
    assert!(narrow[0] == plain[0] && narrow[1] < plain[1], "{out}");
    tiny_with_widths(
        &d.join("typo.safetensors"),
        "weight_bits",
        serde_json::json!({"act1": 5}),
    );
    fails(
        d,
        &["inspect", "--model", "typo.safetensors"],
        "weight_bits names layer act1, which has no weights (layers with weights: conv1, conv2, fc)",
    );
    tiny_with_widths(&d.join("fc8.safetensors"), "weight_bits", serde_json::json!({"fc": 8}));
    fails(
        d,
        &["keygen", "--model", "fc8.safetensors"],
        "decrypting the 18-bit scores of the output layer reaches p-fail",
    );
    tiny_with_widths(
        &d.join("nine.safetensors"),
        "activation_bits",
        serde_json::json!({"conv1": 9}),
    );
    fails(
        d,
        &["inspect", "--model", "nine.safetensors"],
        "quantization bit widths must be 2..=8",
    );
}

#[test]
fn eval_json_agrees_with_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_small_test_set(d);
    let data = d.display().to_string();
    let text = ok(d, &["eval", "--data", &data, "--limit", "2"]);
    let report = json(d, &["eval", "--data", &data, "--limit", "2", "--json"]);
    assert_eq!(
        (&report["model"], &report["images"]),
        (&"tiny-pkn".into(), &2.into()),
        "{report}"
    );
    let correct = report["correct"].as_u64().unwrap();
    assert!(text.contains(&format!("({correct}/2 test images)")), "{text}");
    assert_eq!(report["accuracy"].as_f64().unwrap(), correct as f64 / 2.0);
    assert!(report["fhe"].is_null(), "{report}");
}
