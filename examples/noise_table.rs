//! Prints the noise figures of every candidate parameter set (docs/parameters.md).
use pkn::params::{Bootstrap, FheParams};

fn main() {
    for p in FheParams::candidates() {
        println!(
            "{}: precise PBS out std 2^{:.1}, cheap 2^{:.1}, KS std 2^{:.1}, MS std 2^{:.1}, fresh 2^{:.1}",
            p.name(),
            p.pbs_output_variance(Bootstrap::Precise).log2() / 2.0,
            p.pbs_output_variance(Bootstrap::Cheap).log2() / 2.0,
            p.keyswitch_variance().log2() / 2.0,
            p.modswitch_variance().log2() / 2.0,
            p.fresh_variance().log2() / 2.0
        );
    }
}
