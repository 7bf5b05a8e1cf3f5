//! ITU-T G.711 companding: mu-law (PCMU, North America) and A-law (PCMA, everywhere else),
//! between 16-bit linear PCM and one octet per sample. Written by hand from the segment
//! definitions of G.711; decoding goes through 256-entry tables built at compile time.
//! Every `i16` and every octet is a valid input, so nothing here can fail.

/// Which companding law a call negotiated (PCMU is RTP payload type 0, PCMA is 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Law {
    Ulaw,
    Alaw,
}

impl Law {
    /// Appends one octet per sample, so a 20 ms frame of 160 samples becomes a 160-byte payload.
    pub fn encode(self, samples: &[i16], out: &mut Vec<u8>) {
        match self {
            Law::Ulaw => encode_ulaw(samples, out),
            Law::Alaw => encode_alaw(samples, out),
        }
    }

    /// Appends one sample per octet; any payload length is accepted.
    pub fn decode(self, octets: &[u8], out: &mut Vec<i16>) {
        match self {
            Law::Ulaw => decode_ulaw(octets, out),
            Law::Alaw => decode_alaw(octets, out),
        }
    }

    pub fn encode_sample(self, sample: i16) -> u8 {
        match self {
            Law::Ulaw => linear_to_ulaw(sample),
            Law::Alaw => linear_to_alaw(sample),
        }
    }

    pub fn decode_sample(self, octet: u8) -> i16 {
        match self {
            Law::Ulaw => ulaw_to_linear(octet),
            Law::Alaw => alaw_to_linear(octet),
        }
    }

    /// The octet a zero sample encodes to, for padding gaps with silence. A-law has no zero
    /// level, so its silence decodes to +8, which is inaudible.
    pub fn silence(self) -> u8 {
        self.encode_sample(0)
    }
}

/// mu-law works on 14-bit magnitudes; 33 is the bias that makes every segment start on a
/// power of two, so the segment is just the position of the leading one bit.
const ULAW_BIAS: i32 = 33;
/// The largest biased 14-bit magnitude that still fits segment 7; louder input saturates.
const ULAW_MAX_BIASED: i32 = 0x1FFF;

/// mu-law inverts every bit on the wire (historically to keep line density up), and uses
/// 0x80 for positive samples after that inversion.
const ULAW_POSITIVE_MASK: u8 = 0xFF;
const ULAW_NEGATIVE_MASK: u8 = 0x7F;

/// A-law inverts the even bits on the wire; the sign bit set means positive.
const ALAW_POSITIVE_MASK: u8 = 0xD5;
const ALAW_NEGATIVE_MASK: u8 = 0x55;

/// Negative samples use the one's complement (`!x`, i.e. `-x - 1`) as their magnitude, as the
/// ITU G.191 reference coder does: the quantizer is then exactly symmetric about -0.5, so `x`
/// and `!x` always get codes that differ only in the sign bit.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let x = i32::from(sample);
    let (magnitude, mask) = if x < 0 {
        ((!x) >> 2, ULAW_NEGATIVE_MASK)
    } else {
        (x >> 2, ULAW_POSITIVE_MASK)
    };
    let biased = (magnitude + ULAW_BIAS).min(ULAW_MAX_BIASED);
    // biased is in 33..=0x1FFF, so its leading one is at bit 5..=12: segments 0..=7.
    let segment = (31 - biased.leading_zeros()) - 5;
    let quant = (biased >> (segment + 1)) & 0x0F;
    ((segment << 4) as u8 | quant as u8) ^ mask
}

pub fn ulaw_to_linear(octet: u8) -> i16 {
    // A u8 index into a 256-entry table is always in bounds.
    ULAW_TABLE[usize::from(octet)]
}

/// A-law works on 13-bit magnitudes; segments 0 and 1 share one step size, so there is no
/// bias and segment 0 is "below 32".
pub fn linear_to_alaw(sample: i16) -> u8 {
    let x = i32::from(sample);
    let (magnitude, mask) = if x < 0 {
        ((!x) >> 3, ALAW_NEGATIVE_MASK)
    } else {
        (x >> 3, ALAW_POSITIVE_MASK)
    };
    // magnitude is in 0..=4095, so the segment is at most 7 and nothing saturates.
    let segment = if magnitude < 32 {
        0
    } else {
        (31 - magnitude.leading_zeros()) - 4
    };
    let shift = if segment < 2 { 1 } else { segment };
    let quant = (magnitude >> shift) & 0x0F;
    ((segment << 4) as u8 | quant as u8) ^ mask
}

