//! Where GPU records come from: NVML on a real machine, a fixed list in tests.

use super::device::GpuProcess;
use super::error::GpuError;

/// One device as the driver reports it, before CUDA_VISIBLE_DEVICES and ordering are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDevice {
    /// NVML's own index; kept for messages only, never used to select a device.
    pub nvml_index: u32,
    pub name: String,
    /// "GPU-..." for a physical GPU, "MIG-..." for a MIG instance.
    pub uuid: String,
    /// NVML form, "00000000:17:00.0"; MIG instances carry their parent's.
    pub pci_bus_id: Option<String>,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    pub compute_capability: Option<(u32, u32)>,
    pub processes: Vec<GpuProcess>,
    /// MIG instances of this GPU when MIG mode is on (CUDA then sees these, not the GPU).
    pub mig_instances: Vec<RawDevice>,
}

/// A provider of raw devices (NVML, or a fake in tests).
pub trait GpuSource {
    fn devices(&self) -> Result<Vec<RawDevice>, GpuError>;
}

/// A fixed device list, for tests and for replaying a recorded machine.
#[derive(Debug, Clone, Default)]
pub struct FakeSource {
    pub devices: Vec<RawDevice>,
    /// When set, `devices()` fails the way a machine without the driver does.
    pub unavailable: bool,
}

impl FakeSource {
    pub fn new(devices: Vec<RawDevice>) -> Self {
        Self {
            devices,
            unavailable: false,
        }
    }

    pub fn without_driver() -> Self {
        Self {
            devices: Vec::new(),
            unavailable: true,
        }
    }
}

impl GpuSource for FakeSource {
    fn devices(&self) -> Result<Vec<RawDevice>, GpuError> {
        if self.unavailable {
            return Err(GpuError::NvmlUnavailable {
                reason: "fake source without driver".into(),
            });
        }
        Ok(self.devices.clone())
    }
}
