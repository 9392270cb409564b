//! Device buffers for one problem, and the passes that run on them.
//!
//! A [`Workspace`] holds the problem's data split into chunks (ranges of batch items, each of
//! which fits one storage binding), the per-position outputs (loss slot, z part, LSE), the
//! gradient (and its half-typed packing) and the readback staging. Buffers only grow: loading a
//! problem that fits the current capacities writes into the existing device buffers (the host
//! still makes small per-call allocations: the parameter blocks, and wgpu's own staging for each
//! write).
//!
//! Logits and probability targets are uploaded as their raw elements (4 or 2 bytes each, padded
//! to a whole word), whatever their type; the chunking is the same for every type (it counts 4
//! bytes an element: the `f32` gradient), so a half problem runs exactly the dispatches of the
//! `f32` problem of its widened values.

use std::num::NonZeroU64;
use std::sync::mpsc;

use loss_core::formula::{self, DenominatorParts, GradScale, Scalars};
use loss_core::{DType, ElemsMut, Layout, LossError, Problem, Reduction, Result, TargetData};

use crate::NAME;
use crate::context::{
    FusedEntry, IGNORED, NARROW_TILE, PARAM_STRIDE, REDUCE_BLOCK, ReduceParams, RowEntry,
    RowParams, WORKGROUP, WgpuContext, backend_error, flags,
};

/// With a strided class axis (`inner > 1`) at least this long, one position per invocation
/// (`row_serial`) whatever `C`: neighbouring invocations then read neighbouring positions'
/// classes, which lie next to each other, where a workgroup per position would read `4·inner`
/// bytes apart.
const STRIDED_SERIAL_INNER: usize = 32;

/// Narrow contiguous rows of at least this many classes use the tile kernel (`narrow_main`);
/// narrower ones `row_serial`, whose loads then touch few cache lines per subgroup anyway (a row
/// of 3 classes is 12 bytes, so 32 neighbouring rows are 3 lines). Measured on lavapipe, the
/// tile against `row_serial`: 65536×3 0.60–0.68×, 4096×10 0.78×, 1024×64 forward 1.53–1.57×.
const NARROW_MIN_CLASSES: usize = 16;

/// The kernel a problem runs, chosen from its layout alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// `row_serial`: one position per invocation (strided class axes).
    Serial,
    /// `narrow_main`: narrow contiguous rows, a tile of whole rows per workgroup.
    Narrow,
    /// `row_main`: one position per workgroup, classes strided over its invocations.
    Row,
    /// `fused_main`: one contiguous row per workgroup, held in registers (`vpt` values per
    /// invocation).
    Fused { vpt: u32 },
    /// `split_*`: contiguous rows in `segments` segments of `vpt` values per invocation.
    Split { vpt: u32, segments: u32 },
}

impl Kernel {
    pub(crate) fn of(ctx: &WgpuContext, layout: Layout) -> Kernel {
        let classes = layout.classes;
        let wg = WORKGROUP as usize;
        if layout.inner > 1 {
            return if classes <= ctx.serial_max_classes || layout.inner >= STRIDED_SERIAL_INNER {
                Kernel::Serial
            } else {
                Kernel::Row
            };
        }
        if classes <= ctx.serial_max_classes {
            if classes >= NARROW_MIN_CLASSES {
                Kernel::Narrow
            } else {
                Kernel::Serial
            }
        } else if classes <= ctx.fused_max_classes {
            Kernel::Fused {
                vpt: classes.div_ceil(wg).next_power_of_two() as u32,
            }
        } else {
            let segment = ctx.split_vpt as usize * wg;
            Kernel::Split {
                vpt: ctx.split_vpt,
                segments: classes.div_ceil(segment) as u32,
            }
        }
    }

    /// Floats of split-row partials per position: 4 per segment (max, Σ exp, poisoned, unused)
    /// and 2 per segment (the weighted sums).
    fn partials_per_position(self) -> usize {
        match self {
            Kernel::Split { segments, .. } => 6 * segments as usize,
            _ => 0,
        }
    }
}

/// A buffer that is reallocated only when it must grow.
struct GrowBuffer {
    buffer: wgpu::Buffer,
    capacity: u64,
    usage: wgpu::BufferUsages,
    label: &'static str,
}

impl GrowBuffer {
    fn new(ctx: &WgpuContext, label: &'static str, usage: wgpu::BufferUsages) -> Self {
        GrowBuffer {
            buffer: create(ctx, label, usage, MIN_BYTES),
            capacity: MIN_BYTES,
            usage,
            label,
        }
    }

    /// Makes room for `bytes`; true when the buffer was replaced (bind groups must follow).
    fn ensure(&mut self, ctx: &WgpuContext, bytes: u64, limit: u64) -> bool {
        if bytes <= self.capacity {
            return false;
        }
        // Grow geometrically (fewer reallocations over a range of sizes) but never past the
        // binding limit that the chunking respects.
        let capacity = bytes.next_power_of_two().min(limit).max(bytes);
        self.buffer = create(ctx, self.label, self.usage, capacity);
        self.capacity = capacity;
        true
    }
}

/// Bytes of the smallest buffer: bindings may not be empty.
const MIN_BYTES: u64 = 16;

fn create(ctx: &WgpuContext, label: &str, usage: wgpu::BufferUsages, size: u64) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size
            .max(MIN_BYTES)
            .next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT),
        usage,
        mapped_at_creation: false,
    })
}

const STORAGE_IN: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_DST);
const STORAGE_OUT: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);
const UNIFORM: wgpu::BufferUsages = wgpu::BufferUsages::UNIFORM.union(wgpu::BufferUsages::COPY_DST);
const STAGING: wgpu::BufferUsages =
    wgpu::BufferUsages::MAP_READ.union(wgpu::BufferUsages::COPY_DST);

