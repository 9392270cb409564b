// `row.wgsl`'s accessors for `row_main` and `row_serial`: the storage buffers themselves.

fn logit(i: u32) -> f32 {
    return logits[i];
}

fn put_grad(i: u32, g: f32) {
    grad[i] = g;
}
