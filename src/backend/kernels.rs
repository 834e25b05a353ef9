//! Kernel sources embedded at build time (see build.rs): PTX when nvcc was
//! available, else CUDA C++ for NVRTC at run time.

/// One `kernels/<name>.cu`: its PTX (when nvcc ran at build time) and its CUDA
/// source with the local `#include "x.cuh"` headers inlined (for NVRTC).
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    pub name: &'static str,
    pub ptx: Option<&'static str>,
    pub cuda: &'static str,
}

/// Every `kernels/*.cu`, sorted by name.
pub static KERNELS: &[KernelSource] = include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The nvcc release that compiled the PTX (e.g. "13.0.88"), or "none".
pub fn nvcc_version() -> &'static str {
    env!("OPTLAB_NVCC_VERSION")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn kernels_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels")
    }

    fn parse_version(v: &str) -> (u32, u32) {
        let (major, minor) = v.trim().split_once('.').unwrap_or_else(|| panic!("bad PTX version {v:?}"));
        (major.parse().unwrap(), minor.parse().unwrap())
    }

    #[test]
    fn every_kernel_file_is_embedded() {
        let mut files: Vec<String> = std::fs::read_dir(kernels_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "cu"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        assert_eq!(names, files, "KERNELS out of date with kernels/*.cu (build.rs should have re-run)");
    }

    #[test]
    fn ptx_has_a_header_and_a_jit_able_version() {
        let max = parse_version(option_env!("OPTLAB_PTX_MAX_VERSION").unwrap_or("9.0"));
        for k in KERNELS {
            let Some(ptx) = k.ptx else { continue };
            assert!(ptx.starts_with("//"), "{}: PTX should start with nvcc's comment header", k.name);
            // The first directive of a PTX module is `.version`, then `.target`.
            let mut directives = ptx.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("//"));
            let version = directives.next().and_then(|l| l.strip_prefix(".version ")).unwrap_or_else(|| panic!("{}: no .version", k.name));
            assert!(directives.next().is_some_and(|l| l.starts_with(".target ")), "{}: no .target after .version", k.name);
            assert!(parse_version(version) <= max, "{}: PTX .version {version} above {max:?}", k.name);
        }
        if KERNELS.iter().any(|k| k.ptx.is_some()) {
            assert_ne!(nvcc_version(), "none");
        }
    }

    #[test]
    fn cuda_source_has_no_local_includes() {
        for k in KERNELS {
            for line in k.cuda.lines() {
                let t = line.trim_start();
                let Some(rest) = t.strip_prefix('#').map(str::trim_start).and_then(|r| r.strip_prefix("include")) else { continue };
                let Some(header) = rest.trim_start().strip_prefix('"').and_then(|r| r.split('"').next()) else { continue };
                assert!(!kernels_dir().join(header).exists(), "{}: local header {header:?} not inlined", k.name);
            }
        }
    }
}
