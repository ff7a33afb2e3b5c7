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
            p.modswitch_variance(Bootstrap::Cheap).log2() / 2.0,
            p.fresh_variance().log2() / 2.0
        );
    }
    let narrow = FheParams::candidates()[0].with_narrow();
    println!(
        "narrow key (2^23x1, k = {}, N = {}): PBS out std 2^{:.1}, MS std 2^{:.1}",
        narrow.narrow_glwe_dimension,
        narrow.narrow_polynomial_size,
        narrow.pbs_output_variance(Bootstrap::Narrow).log2() / 2.0,
        narrow.modswitch_variance(Bootstrap::Narrow).log2() / 2.0
    );
}
