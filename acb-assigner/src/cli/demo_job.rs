//! `demo-job`: one job of the demo, started by `demo`, through libacb.

use super::{CliError, DemoJobArgs};

pub(super) async fn run(DemoJobArgs { items, cpu, gpu, whole_life, memory }: DemoJobArgs) -> Result<(), CliError> {
    let memory = usize::try_from(memory).map_err(|_| CliError::failed(format!("--memory {memory}: too large")))?;
    let plan = acb_lab::demo::job::JobPlan {
        items,
        cpu,
        gpu,
        memory,
        holding: if whole_life { acb_lab::demo::job::Holding::Static } else { acb_lab::demo::job::Holding::Brokered },
    };
    let library = acb_lab::demo::libacb::locate()?;
    // libacb blocks its caller: run the job on a thread of its own, off the runtime.
    tokio::task::spawn_blocking(move || acb_lab::demo::job::run(&library, plan))
        .await
        .map_err(|e| CliError::failed(format!("the job's thread: {e}")))??;
    Ok(())
}
