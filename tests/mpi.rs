//! One inference over two MPI processes (`mpirun -n 2 pkn infer`, OpenMPI): bit-exact against one
//! process and the clear circuit, resumable after the job is killed, and a failure on a process
//! ends the whole job without an output file. Needs `mpirun` on the PATH (`make test-mpi`).

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use common::cli::{ok, prediction, sample};

/// `mpirun -n 2 pkn ARGS` in `dir`: [`mpirun_each`] with the same arguments on both ranks.
fn mpirun(dir: &Path, args: &[&str]) -> Command {
    mpirun_each(dir, &[args, args])
}

/// `mpirun` of one `pkn` rank per element of `ranks`, each with its own arguments, in `dir`, one
/// thread per rank; `--oversubscribe` so that it runs on any machine, and root allowed (CI runs as
/// root).
fn mpirun_each(dir: &Path, ranks: &[&[&str]]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "--bind-to", "none"])
        .args(["-x", "PKN_WEIGHTS", "-x", "RAYON_NUM_THREADS"]);
    for (i, args) in ranks.iter().enumerate() {
        if i > 0 {
            cmd.arg(":");
        }
        cmd.args(["-n", "1", env!("CARGO_BIN_EXE_pkn")]).args(*args);
    }
    cmd.current_dir(dir)
        .env("PKN_WEIGHTS", Path::new(env!("CARGO_MANIFEST_DIR")).join("weights"))
        .env("RAYON_NUM_THREADS", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    cmd
}

fn run(mut cmd: Command) -> Output {
    cmd.output().expect("mpirun runs (install OpenMPI: make test-mpi)")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Ends an `mpirun` job the way a scheduler does: SIGTERM to mpirun, which ends its processes.
fn terminate(mut job: Child) {
    // SAFETY: kill(2) on the pid of a child this test started and has not waited for.
    let sent = unsafe { libc::kill(job.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(sent, 0, "SIGTERM to mpirun");
    job.wait().unwrap();
}

/// Killed after its first checkpoint and started again, a two-process run resumes and decrypts to
/// exactly what one process and the clear circuit give.
#[test]
fn two_processes_give_the_single_process_result_and_resume_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = sample("test-1-pullover.png");
    ok(d, &["keygen"]);
    ok(d, &["encrypt", &img]);

    let job = mpirun(d, &["infer", "-o", "two.ct"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mpirun runs (install OpenMPI: make test-mpi)");
    let checkpoint = d.join("two.ct.ckpt");
    while !checkpoint.exists() {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    terminate(job);
    assert!(!d.join("two.ct").exists(), "a killed job left an output");

    let resumed = run(mpirun(d, &["infer", "-o", "two.ct"]));
    let out = text(&resumed.stdout);
    assert!(
        resumed.status.success(),
        "mpirun failed: {out}{}",
        text(&resumed.stderr)
    );
    assert!(out.contains("resuming from"), "did not resume: {out}");
    assert!(out.contains("over 2 processes"), "not two processes: {out}");
    assert!(!checkpoint.exists(), "the checkpoint outlived the run");

    ok(d, &["infer", "-o", "one.ct"]);
    let one = prediction(&ok(d, &["decrypt", "-i", "one.ct"]));
    assert_eq!(one.len(), 12, "unexpected output {one:?}");
    assert_eq!(prediction(&ok(d, &["decrypt", "-i", "two.ct"])), one);
    assert_eq!(prediction(&ok(d, &["infer", "--clear", &img])), one);
}

/// The job fails, says which process failed and why, and leaves no output.
fn assert_job_fails(dir: &Path, job: Command, needles: &[&str]) {
    let failed = run(job);
    let err = text(&failed.stderr);
    assert!(!failed.status.success(), "the job should fail");
    for needle in needles {
        assert!(err.contains(needle), "expected {needle:?} in {err:?}");
    }
    assert!(!dir.join("output.ct").exists(), "a failed job left an output");
}

/// A process that fails ends every process at once, with its message, and no output is written:
/// process 0 (which reads the input) or another one (which reads the key and compiles the model).
#[test]
fn a_failing_process_ends_the_job_without_an_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["keygen"]);
    ok(d, &["encrypt", &sample("test-1-pullover.png")]);
    // The same key's parameters, another circuit: process 0 refuses the input.
    ok(
        d,
        &[
            "encrypt",
            "--worst-case",
            &sample("test-1-pullover.png"),
            "-o",
            "other.ct",
        ],
    );
    assert_job_fails(
        d,
        mpirun(d, &["infer", "-i", "other.ct"]),
        &["error on process 0 of 2:", "encrypted for another model"],
    );
    assert_job_fails(
        d,
        mpirun_each(d, &[&["infer"], &["infer", "--server-key", "missing.key"]]),
        &["error on process 1 of 2:", "missing.key"],
    );
    // Another compile option on process 1: another circuit, whose slices would not fit.
    assert_job_fails(
        d,
        mpirun_each(d, &[&["infer"], &["infer", "--worst-case"]]),
        &["error on process 1 of 2:", "process 0 has circuit"],
    );
}