/// The buffers of one chunk.
struct ChunkBuffers {
    logits: GrowBuffer,
    targets: GrowBuffer,
    /// Per position: the upstream gradient (`none`), then the position weights.
    grad_output: GrowBuffer,
    /// Per position: the loss slot, then the z part, then the LSE.
    row_loss: GrowBuffer,
    grad: GrowBuffer,
    /// The gradient narrowed to a half type (`pack.wgsl`), two elements a word.
    grad_half: GrowBuffer,
    /// The split-row kernels' per-segment partials.
    split: GrowBuffer,
}

impl ChunkBuffers {
    fn new(ctx: &WgpuContext) -> Self {
        ChunkBuffers {
            logits: GrowBuffer::new(ctx, "logits", STORAGE_IN),
            targets: GrowBuffer::new(ctx, "targets", STORAGE_IN),
            grad_output: GrowBuffer::new(ctx, "grad_output", STORAGE_IN),
            row_loss: GrowBuffer::new(ctx, "row_loss", STORAGE_OUT),
            grad: GrowBuffer::new(ctx, "grad", STORAGE_OUT),
            grad_half: GrowBuffer::new(ctx, "grad_half", STORAGE_OUT),
            split: GrowBuffer::new(ctx, "split_partials", STORAGE_OUT),
        }
    }
}

/// A range of whole batch items: with K-dim input the classes of a position are strided over
/// the whole item, so an item cannot be split between bindings.
#[derive(Debug, Clone, Copy)]
struct Span {
    first_position: usize,
    positions: usize,
    first_elem: usize,
    elems: usize,
}

/// What is loaded, in the form the passes need it.
#[derive(Debug, Clone)]
struct Loaded {
    layout: Layout,
    spans: Vec<Span>,
    probs: bool,
    eps: f32,
    total_weight: f32,
    /// The mean's denominator `D` (`Σ valid s·w[y]`, or `Σ s`), summed on the host in f64.
    denominator: f64,
    /// The z part's denominator for mean, `V = Σ valid s`, summed on the host in f64.
    valid: f64,
    reduction: Reduction,
    kernel: Kernel,
    /// The extension bits of the problem itself (`ZLOSS`, `SOFTCAP`, `POSITION_WEIGHT`, the
    /// element type).
    ext: u32,
    /// `z` (0: off).
    z: f32,
    /// The soft-cap `a`, when on.
    softcap: Option<f32>,
    /// First-level partials of one reduction tree: where the z part's tree starts.
    partial_count: u32,
}

impl Loaded {
    fn z_on(&self) -> bool {
        self.ext & flags::ZLOSS != 0
    }
}

/// What one call asks the device for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'g> {
    /// The loss (and, with the z-loss on, the z part).
    pub loss: bool,
    /// The per-position LSE.
    pub lse: bool,
    /// The upstream gradient, when the gradient is wanted.
    pub grad_output: Option<&'g [f32]>,
    /// The type the gradient is read back in (a half type adds the packing pass).
    pub grad_dtype: DType,
}

impl Request<'_> {
    /// Just the loss.
    pub(crate) fn loss() -> Self {
        Request {
            loss: true,
            lse: false,
            grad_output: None,
            grad_dtype: DType::F32,
        }
    }
}

/// Where [`Workspace::read`] puts what was computed.
#[derive(Debug, Default)]
pub(crate) struct Dest<'o> {
    pub loss: Option<&'o mut [f32]>,
    pub z_loss: Option<&'o mut [f32]>,
    pub lse: Option<&'o mut [f32]>,
    pub grad: Option<ElemsMut<'o>>,
}

impl<'o> Dest<'o> {
    /// Just the loss.
    pub(crate) fn loss(loss: &'o mut [f32]) -> Self {
        Dest {
            loss: Some(loss),
            ..Dest::default()
        }
    }
}

/// Device buffers for one problem at a time (see the module docs).
pub(crate) struct Workspace {
    chunks: Vec<ChunkBuffers>,
    weights: GrowBuffer,
    row_params: GrowBuffer,
    reduce_params: GrowBuffer,
    partials: [GrowBuffer; 2],
    staging: GrowBuffer,
    /// Per-chunk parameters of the packing pass (its element count).
    pack_params: GrowBuffer,
    row_groups: Vec<wgpu::BindGroup>,
    reduce_groups: Vec<wgpu::BindGroup>,
    /// Per chunk: its `f32` gradient into its packed half gradient.
    pack_groups: Vec<wgpu::BindGroup>,
    stale_groups: bool,
    loaded: Option<Loaded>,
    grad_ready: bool,
    /// The commands of the last [`Workspace::run`], submitted with the read-back that follows
    /// (one submit per call).
    pending: Option<wgpu::CommandEncoder>,
    /// The row parameters last written, so that an unchanged call writes nothing.
    last_params: Vec<u8>,
    /// Begin and end timestamps of the passes, and where they are resolved to.
    timestamps: Option<(wgpu::QuerySet, wgpu::Buffer)>,
    /// GPU time of the last call that read something back, when the device has timestamps.
    last_gpu_ns: Option<f64>,
}

fn f32_bytes(values: &[f32]) -> &[u8] {
    bytemuck::cast_slice(values)
}

fn bytes_of(n: usize) -> u64 {
    n as u64 * 4
}

/// Bytes of `n` elements of `dtype`, rounded up to whole words.
fn elem_bytes(n: usize, dtype: DType) -> u64 {
    (n as u64 * dtype.size() as u64).next_multiple_of(4)
}

/// Writes `bytes` at the start of `buffer`, padded with zeros to a whole word (wgpu writes whole
/// words; a half tensor of odd length is not one).
fn write_words(ctx: &WgpuContext, buffer: &wgpu::Buffer, bytes: &[u8]) {
    if bytes.len().is_multiple_of(4) {
        ctx.queue.write_buffer(buffer, 0, bytes);
    } else {
        let mut padded = bytes.to_vec();
        padded.resize(bytes.len().next_multiple_of(4), 0);
        ctx.queue.write_buffer(buffer, 0, &padded);
    }
}

