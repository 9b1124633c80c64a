//! AdamW over the adapter matrices, the learning-rate schedules and global-norm clipping, each
//! with PyTorch's / transformers' exact arithmetic so runs compare with PEFT step for step.

use crate::recipe::{OptimConfig, Schedule};
use burn::tensor::Tensor;

/// The learning rate of optimizer step `step` (0-based), as transformers' schedulers compute it:
/// linear warmup from 0, then constant, linear decay to 0 or half-cosine decay to 0 at `total`.
pub fn learning_rate(cfg: &OptimConfig, step: usize, total: usize) -> f64 {
    let warmup = cfg.warmup_steps;
    if step < warmup {
        return cfg.lr * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    cfg.lr
        * match cfg.schedule {
            Schedule::Constant => 1.0,
            Schedule::Linear => (1.0 - progress).max(0.0),
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()),
        }
}

/// `sqrt(Σ‖g‖²)` over all gradients, as `torch.nn.utils.clip_grad_norm_` reports it.
pub fn global_norm(grads: &[Tensor<2>]) -> f64 {
    let total = grads
        .iter()
        .map(|g| (g.clone() * g.clone()).sum())
        .reduce(|a, b| a + b);
    total.map_or(0.0, |t| t.into_scalar::<f32>() as f64).sqrt()
}

/// Scales gradients so their global norm is at most `max_norm` (torch's `clip_grad_norm_`:
/// factor `max_norm / (norm + 1e-6)`, capped at 1). `max_norm = 0` leaves them.
pub fn clip(grads: Vec<Tensor<2>>, norm: f64, max_norm: f64) -> Vec<Tensor<2>> {
    if max_norm <= 0.0 {
        return grads;
    }
    let factor = (max_norm / (norm + 1e-6)).min(1.0);
    if factor >= 1.0 {
        return grads;
    }
    grads.into_iter().map(|g| g * factor as f32).collect()
}

/// AdamW with its hyper-parameters and moments, one pair per parameter, in the order parameters
/// are handed in.
pub struct AdamW {
    pub cfg: OptimConfig,
    pub m: Vec<Tensor<2>>,
    pub v: Vec<Tensor<2>>,
    /// Updates applied so far (bias correction uses `step + 1` for the next one).
    pub step: usize,
}

impl AdamW {
    pub fn new(params: &[Tensor<2>], cfg: &OptimConfig) -> Self {
        let zeros = |p: &Tensor<2>| Tensor::zeros(p.dims(), &p.device());
        Self {
            cfg: cfg.clone(),
            m: params.iter().map(zeros).collect(),
            v: params.iter().map(zeros).collect(),
            step: 0,
        }
    }

    /// One decoupled-weight-decay Adam update (torch.optim.AdamW, `amsgrad = False`). Tensors
    /// are plain (not autodiff); the caller re-attaches the results to the graph.
    pub fn update(
        &mut self,
        params: Vec<Tensor<2>>,
        grads: Vec<Tensor<2>>,
        lr: f64,
    ) -> Vec<Tensor<2>> {
        let cfg = &self.cfg;
        self.step += 1;
        let [b1, b2] = cfg.betas;
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - b2.powi(self.step as i32)).sqrt();
        let step_size = (lr / bc1) as f32;
        params
            .into_iter()
            .zip(grads)
            .enumerate()
            .map(|(i, (p, g))| {
                let p = p * (1.0 - lr * cfg.weight_decay) as f32;
                let m = self.m[i].clone() * b1 as f32 + g.clone() * (1.0 - b1) as f32;
                let v = self.v[i].clone() * b2 as f32 + g.clone() * g * (1.0 - b2) as f32;
                let denom = v.clone().sqrt() / bc2_sqrt as f32 + cfg.eps as f32;
                let p = p - m.clone() / denom * step_size;
                self.m[i] = m;
                self.v[i] = v;
                p
            })
            .collect()
    }
}
