//! # loss-wgpu: weighted softmax cross-entropy in WGSL compute shaders, through wgpu
//!
//! [`WgpuBackend`] implements [`loss_core::LossBackend`] on any adapter wgpu finds (Vulkan,
//! Metal, DX12, GL; Mesa's lavapipe in CI). The semantics are loss-core's, corners included;
//! see [the crate docs of loss-core](loss_core) for the formulas.
//!
//! ## Choosing the adapter
//!
//! [`WgpuBackend::new`] reads the environment as wgpu's own tools do: `WGPU_BACKEND` (e.g.
//! `vulkan`, `metal`, `dx12`, `gl`) restricts the backends, `WGPU_ADAPTER_NAME` picks an adapter
//! whose name contains the given text, `WGPU_POWER_PREF` (`low`/`high`) the preference
//! otherwise. Without a usable adapter it returns
//! [`LossError::Unavailable`](loss_core::LossError::Unavailable), never panics.
//! [`WgpuBackend::describe`] names the adapter for reports.
//!
//! ## How it runs
//!
//! The kernel is chosen from the layout alone (`src/workspace.rs`, `Kernel::of`):
//!
//! - **Contiguous rows that fit on chip** (`inner = 1`, up to [`DEFAULT_FUSED_MAX_CLASSES`]
//!   classes on a GPU, twice that on a software adapter): `fused_main` (`src/shaders/fused.wgsl`),
//!   one workgroup per row. Each invocation loads its classes once, with neighbouring
//!   invocations at neighbouring addresses, into a private array (registers). From there it
//!   computes the row's max and Σ exp, the weighted sums the options need, the loss and the
//!   gradient, so a fused call reads each logit once and writes each gradient value once (8 bytes
//!   a logit).
//! - **Longer rows** are cut into segments of [`DEFAULT_SPLIT_SEGMENT_CLASSES`] classes, one
//!   workgroup per (row, segment). This also spreads a few rows over the whole device. It takes
//!   two dispatches, three when the weighted sums are needed:
//!   - each segment's `(max, Σ exp, poisoned)` partial;
//!   - each segment's sums;
//!   - the gradient, after every workgroup of the row has merged the row's partials in segment
//!     order itself.
//! - **Narrow contiguous rows** (16 to [`DEFAULT_SERIAL_MAX_CLASSES`] classes): `narrow_main`
//!   (`src/shaders/narrow.wgsl`). A workgroup loads a tile of whole rows, coalesced, into
//!   workgroup memory, computes one row per invocation from it, and stores the gradient tile
//!   back coalesced.
//! - **Strided class axes** (`inner ≥ 32`, or narrow rows with `inner > 1`) and rows of fewer
//!   than 16 classes run one position per invocation (`row_serial` in `src/shaders/row.wgsl`).
//!   With a strided axis, neighbouring invocations then read neighbouring addresses; 32 rows of
//!   a few classes are a few cache lines.
//! - **Short strided axes with many classes**: one workgroup per position (`row_main`).
//!
//! The flags of a call (targets, smoothing, loss, gradient, per-position scale) and the values
//! per invocation are compile-time constants of the `fused.wgsl` pipelines: one pipeline per
//! variant, built on first use and cached, with no run-time branch on them. Those modules are
//! created without naga's loop bounding (every loop has a constant or host-given trip count);
//! bounds checks stay. The element type and the extensions (below) are compile-time constants
//! of every kernel's pipelines, `row.wgsl`'s included, so a plain `f32` problem runs the plain
//! kernels, with nothing of the extensions in them.
//!
//! Workgroup merges use `subgroupShuffleXor` butterflies where the adapter has subgroups. The
//! butterfly has a fixed pattern for the device's fixed subgroup size, so it is deterministic.
//! Elsewhere, and by default on software adapters (which emulate subgroups, at half the
//! speed), they use fixed-shape shared-memory trees. Sums over positions go through fixed-shape
//! workgroup trees too (`src/shaders/reduce.wgsl`), so the same input gives the same bits on
//! every run; nothing uses float atomics.
//!
//! A call is one queue submission. The dispatches, the loss reduction and the copies to the
//! read-back buffer are recorded in one command buffer, and the host waits on that submission
//! only. Parameters are rewritten only when they change. Where the device has timestamp
//! queries, the passes are timed on the GPU ([`DeviceProblem::last_gpu_ns`]).
//!
//! Grids become 2-D past the device's workgroups per dimension (65,535). Inputs larger than one
//! storage binding are split into several dispatches over ranges of batch items; an item itself
//! must fit one binding, else
//! [`LossError::Unsupported`](loss_core::LossError::Unsupported). [`WgpuOptions`] can lower these
//! limits and force each kernel, which is how the tests reach every variant on small data.
//!
//! Index targets are uploaded as `u32` (WGSL has no 64-bit integers); `ignore_index` becomes
//! a reserved value during that conversion, on the host.
//!
//! ## Element types
//!
//! bf16 and f16 logits (and probability targets) are uploaded as their raw 2-byte elements,
//! two to a `u32` word, and widened on the device in the one accessor every kernel reads them
//! through (`src/shaders/extensions.wgsl`): bf16 is the top half of an `f32`
//! (`bitcast<f32>(bits << 16)`), f16 is widened on its bits (sign, exponent rebased, subnormals
//! scaled exactly, infinities and NaN as bits: `unpack2x16float` would be exact too, but WGSL
//! leaves its infinities and NaN to the implementation), needing no device feature. `shader-f16` is not used, even where
//! the adapter has it: it gives f16 *arithmetic*, and the kernels want `f32` arithmetic on the
//! widened values. So a half problem runs exactly the dispatches and arithmetic of the `f32`
//! problem of its widened values: the same bits, only the loads differ (the test
//! `half_elements_widen_exactly` checks every bit pattern of both types on the device). The
//! chunking counts 4 bytes an element whatever the type (the `f32` gradient).
//!
//! A gradient asked for in a half type is computed in `f32`, then narrowed on the device by a
//! small pass (`src/shaders/pack.wgsl`) that packs two rounded elements per word, and read back
//! at 2 bytes an element. A pass, not the kernels themselves: in none of the kernel families do
//! the two elements of a word belong to one invocation (`fused_main` gives neighbouring classes
//! to neighbouring invocations, rows of odd length share words, strided rows interleave). The
//! rounding is to nearest even, once, on the bits in integers: bf16 with
//! `bits + 0x7fff + lsb` (NaN kept NaN), f16 as the `half` crate's conversion (subnormals,
//! overflow to ±∞), not `pack2x16float`, which WGSL leaves indeterminate out of the f16 range.
//!
//! ## Extensions
//!
//! The soft-cap (`x̃ = a·tanh(x/a)`, `−∞ → −a`) is applied in the same accessor, so every kernel
//! sees capped logits; the gradient is multiplied by `1 − (x̃/a)²` where it is written. The tanh
//! is the kernels' own (Cephes' `tanhf` without its cancellation), within 3.2 ulp on lavapipe;
//! its bound is stated in `extensions.wgsl`. Position weights, the z-loss and the per-position
//! LSE live in each kernel family's per-position epilogue (`store_position`, `grad_factors`,
//! `finish_grad`): `s_i·L_i` and `z·s_i·LSE_i²` per position, the LSE written beside them when
//! asked (ignored positions included), and `2·z·s_i·LSE_i·p` added to the gradient's
//! coefficient of `p`. For `sum` and `mean` the z parts are reduced by the same fixed trees as
//! the cross-entropy, apart from it (the mean divides them by `V = Σ_valid s_i`, the
//! cross-entropy by `D`); `D`, `V` and the upstream scales come from loss-core's `formula`, in
//! `f64`, on the host. [`LossBackend::compute`] asks the device for exactly what an
//! [`Outputs`] names, in one submission.
//!
//! ## Two ways to call it
//!
//! - **End to end**: the [`LossBackend`] methods take host slices and return host slices. The
//!   device buffers behind them are kept and grown across calls.
//! - **Device resident**: [`WgpuBackend::upload`] copies a problem to the device once and
//!   returns a [`DeviceProblem`], which runs forward, backward, or both as often as wanted and
//!   reads back only what is asked:
//!
//! ```no_run
//! use loss_core::{LossOptions, Problem, Target};
//! use loss_wgpu::WgpuBackend;
//!
//! let backend = WgpuBackend::new()?;
//! let logits = [1.0f32, 2.0, 0.5, -1.0, 0.0, 3.0];
//! let problem = Problem::new(
//!     &logits,
//!     &[2, 3],
//!     Target::Indices { data: &[1, 2], shape: &[2] },
//!     LossOptions::new(),
//! )?;
//! let mut resident = backend.upload(&problem)?;
//! let loss = resident.forward()?; // the mean loss only
//! let loss = resident.forward_backward(&[1.0])?; // loss read back, gradient left on the device
//! resident.backward(&[1.0])?; // gradient computed, device synchronised, nothing read back
//! let mut grad = vec![0.0; resident.grad_len()];
//! resident.read_grad(&mut grad)?; // the gradient, when it is wanted on the host
//! # Ok::<(), loss_core::LossError>(())
//! ```
//!
//! ## Precision
//!
//! Everything is `f32` (half inputs widened exactly, half gradients rounded once from `f32`);
//! sums run in fixed trees of at most a few thousand sequential terms per invocation, which
//! keeps the conformance tolerance (`rtol 1e-4`, `atol 1e-5`) at `C = 256K`, so the backend
//! keeps the file's tolerance ([`LossBackend::tolerance`] is not overridden; half-typed
//! gradients are held to the file's per-type tolerance). `LSE − x` is evaluated as
//! `(max − x) + ln Σ` so that large logits lose no digits. The mean's denominators `D` and `V`
//! (and `W = Σ w`) are summed on the host in `f64` at upload.
//!
//! A combination the backend cannot run is a
//! [`LossError::Unsupported`](loss_core::LossError::Unsupported), never a fallback: a batch item
//! whose logits (at 4 bytes each) or per-position outputs (3 values each) do not fit one storage
//! binding.

