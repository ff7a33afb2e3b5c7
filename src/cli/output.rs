//! What a command shows: its report as text (the default) or as one JSON document (`--json`,
//! docs/json.md), both from the same report struct so that they cannot disagree; and the
//! bootstrap progress bar. With `--json`, stdout carries the document alone: the lines a command
//! prints as it goes move to stderr, where the progress bars already are.

use std::fmt::Display;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

#[derive(Clone, Copy, Debug)]
pub struct Output {
    json: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Output { json }
    }

    /// A line printed as the command goes: on stdout, or on stderr beside a JSON document.
    pub fn note(&self, line: impl Display) {
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    /// The report as the JSON document, in JSON mode only (for reports whose text went out line
    /// by line as [`Output::note`]s).
    pub fn document(&self, report: &impl Serialize) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(report)?);
        }
        Ok(())
    }

    /// The report: its text, or its JSON document.
    pub fn report<R: Serialize + Display>(&self, report: &R) -> anyhow::Result<()> {
        if !self.json {
            print!("{report}");
        }
        self.document(report)
    }
}

/// A bar over `len` bootstraps, on stderr (hidden when stderr is not a terminal).
pub fn bootstrap_bar(len: u64, message: String) -> ProgressBar {
    let style = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} bootstraps, {elapsed} elapsed, ETA {eta}")
        .expect("valid template")
        .progress_chars("=> ");
    ProgressBar::new(len).with_style(style).with_message(message)
}