pub fn alaw_to_linear(octet: u8) -> i16 {
    // A u8 index into a 256-entry table is always in bounds.
    ALAW_TABLE[usize::from(octet)]
}

pub fn encode_ulaw(samples: &[i16], out: &mut Vec<u8>) {
    out.extend(samples.iter().map(|&s| linear_to_ulaw(s)));
}

pub fn decode_ulaw(octets: &[u8], out: &mut Vec<i16>) {
    out.extend(octets.iter().map(|&o| ulaw_to_linear(o)));
}

pub fn encode_alaw(samples: &[i16], out: &mut Vec<u8>) {
    out.extend(samples.iter().map(|&s| linear_to_alaw(s)));
}

pub fn decode_alaw(octets: &[u8], out: &mut Vec<i16>) {
    out.extend(octets.iter().map(|&o| alaw_to_linear(o)));
}

/// Each code decodes to the middle of its decision interval, scaled from
/// 14 bits to 16 by `<< 2`.
const fn ulaw_decode_formula(octet: u8) -> i16 {
    let code = !octet;
    let segment = (code >> 4) & 0x07;
    let quant = (code & 0x0F) as i32;
    let magnitude = (((quant << 3) + (ULAW_BIAS << 2)) << segment) - (ULAW_BIAS << 2);
    if code & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// Each code decodes to the middle of its decision interval, scaled from
/// 13 bits to 16 by `<< 3`.
const fn alaw_decode_formula(octet: u8) -> i16 {
    let code = octet ^ ALAW_NEGATIVE_MASK;
    let segment = (code >> 4) & 0x07;
    let quant = (code & 0x0F) as i32;
    let magnitude = if segment == 0 {
        (quant << 4) + 8
    } else {
        ((quant << 4) + 0x108) << (segment - 1)
    };
    if code & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

const fn build_table(law: Law) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = match law {
            Law::Ulaw => ulaw_decode_formula(i as u8),
            Law::Alaw => alaw_decode_formula(i as u8),
        };
        i += 1;
    }
    table
}

static ULAW_TABLE: [i16; 256] = build_table(Law::Ulaw);
static ALAW_TABLE: [i16; 256] = build_table(Law::Alaw);

#[cfg(test)]
mod tests {
    use super::*;

    const LAWS: [Law; 2] = [Law::Ulaw, Law::Alaw];

    /// Sign-magnitude index (segment << 4 | quant) to the positive and negative wire codes.
    fn codes_for_index(law: Law, index: u8) -> (u8, u8) {
        match law {
            Law::Ulaw => (index ^ ULAW_POSITIVE_MASK, index ^ ULAW_NEGATIVE_MASK),
            Law::Alaw => (index ^ ALAW_POSITIVE_MASK, index ^ ALAW_NEGATIVE_MASK),
        }
    }

    /// Distance between adjacent reconstruction levels in a segment, in 16-bit units.
    fn step(law: Law, segment: u8) -> i32 {
        match law {
            Law::Ulaw => 8 << segment,
            Law::Alaw => 16 << segment.saturating_sub(1),
        }
    }

    fn segment_of(law: Law, code: u8) -> u8 {
        let index = match law {
            Law::Ulaw => !code,
            Law::Alaw => code ^ ALAW_NEGATIVE_MASK,
        };
        (index >> 4) & 0x07
    }