mod context;
mod resident;
mod workspace;

use std::sync::{Arc, Mutex};

use loss_core::{DType, ElemsMut, LossBackend, Outputs, Problem, Result};

use context::WgpuContext;
pub use context::{
    DEFAULT_FUSED_MAX_CLASSES, DEFAULT_SERIAL_MAX_CLASSES, DEFAULT_SPLIT_SEGMENT_CLASSES,
    WgpuOptions,
};
pub use resident::DeviceProblem;
use workspace::{Dest, Request, Workspace};

/// The backend's [`LossBackend::name`].
pub const NAME: &str = "wgpu";

/// Cross-entropy on a wgpu device. `Send + Sync`: calls from several threads take turns on the
/// backend's reusable buffers (resident problems have buffers of their own).
pub struct WgpuBackend {
    ctx: Arc<WgpuContext>,
    scratch: Mutex<Option<Workspace>>,
}

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuBackend")
            .field("adapter", &self.describe())
            .finish_non_exhaustive()
    }
}

impl WgpuBackend {
    /// Opens the adapter the environment selects (see the [crate docs](crate)); a
    /// [`LossError::Unavailable`](loss_core::LossError::Unavailable) when there is none.
    pub fn new() -> Result<Self> {
        Self::with_options(&WgpuOptions::default())
    }

