//! Needs no GPU: every WGSL file parses, validates, and translates with naga to SPIR-V
//! (Vulkan), MSL (Metal) and HLSL (DX12), so a shader that would break on a Mac or on Windows
//! fails here. Override constants are resolved with their defaults (or, for generated modules,
//! the values a launcher sets), as a pipeline would.

use naga::back::{hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn check(name: &str, src: &str) -> Result<(), String> {
    let subgroups = src.contains("enable subgroups");
    check_with(
        name,
        src,
        &naga::back::PipelineConstants::default(),
        subgroups,
    )
}

/// [`check`] with the override constants a launcher sets.
fn check_with(
    name: &str,
    src: &str,
    constants: &naga::back::PipelineConstants,
    subgroups: bool,
) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(src).map_err(|e| e.emit_to_string(src))?;
    let mut caps = Capabilities::default();
    // pack2x16float / unpack2x16float: core WGSL, on every backend but GL ES < 3.1.
    if src.contains("2x16float(") {
        caps |= Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    }
    if subgroups {
        caps |= Capabilities::SUBGROUP;
    }
    if src.contains("enable f16") {
        caps |= Capabilities::SHADER_FLOAT16;
    }
    // Tensor-core kernels: wgpu's experimental cooperative matrices (native Vulkan and Metal).
    let coop = src.contains("enable wgpu_cooperative_matrix");
    if coop {
        caps |= Capabilities::COOPERATIVE_MATRIX;
    }
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .map_err(|e| e.emit_to_string(src))?;
    let (module, info) =
        naga::back::pipeline_constants::process_overrides(&module, &info, None, constants)
            .map_err(|e| format!("overrides: {e}"))?;

    spv::write_vec(&module, &info, &spv::Options::default(), None)
        .map_err(|e| format!("SPIR-V: {e}"))?;
    // Metal's simdgroup matrices are 8 x 8 only, and naga 30 has no HLSL for cooperative
    // matrices (its writer leaves them unimplemented; wgpu offers them on Vulkan and Metal).
    if coop {
        if src.contains("coop_mat16x16") {
            return Ok(());
        }
        let msl_opts = msl::Options {
            lang_version: (2, 4),
            fake_missing_bindings: true,
            ..Default::default()
        };
        let (msl, _) =
            msl::write_string(&module, &info, &msl_opts, &msl::PipelineOptions::default())
                .map_err(|e| format!("MSL: {e}"))?;
        if !msl.contains("simdgroup_multiply_accumulate") {
            return Err("MSL without simdgroup_multiply_accumulate".into());
        }
        return Ok(());
    }

    let msl_opts = msl::Options {
        lang_version: (2, 4),
        fake_missing_bindings: true,
        ..Default::default()
    };
    msl::write_string(&module, &info, &msl_opts, &msl::PipelineOptions::default())
        .map_err(|e| format!("MSL: {e}"))?;

    let hlsl_opts = hlsl::Options {
        shader_model: hlsl::ShaderModel::V6_0,
        fake_missing_bindings: true,
        ..Default::default()
    };
    let mut out = String::new();
    hlsl::Writer::new(&mut out, &hlsl_opts, &hlsl::PipelineOptions::default())
        .write(&module, &info, None)
        .map_err(|e| format!("HLSL: {e}"))?;
    let _ = name;
    Ok(())
}

