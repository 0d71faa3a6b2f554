//! Backoff between retries: exponential growth to a ceiling with equal
//! jitter, shared by the relay (broker outages, row retries) and the consumer
//! (delayed retries, inbox retention sweeps).

use std::time::Duration;

/// `initial * 2^step`, capped at `max`, with equal jitter: a uniform draw
/// from the upper half of that, `[d/2, d]`.
///
/// Equal rather than full jitter (`[0, d]`): after a shared outage it spreads
/// the relays and consumers that failed together just as well, but keeps
/// every pause at least half its nominal length, so pauses still grow with
/// `step` and a broker that is down is never hammered by near-zero retries.
/// The cap holds: a draw never exceeds `d`.
pub(crate) fn exponential(initial: Duration, max: Duration, step: u32) -> Duration {
    equal_jitter(exponential_ceiling(initial, max, step), unit_random())
}

/// `initial * 2^step`, capped at `max`: the longest [`exponential`] pause.
pub(crate) fn exponential_ceiling(initial: Duration, max: Duration, step: u32) -> Duration {
    initial
        .checked_mul(1u32 << step.min(20))
        .map_or(max, |d| d.min(max))
}

/// `d/2 + r * d/2` for `r` in `[0, 1]`: from `d/2` up to `d`.
pub(crate) fn equal_jitter(d: Duration, r: f64) -> Duration {
    let half = d / 2;
    half + (d - half).mul_f64(r.clamp(0.0, 1.0))
}

/// A uniform draw from `[0, 1)`: the low 53 bits of a v4 UUID, which are all
/// random (the OS's randomness through a crate we depend on already; a
/// backoff draws rarely).
pub(crate) fn unit_random() -> f64 {
    const BITS: u32 = 53;
    let random = (uuid::Uuid::new_v4().as_u128() as u64) & ((1 << BITS) - 1);
    random as f64 / (1u64 << BITS) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_draws_spread_over_the_upper_half_and_keep_the_cap() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        // Step 3: a ceiling of 800 ms, draws within [400 ms, 800 ms].
        let draws: Vec<Duration> = (0..1_000).map(|_| exponential(initial, max, 3)).collect();
        let (low, high) = (Duration::from_millis(400), Duration::from_millis(800));
        assert!(draws.iter().all(|d| *d >= low && *d <= high), "{draws:?}");
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(
            distinct.len() > 900,
            "only {} distinct of 1,000",
            distinct.len()
        );
        // Uniform over 400 ms: mean 600 ms, standard error about 3.7 ms.
        let mean = draws.iter().sum::<Duration>() / 1_000;
        assert!(
            mean > Duration::from_millis(570) && mean < Duration::from_millis(630),
            "{mean:?}"
        );
        // Both halves of the range are used: the spread is not a sliver.
        assert!(draws.iter().any(|d| *d < Duration::from_millis(500)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(700)));
        // The cap holds at every step, however large.
        for step in [10, 20, 31, u32::MAX] {
            let d = exponential(initial, max, step);
            assert!(d >= max / 2 && d <= max, "step {step}: {d:?}");
        }
        assert_eq!(equal_jitter(high, 0.0), low);
        assert_eq!(equal_jitter(high, 1.0), high);
        assert!((0..1_000)
            .map(|_| unit_random())
            .all(|r| (0.0..1.0).contains(&r)));
    }
}
