//! Compute devices chosen by the user (`--device cpu|ndarray|cuda[:N]`) and the backend behind
//! each.
//!
//! Library code is generic over `B: Backend`; this module is the one place where a device
//! string becomes a concrete backend type, through [`BackendTask`].

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The default CPU backend, `--device cpu`: burn-flex, whose matrix products (the gemm crate)
/// have AVX-512 kernels; 1.3–1.4× burn-ndarray's training and evaluation throughput
/// (docs/performance.md).
pub type CpuBackend = burn_flex::Flex;

/// The other CPU backend, `--device ndarray`: burn-ndarray (matrixmultiply's AVX2 kernels).
pub type NdArrayBackend = burn_ndarray::NdArray<f32>;

/// The CUDA backend, available with the `cuda` cargo feature.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn_cuda::Cuda<f32, i32>;

/// A device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The host CPU with the default backend ([`CpuBackend`]).
    #[default]
    Cpu,
    /// The host CPU with burn-ndarray ([`NdArrayBackend`]).
    Ndarray,
    /// CUDA device with the given ordinal.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = |message: &str| Error::InvalidDevice {
            spec: s.to_string(),
            message: message.to_string(),
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "ndarray" => Ok(DeviceSpec::Ndarray),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(index) => index
                    .parse()
                    .map(DeviceSpec::Cuda)
                    .map_err(|_| invalid("expected cuda:N with N a device ordinal")),
                None => Err(invalid("expected 'cpu', 'ndarray', 'cuda' or 'cuda:N'")),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Ndarray => write!(f, "ndarray"),
            DeviceSpec::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

/// Work that is generic over the backend; [`DeviceSpec::run`] picks the backend.
pub trait BackendTask {
    type Output;

    fn run<B: crate::kernels::Backend>(self, device: B::Device) -> Self::Output;
}

impl DeviceSpec {
    /// Runs `task` on this device's backend, or fails if this build lacks the backend.
    pub fn run<T: BackendTask>(self, task: T) -> Result<T::Output> {
        match self {
            DeviceSpec::Cpu => Ok(task.run::<CpuBackend>(burn_flex::FlexDevice)),
            DeviceSpec::Ndarray => Ok(task.run::<NdArrayBackend>(burn_ndarray::NdArrayDevice::Cpu)),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(index) => {
                Ok(task.run::<CudaBackend>(burn_cuda::CudaDevice::new(index)))
            }
            #[cfg(not(feature = "cuda"))]
            DeviceSpec::Cuda(_) => Err(Error::InvalidDevice {
                spec: self.to_string(),
                message: "this qpeft binary was built without CUDA; rebuild with `--features cuda`"
                    .to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_strings() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!(
            "ndarray".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Ndarray
        );
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("CUDA:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert!("gpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }
}
