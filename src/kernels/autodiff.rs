//! The fused operations under autodiff: each is one graph node whose backward calls the inner
//! backend's backward operation (Burn's custom-kernel pattern: compute-bound, the state holds
//! what the backward reads).

use burn::tensor::backend::AutodiffBackend as _;
use burn::tensor::ops::FloatTensor;
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, unary};

use super::Backend;

impl<B: Backend, C: CheckpointStrategy> Backend for Autodiff<B, C> {
    fn gelu_erf(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GeluErf;

        impl<B: Backend> Backward<B, 1> for GeluErf {
            type State = FloatTensor<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let input = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::gelu_erf_backward(input, grad)
                });
            }
        }

        match GeluErf
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let output = B::gelu_erf(x.primitive.clone());
                prep.finish(x.primitive, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::gelu_erf(x.primitive)),
        }
    }

    fn attention_probs(
        scores: FloatTensor<Self>,
        mask_bias: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        let op = AttentionProbs { scale };
        match op
            .prepare::<C>([scores.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let probs = B::attention_probs(scores.primitive, mask_bias.primitive, scale);
                prep.finish((probs.clone(), None), probs)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::attention_probs(
                scores.primitive,
                mask_bias.primitive,
                scale,
            )),
        }
    }

    fn attention_probs_dropout(
        scores: FloatTensor<Self>,
        mask_bias: FloatTensor<Self>,
        scale: f32,
        keep: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // The probabilities before dropout are not an output of the graph: only the product
        // with the (constant) mask is differentiated; the first element carries no gradient.
        let (probs, dropped) = B::attention_probs_dropout(
            scores.primitive.clone(),
            mask_bias.primitive,
            scale,
            keep.primitive.clone(),
        );
        let op = AttentionProbs { scale };
        let output = match op
            .prepare::<C>([scores.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((probs.clone(), Some(keep.primitive)), dropped),
            OpsKind::UnTracked(prep) => prep.finish(dropped),
        };
        (Self::from_inner(probs), output)
    }

    fn add_layer_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        let nodes = [
            x.node.clone(),
            residual.node.clone(),
            gamma.node.clone(),
            beta.node.clone(),
        ];
        match AddLayerNorm.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let forward = B::add_layer_norm_forward(
                    x.primitive,
                    residual.primitive,
                    gamma.primitive.clone(),
                    beta.primitive,
                    eps,
                );
                let state = (forward.normalized, forward.inv_std, gamma.primitive);
                prep.finish(state, forward.output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::add_layer_norm(
                x.primitive,
                residual.primitive,
                gamma.primitive,
                beta.primitive,
                eps,
            )),
        }
    }
}

/// softmax(scores·scale + mask)(⊙ keep): the state is the probabilities and the mask.
#[derive(Debug)]
struct AttentionProbs {
    scale: f32,
}

impl<B: Backend> Backward<B, 1> for AttentionProbs {
    type State = (FloatTensor<B>, Option<FloatTensor<B>>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (probs, keep) = ops.state;
        let scale = self.scale;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::attention_probs_backward(probs, keep, grad, scale)
        });
    }
}

/// LayerNorm(x + residual)·gamma + beta: the state is the normalized rows, 1/std and gamma.
#[derive(Debug)]
struct AddLayerNorm;

impl<B: Backend> Backward<B, 4> for AddLayerNorm {
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (normalized, inv_std, gamma) = ops.state;
        let [x, residual, gamma_node, beta_node] = ops.parents;
        let g = B::add_layer_norm_backward(grad, normalized, inv_std, gamma);
        if let Some(node) = residual {
            grads.register::<B>(node.id, g.input.clone());
        }
        if let Some(node) = x {
            grads.register::<B>(node.id, g.input);
        }
        if let Some(node) = gamma_node {
            grads.register::<B>(node.id, g.gamma);
        }
        if let Some(node) = beta_node {
            grads.register::<B>(node.id, g.beta);
        }
    }
}
