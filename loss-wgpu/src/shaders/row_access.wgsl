// `row.wgsl`'s accessors for `row_main` and `row_serial`: the storage buffers themselves (logits
// through `load_logit`, `extensions.wgsl`).

fn logit(i: u32) -> f32 {
    return load_logit(i);
}

fn put_grad(i: u32, g: f32) {
    grad[i] = g;
}
