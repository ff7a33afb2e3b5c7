//! The scale-out cost model of docs/scale-out.md: seconds per image of a model on M machines of C
//! cores each, one MPI process per machine. Compute is the cost model's (`pkn inspect`: stock
//! bootstraps at `params::MS_PER_STOCK_PBS_2_THREADS` on 2 cores, fitted to whole runs), spread
//! over all cores, each layer limited by its largest share; exchange is every gathered tensor
//! crossing the links once, (M - 1)/M of its bytes into each machine, at the link's rate.
//!
//! `cargo run --release --example scale_out -- [model] [cores-per-machine]` (defaults:
//! resnet18-pkn, 8).
use pkn::circuit::Layer;
use pkn::compile::CompileOptions;
use pkn::eval::fhe::gathered_after;
use pkn::zoo::Shipped;

/// One layer as the model sees it: the core-seconds of its bootstraps, how many activations they
/// split over, and the bytes gathered after it.
struct LayerCost {
    core_seconds: f64,
    activations: usize,
    gathered_bytes: f64,
}

fn seconds(layers: &[LayerCost], cores: usize, machines: usize, link_gbits: f64) -> (f64, f64) {
    let compute = layers
        .iter()
        .filter(|l| l.activations > 0)
        .map(|l| l.core_seconds / l.activations as f64 * l.activations.div_ceil(cores) as f64)
        .sum();
    let into_each = (machines - 1) as f64 / machines as f64;
    let bytes: f64 = layers.iter().map(|l| l.gathered_bytes).sum();
    let exchange = if machines > 1 {
        bytes * into_each * 8.0 / (link_gbits * 1e9)
    } else {
        0.0
    };
    (compute, exchange)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model = args.get(1).map_or("resnet18-pkn", String::as_str);
    let per_machine: usize = args.get(2).map_or(Ok(8), |s| s.parse())?;
    let circuit = Shipped::find(model)?.compile(&CompileOptions::default())?;
    let params = circuit.fhe_params()?;
    let word_bytes = 8.0 * (params.big_lwe_dimension() + 1) as f64;
    let last_uses = circuit.last_uses();
    let layers: Vec<LayerCost> = circuit
        .layers
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            let (core_seconds, activations) = match layer {
                Layer::Requant(r) => (2.0 * r.estimated_seconds(&params), r.shape.len()),
                Layer::Linear(_) => (0.0, 0),
            };
            let gathered = gathered_after(&circuit, &last_uses, i);
            let gathered_bytes = if gathered {
                layer.output_shape().len() as f64 * word_bytes
            } else {
                0.0
            };
            LayerCost {
                core_seconds,
                activations,
                gathered_bytes,
            }
        })
        .collect();
    let gathered: f64 = layers.iter().map(|l| l.gathered_bytes).sum();
    let core_seconds: f64 = layers.iter().map(|l| l.core_seconds).sum();
    let smallest = layers.iter().filter(|l| l.activations > 0).map(|l| l.activations).min();
    println!(
        "{model}: {:.0} core-seconds of bootstraps; {:.2} GB gathered per image ({} words per ciphertext); \
         smallest table layer {} activations",
        core_seconds,
        gathered / 1e9,
        params.big_lwe_dimension() + 1,
        smallest.unwrap_or(0)
    );
    println!(
        "{:>6} {:>9} {:>10} {:>14} {:>10} {:>15} {:>10}",
        "cores", "machines", "compute s", "exch s 10G", "total 10G", "exch s 100G", "total 100G"
    );
    for cores in [2usize, 8, 64, 512, 4096] {
        let machines = cores.div_ceil(per_machine);
        let (compute, exchange_10) = seconds(&layers, cores, machines, 10.0);
        let (_, exchange_100) = seconds(&layers, cores, machines, 100.0);
        println!(
            "{cores:>6} {machines:>9} {compute:>10.0} {exchange_10:>14.1} {:>10.0} {exchange_100:>15.1} {:>10.0}",
            compute + exchange_10,
            compute + exchange_100
        );
    }
    for link in [10.0, 100.0] {
        // Exchange is almost constant in the machine count, compute falls as 1/cores.
        let exchange = gathered * 8.0 / (link * 1e9);
        println!(
            "at {link:.0} Gbit/s exchange equals compute near {:.0} cores ({:.1} s each)",
            core_seconds / exchange,
            exchange
        );
    }
    Ok(())
}
