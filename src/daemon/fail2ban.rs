//! fail2ban events in the daemon: a ban becomes a `fail2ban` decision (enforced in block
//! mode, recorded in report mode) with its report; an unban lifts that decision only.

use std::time::Instant;

use super::engine::Engine;
use crate::clock::Timestamp;
use crate::control::protocol::{ErrorBody, ErrorCode, Fail2banData, MAX_NAME};
use crate::decision::{Source, ban_target};
use crate::fail2ban::{Event, Heard, Kind, plan_ban};
use crate::feed::report_draft;
use crate::feed::sanitize::Sanitizer;
use crate::store::LiftReason;

impl Engine {
    /// Applies one fail2ban event.
    pub fn fail2ban(&self, mut event: Event) -> Result<Fail2banData, ErrorBody> {
        let jail_ok = !event.jail.trim().is_empty() && event.jail.chars().count() <= MAX_NAME;
        if !jail_ok || event.jail.chars().any(char::is_control) {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("jail: expected a name of 1 to {MAX_NAME} characters"),
            ));
        }
        // Held while the event is applied: the action's and the log's telling of one ban
        // are classified one after the other, and a telling that failed is forgotten, so
        // its echo is applied instead of dropped.
        let mut echoes = self.fail2ban_echoes.lock().unwrap_or_else(|e| e.into_inner());
        let heard = echoes.hear(&mut event, Instant::now());
        if heard == Heard::Echo {
            return Ok(Fail2banData { decision: None, outcome: None, report_due: false, lifted: 0 });
        }
        let applied = self.apply_fail2ban(&event, heard);
        if applied.is_err() {
            echoes.forget(&event);
        }
        applied
    }

    fn apply_fail2ban(&self, event: &Event, heard: Heard) -> Result<Fail2banData, ErrorBody> {
        let internal = |e: crate::store::StoreError| ErrorBody::new(ErrorCode::Internal, e.to_string());
        let now = Timestamp::now();
        let target = ban_target(event.ip, Source::Fail2ban, 128);
        if event.kind == Kind::Unban {
            let lifted = self.lift(|s| s.lift_source(&target, Source::Fail2ban, LiftReason::Fail2ban, now));
            let lifted = lifted.map_err(internal)?;
            for d in &lifted.decisions {
                tracing::info!(ip = %d.target, jail = %event.jail, "lifted {} (fail2ban: jail {} unbanned it)", crate::decision::show_target(&d.target), event.jail);
            }
            if let Err(error) = lifted.kernel {
                return Err(ErrorBody::new(
                    ErrorCode::Firewall,
                    format!("unbanned, but the kernel may still hold it: {error}"),
                ));
            }
            return Ok(Fail2banData {
                decision: None,
                outcome: None,
                report_due: false,
                lifted: lifted.decisions.len(),
            });
        }
        let config = self.config();
        let earlier = self.ledger().read(|v| v.store.last_category(&target)).map_err(internal)?;
        let sanitizer = Sanitizer::for_host(&self.host_addresses());
        let proposal =
            plan_ban(event, &config.fail2ban, earlier, |input| report_draft(&config.feed, &sanitizer, input));
        let report_due = proposal.report.is_some();
        // The action after fail2ban.log's line: one journal line per ban, unless banshare
        // now blocks what the log's line only recorded.
        let announce = heard.announces(event.mode);
        let decided = self.decide_as(vec![proposal], now, announce).map_err(internal)?;
        match decided.outcomes.into_iter().next().expect("one outcome per proposal") {
            Ok((decision, _)) if decided.kernel.is_err() => {
                Err(super::requests::not_in_kernel(&decision, decided.kernel))
            }
            Ok((decision, outcome)) => {
                Ok(Fail2banData { decision: Some(decision), outcome: Some(outcome), report_due, lifted: 0 })
            }
            Err(refusal) => {
                Err(ErrorBody::new(ErrorCode::Refused, format!("refused: {refusal}; banshare never blocks it")))
            }
        }
    }
}