#[test]
fn every_shader_validates_and_translates_to_all_backends() {
    let shaders = portagrad::shader_sources();
    assert!(
        shaders.len() >= 6,
        "shader list looks truncated: {}",
        shaders.len()
    );
    let mut failures = Vec::new();
    for (name, src) in shaders {
        if let Err(e) = check(name, src) {
            failures.push(format!("shaders/{name}.wgsl: {e}"));
        }
    }
    let generated = portagrad::generated_shader_sources();
    assert!(generated.len() >= 12, "generated list looks truncated");
    for m in &generated {
        let constants = m.constants.iter().cloned().collect();
        if let Err(e) = check_with(&m.name, &m.source, &constants, m.subgroups) {
            failures.push(format!("generated {}: {e}", m.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The tensor-core kernels (lavapipe has no cooperative matrices, so this is their only check
/// in CI): every variant validates with naga's cooperative-matrix capability and translates to
/// SPIR-V with `CooperativeMatrixKHR` (Vulkan), the 8 x 8 ones to MSL simdgroup matrices.
#[test]
fn cooperative_matrix_kernels_validate_and_translate() {
    let coop: Vec<_> = portagrad::generated_shader_sources()
        .into_iter()
        .filter(|m| m.source.contains("enable wgpu_cooperative_matrix"))
        .collect();
    // 2 sizes x 2 tiles x 4 transpose pairs, and 2 sizes x 2 tiles with the f16 output.
    assert_eq!(coop.len(), 20);
    for m in &coop {
        let constants = m.constants.iter().cloned().collect();
        check_with(&m.name, &m.source, &constants, true)
            .unwrap_or_else(|e| panic!("{}: {e}", m.name));
        // The SPIR-V really uses the extension (not a scalar fallback).
        let module = naga::front::wgsl::parse_str(&m.source).unwrap();
        let caps = Capabilities::COOPERATIVE_MATRIX
            | Capabilities::SHADER_FLOAT16
            | Capabilities::SHADER_FLOAT16_IN_FLOAT32
            | Capabilities::SUBGROUP;
        let info = Validator::new(ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap();
        let (module, info) =
            naga::back::pipeline_constants::process_overrides(&module, &info, None, &constants)
                .unwrap();
        let words = spv::write_vec(&module, &info, &spv::Options::default(), None).unwrap();
        // OpCapability CooperativeMatrixKHR (6022) and OpCooperativeMatrixMulAddKHR (4459).
        let op = |code: u32, operand: Option<u32>| {
            words
                .windows(2)
                .any(|w| (w[0] & 0xffff) == code && operand.is_none_or(|o| w[1] == o))
        };
        assert!(
            op(17, Some(6022)),
            "{}: no CooperativeMatrixKHR capability",
            m.name
        );
        assert!(op(4459, None), "{}: no cooperative multiply-add", m.name);
    }
    // Without the capability the same source is rejected: the check above is not vacuous.
    let module = naga::front::wgsl::parse_str(&coop[0].source).unwrap();
    let no_coop = Capabilities::SHADER_FLOAT16 | Capabilities::SUBGROUP;
    assert!(
        Validator::new(ValidationFlags::all(), no_coop)
            .validate(&module)
            .is_err()
    );
}

#[test]
fn every_wgsl_file_is_registered() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let names: Vec<&str> = portagrad::shader_sources()
        .iter()
        .map(|(n, _)| *n)
        .collect();
    for entry in std::fs::read_dir(&dir).expect("shaders/ exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wgsl") {
            let stem = path.file_stem().unwrap().to_string_lossy().to_string();
            assert!(
                names.contains(&stem.as_str()),
                "{} is not in ops::SHADERS, so it is never validated",
                path.display()
            );
        }
    }
}

#[test]
fn a_broken_shader_is_caught() {
    // The checker itself must be able to fail.
    assert!(
        check(
            "bad",
            "@compute @workgroup_size(1) fn main() { let x: f32 = 1u; }"
        )
        .is_err()
    );
}

/// Every file a generator writes into `shaders/` is what the generator writes now (regenerated
/// into memory and compared). With `PORTAGRAD_REGENERATE=1` the stale files are rewritten
/// instead, and the test passes.
#[test]
fn generated_shader_files_are_up_to_date() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let regenerate = std::env::var("PORTAGRAD_REGENERATE").is_ok_and(|v| v == "1");
    let files = portagrad::generated_files();
    assert!(!files.is_empty());
    let mut stale = Vec::new();
    for (path, want) in &files {
        let full = root.join(path);
        let have = std::fs::read_to_string(&full).unwrap_or_default();
        if have == *want {
            continue;
        }
        if regenerate {
            std::fs::write(&full, want).unwrap_or_else(|e| panic!("writing {path}: {e}"));
            continue;
        }
        let line = have
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| have.lines().count().min(want.lines().count()));
        stale.push(format!(
            "{path} is stale from line {}: the file has {:?}, the generator writes {:?}",
            line + 1,
            have.lines().nth(line).unwrap_or("<end>"),
            want.lines().nth(line).unwrap_or("<end>"),
        ));
    }
    assert!(
        stale.is_empty(),
        "{}\nregenerate with PORTAGRAD_REGENERATE=1 cargo test --release --test shaders",
        stale.join("\n")
    );
}

/// Each generated file says so in its first line, naming how to regenerate it.
#[test]
fn generated_files_carry_the_header() {
    for (path, src) in portagrad::generated_files() {
        let first = src.lines().next().unwrap_or_default();
        let marked = first.starts_with("// GENERATED by ")
            || (first.starts_with("// ") && src.contains("GENERATED by "));
        assert!(marked, "{path} does not say it is generated");
        assert!(
            src.contains("do not edit; regenerate with PORTAGRAD_REGENERATE=1"),
            "{path}"
        );
    }
}
