//! Smoke run of the fuzz targets on stable: every committed corpus input and every input a
//! fuzzer once crashed on goes through the targets' bodies (`pkn::fuzzing`), which must return.

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let returned = std::panic::catch_unwind(|| body(&bytes));
            assert!(returned.is_ok(), "{} panicked", path.display());
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no inputs for fuzz target {target}");
}

#[test]
fn model() {
    replay("model", pkn::fuzzing::model);
}

#[test]
fn container() {
    replay("container", pkn::fuzzing::container);
}

#[test]
fn png() {
    replay("png", pkn::fuzzing::png);
}

#[test]
fn idx() {
    replay("idx", pkn::fuzzing::idx);
}
