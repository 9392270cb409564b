//! The device side that lives as long as the backend: adapter, device, queue, shader modules,
//! pipelines and bind-group layouts, all built once.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use loss_core::{LossError, Result};

use crate::NAME;

/// Workgroup size of both shaders (`WG` in the WGSL files).
pub(crate) const WORKGROUP: u32 = 256;
/// Logits in the narrow-row kernel's workgroup tile (`NARROW_TILE` in `narrow.wgsl`): 16 KiB,
/// WebGPU's default workgroup-storage limit.
pub(crate) const NARROW_TILE: u32 = 4096;
/// Values one invocation of the reduction adds (`PER_THREAD` in `reduce.wgsl`).
const REDUCE_PER_THREAD: u32 = 8;
/// Values one reduction workgroup adds (`WG * PER_THREAD` in `reduce.wgsl`).
pub(crate) const REDUCE_BLOCK: u32 = WORKGROUP * REDUCE_PER_THREAD;
/// The bits an ignored index target is uploaded as (`IGNORED` in `row.wgsl`): validated targets
/// are below `C`, which fits a `u32` whenever the logits fit a binding.
pub(crate) const IGNORED: u32 = u32::MAX;
/// Stride of per-dispatch parameters in the uniform buffers: 256 bytes is a multiple of every
/// device's `min_uniform_buffer_offset_alignment` (a power of two of at most 256).
pub(crate) const PARAM_STRIDE: u64 = 256;

/// Parameters of one `row_main` dispatch (`Params` in `row.wgsl`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RowParams {
    pub classes: u32,
    pub inner: u32,
    pub positions: u32,
    pub flags: u32,
    pub eps: f32,
    pub total_weight: f32,
    pub scale: f32,
    /// Segments per row of the split-row kernels (`fused.wgsl`); unused elsewhere.
    pub segments: u32,
    /// The z-loss coefficient `z`.
    pub z: f32,
    /// The z part's gradient coefficient (see `z_coef` in `bindings.wgsl`).
    pub z_coef: f32,
    /// The soft-cap `a` (1 when off).
    pub softcap: f32,
    /// `1/a`.
    pub inv_softcap: f32,
}

/// Bits of [`RowParams::flags`] (`FLAG_*` in `row.wgsl`).
pub(crate) mod flags {
    /// Probability targets (else index targets).
    pub const PROBS: u32 = 1;
    /// Write the per-position loss.
    pub const LOSS: u32 = 2;
    /// Write the gradient.
    pub const GRAD: u32 = 4;
    /// The upstream gradient is per position (`none`), else `scale`.
    pub const PER_POSITION: u32 = 8;
    /// `ε > 0`; with `ε = 0` the smoothing term is left out entirely.
    pub const SMOOTHING: u32 = 16;

    // The extension bits: compile-time constants of every row kernel (`EXT` in
    // `extensions.wgsl`), so a variant without them is the plain kernel.

    /// `z > 0`: the z part `z·s_i·LSE²` and its gradient.
    pub const ZLOSS: u32 = 32;
    /// The logits are soft-capped.
    pub const SOFTCAP: u32 = 64;
    /// Position weights `s_i`.
    pub const POSITION_WEIGHT: u32 = 128;
    /// Write the per-position LSE.
    pub const LSE: u32 = 256;
    /// The z part is reduced apart from the cross-entropy (sum, mean), not added into the loss
    /// slot (none).
    pub const Z_APART: u32 = 512;
    /// The logits (and probability targets) are bf16, two to a word.
    pub const BF16: u32 = 1024;
    /// The logits (and probability targets) are f16, two to a word.
    pub const F16: u32 = 2048;
    /// Every extension bit.
    pub const EXT_MASK: u32 = ZLOSS | SOFTCAP | POSITION_WEIGHT | LSE | Z_APART | BF16 | F16;
}

