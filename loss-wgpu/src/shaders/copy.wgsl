// The device's copy ceiling: `vec4` loads and stores, a grid-stride loop over the buffer (the
// host launches a fixed grid). Timed like the loss kernels (timestamps around the pass where
// the device has them), it is what the resident throughput is divided by.

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(256)
fn copy_main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let n = arrayLength(&src);
    let stride = nwg.x * 256u;
    for (var i = gid.x; i < n; i = i + stride) {
        dst[i] = src[i];
    }
}