/// The extension bits of a problem's own options and element type.
fn problem_ext(problem: &Problem<'_>) -> u32 {
    let mut ext = 0;
    if problem.z_loss() > 0.0 {
        ext |= flags::ZLOSS;
    }
    if problem.softcap().is_some() {
        ext |= flags::SOFTCAP;
    }
    if problem.position_weight().is_some() {
        ext |= flags::POSITION_WEIGHT;
    }
    match problem.dtype() {
        DType::F32 => {}
        DType::Bf16 => ext |= flags::BF16,
        DType::F16 => ext |= flags::F16,
    }
    ext
}

fn uniform(buffer: &GrowBuffer, size: usize) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: &buffer.buffer,
        offset: 0,
        size: NonZeroU64::new(size as u64),
    })
}

fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource }
}

fn whole(buffer: &GrowBuffer) -> wgpu::BindingResource<'_> {
    buffer.buffer.as_entire_binding()
}

/// Workgroup grid for `groups` workgroups: 2-D when one dimension is not enough.
fn grid(groups: u32, max_grid: u32) -> Result<(u32, u32)> {
    let x = groups.min(max_grid).max(1);
    let y = groups.div_ceil(x);
    if y > max_grid {
        return Err(backend_error(format!(
            "{groups} workgroups exceed a {max_grid} × {max_grid} grid"
        )));
    }
    Ok((x, y))
}

