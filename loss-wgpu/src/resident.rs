//! Device-resident problems: upload once, run many times, read back only what is asked.

use std::sync::Arc;

use loss_core::{DType, ElemsMut, LossError, Problem, Result};

use crate::context::{WgpuContext, backend_error};
use crate::workspace::{Dest, Request, Workspace};

/// A problem whose logits, targets and weights live on the device (from
/// [`crate::WgpuBackend::upload`]). It owns its buffers, so it does not contend with the
/// backend's end-to-end calls; it keeps the backend's device alive.
///
/// Every run method submits the work and returns once the device has finished it. Only the
/// values a method names cross back to the host: the loss (one value for sum and mean, one per
/// position for none; the z part included) and, through [`DeviceProblem::read_grad`], the
/// gradient (in `f32`). Any problem the backend takes can be uploaded: half logits stay half on
/// the device, and the extensions run in the same kernels as end to end.
pub struct DeviceProblem {
    ctx: Arc<WgpuContext>,
    ws: Workspace,
}

impl std::fmt::Debug for DeviceProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceProblem")
            .field("loss_len", &self.loss_len())
            .field("grad_len", &self.grad_len())
            .finish_non_exhaustive()
    }
}

impl DeviceProblem {
    pub(crate) fn new(ctx: Arc<WgpuContext>, problem: &Problem<'_>) -> Result<Self> {
        let mut ws = Workspace::new(&ctx);
        ws.load(&ctx, problem)?;
        Ok(DeviceProblem { ctx, ws })
    }

    /// Number of loss values ([`Problem::loss_len`]): also the upstream gradient's length.
    pub fn loss_len(&self) -> usize {
        self.ws.loss_len()
    }

    /// Number of gradient values (the logits' length).
    pub fn grad_len(&self) -> usize {
        self.ws.grad_len()
    }

    fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
        if expected == got {
            Ok(())
        } else {
            Err(LossError::ShapeMismatch {
                what,
                expected: format!("{expected} values"),
                got: got.to_string(),
            })
        }
    }

    /// Computes the loss and writes it into `loss` ([`DeviceProblem::loss_len`] values).
    pub fn forward_into(&mut self, loss: &mut [f32]) -> Result<()> {
        Self::check_len("loss", self.loss_len(), loss.len())?;
        let at = self.ws.run(&self.ctx, &Request::loss())?;
        self.ws.read(&self.ctx, at, Dest::loss(loss))
    }

    /// Computes the loss, in a new vector. No gradient is computed.
    pub fn forward(&mut self) -> Result<Vec<f32>> {
        let mut loss = vec![0.0; self.loss_len()];
        self.forward_into(&mut loss)?;
        Ok(loss)
    }

    /// Computes loss and gradient in one fused pass for upstream gradient `grad_output`
    /// ([`DeviceProblem::loss_len`] values); writes the loss into `loss` and leaves the
    /// gradient on the device for [`DeviceProblem::read_grad`].
    pub fn forward_backward_into(&mut self, grad_output: &[f32], loss: &mut [f32]) -> Result<()> {
        Self::check_len("grad_output", self.loss_len(), grad_output.len())?;
        Self::check_len("loss", self.loss_len(), loss.len())?;
        let request = Request {
            grad_output: Some(grad_output),
            ..Request::loss()
        };
        let at = self.ws.run(&self.ctx, &request)?;
        self.ws.read(&self.ctx, at, Dest::loss(loss))
    }

    /// [`DeviceProblem::forward_backward_into`] returning the loss in a new vector.
    pub fn forward_backward(&mut self, grad_output: &[f32]) -> Result<Vec<f32>> {
        let mut loss = vec![0.0; self.loss_len()];
        self.forward_backward_into(grad_output, &mut loss)?;
        Ok(loss)
    }

    /// Computes the gradient for upstream gradient `grad_output` and waits for the device to
    /// finish; nothing is read back (see [`DeviceProblem::read_grad`]).
    pub fn backward(&mut self, grad_output: &[f32]) -> Result<()> {
        Self::check_len("grad_output", self.loss_len(), grad_output.len())?;
        let request = Request {
            loss: false,
            lse: false,
            grad_output: Some(grad_output),
            grad_dtype: DType::F32,
        };
        self.ws.run(&self.ctx, &request)?;
        self.ws.finish(&self.ctx)
    }

    /// Copies the gradient of the last [`DeviceProblem::backward`] or
    /// [`DeviceProblem::forward_backward`] into `grad` ([`DeviceProblem::grad_len`] values). A
    /// [`LossError::Backend`] when no gradient has been computed yet.
    pub fn read_grad(&mut self, grad: &mut [f32]) -> Result<()> {
        Self::check_len("grad", self.grad_len(), grad.len())?;
        if !self.ws.grad_ready() {
            return Err(backend_error(
                "read_grad: no gradient has been computed for this upload yet",
            ));
        }
        let dest = Dest {
            grad: Some(ElemsMut::F32(grad)),
            ..Dest::default()
        };
        self.ws.read(&self.ctx, None, dest)
    }

    /// The GPU time of the last call that read something back (timestamps around its passes),
    /// in nanoseconds; `None` when the device has no timestamp queries.
    pub fn last_gpu_ns(&self) -> Option<f64> {
        self.ws.last_gpu_ns()
    }
}

impl loss_core::ResidentProblem for DeviceProblem {
    fn loss_len(&self) -> usize {
        DeviceProblem::loss_len(self)
    }
    fn grad_len(&self) -> usize {
        DeviceProblem::grad_len(self)
    }
    fn forward_into(&mut self, loss: &mut [f32]) -> Result<()> {
        DeviceProblem::forward_into(self, loss)
    }
    fn forward_backward_into(&mut self, grad_output: &[f32], loss: &mut [f32]) -> Result<()> {
        DeviceProblem::forward_backward_into(self, grad_output, loss)
    }
    fn backward(&mut self, grad_output: &[f32]) -> Result<()> {
        DeviceProblem::backward(self, grad_output)
    }
    fn read_grad(&mut self, grad: &mut [f32]) -> Result<()> {
        DeviceProblem::read_grad(self, grad)
    }
    fn last_gpu_ns(&self) -> Option<f64> {
        DeviceProblem::last_gpu_ns(self)
    }
}