/// The constants the shaders share with this file, as WGSL, prepended to each shader's source:
/// one definition for both sides.
fn prelude() -> String {
    format!(
        "const WG: u32 = {WORKGROUP}u;\n\
         const PER_THREAD: u32 = {REDUCE_PER_THREAD}u;\n\
         const NARROW_TILE: u32 = {NARROW_TILE}u;\n\
         const IGNORED: u32 = {IGNORED}u;\n\
         const FLAG_PROBS: u32 = {}u;\n\
         const FLAG_LOSS: u32 = {}u;\n\
         const FLAG_GRAD: u32 = {}u;\n\
         const FLAG_PER_POSITION: u32 = {}u;\n\
         const FLAG_SMOOTHING: u32 = {}u;\n\
         const FLAG_ZLOSS: u32 = {}u;\n\
         const FLAG_SOFTCAP: u32 = {}u;\n\
         const FLAG_POSITION_WEIGHT: u32 = {}u;\n\
         const FLAG_LSE: u32 = {}u;\n\
         const FLAG_Z_APART: u32 = {}u;\n\
         const FLAG_BF16: u32 = {}u;\n\
         const FLAG_F16: u32 = {}u;\n",
        flags::PROBS,
        flags::LOSS,
        flags::GRAD,
        flags::PER_POSITION,
        flags::SMOOTHING,
        flags::ZLOSS,
        flags::SOFTCAP,
        flags::POSITION_WEIGHT,
        flags::LSE,
        flags::Z_APART,
        flags::BF16,
        flags::F16,
    )
}

/// Parameters of one `reduce_sum` dispatch (`Params` in `reduce.wgsl`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ReduceParams {
    pub n: u32,
    pub src_offset: u32,
    pub dst_offset: u32,
    pub pad: u32,
}

/// Options for building a [`crate::WgpuBackend`] beyond what the environment chooses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgpuOptions {
    /// Caps the bytes bound to one storage binding (and requested from the device as its
    /// `max_storage_buffer_binding_size`), below what the adapter allows. Inputs larger than
    /// this are split into several dispatches over ranges of batch items; a small cap lets
    /// tests exercise that path on small data. `None` uses the adapter's limit.
    pub max_binding_bytes: Option<u64>,
    /// Rows of at most this many classes (capped at 4096, one tile) run one position per
    /// invocation: contiguous rows through a tile of whole rows per workgroup (`narrow_main`),
    /// strided ones directly (`row_serial`). Wider rows run on the workgroup kernels. `0` sends
    /// every row to the workgroup kernels (tests use it to cover them on small shapes).
    pub serial_max_classes: usize,
    /// Caps the workgroups per grid dimension below the device's limit (65,535 on most).
    /// Larger dispatches use a 2-D grid; a small cap lets tests exercise it on small data.
    /// `None` uses the device's limit.
    pub max_workgroups_per_dimension: Option<u32>,
    /// Contiguous rows of more than `serial_max_classes` and at most this many classes run the
    /// single-pass kernel (`fused_main`: the row held in registers, the logits read once);
    /// longer rows are split into segments across workgroups. Rounded up to a power of two
    /// times the workgroup size. `Some(0)` sends every such row to the split kernels; `None`
    /// sizes it from the adapter: [`DEFAULT_FUSED_MAX_CLASSES`] on a GPU (its register file),
    /// twice that on a software adapter (no register file to fit; measured on lavapipe: a
    /// 32768-class row in one pass 3.8 ms, split in 8 segments 14 ms).
    pub fused_max_classes: Option<usize>,
    /// Classes per segment of a split row (rounded up to a multiple of the workgroup size);
    /// tests make it small to split short rows.
    pub split_segment_classes: usize,
    /// Use subgroup operations in the workgroup merges where the adapter has them (`Some(false)`:
    /// shared-memory trees everywhere; tests cover both). `None`: on GPUs that have them, not on
    /// software adapters, which emulate them (measured on lavapipe: 1024×1000 fused 126 ms with
    /// subgroup butterflies, 61 ms with shared-memory trees).
    pub subgroups: Option<bool>,
}

/// Default of [`WgpuOptions::serial_max_classes`]: below this many classes a 256-wide
/// workgroup per row would leave most of its invocations idle.
pub const DEFAULT_SERIAL_MAX_CLASSES: usize = 64;