impl Workspace {
    pub(crate) fn new(ctx: &WgpuContext) -> Self {
        Workspace {
            chunks: Vec::new(),
            weights: GrowBuffer::new(ctx, "weights", STORAGE_IN),
            row_params: GrowBuffer::new(ctx, "row_params", UNIFORM),
            reduce_params: GrowBuffer::new(ctx, "reduce_params", UNIFORM),
            partials: [
                GrowBuffer::new(ctx, "partials_a", STORAGE_OUT),
                GrowBuffer::new(ctx, "partials_b", STORAGE_OUT),
            ],
            staging: GrowBuffer::new(ctx, "staging", STAGING),
            pack_params: GrowBuffer::new(ctx, "pack_params", UNIFORM),
            row_groups: Vec::new(),
            reduce_groups: Vec::new(),
            pack_groups: Vec::new(),
            stale_groups: true,
            loaded: None,
            grad_ready: false,
            pending: None,
            last_params: Vec::new(),
            timestamps: ctx.timestamps.then(|| {
                (
                    ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                        label: Some("pass time"),
                        ty: wgpu::QueryType::Timestamp,
                        count: 2,
                    }),
                    create(
                        ctx,
                        "pass time",
                        wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                        16,
                    ),
                )
            }),
            last_gpu_ns: None,
        }
    }

    /// GPU time of the last call that read a result back (timestamps around its passes).
    pub(crate) fn last_gpu_ns(&self) -> Option<f64> {
        self.last_gpu_ns
    }

    fn loaded(&self) -> Result<&Loaded> {
        self.loaded
            .as_ref()
            .ok_or_else(|| backend_error("no problem uploaded"))
    }

    /// Number of loss values of the loaded problem.
    pub(crate) fn loss_len(&self) -> usize {
        self.loaded.as_ref().map_or(0, |l| match l.reduction {
            Reduction::None => l.layout.positions(),
            Reduction::Sum | Reduction::Mean => 1,
        })
    }

    /// Number of gradient values (logits) of the loaded problem.
    pub(crate) fn grad_len(&self) -> usize {
        self.loaded.as_ref().map_or(0, |l| l.layout.len())
    }

    /// Whether a gradient has been computed for the loaded data.
    pub(crate) fn grad_ready(&self) -> bool {
        self.grad_ready
    }

    /// Splits the batch into spans whose logits (as `f32`: the gradient) and per-position
    /// outputs (3 values a position: loss slot, z part, LSE) fit one binding. The same spans for
    /// every element type.
    fn spans(ctx: &WgpuContext, layout: Layout) -> Result<Vec<Span>> {
        if layout.positions() == 0 {
            return Ok(Vec::new());
        }
        let item_elems = layout.classes * layout.inner;
        let item_bytes = bytes_of(item_elems);
        let item_outputs = bytes_of(3 * layout.inner);
        if item_bytes.max(item_outputs) > ctx.max_binding_bytes {
            return Err(LossError::Unsupported {
                backend: NAME.to_string(),
                feature: format!(
                    "a batch item of {item_elems} logits ({item_bytes} bytes, {item_outputs} \
                     bytes of per-position outputs) larger than one storage binding ({} bytes)",
                    ctx.max_binding_bytes
                ),
            });
        }
        let items_per_span = usize::try_from(
            (ctx.max_binding_bytes / item_bytes).min(ctx.max_binding_bytes / item_outputs),
        )
        .unwrap_or(usize::MAX)
        .max(1);
        Ok((0..layout.batch)
            .step_by(items_per_span)
            .map(|first| {
                let items = items_per_span.min(layout.batch - first);
                Span {
                    first_position: first * layout.inner,
                    positions: items * layout.inner,
                    first_elem: first * item_elems,
                    elems: items * item_elems,
                }
            })
            .collect())
    }

    /// Uploads a validated problem into the buffers, growing them where needed.
    pub(crate) fn load(&mut self, ctx: &WgpuContext, problem: &Problem<'_>) -> Result<()> {
        self.loaded = None;
        self.grad_ready = false;
        let layout = problem.layout();
        let spans = Self::spans(ctx, layout)?;
        let kernel = Kernel::of(ctx, layout);
        let limit = ctx.max_binding_bytes;
        let classes = layout.classes;

        let weights: Vec<f32> = problem
            .weight()
            .map_or_else(|| vec![1.0; classes], <[f32]>::to_vec);
        let scalars = Scalars::of(problem);
        let probs = matches!(problem.target(), TargetData::Probs(_));
        let parts = DenominatorParts::of(problem);
        let denominator = parts.over(0..layout.positions());
        let ext = problem_ext(problem);
        // V is only read with the z-loss on.
        let valid = if ext & flags::ZLOSS != 0 {
            parts.valid().over(0..layout.positions())
        } else {
            0.0
        };
        let dtype = problem.dtype();

        let mut stale = self.weights.ensure(ctx, bytes_of(classes), limit);
        ctx.queue
            .write_buffer(&self.weights.buffer, 0, f32_bytes(&weights));
        while self.chunks.len() < spans.len() {
            self.chunks.push(ChunkBuffers::new(ctx));
            stale = true;
        }
        let mut partial_count = 0u64;
        for (span, chunk) in spans.iter().zip(&mut self.chunks) {
            let elems = elem_bytes(span.elems, dtype);
            let positions = bytes_of(span.positions);
            stale |= chunk.logits.ensure(ctx, elems, limit);
            stale |= chunk.row_loss.ensure(ctx, positions, limit);
            let split = bytes_of(span.positions * kernel.partials_per_position());
            if split > limit {
                return Err(backend_error(format!(
                    "{split} bytes of split-row partials exceed one binding"
                )));
            }
            stale |= chunk.split.ensure(ctx, split, limit);
            let range = span.first_elem..span.first_elem + span.elems;
            write_words(
                ctx,
                &chunk.logits.buffer,
                problem.logits().slice(range.clone()).bytes(),
            );
            match problem.target() {
                TargetData::Indices(y) => {
                    stale |= chunk.targets.ensure(ctx, positions, limit);
                    let ignore = problem.ignore_index();
                    // WGSL has no i64: validated targets are in [0, C) (C fits u32 since the
                    // logits fit a binding) or ignore_index, which becomes the IGNORED flag.
                    let ids: Vec<u32> = y
                        [span.first_position..span.first_position + span.positions]
                        .iter()
                        .map(|&t| if t == ignore { IGNORED } else { t as u32 })
                        .collect();
                    ctx.queue
                        .write_buffer(&chunk.targets.buffer, 0, bytemuck::cast_slice(&ids));
                }
                TargetData::Probs(t) => {
                    stale |= chunk.targets.ensure(ctx, elems, limit);
                    write_words(ctx, &chunk.targets.buffer, t.slice(range).bytes());
                }
            }
            if let Some(s) = problem.position_weight() {
                // After the upstream gradient's slots (written per call for `none`).
                stale |= chunk.grad_output.ensure(ctx, 2 * positions, limit);
                let s = &s[span.first_position..span.first_position + span.positions];
                ctx.queue
                    .write_buffer(&chunk.grad_output.buffer, positions, f32_bytes(s));
            }
            partial_count += u64::from(
                u32::try_from(span.positions)
                    .map_err(|_| backend_error("too many positions in one binding"))?
                    .div_ceil(REDUCE_BLOCK),
            );
        }
        let params_bytes = PARAM_STRIDE * (spans.len() as u64).max(1);
        stale |= self.row_params.ensure(ctx, params_bytes, u64::MAX);
        stale |= self.pack_params.ensure(ctx, params_bytes, u64::MAX);
        // Reduction stages: one per chunk, then one per level over the partials; twice that
        // with the z part's tree.
        let mut stages = spans.len() as u64;
        let mut n = partial_count;
        while n > 1 {
            stages += 1;
            n = n.div_ceil(u64::from(REDUCE_BLOCK));
        }
        stale |= self
            .reduce_params
            .ensure(ctx, PARAM_STRIDE * 2 * stages.max(1), u64::MAX);
        let trees = if ext & flags::ZLOSS != 0 { 2 } else { 1 };
        for p in &mut self.partials {
            stale |= p.ensure(ctx, bytes_of(trees * partial_count as usize), u64::MAX);
        }
        self.stale_groups |= stale;
        if self.stale_groups {
            self.rebuild_groups(ctx);
        }
        self.loaded = Some(Loaded {
            layout,
            spans,
            probs,
            eps: problem.label_smoothing(),
            total_weight: scalars.total_weight as f32,
            denominator,
            valid,
            reduction: problem.reduction(),
            kernel,
            ext,
            z: problem.z_loss(),
            softcap: problem.softcap(),
            partial_count: u32::try_from(partial_count)
                .map_err(|_| backend_error("too many loss partials"))?,
        });
        self.last_params.clear();
        ctx.check_errors()
    }

    fn rebuild_groups(&mut self, ctx: &WgpuContext) {
        self.row_groups = self
            .chunks
            .iter()
            .map(|c| {
                ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("row"),
                    layout: &ctx.row_layout,
                    entries: &[
                        entry(0, uniform(&self.row_params, size_of::<RowParams>())),
                        entry(1, whole(&c.logits)),
                        entry(2, whole(&c.targets)),
                        entry(3, whole(&self.weights)),
                        entry(4, whole(&c.grad_output)),
                        entry(5, whole(&c.row_loss)),
                        entry(6, whole(&c.grad)),
                        entry(7, whole(&c.split)),
                    ],
                })
            })
            .collect();
        let reduce = |params: &GrowBuffer, src: &GrowBuffer, dst: &GrowBuffer| {
            ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("reduce"),
                layout: &ctx.reduce_layout,
                entries: &[
                    entry(0, uniform(params, size_of::<ReduceParams>())),
                    entry(1, whole(src)),
                    entry(2, whole(dst)),
                ],
            })
        };
        // Per chunk: its losses into partials[0]; then partials[0] -> [1] and [1] -> [0].
        let params = &self.reduce_params;
        let mut groups: Vec<wgpu::BindGroup> = self
            .chunks
            .iter()
            .map(|c| reduce(params, &c.row_loss, &self.partials[0]))
            .collect();
        groups.push(reduce(params, &self.partials[0], &self.partials[1]));
        groups.push(reduce(params, &self.partials[1], &self.partials[0]));
        self.reduce_groups = groups;
        // The packing pass has the reduction's layout: its count, the f32 gradient, the words.
        self.pack_groups = self
            .chunks
            .iter()
            .map(|c| reduce(&self.pack_params, &c.grad, &c.grad_half))
            .collect();
        self.stale_groups = false;
    }

    /// Runs the row pass (and the loss reduction when the loss is asked for and the reduction
    /// is sum or mean, and the gradient's packing when it is asked for in a half type) and
    /// records it for the read-back; returns where the reduced sums end up. Does not wait.
    pub(crate) fn run(&mut self, ctx: &WgpuContext, req: &Request<'_>) -> Result<Option<usize>> {
        let loaded = self.loaded()?.clone();
        let want_loss = req.loss;
        let grad_output = req.grad_output;
        let want_grad = grad_output.is_some();
        let pack = want_grad && req.grad_dtype.is_half();
        let z_on = loaded.z_on();
        {
            // Output buffers are made on first use: forward-only callers never pay for a
            // gradient, plain problems never for the z part and the LSE.
            let limit = ctx.max_binding_bytes;
            let slots = if req.lse {
                3
            } else if z_on && want_loss {
                2
            } else {
                1
            };
            let mut stale = false;
            for (span, chunk) in loaded.spans.iter().zip(&mut self.chunks) {
                stale |= chunk
                    .row_loss
                    .ensure(ctx, bytes_of(slots * span.positions), limit);
                if want_grad {
                    stale |= chunk.grad.ensure(ctx, bytes_of(span.elems), limit);
                    if loaded.reduction == Reduction::None {
                        stale |= chunk
                            .grad_output
                            .ensure(ctx, bytes_of(span.positions), limit);
                    }
                }
                if pack {
                    stale |=
                        chunk
                            .grad_half
                            .ensure(ctx, elem_bytes(span.elems, req.grad_dtype), limit);
                }
            }
            if stale {
                self.rebuild_groups(ctx);
            }
        }
        let mut flag_bits = loaded.ext;
        if loaded.probs {
            flag_bits |= flags::PROBS;
        }
        if want_loss {
            flag_bits |= flags::LOSS;
        }
        if req.lse {
            flag_bits |= flags::LSE;
        }
        if z_on && want_loss && loaded.reduction != Reduction::None {
            flag_bits |= flags::Z_APART;
        }
        if loaded.eps > 0.0 {
            flag_bits |= flags::SMOOTHING;
        }
        let mut scale = 0.0f32;
        let mut z_coef = 0.0f32;
        if let Some(g) = grad_output {
            flag_bits |= flags::GRAD;
            // g / D for a mean: inf or NaN when D = 0, which reaches only valid positions
            // (ignored ones write an exact 0).
            match formula::grad_scale(loaded.reduction, g, loaded.denominator) {
                GradScale::PerPosition(_) => flag_bits |= flags::PER_POSITION,
                GradScale::Uniform(s) => scale = s,
            }
            if z_on {
                // The z part's upstream scale divides by V, not D (g/V for mean); per position
                // the kernel multiplies 2z by g_i itself.
                let z_scale = match formula::grad_scale(loaded.reduction, g, loaded.valid) {
                    GradScale::PerPosition(_) => 1.0,
                    GradScale::Uniform(s) => f64::from(s),
                };
                z_coef = formula::z_coefficient(z_scale, f64::from(loaded.z), 1.0, 1.0) as f32;
            }
        }
        if loaded.spans.is_empty() {
            self.grad_ready |= want_grad;
            return Ok(None);
        }
        let segments = match loaded.kernel {
            Kernel::Split { segments, .. } => segments,
            _ => 0,
        };
        let mut row_params = vec![0u8; PARAM_STRIDE as usize * loaded.spans.len()];
        for (i, span) in loaded.spans.iter().enumerate() {
            let p = RowParams {
                classes: loaded.layout.classes as u32,
                inner: loaded.layout.inner as u32,
                positions: span.positions as u32,
                flags: flag_bits,
                eps: loaded.eps,
                total_weight: loaded.total_weight,
                scale,
                segments,
                z: loaded.z,
                z_coef,
                softcap: loaded.softcap.unwrap_or(1.0),
                inv_softcap: loaded.softcap.map_or(1.0, |a| (1.0 / f64::from(a)) as f32),
            };
            let at = i * PARAM_STRIDE as usize;
            row_params[at..at + size_of::<RowParams>()].copy_from_slice(bytemuck::bytes_of(&p));
            if let (Some(g), Reduction::None) = (grad_output, loaded.reduction) {
                let g = &g[span.first_position..span.first_position + span.positions];
                ctx.queue
                    .write_buffer(&self.chunks[i].grad_output.buffer, 0, f32_bytes(g));
            }
        }
        // A call like the last one (the same problem, options and scale) writes no parameters.
        if row_params != self.last_params {
            ctx.queue
                .write_buffer(&self.row_params.buffer, 0, &row_params);
            self.last_params = row_params;
        }

        // The reduction plan: stage k reads `src` group, n values, writes partials. The
        // cross-entropy's tree reads each chunk's loss slots and lives at the start of the
        // partials; the z part's tree (z-loss on) has the same shape, reads the z slots and lives
        // `partial_count` values further.
        let reduce_sum = want_loss && loaded.reduction != Reduction::None;
        let trees: &[(bool, u32)] = if z_on {
            &[(false, 0), (true, loaded.partial_count)]
        } else {
            &[(false, 0)]
        };
        let mut plan: Vec<(usize, ReduceParams)> = Vec::new();
        let mut result = None;
        if reduce_sum {
            for &(z_slots, base) in trees {
                let mut offset = base;
                for (i, span) in loaded.spans.iter().enumerate() {
                    let n = span.positions as u32;
                    plan.push((
                        i,
                        ReduceParams {
                            n,
                            src_offset: if z_slots { n } else { 0 },
                            dst_offset: offset,
                            pad: 0,
                        },
                    ));
                    offset += n.div_ceil(REDUCE_BLOCK);
                }
            }
            let mut n = loaded.partial_count;
            let mut side = 0;
            while n > 1 {
                for &(_, base) in trees {
                    plan.push((
                        self.chunks.len() + side,
                        ReduceParams {
                            n,
                            src_offset: base,
                            dst_offset: base,
                            pad: 0,
                        },
                    ));
                }
                n = n.div_ceil(REDUCE_BLOCK);
                side = 1 - side;
            }
            result = Some(side);
            let mut bytes = vec![0u8; PARAM_STRIDE as usize * plan.len()];
            for (k, (_, p)) in plan.iter().enumerate() {
                let at = k * PARAM_STRIDE as usize;
                bytes[at..at + size_of::<ReduceParams>()].copy_from_slice(bytemuck::bytes_of(p));
            }
            ctx.queue
                .write_buffer(&self.reduce_params.buffer, 0, &bytes);
        }

        // The row kernels' pipelines, in dispatch order, with the workgroups each needs per
        // position.
        let stages: Vec<(std::sync::Arc<wgpu::ComputePipeline>, u32)> = match loaded.kernel {
            Kernel::Fused { vpt } => {
                vec![(ctx.fused_pipeline(FusedEntry::Main, vpt, flag_bits), 1)]
            }
            Kernel::Split { vpt, segments } => {
                let needs_sums = loaded.probs || (loaded.eps > 0.0 && want_loss);
                let mut v = vec![(
                    ctx.fused_pipeline(FusedEntry::SplitStats, vpt, flag_bits),
                    segments,
                )];
                if needs_sums {
                    v.push((
                        ctx.fused_pipeline(FusedEntry::SplitSums, vpt, flag_bits),
                        segments,
                    ));
                }
                v.push((
                    ctx.fused_pipeline(FusedEntry::SplitFinish, vpt, flag_bits),
                    segments,
                ));
                v
            }
            Kernel::Serial | Kernel::Row | Kernel::Narrow => Vec::new(),
        };
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("loss"),
            });
        {
            // One pass: wgpu orders dispatches that write and then read a storage buffer.
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("loss"),
                timestamp_writes: self.timestamps.as_ref().map(|(q, _)| {
                    wgpu::ComputePassTimestampWrites {
                        query_set: q,
                        beginning_of_pass_write_index: Some(0),
                        end_of_pass_write_index: Some(1),
                    }
                }),
            });
            match loaded.kernel {
                Kernel::Serial | Kernel::Row | Kernel::Narrow => {
                    let entry = match loaded.kernel {
                        Kernel::Serial => RowEntry::Serial,
                        Kernel::Narrow => RowEntry::Narrow,
                        _ => RowEntry::Main,
                    };
                    pass.set_pipeline(&ctx.row_pipeline(entry, flag_bits));
                    // Rows per narrow tile: `tile_rows` in `narrow.wgsl`.
                    let tile_rows =
                        WORKGROUP.min(NARROW_TILE / (loaded.layout.classes as u32).max(1));
                    for (i, span) in loaded.spans.iter().enumerate() {
                        let positions = span.positions as u32;
                        let (x, y) = grid(
                            match loaded.kernel {
                                Kernel::Serial => positions.div_ceil(WORKGROUP),
                                Kernel::Narrow => positions.div_ceil(tile_rows),
                                _ => positions,
                            },
                            ctx.max_grid,
                        )?;
                        pass.set_bind_group(
                            0,
                            &self.row_groups[i],
                            &[(i as u64 * PARAM_STRIDE) as u32],
                        );
                        pass.dispatch_workgroups(x, y, 1);
                    }
                }
                Kernel::Fused { .. } | Kernel::Split { .. } => {
                    for (pipeline, per_position) in &stages {
                        pass.set_pipeline(pipeline);
                        for (i, span) in loaded.spans.iter().enumerate() {
                            let groups =
                                u32::try_from(span.positions as u64 * u64::from(*per_position))
                                    .map_err(|_| {
                                        backend_error("too many workgroups in one dispatch")
                                    })?;
                            let (x, y) = grid(groups, ctx.max_grid)?;
                            pass.set_bind_group(
                                0,
                                &self.row_groups[i],
                                &[(i as u64 * PARAM_STRIDE) as u32],
                            );
                            pass.dispatch_workgroups(x, y, 1);
                        }
                    }
                }
            }
            if !plan.is_empty() {
                pass.set_pipeline(&ctx.reduce_pipeline);
                for (k, (group, p)) in plan.iter().enumerate() {
                    let (x, y) = grid(p.n.div_ceil(REDUCE_BLOCK), ctx.max_grid)?;
                    pass.set_bind_group(
                        0,
                        &self.reduce_groups[*group],
                        &[(k as u64 * PARAM_STRIDE) as u32],
                    );
                    pass.dispatch_workgroups(x, y, 1);
                }
            }
            if pack {
                // The cancelling element of each position restored from its row sum (exact to
                // the half type's rounding), then each chunk packed.
                pass.set_pipeline(&ctx.row_pipeline(RowEntry::Restore, flag_bits));
                for (i, span) in loaded.spans.iter().enumerate() {
                    let (x, y) = grid(span.positions as u32, ctx.max_grid)?;
                    pass.set_bind_group(
                        0,
                        &self.row_groups[i],
                        &[(i as u64 * PARAM_STRIDE) as u32],
                    );
                    pass.dispatch_workgroups(x, y, 1);
                }
                // Each chunk's element count, at its parameter stride.
                let mut bytes = vec![0u8; PARAM_STRIDE as usize * loaded.spans.len()];
                for (i, span) in loaded.spans.iter().enumerate() {
                    let p = ReduceParams {
                        n: span.elems as u32,
                        ..ReduceParams::default()
                    };
                    let at = i * PARAM_STRIDE as usize;
                    bytes[at..at + size_of::<ReduceParams>()]
                        .copy_from_slice(bytemuck::bytes_of(&p));
                }
                ctx.queue.write_buffer(&self.pack_params.buffer, 0, &bytes);
                pass.set_pipeline(if req.grad_dtype == DType::Bf16 {
                    &ctx.pack_bf16_pipeline
                } else {
                    &ctx.pack_f16_pipeline
                });
                for (i, span) in loaded.spans.iter().enumerate() {
                    let words = span.elems.div_ceil(2) as u32;
                    let (x, y) = grid(words.div_ceil(WORKGROUP), ctx.max_grid)?;
                    pass.set_bind_group(
                        0,
                        &self.pack_groups[i],
                        &[(i as u64 * PARAM_STRIDE) as u32],
                    );
                    pass.dispatch_workgroups(x, y, 1);
                }
            }
        }
        if let Some((q, resolve)) = &self.timestamps {
            encoder.resolve_query_set(q, 0..2, resolve, 0);
        }
        self.pending = Some(encoder);
        self.grad_ready |= want_grad;
        ctx.check_errors()?;
        Ok(result)
    }

    /// Submits what [`Workspace::run`] recorded and waits for it, reading nothing back.
    pub(crate) fn finish(&mut self, ctx: &WgpuContext) -> Result<()> {
        if let Some(encoder) = self.pending.take() {
            let index = ctx.submit(encoder.finish());
            ctx.wait_for(index)?;
        }
        Ok(())
    }

    /// Reads back what [`Workspace::run`] computed, in one round trip where the staging buffer
    /// allows: each output `dest` names (`sum_at` is what `run` returned). The gradient comes
    /// from the packed half buffer when `dest.grad` is of a half type (`run` must have been
    /// asked for that type), else from the `f32` one.
    pub(crate) fn read(
        &mut self,
        ctx: &WgpuContext,
        sum_at: Option<usize>,
        dest: Dest<'_>,
    ) -> Result<()> {
        let loaded = self.loaded()?.clone();
        let z_on = loaded.z_on();
        let Workspace {
            chunks,
            partials,
            staging,
            pending,
            timestamps,
            last_gpu_ns,
            ..
        } = self;
        let recorded = pending.take();
        let timed = recorded.is_some() && timestamps.is_some();
        let mut items: Vec<ReadItem<'_>> = Vec::new();
        let chunks = &chunks[..];
        let per_position = |items: &mut Vec<_>, out, slot| {
            per_position_items(items, &loaded.spans, chunks, out, slot);
        };
        // The reduced cross-entropy and z part (sum, mean).
        let mut totals = [0.0f32; 2];
        let (mut loss_out, mut z_out) = (None, None);
        let (total_ce, total_z) = totals.split_at_mut(1);
        match loaded.reduction {
            Reduction::None => {
                if let Some(loss) = dest.loss {
                    per_position(&mut items, loss, 0);
                }
                if let Some(z) = dest.z_loss {
                    if z_on {
                        per_position(&mut items, z, 1);
                    } else {
                        z.fill(0.0);
                    }
                }
            }
            Reduction::Sum | Reduction::Mean => {
                let wanted = dest.loss.is_some() || (z_on && dest.z_loss.is_some());
                if let (true, Some(side)) = (wanted, sum_at) {
                    let buffer = &partials[side].buffer;
                    items.push(ReadItem::f32s(buffer, 0, total_ce));
                    if z_on {
                        let at = bytes_of(loaded.partial_count as usize);
                        items.push(ReadItem::f32s(buffer, at, total_z));
                    }
                }
                loss_out = dest.loss;
                z_out = dest.z_loss;
            }
        }
        if let Some(lse) = dest.lse {
            per_position(&mut items, lse, 2);
        }
        if let Some(grad) = dest.grad {
            let mut rest = grad;
            for (span, chunk) in loaded.spans.iter().zip(chunks.iter()) {
                let (head, tail) = rest.split_at_mut(span.elems);
                let buffer = if head.dtype().is_half() {
                    &chunk.grad_half.buffer
                } else {
                    &chunk.grad.buffer
                };
                items.push(ReadItem {
                    src: buffer,
                    offset: 0,
                    out: elems_bytes(head),
                });
                rest = tail;
            }
        }
        // The two timestamps (u64 each), read with the results.
        let mut ticks = [0u8; 16];
        if let (true, Some((_, resolve))) = (timed, timestamps.as_ref()) {
            items.insert(
                0,
                ReadItem {
                    src: resolve,
                    offset: 0,
                    out: &mut ticks[..],
                },
            );
        }
        read_back(ctx, staging, &mut items, recorded)?;
        drop(items);
        if timed {
            let t: [u64; 2] = bytemuck::cast(ticks);
            *last_gpu_ns = Some(
                t[1].saturating_sub(t[0]) as f64 * f64::from(ctx.queue.get_timestamp_period()),
            );
        }
        if loss_out.is_some() || z_out.is_some() {
            // 0/0 = NaN for a mean over D = 0 (or V = 0), as the specification asks; the z part
            // divides by V, the cross-entropy by D.
            let (total, z) = formula::reduce_with_z(
                loaded.reduction,
                f64::from(totals[0]),
                f64::from(totals[1]),
                loaded.denominator,
                loaded.valid,
                z_on,
            );
            if let Some(loss) = loss_out {
                loss[0] = total as f32;
            }
            if let Some(out) = z_out {
                out[0] = z as f32;
            }
        }
        Ok(())
    }
}

