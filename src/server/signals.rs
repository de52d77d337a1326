//! SIGTERM and SIGINT start a clean shutdown; a second one exits at once.

use chronik_shards::runtime::Shutdown;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{info, warn};

/// Starts the thread that turns signals into `shutdown.trigger()`.
pub fn install(shutdown: Shutdown) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("chronik-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let name = if signal == SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                };
                if shutdown.is_triggered() {
                    warn!("{name} again: exiting without waiting for a clean shutdown");
                    std::process::exit(130);
                }
                info!("{name}: shutting down (stop accepting, finish requests, flush logs)");
                shutdown.trigger();
            }
        })?;
    Ok(())
}