/// Default of [`WgpuOptions::fused_max_classes`]: 64 values per invocation of a 256-wide
/// workgroup. A row of 16K classes then takes 64 registers per invocation for its values, which
/// still leaves a GPU's register file room for two workgroups per multiprocessor; longer rows
/// are split, which also spreads a few rows over the whole device.
pub const DEFAULT_FUSED_MAX_CLASSES: usize = 16 * 1024;

/// Default of [`WgpuOptions::split_segment_classes`]: 16 values per invocation.
pub const DEFAULT_SPLIT_SEGMENT_CLASSES: usize = 4 * 1024;

impl Default for WgpuOptions {
    fn default() -> Self {
        WgpuOptions {
            max_binding_bytes: None,
            serial_max_classes: DEFAULT_SERIAL_MAX_CLASSES,
            max_workgroups_per_dimension: None,
            fused_max_classes: None,
            split_segment_classes: DEFAULT_SPLIT_SEGMENT_CLASSES,
            subgroups: None,
        }
    }
}

/// The entry points of `fused.wgsl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum FusedEntry {
    Main,
    SplitStats,
    SplitSums,
    SplitFinish,
}

impl FusedEntry {
    fn name(self) -> &'static str {
        match self {
            FusedEntry::Main => "fused_main",
            FusedEntry::SplitStats => "split_stats",
            FusedEntry::SplitSums => "split_sums",
            FusedEntry::SplitFinish => "split_finish",
        }
    }
}

/// The entry points of `row.wgsl` (with `row_access.wgsl` or `narrow.wgsl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RowEntry {
    /// `row_main`: a workgroup per position.
    Main,
    /// `row_serial`: an invocation per position.
    Serial,
    /// `narrow_main`: a tile of narrow rows per workgroup.
    Narrow,
    /// `restore_main`: the cancelling element of each position of a gradient about to be packed
    /// to a half type, a workgroup per position.
    Restore,
}

impl RowEntry {
    fn name(self) -> &'static str {
        match self {
            RowEntry::Main => "row_main",
            RowEntry::Serial => "row_serial",
            RowEntry::Narrow => "narrow_main",
            RowEntry::Restore => "restore_main",
        }
    }
}

/// A cached pipeline: an entry point and the compile-time constants of its variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PipelineKey {
    /// `fused.wgsl`: values per invocation and every flag.
    Fused(FusedEntry, u32, u32),
    /// `row.wgsl`: the extension bits (the other flags are run-time values there).
    Row(RowEntry, u32),
}

/// Adapter, device, queue, pipelines and layouts of one backend.
pub(crate) struct WgpuContext {
    pub adapter_info: wgpu::AdapterInfo,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub row_layout: wgpu::BindGroupLayout,
    /// See [`WgpuOptions::serial_max_classes`].
    pub serial_max_classes: usize,
    /// Workgroups per grid dimension (see [`WgpuOptions::max_workgroups_per_dimension`]).
    pub max_grid: u32,
    pub reduce_layout: wgpu::BindGroupLayout,
    pub reduce_pipeline: wgpu::ComputePipeline,
    /// `pack.wgsl`'s `pack_bf16` and `pack_f16` (the reduction's layout): an `f32` gradient
    /// narrowed to a half type.
    pub pack_bf16_pipeline: wgpu::ComputePipeline,
    pub pack_f16_pipeline: wgpu::ComputePipeline,
    /// Largest storage binding (and buffer) this backend creates, in bytes: a multiple of 4.
    pub max_binding_bytes: u64,
    /// See [`WgpuOptions::fused_max_classes`] (0, or a power of two times [`WORKGROUP`]).
    pub fused_max_classes: usize,
    /// Values per invocation of a split-row segment.
    pub split_vpt: u32,
    /// Whether `fused.wgsl` merges with subgroup operations.
    pub subgroups: bool,
    /// Whether the device writes timestamps (GPU time of each call).
    pub timestamps: bool,
    /// The optional features the device was opened with.
    pub features: wgpu::Features,
    /// The row kernels' pipelines by entry point and variant, built on first use (the plain
    /// `row.wgsl` ones when the context is made).
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    /// Queue submissions so far (the tests count them per call).
    submits: AtomicU64,
    /// Errors the device reported outside any call's control (validation, out of memory),
    /// kept here so that the next call returns them instead of wgpu's default panic.
    errors: Arc<Mutex<Vec<String>>>,
}

