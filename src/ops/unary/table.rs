//! The unary op table: one row per op, the single place an op's name, entry points, saved
//! value and WGSL formulas are written. The `// BEGIN OPS` region of `shaders/unary.wgsl`
//! (the `apply`/`dapply` switches and every entry point, case code = row index) is generated
//! from it; `tests/shaders.rs` fails when the file is stale.

use crate::ops::codegen::{self, Wgsl};
use crate::wgsl;

/// The forward value an op's derivative is written in terms of (`s` in its WGSL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Saved {
    /// The forward input `x`.
    Input,
    /// The forward output `y` (cheaper where `f'` is a function of `f`, as for exp or tanh).
    Output,
    /// No derivative kernel: the backward is other tensor ops (scalar add/mul, neg).
    Nothing,
}

/// One row of the table.
pub(crate) struct Def {
    /// Forward entry point (names that clash with WGSL built-ins end in `_`).
    pub(crate) entry: &'static str,
    /// Stem of the backward entry points (`<back>_backward`, `<back>_backward4`).
    pub(crate) back: &'static str,
    pub(crate) saved: Saved,
    /// WGSL body of `f(v)`; `p.s` is the scalar operand.
    pub(crate) forward: &'static str,
    /// WGSL body of `g * f'(..)`, from the saved value `s` and the output gradient `g`.
    pub(crate) derivative: &'static str,
}

macro_rules! unary_ops {
    ($($op:ident => $fwd:literal, $back:literal, $saved:ident, $f:literal, $df:literal;)*) => {
        /// The unary ops, in table order (the discriminant is the WGSL case code).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum Op { $($op,)* }

        /// Every op, in [`Op`] order.
        pub(crate) const OPS: &[Def] = &[$(Def {
            entry: $fwd,
            back: $back,
            saved: Saved::$saved,
            forward: $f,
            derivative: $df,
        },)*];

        // Entry names are literals, so no name is built at dispatch time.
        impl Op {
            pub(crate) fn entry(self) -> &'static str {
                match self { $(Op::$op => $fwd,)* }
            }
            /// The vec4 form, for element counts that are a multiple of 4.
            pub(crate) fn entry4(self) -> &'static str {
                match self { $(Op::$op => concat!($fwd, "4"),)* }
            }
            pub(crate) fn backward_entry(self) -> &'static str {
                match self { $(Op::$op => concat!($back, "_backward"),)* }
            }
            pub(crate) fn backward_entry4(self) -> &'static str {
                match self { $(Op::$op => concat!($back, "_backward4"),)* }
            }
            pub(crate) fn saved(self) -> Saved {
                OPS[self as usize].saved
            }
        }
    };
}

// To add an op: a row here, `PORTAGRAD_REGENERATE=1 cargo test --release --test shaders`, the
// `Tensor` method in `mod.rs`, the f64 reference in `reference.rs`, cases in tests/ops_unary.rs.
unary_ops! {
    AddScalar => "add_scalar", "add_scalar", Nothing, "return v + p.s;", "";
    MulScalar => "mul_scalar", "mul_scalar", Nothing, "return v * p.s;", "";
    Neg => "neg", "neg", Nothing, "return -v;", "";
    Exp => "exp_", "exp", Output, "return exp(v);", "return g * s;";
    Log => "log_", "log", Input, "return log(v);", "return g / s;";
    Sqrt => "sqrt_", "sqrt", Output, "return sqrt(v);", "return g * 0.5 / s;";
    PowScalar => "pow_scalar", "pow_scalar", Input, "return pow_f(v, p.s);", "return g * dpow_f(s, p.s);";
    Relu => "relu", "relu", Input, "return max(v, 0.0);", "return select(0.0, g, s > 0.0);";
    Gelu => "gelu", "gelu", Input, "return gelu_f(v);", "return g * dgelu(s);";
    Sigmoid => "sigmoid", "sigmoid", Output, "return sigmoid_f(v);", "return g * s * (1.0 - s);";
    Tanh => "tanh_", "tanh", Output, "return tanh_stable(v);", "return g * (1.0 - s * s);";
    Abs => "abs_", "abs", Input, "return abs(v);", "return g * sign(s);";
}

const BEGIN: &str = "// BEGIN OPS";
const END: &str = "// END OPS";

/// The generated region of `shaders/unary.wgsl`.
fn region() -> String {
    let mut o = Wgsl::new();
    o.line(&format!(
        "{BEGIN} {}",
        codegen::header("ops::unary::table").trim_start_matches("// ")
    ));
    o.line("// From the table in src/ops/unary/table.rs; the case code is the row index.");
    o.blank();
    o.line("fn apply(op: u32, v: f32) -> f32 {");
    o.line("    switch op {");
    for (i, d) in OPS.iter().enumerate() {
        wgsl!(o, "        case {i}u: {{ {} }} // {}", d.forward, d.entry);
    }
    o.line("        default: { return v; }");
    o.line("    }");
    o.line("}");
    o.blank();
    o.line("fn dapply(op: u32, s: f32, g: f32) -> f32 {");
    o.line("    switch op {");
    for (i, d) in OPS.iter().enumerate() {
        if d.saved != Saved::Nothing {
            let from = if d.saved == Saved::Input { "x" } else { "y" };
            wgsl!(
                o,
                "        case {i}u: {{ {} }} // {}: saved {from}",
                d.derivative,
                d.back
            );
        }
    }
    o.line("        default: { return g; }");
    o.line("    }");
    o.line("}");
    o.blank();
    let args = "(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32)";
    let entry = |o: &mut Wgsl, name: &str, run: &str, i: usize| {
        wgsl!(
            o,
            "@compute @workgroup_size(WG) fn {name}{args} {{ {run}({i}u, w, n, l); }}"
        );
    };
    for (i, d) in OPS.iter().enumerate() {
        entry(&mut o, d.entry, "run", i);
        entry(&mut o, &format!("{}4", d.entry), "run4", i);
        if d.saved != Saved::Nothing {
            entry(&mut o, &format!("{}_backward", d.back), "runb", i);
            entry(&mut o, &format!("{}_backward4", d.back), "runb4", i);
        }
    }
    o.line(END);
    o.finish()
}

/// `shaders/unary.wgsl` as the table writes it.
pub(crate) fn file_source() -> String {
    codegen::splice(super::launch::SHADER.source, BEGIN, END, &region())
        .unwrap_or_else(|| unreachable!("unary.wgsl marks its OPS region"))
}
