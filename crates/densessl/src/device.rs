//! Parsing `--device cpu|vulkan[:N]|cuda[:N]` into a burn [`Device`].

pub use burn::tensor::Device;

use crate::Error;

/// A compute device named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// burn's pure-Rust `flex` CPU backend (always compiled in).
    Cpu,
    /// burn's wgpu backend pinned to Vulkan (SPIR-V): `vulkan` = the best adapter wgpu finds
    /// (a discrete GPU first; `CUBECL_WGPU_DEFAULT_DEVICE` overrides), `vulkan:N` = the `N`-th
    /// discrete GPU.
    Vulkan(Option<usize>),
    /// burn's CUDA backend; `N` = device index.
    Cuda(usize),
}

impl DeviceSpec {
    /// Parses `cpu`, `vulkan`, `vulkan:1`, `cuda`, `cuda:0`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let (name, index) = match text.split_once(':') {
            Some((name, index)) => {
                let index = index.parse::<usize>().map_err(|_| {
                    Error::Device(format!(
                        "device '{text}': the index after ':' must be a non-negative integer"
                    ))
                })?;
                (name, Some(index))
            }
            None => (text, None),
        };
        match name {
            "cpu" | "flex" => Ok(Self::Cpu),
            "vulkan" => Ok(Self::Vulkan(index)),
            "cuda" => Ok(Self::Cuda(index.unwrap_or(0))),
            other => Err(Error::Device(format!(
                "unknown device '{other}': use cpu, vulkan[:N] or cuda[:N]"
            ))),
        }
    }

    /// The burn device with autodiff enabled, or an error saying which Cargo feature to build with.
    pub fn init(&self) -> Result<Device, Error> {
        self.init_plain().map(Device::autodiff)
    }

    /// The burn device without autodiff (inference, data generation).
    pub fn init_plain(&self) -> Result<Device, Error> {
        match self {
            Self::Cpu => Ok(Device::flex()),
            #[cfg(feature = "vulkan")]
            Self::Vulkan(index) => Ok(Device::vulkan(match index {
                Some(index) => burn::tensor::DeviceKind::DiscreteGpu(*index),
                // Not `DiscreteGpu(0)`: a machine with only an integrated GPU (or a software
                // Vulkan driver such as lavapipe) has no discrete GPU 0.
                None => burn::tensor::DeviceKind::DefaultDevice,
            })),
            #[cfg(not(feature = "vulkan"))]
            Self::Vulkan(_) => Err(Error::Device(
                "device 'vulkan' is not compiled in: rebuild with `cargo build --release --features vulkan`"
                    .into(),
            )),
            #[cfg(feature = "cuda")]
            Self::Cuda(index) => Ok(Device::cuda(*index)),
            #[cfg(not(feature = "cuda"))]
            Self::Cuda(_) => Err(Error::Device(
                "device 'cuda' is not compiled in: rebuild with `cargo build --release --features cuda` \
                 (needs network at build time: burn downloads an LLVM bundle)"
                    .into(),
            )),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Vulkan(None) => write!(f, "vulkan"),
            Self::Vulkan(Some(i)) => write!(f, "vulkan:{i}"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_indices() {
        assert_eq!(DeviceSpec::parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse("vulkan").unwrap(), DeviceSpec::Vulkan(None));
        assert_eq!(DeviceSpec::parse("vulkan:1").unwrap(), DeviceSpec::Vulkan(Some(1)));
        assert_eq!(DeviceSpec::parse("vulkan").unwrap().to_string(), "vulkan");
        assert_eq!(DeviceSpec::parse("vulkan:1").unwrap().to_string(), "vulkan:1");
        assert_eq!(DeviceSpec::parse("cuda:3").unwrap(), DeviceSpec::Cuda(3));
        assert!(DeviceSpec::parse("tpu").is_err());
        assert!(DeviceSpec::parse("cuda:x").is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn missing_backend_names_the_feature() {
        let err = DeviceSpec::parse("cuda:0").unwrap().init().unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