pub(crate) fn unavailable(reason: impl Into<String>) -> LossError {
    LossError::Unavailable {
        backend: NAME.to_string(),
        reason: reason.into(),
    }
}

pub(crate) fn backend_error(message: impl Into<String>) -> LossError {
    LossError::Backend {
        backend: NAME.to_string(),
        message: message.into(),
    }
}

/// Picks the adapter the environment asks for: `WGPU_ADAPTER_NAME` (a case-insensitive
/// substring of the adapter's name) among the backends of `WGPU_BACKEND`, else wgpu's choice
/// under `WGPU_POWER_PREF` (high performance by default). This follows
/// `wgpu::util::initialize_adapter_from_env_or_default`, which panics when no adapter matches
/// the name; here that is an `Unavailable` error.
async fn choose_adapter(instance: &wgpu::Instance) -> Result<wgpu::Adapter> {
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    if let Ok(wanted) = std::env::var("WGPU_ADAPTER_NAME") {
        let wanted = wanted.to_lowercase();
        let adapters = instance.enumerate_adapters(backends).await;
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
            .ok_or_else(|| {
                unavailable(format!(
                    "no adapter named like WGPU_ADAPTER_NAME={wanted:?} among {names:?}"
                ))
            });
    }
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::from_env()
                .unwrap_or(wgpu::PowerPreference::HighPerformance),
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(format!("no wgpu adapter ({backends:?}): {e}")))
}

fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

fn params_entry(size: usize) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: NonZeroU64::new(size as u64),
        },
        count: None,
    }
}

/// What every row-kernel module ends with: its parameters and bindings
/// (`shaders/bindings.wgsl`), the helpers, mergeable row state and per-element formulas
/// (`shaders/common.wgsl`), and the element accessors and extensions' epilogue
/// (`shaders/extensions.wgsl`, which reads the module's `EXT`).
const COMMON: &str = concat!(
    include_str!("shaders/bindings.wgsl"),
    include_str!("shaders/common.wgsl"),
    include_str!("shaders/extensions.wgsl")
);

/// `row.wgsl` for the extension bits `ext` (its `EXT`) with the accessors of one of its
/// kernels, and the shared-memory merges.
fn row_source(entry: RowEntry, ext: u32) -> String {
    let access = match entry {
        RowEntry::Narrow => include_str!("shaders/narrow.wgsl"),
        RowEntry::Main | RowEntry::Serial | RowEntry::Restore => {
            include_str!("shaders/row_access.wgsl")
        }
    };
    format!(
        "const EXT: u32 = {ext}u;\n{}{access}{}{COMMON}",
        include_str!("shaders/row.wgsl"),
        include_str!("shaders/reduce_shared.wgsl")
    )
}

/// Compiles a shader (the shared [`prelude`] first) once; its entry points become pipelines
/// through [`pipeline`].
fn module(device: &wgpu::Device, label: &str, source: &str) -> wgpu::ShaderModule {
    device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(format!("{}{source}", prelude()).into()),
    })
}

fn pipeline(
    device: &wgpu::Device,
    label: &str,
    module: &wgpu::ShaderModule,
    entry: &str,
    layout: &wgpu::BindGroupLayout,
) -> wgpu::ComputePipeline {
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(label),
        bind_group_layouts: &[Some(layout)],
        immediate_size: 0,
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(label),
        layout: Some(&pipeline_layout),
        module,
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: None,
    })
}

