//! The report of `pkn decrypt` and `pkn infer --clear`: the predicted class and every score.

use std::fmt;

use serde::Serialize;

use crate::circuit::OutputSpec;
use crate::eval::clear::argmax;

/// The class with the highest score, the integer scores and the float logits they stand for.
#[derive(Serialize, Debug)]
pub struct Prediction {
    pub class: usize,
    pub class_name: String,
    pub classes: Vec<String>,
    pub scores: Vec<i64>,
    /// A score times `scale` is the model's float logit.
    pub scale: f64,
    pub logits: Vec<f64>,
}

impl Prediction {
    pub fn new(output: &OutputSpec, scores: Vec<i64>) -> Self {
        let class = argmax(&scores);
        let name = |i: usize| output.classes.get(i).map_or("?", String::as_str).to_string();
        Prediction {
            class,
            class_name: name(class),
            classes: (0..scores.len()).map(name).collect(),
            logits: scores.iter().map(|&s| s as f64 * output.scale).collect(),
            scores,
            scale: output.scale,
        }
    }
}

impl fmt::Display for Prediction {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(f, "prediction: {} (class {})", self.class_name, self.class)?;
        writeln!(f, "scores (integer output, logit = integer x {:.3e}):", self.scale)?;
        for (i, ((class, score), logit)) in self.classes.iter().zip(&self.scores).zip(&self.logits).enumerate() {
            let mark = if i == self.class { " <" } else { "" };
            writeln!(f, "  {class:<12} {score:>8}  {logit:>8.3}{mark}")?;
        }
        Ok(())
    }
}
