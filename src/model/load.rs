//! Loading a model from safetensors: the architecture from the metadata, tensors by PyTorch name,
//! with explicit shape checks and errors that name the tensor.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::{Architecture, LayerSpec, Model, Node};
use crate::error::{Error, Result};

/// Largest model file accepted (the zoo stays far below).
const MAX_MODEL_BYTES: u64 = 512 << 20;
/// Model-format version this build reads.
pub const MODEL_FORMAT_VERSION: u32 = 1;

pub fn load_model(path: &Path) -> Result<Model> {
    let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    if len > MAX_MODEL_BYTES {
        return Err(Error::format(
            path,
            format!("model file is {len} bytes, more than the {MAX_MODEL_BYTES} accepted"),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_model(&bytes).map_err(|e| match e {
        Error::Model(m) => Error::format(path, format!("not a valid pkn model: {m}")),
        other => other,
    })
}

/// Parse a model from the bytes of a safetensors file.
pub fn parse_model(bytes: &[u8]) -> Result<Model> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| Error::Model(format!("safetensors: {e}")))?;
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| Error::Model(format!("safetensors: {e}")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    match meta.get("format").map(String::as_str) {
        Some("pkn-model") => {}
        _ => return Err(Error::Model("metadata lacks format = \"pkn-model\"".into())),
    }
    let version: u32 = meta
        .get("version")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Model("metadata lacks a numeric version".into()))?;
    if version > MODEL_FORMAT_VERSION {
        return Err(Error::Model(format!(
            "model format version {version} is newer than this pkn reads ({MODEL_FORMAT_VERSION}); upgrade pkn"
        )));
    }
    let arch_json = meta
        .get("architecture")
        .ok_or_else(|| Error::Model("metadata lacks architecture".into()))?;
    let arch: Architecture = serde_json::from_str(arch_json).map_err(|e| Error::Model(format!("architecture: {e}")))?;
    check_quantization(&arch)?;
    let reader = TensorReader { tensors: &tensors };
    let nodes = arch
        .layers
        .iter()
        .map(|spec| reader.node(spec))
        .collect::<Result<Vec<_>>>()?;
    Ok(Model { arch, nodes })
}

fn check_quantization(arch: &Architecture) -> Result<()> {
    let q = &arch.quantization;
    let ok = |b: u32| (2..=8).contains(&b);
    let widths = [q.input_bits]
        .into_iter()
        .chain(q.weight_bits.values())
        .chain(q.activation_bits.values());
    if !widths.into_iter().all(ok) {
        return Err(Error::Model(format!(
            "quantization bit widths must be 2..=8, got {q:?}"
        )));
    }
    if arch.input.iter().any(|&d| d == 0 || d > 4096) {
        return Err(Error::Model(format!("input shape {:?} is out of range", arch.input)));
    }
    Ok(())
}

struct TensorReader<'a> {
    tensors: &'a SafeTensors<'a>,
}

