//! The `vnf-lb` daemon: wiring only; see the library for what it does.

use std::process::ExitCode;

fn main() -> ExitCode {
    overlay_io::daemon::run::<vnf_lb::LbApp>()
}