    #[test]
    fn ulaw_reference_code_points() {
        // Values of the G.711 tables, as the public-domain Sun g711.c also decodes them.
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0xFE), 8);
        assert_eq!(ulaw_to_linear(0xF0), 120);
        assert_eq!(ulaw_to_linear(0xEF), 132);
        assert_eq!(ulaw_to_linear(0x70), -120);
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(-1), 0x7F);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
    }

    #[test]
    fn alaw_reference_code_points() {
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(alaw_to_linear(0xD4), 24);
        assert_eq!(alaw_to_linear(0xC5), 264);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
    }

    /// The G.711 digital milliwatt (a 1 kHz sine at 0 dBm0 as eight mu-law octets) pins down
    /// what 0 dBm0 means in our 16-bit scale; the in-band DTMF detector relies on it.
    #[test]
    fn digital_milliwatt_is_0_dbm0() {
        let dmw = [0x1E, 0x0B, 0x0B, 0x1E, 0x9E, 0x8B, 0x8B, 0x9E];
        let mut samples = Vec::new();
        decode_ulaw(&dmw, &mut samples);
        assert_eq!(
            samples,
            [-8828, -20860, -20860, -8828, 8828, 20860, 20860, 8828]
        );
        let mean_square =
            samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64;
        let rms = mean_square.sqrt();
        assert!((rms - 16_016.0).abs() < 1.0, "rms {rms}");
    }

    #[test]
    fn decode_encode_decode_is_stable_for_every_code() {
        for law in LAWS {
            for code in 0..=255u8 {
                let value = law.decode_sample(code);
                let again = law.decode_sample(law.encode_sample(value));
                assert_eq!(again, value, "{law:?} code {code:#04x}");
            }
        }
    }

    #[test]
    fn every_code_reencodes_to_itself_except_negative_zero() {
        for law in LAWS {
            for code in 0..=255u8 {
                let reencoded = law.encode_sample(law.decode_sample(code));
                if law == Law::Ulaw && code == 0x7F {
                    // mu-law has two zeros; zero encodes as the positive one.
                    assert_eq!(reencoded, 0xFF);
                } else {
                    assert_eq!(reencoded, code, "{law:?} code {code:#04x}");
                }
            }
        }
    }

    #[test]
    fn decode_is_monotonic_and_symmetric_over_segments() {
        for law in LAWS {
            let mut previous = None;
            for index in 0..128u8 {
                let (positive, negative) = codes_for_index(law, index);
                let value = law.decode_sample(positive);
                assert_eq!(law.decode_sample(negative), -value, "{law:?} {index}");
                if let Some(previous) = previous {
                    assert!(
                        value > previous,
                        "{law:?} index {index}: {value} <= {previous}"
                    );
                    let segment = index >> 4;
                    let gap = i32::from(value) - i32::from(previous);
                    // Inside a segment the levels are exactly one step apart.
                    if index & 0x0F != 0 {
                        assert_eq!(gap, step(law, segment), "{law:?} index {index}");
                    }
                }
                previous = Some(value);
            }
        }
    }

    #[test]
    fn encode_error_is_bounded_by_the_segment_step() {
        for law in LAWS {
            for x in i16::MIN..=i16::MAX {
                let code = law.encode_sample(x);
                let decoded = law.decode_sample(code);
                let error = (i32::from(decoded) - i32::from(x)).abs();
                let step = step(law, segment_of(law, code));
                // Half a step from quantizing, plus what the shift to 14/13 bits drops; past
                // the top decision level the coder saturates, which stays within one step.
                let top = match law {
                    Law::Ulaw => 32124,
                    Law::Alaw => 32256,
                };
                let saturating = decoded.unsigned_abs() == top;
                let bound = if saturating { step } else { step / 2 + 8 };
                assert!(
                    error <= bound,
                    "{law:?} x={x} code={code:#04x} decoded={decoded} error={error} bound={bound}"
                );
                // Symmetry about -0.5: x and !x differ only in the sign bit.
                assert_eq!(law.encode_sample(!x), code ^ 0x80, "{law:?} x={x}");
            }
        }
    }

    #[test]
    fn slice_helpers_append() {
        let samples = [0i16, 1000, -1000, i16::MAX, i16::MIN];
        for law in LAWS {
            let mut octets = vec![0x42];
            law.encode(&samples, &mut octets);
            assert_eq!(octets.len(), 1 + samples.len());
            assert_eq!(octets.first(), Some(&0x42));
            let mut decoded = vec![7];
            law.decode(octets.get(1..).unwrap_or_default(), &mut decoded);
            assert_eq!(decoded.len(), 1 + samples.len());
            assert_eq!(decoded.get(1), Some(&law.decode_sample(law.silence())));
        }
        // A-law has no zero level: its quietest codes are +-8.
        assert_eq!(Law::Ulaw.decode_sample(Law::Ulaw.silence()), 0);
        assert_eq!(Law::Alaw.decode_sample(Law::Alaw.silence()), 8);
    }
}
