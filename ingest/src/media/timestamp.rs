//! RTMP carries 32-bit millisecond timestamps that wrap after ~49.7 days;
//! HLS needs a monotonic timeline. [`TimestampExtender`] unwraps them.

/// Ticks of the MPEG 90 kHz clock per millisecond.
pub const TICKS_PER_MS: i64 = 90;

/// Extends a stream of 32-bit RTMP timestamps to 64 bits.
///
/// A value more than 2^31 ms below the previous one is a forward wrap; a
/// value more than 2^31 ms above it is a late frame from before a wrap.
/// Anything else is taken as is, so small backward jumps (B-frame reordering
/// by broken encoders, audio/video interleave) stay small.
#[derive(Debug, Default, Clone)]
pub struct TimestampExtender {
    last: Option<i64>,
}

const WRAP: i64 = 1 << 32;
const HALF: i64 = 1 << 31;

impl TimestampExtender {
    /// Returns the extended timestamp in milliseconds.
    pub fn extend(&mut self, raw: u32) -> i64 {
        let raw = i64::from(raw);
        let value = match self.last {
            None => raw,
            Some(last) => {
                let epoch = last.div_euclid(WRAP);
                let candidate = epoch * WRAP + raw;
                if candidate < last - HALF {
                    candidate + WRAP
                } else if candidate > last + HALF {
                    candidate - WRAP
                } else {
                    candidate
                }
            }
        };
        self.last = Some(self.last.map_or(value, |l| l.max(value)));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_through_normal_timestamps() {
        let mut e = TimestampExtender::default();
        assert_eq!(e.extend(0), 0);
        assert_eq!(e.extend(33), 33);
        assert_eq!(e.extend(20), 20, "small backward jump stays small");
        assert_eq!(e.extend(1000), 1000);
    }

    #[test]
    fn unwraps_past_u32_max() {
        let mut e = TimestampExtender::default();
        assert_eq!(e.extend(u32::MAX - 40), i64::from(u32::MAX) - 40);
        assert_eq!(e.extend(u32::MAX - 7), i64::from(u32::MAX) - 7);
        assert_eq!(e.extend(26), WRAP + 26);
        assert_eq!(e.extend(59), WRAP + 59);
        // A late frame from before the wrap.
        assert_eq!(e.extend(u32::MAX - 1), i64::from(u32::MAX) - 1);
        assert_eq!(e.extend(92), WRAP + 92);
    }

    #[test]
    fn wraps_more_than_once() {
        let mut e = TimestampExtender::default();
        let mut expected = 0i64;
        let mut raw: u32 = 0;
        for _ in 0..10_000 {
            raw = raw.wrapping_add(1_000_000);
            expected += 1_000_000;
            assert_eq!(e.extend(raw), expected);
        }
        assert!(expected > 2 * WRAP);
    }
}