    /// [`WgpuBackend::new`] with explicit [`WgpuOptions`] (e.g. a small storage-binding limit
    /// that forces inputs to be split into several dispatches).
    pub fn with_options(options: &WgpuOptions) -> Result<Self> {
        Ok(WgpuBackend {
            ctx: Arc::new(WgpuContext::new(options)?),
            scratch: Mutex::new(None),
        })
    }

    /// The adapter's information, as wgpu reports it.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.ctx.adapter_info
    }

    /// One line for reports: adapter name, backend API, device type and driver.
    pub fn describe(&self) -> String {
        let info = &self.ctx.adapter_info;
        format!(
            "{} ({:?}, {:?}, driver {} {})",
            info.name, info.backend, info.device_type, info.driver, info.driver_info
        )
    }

    /// Whether the adapter is a software rasteriser on the CPU (Mesa's lavapipe/llvmpipe): fine
    /// for checking correctness, meaningless for timing a GPU.
    pub fn is_software(&self) -> bool {
        self.ctx.adapter_info.device_type == wgpu::DeviceType::Cpu
    }

    /// The largest storage binding this backend uses, in bytes; larger inputs are split.
    pub fn max_binding_bytes(&self) -> u64 {
        self.ctx.max_binding_bytes
    }

    /// The device's copy bandwidth in GB/s (bytes read plus bytes written per second): the best
    /// of `passes` runs of a `vec4` copy kernel (`shaders/copy.wgsl`) between two buffers of
    /// `bytes` bytes (capped at one binding), timed by GPU timestamps around its pass where the
    /// device has them (else by the wall clock around submit and wait, which includes the
    /// submission's latency). This is what the harness divides the resident throughput by, as
    /// it divides the CPU backends' throughput by the host's measured bandwidth.
    pub fn measure_copy_bandwidth(&self, bytes: u64, passes: usize) -> Result<f64> {
        let ctx = &self.ctx;
        let device = &ctx.device;
        let bytes = bytes.min(ctx.max_binding_bytes) / 16 * 16;
        if bytes == 0 {
            return Err(context::backend_error("no room for a bandwidth probe"));
        }
        let make = |usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bandwidth probe"),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        let src = make(wgpu::BufferUsages::STORAGE);
        let dst = make(wgpu::BufferUsages::STORAGE);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("copy"),
            source: wgpu::ShaderSource::Wgsl(include_str!("shaders/copy.wgsl").into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("copy"),
            layout: None,
            module: &module,
            entry_point: Some("copy_main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("copy"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: src.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: dst.as_entire_binding(),
                },
            ],
        });
        let vectors = bytes / 16;
        let groups = vectors.div_ceil(256).min(u64::from(ctx.max_grid)).min(8192) as u32;
        let timer = ctx.timestamps.then(|| {
            let q = device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("copy time"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("copy time"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let read = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("copy time"),
                size: 16,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            (q, resolve, read)
        });
        let copy = || -> Result<f64> {
            let mut encoder =
                device.create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("copy"),
                    timestamp_writes: timer.as_ref().map(|(q, _, _)| {
                        wgpu::ComputePassTimestampWrites {
                            query_set: q,
                            beginning_of_pass_write_index: Some(0),
                            end_of_pass_write_index: Some(1),
                        }
                    }),
                });
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &group, &[]);
                pass.dispatch_workgroups(groups, 1, 1);
            }
            if let Some((q, resolve, read)) = &timer {
                encoder.resolve_query_set(q, 0..2, resolve, 0);
                encoder.copy_buffer_to_buffer(resolve, 0, read, 0, 16);
            }
            let start = std::time::Instant::now();
            let index = ctx.submit(encoder.finish());
            ctx.wait_for(index)?;
            let wall = start.elapsed().as_secs_f64();
            let Some((_, _, read)) = &timer else {
                return Ok(wall);
            };
            let slice = read.slice(..);
            let (tx, rx) = std::sync::mpsc::channel();
            slice.map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
            ctx.wait()?;
            rx.recv()
                .map_err(|_| context::backend_error("map callback dropped"))?
                .map_err(|e| context::backend_error(format!("map failed: {e}")))?;
            let ticks: [u64; 2] = {
                let view = slice
                    .get_mapped_range()
                    .map_err(|e| context::backend_error(format!("mapped range: {e}")))?;
                bytemuck::pod_read_unaligned(&view[..16])
            };
            read.unmap();
            let gpu = ticks[1].saturating_sub(ticks[0]) as f64
                * f64::from(ctx.queue.get_timestamp_period())
                * 1e-9;
            Ok(if gpu > 0.0 { gpu } else { wall })
        };
        copy()?; // first touch: the driver may allocate lazily
        let mut best = f64::INFINITY;
        for _ in 0..passes.max(1) {
            best = best.min(copy()?);
        }
        Ok(2.0 * bytes as f64 / best / 1e9)
    }

    /// The optional device features the backend opened (subgroups, timestamp queries), where
    /// the adapter has them. Half logits need none (see the [crate docs](crate#element-types)).
    pub fn features(&self) -> wgpu::Features {
        self.ctx.features
    }

    /// Whether the kernels' merges use subgroup operations on this device.
    pub fn uses_subgroups(&self) -> bool {
        self.ctx.subgroups
    }

    /// Queue submissions this backend (and its resident problems) made so far: a resident
    /// fused call makes one.
    pub fn submissions(&self) -> u64 {
        self.ctx.submits()
    }

    /// The device pass that narrows an `f32` gradient to a half type (`shaders/pack.wgsl`) on
    /// `values` alone, as the half type's bits: for tests of its rounding (to nearest even,
    /// once). A [`LossError::Backend`](loss_core::LossError::Backend) for `f32` or more values
    /// than one binding holds.
    #[doc(hidden)]
    pub fn narrow_on_device(&self, values: &[f32], dtype: DType) -> Result<Vec<u16>> {
        workspace::pack_values(&self.ctx, values, dtype)
    }

    /// Copies a validated problem to the device, for repeated runs without host transfers of
    /// the input (see [`DeviceProblem`]).
    pub fn upload(&self, problem: &Problem<'_>) -> Result<DeviceProblem> {
        DeviceProblem::new(Arc::clone(&self.ctx), problem)
    }

    /// Runs `f` on the backend's reusable workspace, loaded with `problem`.
    fn with_scratch<T>(
        &self,
        problem: &Problem<'_>,
        f: impl FnOnce(&WgpuContext, &mut Workspace) -> Result<T>,
    ) -> Result<T> {
        let mut guard = self.scratch.lock().unwrap_or_else(|poisoned| {
            // A call panicked while holding the buffers (a mapped staging buffer, say): start
            // over with fresh ones rather than trust their state.
            self.scratch.clear_poison();
            let mut guard = poisoned.into_inner();
            *guard = None;
            guard
        });
        let ws = guard.get_or_insert_with(|| Workspace::new(&self.ctx));
        ws.load(&self.ctx, problem)?;
        f(&self.ctx, ws)
    }
}

