//! Compiles `kernels/*.cu` to PTX with nvcc and embeds both the PTX and the CUDA
//! source (local `#include "x.cuh"` inlined, for NVRTC at run time) through
//! `$OUT_DIR/kernels.rs`, read by `src/backend/kernels.rs`.
//!
//! nvcc: `$NVCC`, `$CUDA_HOME/bin/nvcc`, `$CUDA_PATH/bin/nvcc`, `nvcc` on PATH, then
//! the repo's `.venv-cuda` (`tools/install-nvcc.sh`). Without one the build warns
//! and ships source only, unless `OPTLAB_REQUIRE_NVCC=1` (CI), which makes it an
//! error. A kernel that does not compile fails the build with nvcc's output. PTX
//! newer than `OPTLAB_PTX_MAX_VERSION` (default 9.0: CUDA 13.0, what driver 580 on
//! the GPU machines can JIT) is refused.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, exit};
use std::{env, fs, thread};

const DEFAULT_MAX_PTX: &str = "9.0";
// No -O3: for -ptx it only sets the (unused) host optimization level; NVVM already
// optimizes device code (checked: identical PTX with and without it).
const NVCC_FLAGS: &[&str] = &["-ptx", "-std=c++17", "-lineinfo", "-arch=compute_80"];

/// The commit the binary is built from (`-dirty` when tracked files differ from
/// it) and the compiler, for the provenance every study records
/// (`src/experiments/provenance.rs`). Reruns when the commit, the index or any
/// tracked file changes, so the flag is never stale.
fn emit_provenance(root: &Path) {
    let git = |args: &[&str]| {
        let out = Command::new("git").arg("-C").arg(root).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = match git(&["rev-parse", "HEAD"]) {
        Some(head) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            format!("{head}{}", if dirty { "-dirty" } else { "" })
        }
        None => "unknown (not built from a git checkout)".into(),
    };
    println!("cargo:rustc-env=OPTLAB_GIT_COMMIT={commit}");
    let rustc = Command::new(env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-V")
        .output()
        .ok()
        .map_or_else(|| "unknown".into(), |o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    println!("cargo:rustc-env=OPTLAB_RUSTC={rustc}");
    for marker in [".git/HEAD", ".git/index"] {
        if root.join(marker).exists() {
            println!("cargo:rerun-if-changed={marker}");
        }
    }
    for file in git(&["ls-files"]).unwrap_or_default().lines() {
        println!("cargo:rerun-if-changed={file}");
    }
}

fn main() {
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "OPTLAB_REQUIRE_NVCC", "OPTLAB_PTX_MAX_VERSION"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    emit_provenance(&root);
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kdir = root.join("kernels");

    let mut files: Vec<PathBuf> = fs::read_dir(&kdir).map(|dir| dir.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    files.sort();
    for f in files.iter().filter(|f| matches!(ext(f), "cu" | "cuh")) {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let sources: Vec<PathBuf> = files.into_iter().filter(|f| ext(f) == "cu").collect();

    let max_var = env::var("OPTLAB_PTX_MAX_VERSION").unwrap_or_else(|_| DEFAULT_MAX_PTX.into());
    let max_ptx =
        parse_version(&max_var).unwrap_or_else(|| fail(&format!("OPTLAB_PTX_MAX_VERSION={max_var:?} is not a PTX ISA version like 9.0")));

    let (nvcc, looked) = find_nvcc(&root);
    let release = nvcc.as_deref().map(nvcc_release);
    println!("cargo:rustc-env=OPTLAB_NVCC_VERSION={}", release.as_deref().unwrap_or("none"));
    // The ptxas beside nvcc, for the register budgets of tests/cuda_kernels.rs.
    let ptxas = nvcc.as_deref().and_then(Path::parent).map(|bin| bin.join("ptxas")).filter(|p| p.is_file());
    println!("cargo:rustc-env=OPTLAB_PTXAS={}", ptxas.map(|p| p.display().to_string()).unwrap_or_default());
    match &nvcc {
        Some(nvcc) => println!("cargo:rerun-if-changed={}", nvcc.display()),
        None if env::var("OPTLAB_REQUIRE_NVCC").is_ok_and(|v| v == "1") => fail(&format!(
            "OPTLAB_REQUIRE_NVCC=1 but no nvcc was found. Looked at:\n  {}\n\
             Install the pinned CUDA 13.0 nvcc with tools/install-nvcc.sh and set NVCC to the path it prints.",
            looked.join("\n  ")
        )),
        None => println!(
            "cargo:warning=no nvcc found (NVCC, CUDA_HOME, CUDA_PATH, PATH, .venv-cuda): kernels will be compiled at run time \
             with NVRTC. For build-time PTX run tools/install-nvcc.sh, then set NVCC or touch build.rs."
        ),
    }

    // Compile every kernel in parallel; report all failures at once.
    let results: Vec<Result<String, String>> = thread::scope(|s| {
        let jobs: Vec<_> = sources
            .iter()
            .map(|src| {
                let ptx = out.join(format!("{}.ptx", stem(src)));
                let (nvcc, kdir) = (nvcc.as_deref(), &kdir);
                s.spawn(move || nvcc.map_or(Ok(String::new()), |nvcc| compile(nvcc, kdir, src, &ptx)))
            })
            .collect();
        jobs.into_iter().map(|j| j.join().unwrap()).collect()
    });
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if !errors.is_empty() {
        let all = errors.iter().map(|e| e.as_str()).collect::<Vec<_>>().join("\n");
        fail(&format!("{} of {} kernels failed to compile:\n{all}", errors.len(), sources.len()));
    }
    for warning in results.iter().flatten().flat_map(|w| w.lines()).filter(|l| !l.trim().is_empty()) {
        println!("cargo:warning={warning}");
    }

    let mut entries = String::new();
    for src in &sources {
        let name = stem(src);
        let inlined = out.join(format!("{name}.inlined.cu"));
        let mut seen = HashSet::new();
        let text = inline_includes(src, &kdir, &mut seen).unwrap_or_else(|e| fail(&e));
        fs::write(&inlined, text).unwrap();
        let ptx = match (&nvcc, &release) {
            (Some(nvcc), Some(release)) => {
                let path = out.join(format!("{name}.ptx"));
                check_ptx_version(&path, max_ptx, &max_var, nvcc, release);
                format!("Some(include_str!({:?}))", path.to_str().unwrap())
            }
            _ => "None".into(),
        };
        entries += &format!(
            "    crate::backend::kernels::KernelSource {{ name: {name:?}, ptx: {ptx}, cuda: include_str!({:?}) }},\n",
            inlined.to_str().unwrap()
        );
    }
    fs::write(out.join("kernels.rs"), format!("&[\n{entries}]\n")).unwrap();
    fs::write(out.join("constants.rs"), shared_constants(&kdir.join("constants.cuh"))).unwrap();
}

/// `pub const NAME: usize = V;` for every `#define NAME V` (V an integer) of
/// `kernels/constants.cuh`: the constants Rust shares with the kernels.
fn shared_constants(header: &Path) -> String {
    let text = fs::read_to_string(header).unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", header.display())));
    let mut consts = String::new();
    for line in text.lines().filter(|l| l.starts_with("#define ")) {
        let mut words = line.split_whitespace().skip(1);
        let (Some(name), Some(value)) = (words.next(), words.next().and_then(|v| v.parse::<usize>().ok())) else {
            fail(&format!("{}: `{line}` is not `#define NAME <integer>`", header.display()))
        };
        consts += &format!("pub const {name}: usize = {value};\n");
    }
    consts
}

/// Prints the message where cargo shows a failed build script's output, and fails.
fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    exit(1)
}

fn ext(p: &Path) -> &str {
    p.extension().and_then(|e| e.to_str()).unwrap_or("")
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

/// The first nvcc found, resolved through symlinks (nvcc finds its headers
/// relative to its real path), and every place looked at.
fn find_nvcc(root: &Path) -> (Option<PathBuf>, Vec<String>) {
    if let Some(p) = env::var_os("NVCC").filter(|p| !p.is_empty()).map(PathBuf::from) {
        if !p.is_file() {
            fail(&format!("NVCC={} is not a file", p.display()));
        }
        return (Some(p.canonicalize().unwrap_or(p)), vec![]);
    }
    let mut candidates: Vec<PathBuf> =
        ["CUDA_HOME", "CUDA_PATH"].iter().filter_map(|v| env::var_os(v).map(|home| PathBuf::from(home).join("bin/nvcc"))).collect();
    candidates.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()).map(|d| d.join("nvcc")));
    let mut venv: Vec<PathBuf> =
        fs::read_dir(root.join(".venv-cuda/lib")).map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    venv.retain(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("python3.")));
    venv.sort();
    candidates.extend(venv.iter().map(|p| p.join("site-packages/nvidia/cu13/bin/nvcc")));
    if venv.is_empty() {
        candidates.push(root.join(".venv-cuda/lib/python3.*/site-packages/nvidia/cu13/bin/nvcc"));
    }
    let found = candidates.iter().find(|p| p.is_file()).map(|p| p.canonicalize().unwrap_or_else(|_| p.clone()));
    let looked = std::iter::once("$NVCC (unset)".to_string()).chain(candidates.iter().map(|p| p.display().to_string())).collect();
    (found, looked)
}

/// "13.0.88" from `nvcc --version`'s "Cuda compilation tools, release 13.0, V13.0.88".
fn nvcc_release(nvcc: &Path) -> String {
    let out = Command::new(nvcc).arg("--version").output();
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => fail(&format!("{} --version failed:\n{}", nvcc.display(), String::from_utf8_lossy(&o.stderr))),
        Err(e) => fail(&format!("cannot run {}: {e}", nvcc.display())),
    };
    let line = text.lines().find(|l| l.contains("release")).unwrap_or_else(|| fail(&format!("unexpected nvcc --version:\n{text}")));
    line.rsplit(", V").next().filter(|v| *v != line).unwrap_or(line).trim().to_string()
}

