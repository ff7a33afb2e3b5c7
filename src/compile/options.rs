//! Pass 1: the options, with every default resolved against the model and every value checked.

use crate::circuit::{DIRECT_TABLE_BITS, MAX_FHE_TABLE_BITS};
use crate::error::{Error, Result};
use crate::model::{Model, Widths};

/// Margin added to calibrated accumulator ranges when neither the options nor the model set one.
pub const DEFAULT_MARGIN: f64 = 0.25;
/// Fraction of activations clipped at each end when neither the options nor the model set one.
pub const DEFAULT_ACT_CLIP: f64 = 0.001;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CompileOptions {
    /// Size every accumulator window by its worst case (no value ever leaves it) instead of the
    /// calibrated range plus a margin (values outside wrap, exactly as the clear evaluator defines).
    pub worst_case: bool,
    /// Margin on calibrated ranges (0.25 = 25 %); None: the model's `window_margin`, else 0.25.
    pub margin: Option<f64>,
    /// Bits read by each table (W); None: the model's `table_bits`, else 4 (one bootstrap per
    /// table; 5 is a split table of two).
    pub lut_bits: Option<u32>,
    /// Fraction of calibration activations left outside the activation range at each end (they
    /// saturate); None: the model's `activation_clip`, else 0.001.
    pub act_clip: Option<f64>,
}

/// Options with every default resolved against the model.
pub(super) struct ResolvedOptions {
    /// None: windows sized by the worst case.
    pub margin: Option<f64>,
    /// Bits each table reads.
    pub table_bits: Widths,
    pub act_clip: f64,
}

/// `options` resolved against `model`'s quantization settings; refuses out-of-range values.
pub(super) fn resolve_options(model: &Model, options: &CompileOptions) -> Result<ResolvedOptions> {
    let arch = &model.arch;
    let q = &arch.quantization;
    let table_bits = match (options.lut_bits, &q.table_bits) {
        (Some(bits), _) => Widths::All(bits),
        (None, Some(bits)) => bits.clone(),
        (None, None) => Widths::All(DIRECT_TABLE_BITS),
    };
    let options = ResolvedOptions {
        margin: (!options.worst_case).then(|| options.margin.or(q.window_margin).unwrap_or(DEFAULT_MARGIN)),
        table_bits,
        act_clip: options.act_clip.or(q.activation_clip).unwrap_or(DEFAULT_ACT_CLIP),
    };
    if !(0.0..0.5).contains(&options.act_clip) {
        return Err(Error::Compile(format!(
            "activation clip {} must be in [0, 0.5)",
            options.act_clip
        )));
    }
    if options.margin.is_some_and(|m| !(0.0..=4.0).contains(&m)) {
        return Err(Error::Compile("the window margin must be between 0 and 4".into()));
    }
    for bits in options.table_bits.values() {
        if !(1..=MAX_FHE_TABLE_BITS).contains(&bits) {
            return Err(Error::Compile(format!(
                "table input of {bits} bits is not supported (1..={MAX_FHE_TABLE_BITS})"
            )));
        }
    }
    Ok(options)
}
