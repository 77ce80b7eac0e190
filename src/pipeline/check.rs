//! Check: validate a staged unit with the daemon's own checker before it may
//! reach the destinations. A failing check means nothing is committed.

use crate::command;
use crate::error::CheckFailure;
use crate::pipeline::stage::Stage;
use crate::reload::bird::{self, Configure};
use crate::resource::Unit;

/// Runs the unit's `check_cmd` with `{{src}}` set to the staged first
/// template, then, with `bird_check`, BIRD's own parser in the running
/// daemon (`configure check "<staged>"`). `Ok` when there is no check.
pub async fn check(unit: &Unit, stage: &Stage) -> Result<(), CheckFailure> {
    let Some(first) = stage.first() else {
        return Ok(());
    };
    if let Some(cmd) = &unit.check_cmd {
        let cmd = command::expand(cmd, &first.staged, &first.dest);
        tracing::debug!(command = %cmd, "running check");
        command::run(&cmd, unit.check_timeout).await?;
    }
    if let (true, Some(socket)) = (unit.bird_check, &unit.reload.bird_socket) {
        let what = Configure::Check(Some(first.staged.clone()));
        bird::configure(socket, &what, unit.check_timeout).await?;
    }
    Ok(())
}