/// The packing pass alone (`pack.wgsl`): `values` narrowed to `dtype` on the device, as bits
/// (for tests of its rounding). `values` must fit one binding.
pub(crate) fn pack_values(ctx: &WgpuContext, values: &[f32], dtype: DType) -> Result<Vec<u16>> {
    let pipeline = match dtype {
        DType::Bf16 => &ctx.pack_bf16_pipeline,
        DType::F16 => &ctx.pack_f16_pipeline,
        DType::F32 => return Err(backend_error("pack_values: not a half type")),
    };
    let mut out = vec![0u16; values.len()];
    if values.is_empty() {
        return Ok(out);
    }
    let limit = ctx.max_binding_bytes;
    if bytes_of(values.len()) > limit {
        return Err(backend_error("pack_values: more values than one binding"));
    }
    let src = create(ctx, "pack_src", STORAGE_IN, bytes_of(values.len()));
    ctx.queue.write_buffer(&src, 0, f32_bytes(values));
    let dst = create(
        ctx,
        "pack_dst",
        STORAGE_OUT,
        elem_bytes(values.len(), dtype),
    );
    let params = create(ctx, "pack_params", UNIFORM, PARAM_STRIDE);
    let p = ReduceParams {
        n: values.len() as u32,
        ..ReduceParams::default()
    };
    ctx.queue.write_buffer(&params, 0, bytemuck::bytes_of(&p));
    let group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("pack"),
        layout: &ctx.reduce_layout,
        entries: &[
            entry(
                0,
                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &params,
                    offset: 0,
                    size: NonZeroU64::new(size_of::<ReduceParams>() as u64),
                }),
            ),
            entry(1, src.as_entire_binding()),
            entry(2, dst.as_entire_binding()),
        ],
    });
    let mut encoder = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("pack"),
        });
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &group, &[0]);
        let (x, y) = grid(
            (values.len().div_ceil(2) as u32).div_ceil(WORKGROUP),
            ctx.max_grid,
        )?;
        pass.dispatch_workgroups(x, y, 1);
    }
    let mut staging = GrowBuffer::new(ctx, "pack_staging", STAGING);
    let mut items = [ReadItem {
        src: &dst,
        offset: 0,
        out: bytemuck::cast_slice_mut(&mut out[..]),
    }];
    read_back(ctx, &mut staging, &mut items, Some(encoder))?;
    Ok(out)
}

