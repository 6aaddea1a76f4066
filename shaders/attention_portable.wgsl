// Tile access straight from storage, appended to attention.wgsl (see there): for adapters
// without subgroup operations. A group is one invocation (one row); the tile's rows are read
// from storage by every invocation, which on a GPU the caches serve (all invocations of a
// workgroup read the same rows at about the same time).

var<private> tile_row: array<u32, TW>; // row index (into the (B, H, rows, D) buffer) of each tile row

fn set_tile(base: u32, r0: u32, last: u32) {
    for (var i = 0u; i < TW; i++) { tile_row[i] = base + min(r0 + i, last); }
}

fn kv_tile(base: u32, j0: u32, last: u32) { set_tile(base, j0, last); }
fn qdo_tile(base: u32, i0: u32, last: u32) { set_tile(base, i0, last); }

fn tile_k(c: u32) -> array<vec4<f32>, TW> {
    var r: array<vec4<f32>, TW>;
    for (var i = 0u; i < TW; i++) { r[i] = k4[tile_row[i] * D4 + c]; }
    return r;
}
fn tile_v(c: u32) -> array<vec4<f32>, TW> {
    var r: array<vec4<f32>, TW>;
    for (var i = 0u; i < TW; i++) { r[i] = v4[tile_row[i] * D4 + c]; }
    return r;
}
fn tile_q(c: u32) -> array<vec4<f32>, TW> {
    var r: array<vec4<f32>, TW>;
    for (var i = 0u; i < TW; i++) { r[i] = q4[tile_row[i] * D4 + c]; }
    return r;
}
fn tile_do(c: u32) -> array<vec4<f32>, TW> {
    var r: array<vec4<f32>, TW>;
    for (var i = 0u; i < TW; i++) { r[i] = do4[tile_row[i] * D4 + c]; }
    return r;
}
fn tile_s() -> array<vec2<f32>, TW> {
    var r: array<vec2<f32>, TW>;
    for (var i = 0u; i < TW; i++) { r[i] = vec2<f32>(lse_in[tile_row[i]] * LOG2E, delta_in[tile_row[i]]); }
    return r;
}

@compute @workgroup_size(WG)
fn attn_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    fwd_group(wid.y * nwg.x + wid.x, lid, 1u, 0u);
}

@compute @workgroup_size(WG)
fn attn_bwd_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    dq_group(wid.y * nwg.x + wid.x, lid, 1u, 0u);
}

@compute @workgroup_size(WG)
fn attn_bwd_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    dkv_group(wid.y * nwg.x + wid.x, lid, 1u, 0u);
}
