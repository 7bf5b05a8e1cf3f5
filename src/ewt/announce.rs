//! Turning wait estimates into what the IVR says: the wording (`words_for_wait`) and the
//! smoothing between successive announcements to one caller (`smooth`), so that the figure
//! counts down as the caller waits, never jumps about and is never negative or absurd
//! (Asterisk announces `abs(holdtime - elapsed)`, which goes *up* once a caller has waited
//! longer than the average).

use serde::{Deserialize, Serialize};

/// Longest wait ever announced, in seconds; longer estimates say "more than an hour".
pub const MAX_ANNOUNCED_S: f64 = 3600.0;

/// How quickly a new estimate replaces the announced countdown (time constant, seconds).
pub const SMOOTHING_TAU_S: f64 = 120.0;

/// What to tell the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Announcement {
    /// Under a minute (also what a caller past the estimate hears: "any moment now").
    LessThanAMinute,
    /// About `n` minutes: exact minutes up to 10, then 5-minute steps.
    AboutMinutes(u32),
    /// More than an hour.
    MoreThanAnHour,
    /// No estimate to give (non-finite input): say nothing about the wait.
    Unknown,
}

/// The wording for an expected wait of `seconds`. Under 60 s is "less than a minute"; up to 10
/// minutes the nearest whole minute (at least 1); then the nearest 5 minutes, because
/// "about 23 minutes" promises a precision no estimator has; over an hour "more than an hour".
pub fn words_for_wait(seconds: f64) -> Announcement {
    if seconds.is_nan() {
        return Announcement::Unknown;
    }
    let seconds = seconds.max(0.0);
    if seconds < 60.0 {
        return Announcement::LessThanAMinute;
    }
    if seconds > MAX_ANNOUNCED_S {
        return Announcement::MoreThanAnHour;
    }
    let minutes = seconds / 60.0;
    if minutes < 10.5 {
        Announcement::AboutMinutes((minutes.round() as u32).max(1))
    } else {
        Announcement::AboutMinutes(((minutes / 5.0).round() as u32 * 5).min(60))
    }
}

/// The figure to announce now, given what was announced `elapsed_since_last` seconds ago
/// (None for the first announcement) and the estimator's new remaining-wait estimate.
///
/// - The previous figure counts down with the time that passed (never below 0).
/// - The result moves from that countdown towards the new estimate by
///   `1 - exp(-elapsed / SMOOTHING_TAU_S)`, so announcements a few seconds apart barely differ
///   and ones minutes apart mostly follow the estimator.
/// - It never rises by more than the larger of 60 s and half the countdown at a time, so a
///   caller who has waited past the estimate hears a small figure rather than a sudden big one.
/// - Non-finite or negative input is ignored or clamped; the result is always in
///   `[0, MAX_ANNOUNCED_S]`.
pub fn smooth(previous_announced: Option<f64>, new_estimate: f64, elapsed_since_last: f64) -> f64 {
    let clamp = |x: f64| x.clamp(0.0, MAX_ANNOUNCED_S);
    let previous = previous_announced.filter(|p| p.is_finite()).map(clamp);
    let elapsed = if elapsed_since_last.is_finite() {
        elapsed_since_last.max(0.0)
    } else {
        0.0
    };
    let Some(previous) = previous else {
        return if new_estimate.is_finite() {
            clamp(new_estimate)
        } else {
            0.0
        };
    };
    let countdown = (previous - elapsed).max(0.0);
    if !new_estimate.is_finite() {
        return countdown;
    }
    let target = clamp(new_estimate);
    let alpha = 1.0 - (-elapsed / SMOOTHING_TAU_S).exp();
    let blended = countdown + alpha * (target - countdown);
    let max_rise = countdown + (0.5 * countdown).max(60.0);
    clamp(blended.min(max_rise))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wording_rounds_sensibly() {
        assert_eq!(words_for_wait(0.0), Announcement::LessThanAMinute);
        assert_eq!(words_for_wait(-30.0), Announcement::LessThanAMinute);
        assert_eq!(words_for_wait(59.9), Announcement::LessThanAMinute);
        assert_eq!(words_for_wait(60.0), Announcement::AboutMinutes(1));
        assert_eq!(words_for_wait(89.0), Announcement::AboutMinutes(1));
        assert_eq!(words_for_wait(150.0), Announcement::AboutMinutes(3));
        assert_eq!(words_for_wait(600.0), Announcement::AboutMinutes(10));
        assert_eq!(words_for_wait(23.0 * 60.0), Announcement::AboutMinutes(25));
        assert_eq!(words_for_wait(3600.0), Announcement::AboutMinutes(60));
        assert_eq!(words_for_wait(3601.0), Announcement::MoreThanAnHour);
        assert_eq!(words_for_wait(f64::INFINITY), Announcement::MoreThanAnHour);
        assert_eq!(words_for_wait(f64::NAN), Announcement::Unknown);
    }

    #[test]
    fn first_announcement_is_the_estimate_clamped() {
        assert_eq!(smooth(None, 200.0, 0.0), 200.0);
        assert_eq!(smooth(None, -5.0, 0.0), 0.0);
        assert_eq!(smooth(None, 1e9, 0.0), MAX_ANNOUNCED_S);
        assert_eq!(smooth(None, f64::NAN, 0.0), 0.0);
    }

    #[test]
    fn counts_down_when_estimate_agrees() {
        // Estimator says exactly the countdown: the announcement follows it.
        assert!((smooth(Some(300.0), 240.0, 60.0) - 240.0).abs() < 1e-9);
        // A stale, unchanged estimate still counts down (partly), never up.
        let s = smooth(Some(300.0), 300.0, 60.0);
        assert!(s > 240.0 && s < 300.0, "{s}");
    }

    #[test]
    fn no_jumps_between_close_announcements() {
        // Five seconds later the estimator doubles: the figure barely moves.
        let s = smooth(Some(300.0), 600.0, 5.0);
        assert!(s > 295.0 && s < 320.0, "{s}");
        // And drops sharply: it moves down gradually too.
        let s = smooth(Some(300.0), 30.0, 5.0);
        assert!(s > 270.0 && s < 300.0, "{s}");
    }

    #[test]
    fn overwaited_caller_hears_small_figure_never_negative() {
        // Announced 60 s, waited 300 s more, estimator now says 10 minutes: the rise is capped.
        let s = smooth(Some(60.0), 600.0, 300.0);
        assert!((0.0..=60.0).contains(&s), "{s}");
        assert_eq!(words_for_wait(s), Announcement::AboutMinutes(1));
        // Estimator says a negative value (bug upstream): still 0, not its absolute value.
        assert_eq!(smooth(Some(60.0), -400.0, 300.0), 0.0);
        assert_eq!(smooth(Some(60.0), f64::NAN, 30.0), 30.0);
        assert_eq!(smooth(Some(f64::NAN), 100.0, 30.0), 100.0);
    }
}
