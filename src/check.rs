//! Check: validate a staged unit with the daemon's own checker before it may
//! reach the destinations. A failing check means nothing is committed.

use crate::command;
use crate::error::CheckFailure;
use crate::resource::Unit;
use crate::stage::Stage;

/// Runs the unit's `check_cmd` with `{{src}}` set to the staged first
/// template; `Ok` when there is no check.
pub async fn check(unit: &Unit, stage: &Stage) -> Result<(), CheckFailure> {
    let (Some(cmd), Some(first)) = (&unit.check_cmd, stage.first()) else {
        return Ok(());
    };
    let cmd = command::expand(cmd, &first.staged, &first.dest);
    tracing::debug!(unit = %unit.name, command = %cmd, "running check");
    command::run(&cmd, unit.check_timeout).await?;
    Ok(())
}
