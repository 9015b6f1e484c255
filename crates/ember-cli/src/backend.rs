//! The compute backends compiled into this binary, chosen by cargo feature.
//!
//! The library crates never pick a backend: they compute on whatever `Device` they are
//! given. This is the one place that turns a name into a device.
#![allow(deprecated)] // Burn 0.22 deprecates ndarray and tch; they are pinned on purpose.

use anyhow::{Result, bail};
use burn::prelude::Device;

/// Backend names compiled in, the default first.
pub fn available() -> Vec<&'static str> {
    let mut names = Vec::new();
    if cfg!(feature = "ndarray") {
        names.push("ndarray");
    }
    if cfg!(feature = "flex") {
        names.push("flex");
    }
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    if cfg!(feature = "tch") {
        names.push("tch");
        names.push("tch-cuda");
    }
    if cfg!(feature = "cuda") {
        names.push("cuda");
    }
    names
}

/// Fails unless `name` is a backend compiled into this binary.
pub fn check(name: &str) -> Result<()> {
    if available().contains(&name) {
        Ok(())
    } else {
        bail!(
            "backend \"{name}\" is not compiled into this ember (available: {}); rebuild with --features {name}",
            available().join(", ")
        )
    }
}

/// The device for `name`, or for the first compiled backend when `None`; the
/// `EMBER_BACKEND` environment variable stands in for a missing name.
pub fn device(name: Option<&str>) -> Result<Device> {
    let env = std::env::var("EMBER_BACKEND").ok();
    let name = match name.or(env.as_deref()) {
        Some(name) => name,
        None => match available().first() {
            Some(first) => first,
            None => bail!(
                "this ember was built without a backend; enable one of the features ndarray, flex, wgpu, tch, cuda"
            ),
        },
    };
    let device = match name {
        #[cfg(feature = "ndarray")]
        "ndarray" => Device::ndarray(),
        #[cfg(feature = "flex")]
        "flex" => Device::flex(),
        #[cfg(feature = "wgpu")]
        "wgpu" => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        #[cfg(feature = "tch")]
        "tch" => Device::libtorch(),
        #[cfg(feature = "tch")]
        "tch-cuda" => Device::libtorch_cuda(0usize),
        #[cfg(feature = "cuda")]
        "cuda" => Device::cuda(0usize),
        other => bail!(
            "backend \"{other}\" is not compiled into this ember (available: {}); rebuild with --features {other}",
            available().join(", ")
        ),
    };
    Ok(device)
}
