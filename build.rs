//! Kernel compilation lands with the CUDA backend (kernels/*.cu → PTX with nvcc,
//! else runtime NVRTC). Until then the build only tracks the folder, so adding a
//! kernel re-runs the build script.
fn main() {
    println!("cargo:rerun-if-changed=kernels");
}