impl TensorReader<'_> {
    /// Read a tensor as f64 after checking its shape.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f64>> {
        let t = self
            .tensors
            .tensor(name)
            .map_err(|_| Error::Model(format!("tensor {name} is missing")))?;
        if t.shape() != shape {
            return Err(Error::Model(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                t.shape()
            )));
        }
        let data = t.data();
        let values: Vec<f64> = match t.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            other => {
                return Err(Error::Model(format!(
                    "tensor {name} has dtype {other:?}, expected F32 or F64"
                )))
            }
        };
        if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::Model(format!(
                "tensor {name} holds a non-finite value at index {bad}"
            )));
        }
        Ok(values)
    }

    fn optional_scalar(&self, name: &str) -> Result<Option<f64>> {
        if self.tensors.tensor(name).is_err() {
            return Ok(None);
        }
        Ok(Some(self.get(name, &[])?[0]))
    }

    fn node(&self, spec: &LayerSpec) -> Result<Node> {
        Ok(match spec {
            LayerSpec::Conv2d {
                name,
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
            } => {
                // Zero channels would let an empty weight tensor stand for any output count,
                // and padding of a kernel or more only adds outputs that see no input.
                if [*in_channels, *out_channels, *kernel, *stride].contains(&0) || padding >= kernel {
                    return Err(Error::Model(format!(
                        "layer {name}: channels, kernel and stride must be positive and padding smaller than the kernel"
                    )));
                }
                Node::Conv2d {
                    name: name.clone(),
                    in_channels: *in_channels,
                    out_channels: *out_channels,
                    kernel: *kernel,
                    stride: *stride,
                    padding: *padding,
                    weight: self.get(
                        &format!("{name}.weight"),
                        &[*out_channels, *in_channels, *kernel, *kernel],
                    )?,
                    bias: self.bias(name, *out_channels)?,
                }
            }
            LayerSpec::Dense {
                name,
                in_features,
                out_features,
            } => {
                if *in_features == 0 || *out_features == 0 {
                    return Err(Error::Model(format!("layer {name}: features must be positive")));
                }
                Node::Dense {
                    name: name.clone(),
                    in_features: *in_features,
                    out_features: *out_features,
                    weight: self.get(&format!("{name}.weight"), &[*out_features, *in_features])?,
                    bias: self.bias(name, *out_features)?,
                }
            }
            LayerSpec::Pkn { name } => Node::Pkn {
                name: name.clone(),
                cp: self.get(&format!("{name}.cp"), &[])?[0],
                ap: self.optional_scalar(&format!("{name}.ap"))?.unwrap_or(1.0),
            },
            LayerSpec::BatchNorm { name, eps } => self.batch_norm(name, *eps)?,
            LayerSpec::AvgPool { kernel, stride } => {
                if *kernel == 0 || *stride == Some(0) {
                    return Err(Error::Model("avg_pool: kernel and stride must be positive".into()));
                }
                Node::AvgPool {
                    kernel: *kernel,
                    stride: stride.unwrap_or(*kernel),
                }
            }
            LayerSpec::Flatten => Node::Flatten,
            LayerSpec::Add { name, from, shortcut } => Node::Add {
                name: name.clone(),
                from: from.clone(),
                shortcut: shortcut.iter().map(|spec| self.node(spec)).collect::<Result<_>>()?,
            },
        })
    }

    /// A bias is optional (PyTorch's bias=False); absent means zeros.
    fn bias(&self, name: &str, n: usize) -> Result<Vec<f64>> {
        let bias_name = format!("{name}.bias");
        if self.tensors.tensor(&bias_name).is_err() {
            return Ok(vec![0.0; n]);
        }
        self.get(&bias_name, &[n])
    }

    /// Batch norm in inference form, folded to y = scale * x + shift.
    fn batch_norm(&self, name: &str, eps: f64) -> Result<Node> {
        let n = self
            .tensors
            .tensor(&format!("{name}.running_mean"))
            .map_err(|_| Error::Model(format!("tensor {name}.running_mean is missing")))?
            .shape()
            .first()
            .copied()
            .ok_or_else(|| Error::Model(format!("tensor {name}.running_mean must be 1-D")))?;
        let gamma = self.get(&format!("{name}.weight"), &[n])?;
        let beta = self.get(&format!("{name}.bias"), &[n])?;
        let mean = self.get(&format!("{name}.running_mean"), &[n])?;
        let var = self.get(&format!("{name}.running_var"), &[n])?;
        let scale: Vec<f64> = gamma.iter().zip(&var).map(|(g, v)| g / (v + eps).sqrt()).collect();
        let shift = beta
            .iter()
            .zip(&mean)
            .zip(&scale)
            .map(|((b, m), s)| b - m * s)
            .collect();
        Ok(Node::Affine {
            name: name.to_string(),
            scale,
            shift,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn model_bytes(arch: &str, tensors: &[(&str, Vec<usize>)]) -> Vec<u8> {
        let data: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
            .iter()
            .map(|(n, s)| {
                let count: usize = s.iter().product();
                let bytes = (0..count).flat_map(|i| (i as f32 * 0.01).to_le_bytes()).collect();
                (n.to_string(), bytes, s.clone())
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = data
            .iter()
            .map(|(n, b, s)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let meta: HashMap<String, String> = [
            ("format".to_string(), "pkn-model".to_string()),
            ("version".to_string(), "1".to_string()),
            ("architecture".to_string(), arch.to_string()),
        ]
        .into();
        safetensors::serialize(views, &Some(meta)).unwrap()
    }

    const ARCH: &str = r#"{"name":"t","input":[1,4,4],"classes":["a","b"],
        "quantization":{"input_bits":4,"weight_bits":4,"activation_bits":4},
        "layers":[{"op":"dense","name":"fc","in_features":16,"out_features":2}]}"#;

    #[test]
    fn loads_a_dense_model() {
        let m = parse_model(&model_bytes(ARCH, &[("fc.weight", vec![2, 16]), ("fc.bias", vec![2])])).unwrap();
        assert_eq!(m.nodes.len(), 1);
    }

    #[test]
    fn shape_mismatch_names_the_tensor() {
        let err = parse_model(&model_bytes(ARCH, &[("fc.weight", vec![2, 15])])).unwrap_err();
        assert!(err.to_string().contains("fc.weight"), "{err}");
    }

    #[test]
    fn missing_tensor_names_the_tensor() {
        let err = parse_model(&model_bytes(ARCH, &[])).unwrap_err();
        assert!(err.to_string().contains("fc.weight is missing"), "{err}");
    }

    #[test]
    fn unknown_layer_is_refused() {
        let arch = ARCH.replace("\"dense\"", "\"relu\"");
        let err = parse_model(&model_bytes(&arch, &[])).unwrap_err();
        assert!(err.to_string().contains("relu"), "{err}");
    }

    #[test]
    fn empty_layers_are_refused_before_their_bias_is_allocated() {
        // A [2^40, 0] weight holds no data; its zero bias would be 8 TB.
        let arch = ARCH.replace(
            r#""in_features":16,"out_features":2"#,
            r#""in_features":0,"out_features":1099511627776"#,
        );
        let err = parse_model(&model_bytes(&arch, &[("fc.weight", vec![1 << 40, 0])])).unwrap_err();
        assert!(err.to_string().contains("features must be positive"), "{err}");
    }

    #[test]
    fn conv_padding_must_be_smaller_than_the_kernel() {
        let conv = |padding: usize| {
            format!(
                r#"{{"name":"t","input":[1,4,4],"classes":["a"],
                "quantization":{{"input_bits":4,"weight_bits":4,"activation_bits":4}},
                "layers":[{{"op":"conv2d","name":"c","in_channels":1,"out_channels":1,"kernel":3,"padding":{padding}}}]}}"#
            )
        };
        let tensors = [("c.weight", vec![1, 1, 3, 3])];
        assert!(parse_model(&model_bytes(&conv(2), &tensors)).is_ok());
        let err = parse_model(&model_bytes(&conv(1_000_000_000), &tensors)).unwrap_err();
        assert!(err.to_string().contains("padding smaller than the kernel"), "{err}");
    }

    #[test]
    fn garbage_is_refused() {
        assert!(parse_model(b"not a model at all").is_err());
    }
}
