//! `vla-launch gpus`: the GPUs NVML sees, in CUDA order.

use tracing::{info, warn};

use crate::app::error::{ExitCode, Result};
use crate::app::settings::env_var;
use crate::gpu::{self, NvmlSource};
use crate::{print_lossy as print, println_lossy as println};

/// `described`: `--gpus SPEC`, read as `plan --gpus` reads it (the error without a driver
/// suggests it), instead of NVML.
pub(in crate::app) fn cmd_gpus(json: bool, described: Option<&str>) -> Result<ExitCode> {
    let gpus = match described {
        Some(spec) => {
            let d = gpu::spec::describe_gpus(spec).map_err(gpu::GpuError::from)?;
            for note in &d.notes {
                warn!("{note}");
            }
            d.gpus
        }
        None => {
            let d = gpu::discover(
                &NvmlSource::new(),
                env_var("CUDA_VISIBLE_DEVICES").as_deref(),
            )?;
            for w in &d.warnings {
                warn!("{w}");
            }
            info!("GPU list in {:.1} ms", d.elapsed_ms);
            d.gpus
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&gpus).expect("GPUs always serialize")
        );
    } else {
        print!("{}", gpu::render_table(&gpus));
    }
    Ok(ExitCode::Success)
}
