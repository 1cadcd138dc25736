//! `cilium-cni`: the CNI plugin (spec 1.0.0) the container runtime calls in the node's
//! namespace. Reads `CNI_*` and the network configuration on stdin, prints the result or a
//! CNI error object on stdout, and exits non-zero on error.

use std::io::{Read, Write};
use std::process::ExitCode;

use cilium_cmd::cni::{self, CniEnv};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    // An unreadable stdin is treated as empty: the command then fails with a config error
    // (or VERSION answers anyway), which is what the runtime needs to see.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            let error = serde_json::json!({
                "cniVersion": cni::CURRENT_VERSION,
                "code": cni::codes::TRY_AGAIN_LATER,
                "msg": "cannot start the plugin's runtime",
                "details": err.to_string(),
            });
            println!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(cni::run(&CniEnv::from_process(), &stdin));
    let mut out = std::io::stdout().lock();
    let written = if outcome.stdout.is_empty() {
        Ok(())
    } else {
        writeln!(out, "{}", outcome.stdout)
    };
    if outcome.success && written.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