/// Runs nvcc on one kernel; `Ok` carries its warnings, `Err` its full error output.
fn compile(nvcc: &Path, kdir: &Path, src: &Path, ptx: &Path) -> Result<String, String> {
    let out = Command::new(nvcc)
        .args(NVCC_FLAGS)
        .arg("-I")
        .arg(kdir)
        .arg(src)
        .arg("-o")
        .arg(ptx)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    let log = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    if out.status.success() { Ok(log) } else { Err(format!("--- {} ({}, {}):\n{log}", src.display(), nvcc.display(), out.status)) }
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn check_ptx_version(ptx: &Path, max: (u32, u32), max_var: &str, nvcc: &Path, release: &str) {
    let text = fs::read_to_string(ptx).unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", ptx.display())));
    let line = text.lines().find(|l| l.starts_with(".version")).unwrap_or_else(|| fail(&format!("{} has no .version line", ptx.display())));
    let version = line.trim_start_matches(".version").trim();
    if parse_version(version).is_none_or(|v| v > max) {
        fail(&format!(
            "{} (CUDA {release}) produced PTX .version {version} in {}, above the maximum {max_var}. The GPU machines' \
             driver 580 (CUDA 13.0) cannot JIT newer PTX. Use CUDA 13.0's nvcc: tools/install-nvcc.sh pins all five \
             wheels (an unpinned nvidia-cuda-nvcc pulls newer parts). Raise OPTLAB_PTX_MAX_VERSION only for a newer driver.",
            nvcc.display(),
            ptx.display()
        ));
    }
}

/// The file's text with each `#include "x"` naming a file in kernels/ replaced by
/// that file's (recursively inlined) text, each file at most once (`#pragma once`
/// semantics, which also stops include cycles). `#line` keeps NVRTC's messages
/// pointing at the original files.
fn inline_includes(file: &Path, kdir: &Path, seen: &mut HashSet<PathBuf>) -> Result<String, String> {
    let text = fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    seen.insert(file.canonicalize().unwrap_or_else(|_| file.to_path_buf()));
    let name = file.file_name().unwrap().to_string_lossy();
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        match local_include(line).map(|h| kdir.join(h)).filter(|h| h.is_file()) {
            Some(h) if !seen.contains(&h.canonicalize().unwrap_or_else(|_| h.clone())) => {
                out += &format!("// {line}\n#line 1 \"{}\"\n", h.file_name().unwrap().to_string_lossy());
                out += &inline_includes(&h, kdir, seen)?;
                out += &format!("#line {} \"{name}\"\n", i + 2);
            }
            Some(_) => out += &format!("// {line} (already included)\n"),
            None if line.trim() == "#pragma once" => out += "// #pragma once\n",
            None => out += &format!("{line}\n"),
        }
    }
    Ok(out)
}

/// `x` from a line `#include "x"` (spaces allowed around `#`), else None.
fn local_include(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start().strip_prefix("include")?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(&rest[..rest.find('"')?])
}