/// Per chunk, the `slot`-th run of per-position values of its `row_loss` (0: loss slot, 1: z
/// part, 2: LSE) into the chunk's part of `out`.
fn per_position_items<'a>(
    items: &mut Vec<ReadItem<'a>>,
    spans: &[Span],
    chunks: &'a [ChunkBuffers],
    out: &'a mut [f32],
    slot: u64,
) {
    let mut rest = out;
    for (span, chunk) in spans.iter().zip(chunks) {
        let (head, tail) = rest.split_at_mut(span.positions);
        items.push(ReadItem::f32s(
            &chunk.row_loss.buffer,
            slot * bytes_of(span.positions),
            head,
        ));
        rest = tail;
    }
}

/// One value range to read back: bytes from `offset` in `src` into `out`.
struct ReadItem<'a> {
    src: &'a wgpu::Buffer,
    offset: u64,
    out: &'a mut [u8],
}

impl<'a> ReadItem<'a> {
    fn f32s(src: &'a wgpu::Buffer, offset: u64, out: &'a mut [f32]) -> Self {
        ReadItem {
            src,
            offset,
            out: bytemuck::cast_slice_mut(out),
        }
    }

    /// Bytes copied: whole words (a half tensor of odd length ends in half a word).
    fn copy_bytes(&self) -> u64 {
        (self.out.len() as u64).next_multiple_of(4)
    }
}