impl LossBackend for WgpuBackend {
    fn name(&self) -> &str {
        NAME
    }

    /// One queue submission for everything `out` asks: the kernels run with the loss only when
    /// the loss (or the z part) is asked, the gradient only when it is (forward, backward and
    /// fused are each their own fast path), the per-position LSE written beside them when asked,
    /// and a half-typed gradient packed on the device before it is read back.
    fn compute(&self, problem: &Problem<'_>, out: Outputs<'_>) -> Result<()> {
        problem.check_outputs(&out)?;
        let Outputs {
            loss,
            lse,
            mut z_loss,
            grad,
            ..
        } = out;
        let z_on = problem.z_loss() > 0.0;
        let (grad_output, grad) = match grad {
            Some(g) => (Some(g.grad_output), Some(g.grad)),
            None => (None, None),
        };
        let request = Request {
            loss: loss.is_some() || (z_on && z_loss.is_some()),
            lse: lse.is_some(),
            grad_output,
            grad_dtype: grad.as_ref().map_or(DType::F32, ElemsMut::dtype),
        };
        if !request.loss && !request.lse && grad_output.is_none() {
            // Nothing for the device: at most the z part of a problem without the z-loss.
            if let Some(z) = z_loss.as_deref_mut() {
                z.fill(0.0);
            }
            return Ok(());
        }
        self.with_scratch(problem, |ctx, ws| {
            let at = ws.run(ctx, &request)?;
            ws.read(
                ctx,
                at,
                Dest {
                    loss,
                    z_loss,
                    lse,
                    grad,
                },
            )
        })
    }
}

