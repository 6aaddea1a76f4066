//! Matmul modules for 16-bit operands, generated from the f32 ones: A and/or B bound as words
//! of two f16 or bf16 values and unpacked to f32 on load, so every kernel form (tiled, wide,
//! rows/GEMV, subgroup; transposes, batches, epilogues, split-K) takes them, accumulating in f32.
//! One module per (base module, A dtype, B dtype), built on first use.

use crate::ops::codegen::{index_to_call, replace_once};
use crate::runtime::Shader;
use crate::tensor::DType;

fn code(d: DType) -> usize {
    match d {
        DType::F16 => 1,
        DType::BF16 => 2,
        DType::F32 | DType::U32 => 0,
    }
}

/// The module of `base` (the matmul or the subgroup matmul module) for operand dtypes `a` and
/// `b`: `base` itself when both are f32.
pub(crate) fn module(base: &'static Shader, a: DType, b: DType) -> &'static Shader {
    if !a.is_half() && !b.is_half() {
        return base;
    }
    let family = if base.name == "matmul_subgroup" {
        "matmul_subgroup_half"
    } else {
        "matmul_half"
    };
    crate::ops::generated_shader(family, 3 * code(a) + code(b), || source(base.source, a, b))
}

/// WGSL of `base_src` with the operands of dtypes `a` and `b` read as packed 16-bit values.
pub(crate) fn source(base_src: &str, a: DType, b: DType) -> String {
    let mut src = base_src.to_string();
    let mut loaders = String::from(
        "\n// ---- generated (ops::matmul::half): 16-bit operands, unpacked to f32 on load ----\n\
         fn unpack_f16(w: u32) -> vec2<f32> { return unpack2x16float(w); }\n\
         fn unpack_bf16(w: u32) -> vec2<f32> { return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u)); }\n",
    );
    for (x, d) in [("a", a), ("b", b)] {
        if !d.is_half() {
            continue;
        }
        let unpack = if d == DType::F16 {
            "unpack_f16"
        } else {
            "unpack_bf16"
        };
        src = replace_once(
            &src,
            &format!("var<storage, read> {x}1: array<f32>;"),
            &format!("var<storage, read> {x}1: array<u32>;"),
        );
        src = replace_once(
            &src,
            &format!("var<storage, read> {x}4: array<vec4<f32>>;"),
            &format!("var<storage, read> {x}4: array<vec2<u32>>;"),
        );
        src = index_to_call(&src, &format!("{x}1"), &format!("ld_{x}1"));
        src = index_to_call(&src, &format!("{x}4"), &format!("ld_{x}4"));
        // Element i is half i % 2 of word i / 2; a vec4 of elements is two words.
        loaders.push_str(&format!(
            "fn ld_{x}1(i: u32) -> f32 {{ return {unpack}({x}1[i / 2u])[i % 2u]; }}\n\
             fn ld_{x}4(i: u32) -> vec4<f32> {{ let w = {x}4[i]; return vec4<f32>({unpack}(w.x), {unpack}(w.y)); }}\n"
        ));
    }
    src.push_str(&loaders);
    src
}

/// Every generated variant's (name, source), for the shader validation test.
pub(crate) fn all_sources() -> Vec<(String, String)> {
    let kinds = [DType::F32, DType::F16, DType::BF16];
    let mut out = Vec::new();
    for base in [&super::launch::SHADER, &super::launch::SUBGROUP_SHADER] {
        for a in kinds {
            for b in kinds {
                if a.is_half() || b.is_half() {
                    let name = format!("{}_{}_{}", base.name, a.name(), b.name());
                    out.push((name, source(base.source, a, b)));
                }
            }
        }
    }
    out
}