/// The bytes of a gradient buffer of any element type.
fn elems_bytes(grad: ElemsMut<'_>) -> &mut [u8] {
    match grad {
        ElemsMut::F32(s) => bytemuck::cast_slice_mut(s),
        ElemsMut::Bf16(s) => bytemuck::cast_slice_mut(s),
        ElemsMut::F16(s) => bytemuck::cast_slice_mut(s),
    }
}

/// Copies each item's range into its slice, through `staging`, in as few round trips as the
/// staging capacity (at most one binding) allows. `recorded` (the commands that compute the
/// values) goes first in the first round trip's submission: one submit for a call whose results
/// fit the staging buffer.
fn read_back(
    ctx: &WgpuContext,
    staging: &mut GrowBuffer,
    items: &mut [ReadItem<'_>],
    mut recorded: Option<wgpu::CommandEncoder>,
) -> Result<()> {
    let total: u64 = items.iter().map(ReadItem::copy_bytes).sum();
    if total == 0 {
        if let Some(encoder) = recorded {
            let index = ctx.submit(encoder.finish());
            ctx.wait_for(index)?;
        }
        return Ok(());
    }
    let largest = items.iter().map(ReadItem::copy_bytes).max().unwrap_or(0);
    let want = total.min(ctx.max_binding_bytes).max(largest);
    staging.ensure(ctx, want, ctx.max_binding_bytes);
    let capacity = staging.capacity;
    let mut next = 0;
    while next < items.len() {
        let first = next;
        let mut used = 0u64;
        let mut encoder = recorded.take().unwrap_or_else(|| {
            ctx.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("read"),
                })
        });
        while next < items.len() {
            let bytes = items[next].copy_bytes();
            if used + bytes > capacity {
                break;
            }
            if bytes > 0 {
                encoder.copy_buffer_to_buffer(
                    items[next].src,
                    items[next].offset,
                    &staging.buffer,
                    used,
                    bytes,
                );
            }
            used += bytes;
            next += 1;
        }
        let index = ctx.submit(encoder.finish());
        if used == 0 {
            ctx.wait_for(index)?;
            continue;
        }
        let slice = staging.buffer.slice(..used);
        let (tx, rx) = mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        ctx.wait_for(index)?;
        rx.recv()
            .map_err(|_| backend_error("map callback dropped"))?
            .map_err(|e| backend_error(format!("map failed: {e}")))?;
        {
            let view = slice
                .get_mapped_range()
                .map_err(|e| backend_error(format!("mapped range: {e}")))?;
            let mut at = 0usize;
            for item in &mut items[first..next] {
                let bytes = item.out.len();
                item.out.copy_from_slice(&view[at..at + bytes]);
                at += item.copy_bytes() as usize;
            }
        }
        staging.buffer.unmap();
    }
    ctx.check_errors()
}