impl loss_core::DeviceBackend for WgpuBackend {
    fn upload(&self, problem: &Problem<'_>) -> Result<Box<dyn loss_core::ResidentProblem>> {
        Ok(Box::new(WgpuBackend::upload(self, problem)?))
    }

    fn describe_device(&self) -> String {
        self.describe()
    }

    fn timing_caveat(&self) -> Option<String> {
        self.is_software().then(|| {
            format!(
                "{} is a software adapter: its speed says nothing about a GPU",
                self.describe()
            )
        })
    }

    fn copy_bandwidth_gbps(&self, bytes: u64, passes: usize) -> Result<f64> {
        self.measure_copy_bandwidth(bytes, passes)
    }

    fn cache_bytes(&self) -> Option<u64> {
        // wgpu does not report a GPU's L2; these are the vendors' figures for the devices this
        // project has been lent or is likely to be. Unknown devices: `None`.
        const KNOWN: [(&str, u64); 6] = [
            ("H200", 50 << 20),
            ("H100", 50 << 20),
            ("A100", 40 << 20),
            ("L40", 96 << 20),
            ("RTX 4090", 72 << 20),
            ("MI300", 256 << 20),
        ];
        if self.is_software() {
            return None;
        }
        let name = &self.ctx.adapter_info.name;
        KNOWN
            .iter()
            .find(|(k, _)| name.contains(k))
            .map(|&(_, bytes)| bytes)
    }
}

// The trait requires Send + Sync; resident problems are meant to move between threads too.
const _: fn() = || {
    fn is<T: Send + Sync>() {}
    is::<WgpuBackend>();
    is::<DeviceProblem>();
};

/// This crate's version, for reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
