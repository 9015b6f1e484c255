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
    // flex before ndarray: Burn 0.22 deprecates ndarray (0.23 removes it), and with
    // Ember's kernels flex trains and generates as fast (docs/benchmarks.md).
    if cfg!(feature = "flex") {
        names.push("flex");
    }
    if cfg!(feature = "ndarray") {
        names.push("ndarray");
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
        "tch-cuda" => Device::libtorch_cuda(ember_train::collective::local_gpu()),
        #[cfg(feature = "cuda")]
        "cuda" => Device::cuda(ember_train::collective::local_gpu()),
        other => bail!(
            "backend \"{other}\" is not compiled into this ember (available: {}); rebuild with --features {other}",
            available().join(", ")
        ),
    };
    Ok(device)
}

/// Every device name `--devices` knows, compiled in or not.
const DEVICE_NAMES: [&str; 7] = ["cpu", "ndarray", "flex", "wgpu", "tch", "tch-cuda", "cuda"];

/// The devices of `--devices` (`cpu,cpu`, `cuda:0,cuda:1`): `NAME` as `--backend` knows
/// it, `cpu` for the default CPU backend, `NAME:N` for the N-th GPU of `cuda` and
/// `tch-cuda`. Every device must be of one backend: a replica's gradients are summed
/// on the first device.
pub fn devices(list: &[String]) -> Result<Vec<Device>> {
    let mut parsed = Vec::with_capacity(list.len());
    for item in list.iter().map(|s| s.trim()) {
        let (name, index) = match item.split_once(':') {
            Some((name, index)) => {
                let index: usize = index.parse().map_err(|_| {
                    anyhow::anyhow!("device \"{item}\": the part after ':' must be a GPU number")
                })?;
                (name, Some(index))
            }
            None => (item, None),
        };
        if !DEVICE_NAMES.contains(&name) {
            bail!(
                "unknown device \"{item}\" (devices: {}, with :N for cuda and tch-cuda)",
                DEVICE_NAMES.join(", ")
            );
        }
        if index.is_some() && !matches!(name, "cuda" | "tch-cuda") {
            bail!("device \"{item}\": only cuda and tch-cuda devices are numbered");
        }
        let backend = match name {
            "cpu" => available()
                .into_iter()
                .find(|b| matches!(*b, "ndarray" | "flex"))
                .unwrap_or("ndarray"),
            other => other,
        };
        parsed.push((backend, index));
    }
    let mut backends: Vec<&str> = Vec::new();
    for (backend, _) in &parsed {
        if !backends.contains(backend) {
            backends.push(backend);
        }
    }
    if backends.len() > 1 {
        bail!(
            "--devices mixes backends ({}): every replica must run on the same backend",
            backends.join(", ")
        );
    }
    parsed
        .into_iter()
        .map(|(backend, index)| {
            check(backend)?;
            Ok(match index {
                #[cfg(feature = "cuda")]
                Some(i) if backend == "cuda" => Device::cuda(i),
                #[cfg(feature = "tch")]
                Some(i) if backend == "tch-cuda" => Device::libtorch_cuda(i),
                _ => device(Some(backend))?,
            })
        })
        .collect()
}
