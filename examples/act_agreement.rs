//! What the bootstrapped ReLU's agreement with the integer reference would be under other noise
//! levels: the noise model of `QuantModel::act_flip_probability` over every Fashion-MNIST test
//! image, with the bootstrap's input noise (σ slots) and output noise divided by factors.
//! `cargo run --release --example act_agreement [model.onnx]`
use hedge::crypto::params::{ParameterSet, SecurityLevel};
use hedge::input::images::read_idx_images;
use hedge::model::network::Network;
use hedge::model::quant::{QuantModel, Variant};
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "models/fashion-cnn-relu.onnx".into());
    let data = Path::new("/usr/share/datasets/fashion-mnist");
    let network = Network::load(Path::new(&model), None)?;
    let calibration = network.read_inputs(&data.join("train-images-idx3-ubyte.gz"), 1000)?;
    let images = read_idx_images(&data.join("t10k-images-idx3-ubyte.gz"))?;
    let feats: Vec<Vec<f32>> = images
        .iter()
        .map(|im| network.image_features(im))
        .collect::<Result<_, _>>()?;
    let params = ParameterSet::for_level(SecurityLevel::L128);
    let q = QuantModel::quantize(&network.head, Variant::Act, None, &calibration, &params)?;
    let refs: Vec<_> = feats
        .iter()
        .filter_map(|f| q.input.quantize(f).ok())
        .map(|x| q.reference(&x))
        .collect();
    let sigma = params.pbs_input_std_slots();
    let out = q.act_output_noise(&params);
    println!("σ_in {sigma:.2} slots, output noise {out:.0} score units per score");
    println!("input ÷  output ÷  expected agreement (low–high)  P(200 of 200)");
    for in_div in [1.0, 2.0, 4.0, 10.0, 40.0, 100.0, 1e9] {
        for out_div in [1.0, 10.0, 1e9] {
            let (low, high) = refs
                .iter()
                .map(|r| q.flip_probability_with(r, sigma / in_div, out / out_div))
                .fold((0.0, 0.0), |(l, h), p| (l + p.at_least, h + p.at_most));
            let n = refs.len() as f64;
            let (worst, best) = (1.0 - high / n, 1.0 - low / n);
            println!(
                "{in_div:>7} {out_div:>9}  {:>9.3}–{:.3}%  {:>11.3}–{:.3}",
                100.0 * worst,
                100.0 * best,
                worst.powi(200),
                best.powi(200)
            );
        }
    }
    Ok(())
}
