//! Dropout whose masks come from qpeft's own seeded stream instead of the backend's RNG.
//!
//! Why: the CPU backend draws every mask element through a freshly built `Bernoulli` sampler
//! (a fifth of a training step, docs/performance.md); here a ChaCha8 stream yields one `u32`
//! per element, compared with p·2³². The stream is process-wide, like the backend's, and the
//! trainer reseeds it before every optimizer step from the run's seed (`dropout/step-N`), so
//! a resumed run draws the same masks as an uninterrupted one.

use std::sync::{Mutex, PoisonError};

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Shape, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

static STREAM: Mutex<Option<ChaCha8Rng>> = Mutex::new(None);

/// Restarts the dropout stream from `seed`.
pub fn seed_dropout(seed: u64) {
    *STREAM.lock().unwrap_or_else(PoisonError::into_inner) = Some(ChaCha8Rng::seed_from_u64(seed));
}

/// `len` mask values: 0 with probability `prob`, else `1/(1 − prob)` (inverted dropout). The
/// stream's words are drawn in one `fill` (the same words, in the same order, as one
/// `next_u32` per element) and compared in a loop that vectorizes.
fn scaled_keep_mask(len: usize, prob: f64) -> Vec<f32> {
    let threshold = (prob * 2f64.powi(32)).round() as u64;
    let scale = (1.0 / (1.0 - prob)) as f32;
    let mut words = vec![0u32; len];
    {
        let mut stream = STREAM.lock().unwrap_or_else(PoisonError::into_inner);
        let rng = stream.get_or_insert_with(|| ChaCha8Rng::seed_from_u64(0));
        rng.fill(&mut words[..]);
    }
    words
        .into_iter()
        .map(|word| {
            if u64::from(word) < threshold {
                0.0
            } else {
                scale
            }
        })
        .collect()
}

/// Zeroes each input element with probability `prob` and scales the rest by `1/(1 − prob)`,
/// only when the backend records gradients (training); the identity otherwise.
#[derive(Module, Clone, Debug)]
pub struct Dropout {
    pub prob: f64,
}

impl Dropout {
    /// `prob` in [0, 1).
    pub fn new(prob: f64) -> Self {
        assert!(
            (0.0..1.0).contains(&prob),
            "dropout probability {prob} outside [0, 1)"
        );
        Dropout { prob }
    }

    pub fn forward<B: Backend, const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        match self.keep_mask(input.shape(), &input.device()) {
            Some(mask) => input * mask,
            None => input,
        }
    }

    /// The mask [`Dropout::forward`] multiplies by (0 or `1/(1 − prob)` per element), for
    /// operations that apply it themselves; `None` when dropout is off.
    pub fn keep_mask<B: Backend, const D: usize>(
        &self,
        shape: Shape,
        device: &B::Device,
    ) -> Option<Tensor<B, D>> {
        if self.prob == 0.0 || !B::ad_enabled(device) {
            return None;
        }
        let mask = scaled_keep_mask(shape.num_elements(), self.prob);
        Some(Tensor::from_data(TensorData::new(mask, shape), device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_drop_the_asked_fraction_and_repeat_after_reseeding() {
        seed_dropout(7);
        let first = scaled_keep_mask(200_000, 0.1);
        let dropped = first.iter().filter(|&&v| v == 0.0).count() as f64 / first.len() as f64;
        // Binomial(200000, 0.1): standard deviation 0.00067.
        assert!((dropped - 0.1).abs() < 0.004, "dropped fraction {dropped}");
        assert!(
            first
                .iter()
                .all(|&v| v == 0.0 || v == (1.0f64 / 0.9) as f32)
        );
        seed_dropout(7);
        assert_eq!(first, scaled_keep_mask(200_000, 0.1));
        // The masks of the per-element draws they replace: one next_u32 each, in order, here
        // after a draw of odd length so that the stream is not at a block boundary.
        seed_dropout(9);
        let _ = scaled_keep_mask(3, 0.1);
        let bulk = scaled_keep_mask(1000, 0.1);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let threshold = (0.1 * 2f64.powi(32)).round() as u64;
        let per_element: Vec<f32> = (0..1003)
            .map(|_| rand::RngCore::next_u32(&mut rng))
            .skip(3)
            .map(|w| {
                if u64::from(w) < threshold {
                    0.0
                } else {
                    (1.0f64 / 0.9) as f32
                }
            })
            .collect();
        assert_eq!(bulk, per_element);
        assert!(scaled_keep_mask(1000, 0.0).iter().all(|&v| v == 1.0));
    }
}
