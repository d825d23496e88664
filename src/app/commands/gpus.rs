//! `vla-launch gpus`: the GPUs NVML sees, in CUDA order.

use tracing::{info, warn};

use crate::app::error::{ExitCode, Result};
use crate::app::settings::env_var;
use crate::gpu::{self, NvmlSource};
use crate::{print_lossy as print, println_lossy as println};

pub(in crate::app) fn cmd_gpus(json: bool) -> Result<ExitCode> {
    let d = gpu::discover(
        &NvmlSource::new(),
        env_var("CUDA_VISIBLE_DEVICES").as_deref(),
    )?;
    for w in &d.warnings {
        warn!("{w}");
    }
    info!("GPU list in {:.1} ms", d.elapsed_ms);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&d.gpus).expect("GPUs always serialize")
        );
    } else {
        print!("{}", gpu::render_table(&d.gpus));
    }
    Ok(ExitCode::Success)
}
