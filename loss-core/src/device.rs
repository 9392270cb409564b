//! Backends that can keep a problem on a device: upload once, run many times, read back only
//! what is asked for. The harness times every such backend a second time this way (the
//! `resident` variant), through these traits alone.

use crate::backend::LossBackend;
use crate::error::Result;
use crate::problem::Problem;

/// A [`LossBackend`] whose problems can live on a device (a GPU's memory).
pub trait DeviceBackend: LossBackend {
    /// Copies a validated problem to the device.
    fn upload(&self, problem: &Problem<'_>) -> Result<Box<dyn ResidentProblem>>;

    /// One line naming the device, for reports.
    fn describe_device(&self) -> String;

    /// `Some(reason)` when timings on this device say nothing about the hardware the backend is
    /// meant for (a software rasteriser standing in for a GPU); `None` otherwise.
    fn timing_caveat(&self) -> Option<String> {
        None
    }

    /// The device's last-level cache in bytes, where it is known: a resident problem whose data
    /// fits in it may run above the device's memory bandwidth. `None`: unknown (a software
    /// device runs in the host's caches).
    fn cache_bytes(&self) -> Option<u64> {
        None
    }

    /// The device's copy bandwidth in GB/s (bytes read plus bytes written per second), over
    /// buffers of about `bytes` bytes, best of `passes`: the ceiling its resident timings are
    /// divided by.
    fn copy_bandwidth_gbps(&self, bytes: u64, passes: usize) -> Result<f64>;
}

/// A problem resident on a device (see [`DeviceBackend::upload`]).
///
/// Every run method returns once the device has finished; only what a method names crosses back
/// to the host.
pub trait ResidentProblem: Send {
    /// Number of loss values ([`Problem::loss_len`]), also the upstream gradient's length.
    fn loss_len(&self) -> usize;
    /// Number of gradient values (the logits' length).
    fn grad_len(&self) -> usize;
    /// Computes the loss into `loss`; no gradient.
    fn forward_into(&mut self, loss: &mut [f32]) -> Result<()>;
    /// Computes loss and gradient in one call; the loss is read back, the gradient stays on the
    /// device.
    fn forward_backward_into(&mut self, grad_output: &[f32], loss: &mut [f32]) -> Result<()>;
    /// Computes the gradient and waits for it; nothing is read back.
    fn backward(&mut self, grad_output: &[f32]) -> Result<()>;
    /// Copies the last computed gradient into `grad`.
    fn read_grad(&mut self, grad: &mut [f32]) -> Result<()>;
    /// The device time of the last call that read a result back, in nanoseconds, where the
    /// device measures it (timestamps around its passes); `None` otherwise.
    fn last_gpu_ns(&self) -> Option<f64> {
        None
    }
}
