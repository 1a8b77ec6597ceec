//! The model's view of a checkpoint: a [`WeightScope`] reads the tensors below a name prefix
//! into Burn parameters, as candle's `VarBuilder` does, whatever their storage (dense, packed
//! by `qpeft quantize`, or an init checkpoint's Q + L·R, decoded by [`crate::formats`]).
//!
//! This is the one boundary where HF's `[out, in]` linear weights become Burn's `[in, out]`
//! (see [`WeightScope::linear`]); everywhere else qpeft keeps `[out, in]`.

use crate::kernels::Backend;
use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Tensor, TensorData};

use crate::error::{Error, Result};
use crate::formats::checkpoint::WeightFile;
use crate::formats::packed::FrozenWeight;
use crate::formats::safetensors::transpose;

/// A view of a [`WeightFile`] below a name prefix.
pub struct WeightScope<'a> {
    file: &'a WeightFile,
    prefix: String,
}

impl<'a> WeightScope<'a> {
    /// The tensors of `file` below `prefix` (e.g. `"bert."`).
    pub fn new(file: &'a WeightFile, prefix: &str) -> Self {
        WeightScope {
            file,
            prefix: prefix.to_string(),
        }
    }

    /// The scope `prefix + name + "."`.
    pub fn child(&self, name: &str) -> WeightScope<'a> {
        WeightScope {
            file: self.file,
            prefix: format!("{}{name}.", self.prefix),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.file.contains(&self.key(name))
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let values = self.file.read_f32(&self.key(name), &shape)?;
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }

    /// The first of `names` present in the file (old checkpoints say `gamma`/`beta`).
    fn tensor_alias<B: Backend>(
        &self,
        names: &[&str],
        len: usize,
        device: &B::Device,
    ) -> Result<Tensor<B, 1>> {
        let name = names
            .iter()
            .find(|n| self.contains(n))
            .copied()
            .unwrap_or(names[0]);
        self.tensor(name, [len], device)
    }

    /// The f32 tensor `name` below this scope (F32, F16 or BF16 stored), checking its shape.
    pub fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.file.read_f32(&self.key(name), shape)
    }

    /// The frozen weight of the linear below this scope, as stored (packed or dense).
    pub fn frozen_weight(&self, d_in: usize, d_out: usize) -> Result<FrozenWeight> {
        self.file.frozen_weight(&self.prefix, d_in, d_out)
    }

    /// A linear layer stored by HF as `weight [out, in]` and `bias [out]`, or quantized by
    /// `qpeft quantize` (dequantized); an init checkpoint's adapter is merged in.
    pub fn linear<B: Backend>(
        &self,
        d_in: usize,
        d_out: usize,
        device: &B::Device,
    ) -> Result<Linear<B>> {
        let weight_out_in = self.file.dense_weight(&self.prefix, d_in, d_out)?;
        let weight_in_out = transpose(&weight_out_in, d_out, d_in);
        let weight = Tensor::from_data(TensorData::new(weight_in_out, [d_in, d_out]), device);
        let bias = self.tensor("bias", [d_out], device)?;
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias: Some(Param::from_tensor(bias)),
        })
    }

    /// An embedding table `[n, d]`, dequantized if the file stores it quantized.
    pub fn embedding<B: Backend>(
        &self,
        n: usize,
        d: usize,
        device: &B::Device,
    ) -> Result<Embedding<B>> {
        let values = self.file.embedding_table(&self.prefix, n, d)?;
        let weight = Tensor::from_data(TensorData::new(values, [n, d]), device);
        Ok(Embedding {
            weight: Param::from_tensor(weight),
        })
    }

    pub fn layer_norm<B: Backend>(
        &self,
        d: usize,
        epsilon: f64,
        device: &B::Device,
    ) -> Result<LayerNorm<B>> {
        let mut norm = LayerNormConfig::new(d).with_epsilon(epsilon).init(device);
        norm.gamma = Param::from_tensor(self.tensor_alias(&["weight", "gamma"], d, device)?);
        norm.beta = Some(Param::from_tensor(self.tensor_alias(
            &["bias", "beta"],
            d,
            device,
        )?));
        Ok(norm)
    }
}

/// A Burn linear layer's weight as an `[out, in]` f64 matrix (the reverse boundary).
pub fn linear_weight_out_in<B: Backend>(linear: &Linear<B>) -> Result<faer::Mat<f64>> {
    let [d_in, d_out] = linear.weight.dims();
    let values = linear
        .weight
        .val()
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| Error::Internal(format!("reading a weight back: {e:?}")))?;
    // Burn stores [in, out] row-major: element (i, o) at i·out + o.
    Ok(faer::Mat::from_fn(d_out, d_in, |o, i| {
        f64::from(values[i * d_out + o])
    }))
}

/// Replaces a Burn linear layer's weight with an `[out, in]` matrix (rounded to f32).
pub fn set_linear_weight_out_in<B: Backend>(
    linear: &mut Linear<B>,
    weight: faer::MatRef<'_, f64>,
) -> Result<()> {
    let [d_in, d_out] = linear.weight.dims();
    assert!(
        weight.nrows() == d_out && weight.ncols() == d_in,
        "weight is {}×{}, the layer needs [out, in] = {d_out}×{d_in}",
        weight.nrows(),
        weight.ncols()
    );
    let values: Vec<f32> = (0..d_in * d_out)
        .map(|k| weight[(k % d_out, k / d_out)] as f32)
        .collect();
    let device = linear.weight.device();
    linear.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(values, [d_in, d_out]),
        &device,
    ));
    Ok(())
}