impl WgpuContext {
    pub(crate) fn new(options: &WgpuOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(options))
    }

    async fn new_async(options: &WgpuOptions) -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = choose_adapter(&instance).await?;
        let adapter_info = adapter.get_info();
        let mut limits = adapter.limits();
        // Bound buffers are indexed with u32 element offsets in WGSL: stay below 4 GiB.
        let mut max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(u64::from(u32::MAX));
        if let Some(cap) = options.max_binding_bytes {
            max_binding = max_binding.min(cap.max(16));
        }
        let max_binding_bytes = max_binding / 4 * 4;
        limits.max_storage_buffer_binding_size = max_binding_bytes;
        // Every optional feature the kernels can use, where the adapter has it: subgroups for
        // the merges, timestamps for GPU time. Not `SHADER_F16`: half logits are widened with
        // core WGSL (`extensions.wgsl`) so that every kernel computes in f32.
        let features =
            adapter.features() & (wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("loss-wgpu"),
                required_features: features,
                required_limits: limits,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(format!("{}: cannot open device: {e}", adapter_info.name)))?;
        let max_grid = device
            .limits()
            .max_compute_workgroups_per_dimension
            .min(options.max_workgroups_per_dimension.unwrap_or(u32::MAX))
            .max(1);
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&errors);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(e.to_string());
        }));

        let row_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("row"),
            entries: &[
                params_entry(std::mem::size_of::<RowParams>()),
                storage_entry(1, true),
                storage_entry(2, true),
                storage_entry(3, true),
                storage_entry(4, true),
                storage_entry(5, false),
                storage_entry(6, false),
                storage_entry(7, false),
            ],
        });
        let reduce_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("reduce"),
            entries: &[
                params_entry(std::mem::size_of::<ReduceParams>()),
                storage_entry(1, true),
                storage_entry(2, false),
            ],
        });
        let pack_module = module(&device, "pack", include_str!("shaders/pack.wgsl"));
        let pack_bf16_pipeline = pipeline(
            &device,
            "pack_bf16",
            &pack_module,
            "pack_bf16",
            &reduce_layout,
        );
        let pack_f16_pipeline = pipeline(
            &device,
            "pack_f16",
            &pack_module,
            "pack_f16",
            &reduce_layout,
        );
        let reduce_module = module(&device, "reduce", include_str!("shaders/reduce.wgsl"));
        let reduce_pipeline = pipeline(
            &device,
            "reduce",
            &reduce_module,
            "reduce_sum",
            &reduce_layout,
        );
        let software = adapter_info.device_type == wgpu::DeviceType::Cpu;
        let fused_max = options.fused_max_classes.unwrap_or(if software {
            2 * DEFAULT_FUSED_MAX_CLASSES
        } else {
            DEFAULT_FUSED_MAX_CLASSES
        });
        let fused_max_classes = if fused_max == 0 {
            0
        } else {
            fused_max.div_ceil(WORKGROUP as usize).next_power_of_two() * WORKGROUP as usize
        };
        let context = WgpuContext {
            fused_max_classes,
            split_vpt: options
                .split_segment_classes
                .div_ceil(WORKGROUP as usize)
                .max(1) as u32,
            subgroups: options.subgroups.unwrap_or(!software)
                && features.contains(wgpu::Features::SUBGROUP),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            features,
            pipelines: Mutex::new(HashMap::new()),
            submits: AtomicU64::new(0),
            adapter_info,
            device,
            queue,
            row_layout,
            // A narrow tile must hold at least one row.
            serial_max_classes: options.serial_max_classes.min(NARROW_TILE as usize),
            max_grid,
            reduce_layout,
            reduce_pipeline,
            pack_bf16_pipeline,
            pack_f16_pipeline,
            max_binding_bytes,
            errors,
        };
        // The plain row kernels now, so that a broken build of them shows here.
        for entry in [RowEntry::Main, RowEntry::Serial, RowEntry::Narrow] {
            context.row_pipeline(entry, 0);
        }
        context.check_errors()?;
        Ok(context)
    }

    /// Returns (and clears) the errors the device reported since the last check.
    pub(crate) fn check_errors(&self) -> Result<()> {
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        if errors.is_empty() {
            Ok(())
        } else {
            let message = errors.join("; ");
            errors.clear();
            Err(backend_error(message))
        }
    }

    /// Blocks until the device has finished all submitted work.
    pub(crate) fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| backend_error(format!("device poll failed: {e}")))?;
        self.check_errors()
    }

    /// Submits one command buffer (counted, see [`WgpuContext::submits`]).
    pub(crate) fn submit(&self, commands: wgpu::CommandBuffer) -> wgpu::SubmissionIndex {
        self.submits.fetch_add(1, Ordering::Relaxed);
        self.queue.submit([commands])
    }

    /// Blocks until the given submission has finished (not the whole queue).
    pub(crate) fn wait_for(&self, index: wgpu::SubmissionIndex) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map_err(|e| backend_error(format!("device poll failed: {e}")))?;
        self.check_errors()
    }

    /// Queue submissions so far.
    pub(crate) fn submits(&self) -> u64 {
        self.submits.load(Ordering::Relaxed)
    }

    /// The `fused.wgsl` pipeline of an entry point for `vpt` values per invocation and the
    /// `flags` of a call, compiled on first use and cached.
    pub(crate) fn fused_pipeline(
        &self,
        entry: FusedEntry,
        vpt: u32,
        flags: u32,
    ) -> Arc<wgpu::ComputePipeline> {
        let key = PipelineKey::Fused(entry, vpt, flags);
        let mut cache = self
            .pipelines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = cache.get(&key) {
            return Arc::clone(p);
        }
        let source = fused_source(vpt, flags, self.subgroups);
        // SAFETY: the only runtime check left out is naga's loop bounding. Every loop of
        // `fused.wgsl` ends: their counters run up to `VPT`, the subgroup size, the workgroup
        // size or `params.segments` (a host-written count), by constant steps (or halving to
        // 0). Bounds checks stay on.
        let module = unsafe {
            self.device.create_shader_module_trusted(
                wgpu::ShaderModuleDescriptor {
                    label: Some(entry.name()),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                },
                wgpu::ShaderRuntimeChecks {
                    force_loop_bounding: false,
                    ..wgpu::ShaderRuntimeChecks::checked()
                },
            )
        };
        let p = Arc::new(pipeline(
            &self.device,
            entry.name(),
            &module,
            entry.name(),
            &self.row_layout,
        ));
        cache.insert(key, Arc::clone(&p));
        p
    }

    /// The `row.wgsl` pipeline of an entry point for the extension bits `ext` (the variant's
    /// `EXT`; the other flags are run-time values of these kernels), compiled on first use and
    /// cached.
    pub(crate) fn row_pipeline(&self, entry: RowEntry, ext: u32) -> Arc<wgpu::ComputePipeline> {
        let ext = ext & flags::EXT_MASK;
        let key = PipelineKey::Row(entry, ext);
        let mut cache = self
            .pipelines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = cache.get(&key) {
            return Arc::clone(p);
        }
        let module = module(&self.device, entry.name(), &row_source(entry, ext));
        let p = Arc::new(pipeline(
            &self.device,
            entry.name(),
            &module,
            entry.name(),
            &self.row_layout,
        ));
        cache.insert(key, Arc::clone(&p));
        p
    }
}

/// `fused.wgsl` for one variant: the shared constants, `VPT` and `FLAGS`, the shader, and the
/// workgroup merges with or without subgroup operations.
fn fused_source(vpt: u32, flags: u32, subgroups: bool) -> String {
    let body = include_str!("shaders/fused.wgsl");
    let (head, body, merges) = if subgroups {
        (
            // naga takes subgroup operations without `enable subgroups;` (it rejects the
            // directive); the device feature is what allows them.
            "",
            body.to_string(),
            include_str!("shaders/reduce_subgroup.wgsl"),
        )
    } else {
        (
            "",
            body.replace("@builtin(subgroup_size) sg_size: u32,", "")
                + "\nconst sg_size: u32 = 1u;\n",
            include_str!("shaders/reduce_shared.wgsl"),
        )
    };
    format!(
        "{head}{}const VPT: u32 = {vpt}u;\nconst FLAGS: u32 = {flags}u;\nconst EXT: u32 = {}u;\n\
         {body}\n{merges}{COMMON}",
        prelude(),
        flags & flags::EXT_MASK
    )
}
