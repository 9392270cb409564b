//! candle's `cross_entropy` as a peer (feature `peers`), wrapped as a [`LossBackend`] so that it is
//! cross-checked and timed through exactly the same code as the workspace's backends.
//!
//! candle-nn computes the unweighted mean over index targets (`log_softmax` then `nll`), on the
//! CPU. Anything else — weights, sum/none, smoothing, probability targets, `ignore_index` in use,
//! K-dimensional input — is a typed `unsupported` error, which `run` reports as skipped. Each call
//! copies the logits into a candle tensor: that copy is part of what using candle costs.

use candle_core::{DType, Device, Tensor, Var};
use loss_core::{LossBackend, LossError, Outputs, Problem, Reduction, Result, TargetData};

/// candle-nn on the CPU (`name() == "candle"`).
pub struct CandleBackend {
    device: Device,
}

impl CandleBackend {
    /// candle's CPU device.
    pub fn new() -> Self {
        CandleBackend {
            device: Device::Cpu,
        }
    }
}

impl Default for CandleBackend {
    fn default() -> Self {
        Self::new()
    }
}

fn unsupported(feature: &str) -> LossError {
    LossError::Unsupported {
        backend: "candle".into(),
        feature: feature.into(),
    }
}

fn failed(e: candle_core::Error) -> LossError {
    LossError::Backend {
        backend: "candle".into(),
        message: e.to_string(),
    }
}

impl CandleBackend {
    fn inputs(&self, problem: &Problem<'_>) -> Result<(Tensor, Tensor)> {
        if problem.weight().is_some() {
            return Err(unsupported("class weights"));
        }
        if problem.reduction() != Reduction::Mean {
            return Err(unsupported("reductions other than mean"));
        }
        if problem.label_smoothing() != 0.0 {
            return Err(unsupported("label smoothing"));
        }
        if problem.shape().len() != 2 {
            return Err(unsupported("inputs other than (N, C)"));
        }
        if !problem.is_plain() {
            return Err(unsupported(
                "half logits, z-loss, soft-capping and position weights",
            ));
        }
        let Some(logits) = problem.logits().as_f32() else {
            return Err(unsupported("half logits"));
        };
        let TargetData::Indices(targets) = problem.target() else {
            return Err(unsupported("probability targets"));
        };
        if targets.contains(&problem.ignore_index()) {
            return Err(unsupported("ignore_index"));
        }
        let (n, c) = (problem.shape()[0], problem.shape()[1]);
        let x = Tensor::from_slice(logits, (n, c), &self.device).map_err(failed)?;
        let t = Tensor::from_slice(targets, n, &self.device).map_err(failed)?;
        Ok((x, t))
    }
}

impl LossBackend for CandleBackend {
    fn name(&self) -> &str {
        "candle"
    }

    fn compute(&self, problem: &Problem<'_>, mut out: Outputs<'_>) -> Result<()> {
        problem.check_outputs(&out)?;
        if out.wants_stats() {
            return Err(unsupported("the LSE and z-loss outputs"));
        }
        if let Some(g) = &out.grad
            && g.grad.dtype() != loss_core::DType::F32
        {
            return Err(unsupported("half gradients"));
        }
        // Checked before anything is written.
        self.inputs(problem)?;
        if let Some(loss) = out.loss.take() {
            self.forward_f32(problem, loss)?;
        }
        if let Some(mut g) = out.grad.take() {
            let buf = g.grad.as_f32_mut().expect("checked above");
            self.backward_f32(problem, g.grad_output, buf)?;
        }
        Ok(())
    }
}

impl CandleBackend {
    fn forward_f32(&self, problem: &Problem<'_>, loss: &mut [f32]) -> Result<()> {
        let (x, t) = self.inputs(problem)?;
        let l = candle_nn::loss::cross_entropy(&x, &t).map_err(failed)?;
        loss[0] = l
            .to_dtype(DType::F32)
            .and_then(|l| l.to_scalar::<f32>())
            .map_err(failed)?;
        Ok(())
    }

    fn backward_f32(
        &self,
        problem: &Problem<'_>,
        grad_output: &[f32],
        grad: &mut [f32],
    ) -> Result<()> {
        let (x, t) = self.inputs(problem)?;
        let var = Var::from_tensor(&x).map_err(failed)?;
        let l = candle_nn::loss::cross_entropy(var.as_tensor(), &t).map_err(failed)?;
        let grads = l.backward().map_err(failed)?;
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| failed(candle_core::Error::Msg("no gradient for the logits".into())))?;
        let g = (g * f64::from(grad_output[0]))
            .and_then(|g| g.flatten_all())
            .and_then(|g| g.to_vec1::<f32>())
            .map_err(failed)?;
        grad.copy_from_slice(&g);
        Ok(())
    }
}
