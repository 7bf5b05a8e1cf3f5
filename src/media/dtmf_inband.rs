//! In-band DTMF detection, for callers whose phones or gateways send key presses as audio
//! tones instead of RFC 4733 events: Goertzel filters at the eight DTMF frequencies over
//! 20 ms windows of 8 kHz PCM taken every 10 ms, per-window checks that tell a key tone from
//! speech and noise, and a debouncer that reports each press once. Frame in, digits out.

/// G.711's sampling rate; the detector is tuned for it alone.
pub const SAMPLE_RATE: u32 = 8000;

/// Each analysis covers 20 ms, 160 samples (50 Hz bins), rather than the classic
/// 205-sample block: that resolves the DTMF frequencies a little better but would need
/// 51 ms of tone for two blocks, more than the 40 ms key presses Q.24 receivers must
/// accept. At 160 samples the nearest other tone of a group still lands 11 dB or more down.
pub const WINDOW_SAMPLES: usize = 160;

/// Windows start every 10 ms, overlapping by half. With back-to-back 20 ms blocks a 50 ms
/// tone may fill only one block completely, so the energy-share test that rejects speech
/// would have to accept blocks three-quarters empty; with a 10 ms hop every tone of 50 ms
/// or more fills at least three consecutive windows, and the test can demand a full one.
pub const HOP_SAMPLES: usize = 80;

const ROW_HZ: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
const COLUMN_HZ: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYPAD: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// Each tone is measured at its nominal frequency and 1% either side, keeping the largest.
/// Q.24 lets a sender be 1.5% off, which at 1633 Hz is half a bin and would cost a single
/// filter 3.7 dB; with the probes no accepted frequency loses more than 0.4 dB, so the
/// energy-share threshold can stay high.
const PROBE_OFFSETS: [f64; 3] = [-0.01, 0.0, 0.01];

/// RMS of a 0 dBm0 sine in our 16-bit scale: the RMS of the G.711 mu-law digital
/// milliwatt (the ITU-T test sequence for 1 kHz at 0 dBm0), which decodes to +-8828 and
/// +-20860. It is 3.17 dB below a full-scale sine, the G.711 overload point.
pub const DBM0_RMS: f64 = 16_016.0;

/// Tuning, in the units the telephony specifications use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectorConfig {
    /// Quietest tone accepted, per frequency. Q.24 receivers must accept down to about
    /// -25 dBm0 per tone; -34 leaves room for line loss, while ordinary line noise stays well
    /// below it.
    pub min_tone_dbm0: f64,
    /// How far the strongest tone of each group must stand above the others in that group.
    /// A real tone's neighbours leak 11-14 dB down (the closest pair, 697 and 770 Hz, is
    /// 73 Hz apart); voiced speech whose harmonics straddle a formant on a DTMF frequency
    /// typically puts the next harmonic 5-9 dB down.
    pub dominance_db: f64,
    /// High-group tone louder than the low group ("standard" twist, which senders produce on
    /// purpose to offset the line's high-frequency loss).
    pub max_forward_twist_db: f64,
    /// Low-group tone louder than the high group.
    pub max_reverse_twist_db: f64,
    /// Share of the window's energy that the two tones must carry. This is what rejects
    /// speech: a voiced sound spreads its energy over many harmonics, while a key tone puts
    /// nearly all of it in two. A tone up to 1.5% off frequency with 20 dB SNR, through
    /// G.711, measures at least 0.89; the worst synthetic vowel (pitch 174 Hz, so harmonics
    /// at 696 and 1218 Hz on formants at 700 and 1200 Hz) reaches 0.81. The price is noise
    /// tolerance: every key is still found at 13 dB SNR, but only four in five at 11 dB.
    pub min_tone_ratio: f64,
    /// Consecutive windows a key must be seen in before it is reported: three windows span
    /// 40 ms of tone.
    pub start_windows: u32,
    /// Consecutive windows without the key before the press counts as over. A 10 ms dropout
    /// spoils at most three windows and must not repeat the digit; a 40 ms pause, the
    /// shortest Q.24 expects between digits, spoils at least five.
    pub gap_windows: u32,
}

impl Default for DetectorConfig {
    fn default() -> DetectorConfig {
        DetectorConfig {
            min_tone_dbm0: -34.0,
            dominance_db: 8.0,
            max_forward_twist_db: 8.0,
            max_reverse_twist_db: 4.0,
            min_tone_ratio: 0.85,
            start_windows: 3,
            gap_windows: 4,
        }
    }
}

/// Thresholds turned into power ratios once, so a window costs no logarithms.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Limits {
    min_tone_power: f64,
    dominance: f64,
    forward_twist: f64,
    reverse_twist: f64,
    min_tone_ratio: f64,
}

impl Limits {
    fn new(config: &DetectorConfig) -> Limits {
        let ratio = |db: f64| 10f64.powf(db / 10.0);
        Limits {
            min_tone_power: DBM0_RMS * DBM0_RMS * ratio(config.min_tone_dbm0),
            dominance: ratio(config.dominance_db),
            forward_twist: ratio(config.max_forward_twist_db),
            reverse_twist: ratio(config.max_reverse_twist_db),
            min_tone_ratio: config.min_tone_ratio,
        }
    }
}

/// Detects DTMF key presses in a caller's decoded audio.
#[derive(Clone, Debug)]
pub struct InbandDetector {
    config: DetectorConfig,
    limits: Limits,
    row_coefficients: [[f64; 3]; 4],
    column_coefficients: [[f64; 3]; 4],
    window: [i16; WINDOW_SAMPLES],
    filled: usize,
    /// The key currently held, once reported.
    current: Option<char>,
    /// Windows in a row without `current`.
    missing_windows: u32,
    /// The key seen in the latest windows, and for how many in a row.
    candidate: Option<char>,
    candidate_windows: u32,
}

impl Default for InbandDetector {
    fn default() -> InbandDetector {
        InbandDetector::new()
    }
}

fn goertzel_coefficients(hz: f64) -> [f64; 3] {
    PROBE_OFFSETS.map(|offset| {
        let f = hz * (1.0 + offset);
        2.0 * (2.0 * std::f64::consts::PI * f / f64::from(SAMPLE_RATE)).cos()
    })
}

impl InbandDetector {
    pub fn new() -> InbandDetector {
        InbandDetector::with_config(DetectorConfig::default())
    }

    pub fn with_config(config: DetectorConfig) -> InbandDetector {
        InbandDetector {
            config,
            limits: Limits::new(&config),
            row_coefficients: ROW_HZ.map(goertzel_coefficients),
            column_coefficients: COLUMN_HZ.map(goertzel_coefficients),
            window: [0; WINDOW_SAMPLES],
            filled: 0,
            current: None,
            missing_windows: 0,
            candidate: None,
            candidate_windows: 0,
        }
    }

    /// Feeds decoded 8 kHz audio of any length (normally one 160-sample packet); returns the
    /// key presses that became certain during it. Samples short of the next window wait for
    /// the next call.
    pub fn push(&mut self, samples: &[i16]) -> Vec<char> {
        let mut digits = Vec::new();
        let mut rest = samples;
        while !rest.is_empty() {
            let free = self.window.get_mut(self.filled..).unwrap_or_default();
            let take = free.len().min(rest.len());
            let (now, later) = rest.split_at(take);
            if let Some(dest) = free.get_mut(..take) {
                dest.copy_from_slice(now);
            }
            self.filled += take;
            rest = later;
            if self.filled == WINDOW_SAMPLES {
                let key = self.analyze(&self.window).key;
                digits.extend(self.debounce(key));
                self.window.copy_within(HOP_SAMPLES.., 0);
                self.filled = WINDOW_SAMPLES - HOP_SAMPLES;
            }
        }
        digits
    }

    /// Forgets any partial window and held key, e.g. after a hold or a codec change.
    pub fn reset(&mut self) {
        *self = InbandDetector::with_config(self.config);
    }

    fn analyze(&self, window: &[i16]) -> WindowAnalysis {
        let limits = &self.limits;
        let total =
            window.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / window.len().max(1) as f64;
        // Two tones above the minimum need at least twice its power: skip the filters on
        // silence and quiet lines, which is most of the time.
        if total < 2.0 * limits.min_tone_power {
            return WindowAnalysis {
                key: None,
                tone_ratio: 0.0,
            };
        }
        let probe = |coefficients: &[f64; 3]| {
            coefficients
                .iter()
                .map(|&c| tone_power(window, c))
                .fold(0.0, f64::max)
        };
        let rows = self.row_coefficients.each_ref().map(probe);
        let columns = self.column_coefficients.each_ref().map(probe);
        let (row, row_power, row_runner_up) = strongest(&rows);
        let (column, column_power, column_runner_up) = strongest(&columns);
        let tone_ratio = (row_power + column_power) / total;
        let valid = row_power >= limits.min_tone_power
            && column_power >= limits.min_tone_power
            && row_power >= limits.dominance * row_runner_up
            && column_power >= limits.dominance * column_runner_up
            && column_power <= limits.forward_twist * row_power
            && row_power <= limits.reverse_twist * column_power
            && tone_ratio >= limits.min_tone_ratio;
        let key = if valid {
            KEYPAD.get(row).and_then(|r| r.get(column)).copied()
        } else {
            None
        };
        WindowAnalysis { key, tone_ratio }
    }

    fn debounce(&mut self, key: Option<char>) -> Option<char> {
        if key.is_some() && key == self.current {
            self.missing_windows = 0;
            return None;
        }
        if self.current.is_some() {
            self.missing_windows += 1;
            if self.missing_windows >= self.config.gap_windows {
                self.current = None;
                self.missing_windows = 0;
            }
        }
        if key == self.candidate {
            self.candidate_windows = self.candidate_windows.saturating_add(1);
        } else {
            self.candidate = key;
            self.candidate_windows = 1;
        }
        if self.current.is_none() && self.candidate_windows >= self.config.start_windows {
            if let Some(key) = self.candidate {
                self.current = Some(key);
                self.missing_windows = 0;
                return Some(key);
            }
        }
        None
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct WindowAnalysis {
    key: Option<char>,
    tone_ratio: f64,
}

/// Mean-square power of the window's component at the filter's frequency, scaled so that a
/// sine of amplitude A reads A^2/2 and compares directly with the window's mean square.
fn tone_power(window: &[i16], coefficient: f64) -> f64 {
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &sample in window {
        let s0 = f64::from(sample) + coefficient * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let magnitude_squared = s1 * s1 + s2 * s2 - coefficient * s1 * s2;
    let n = window.len().max(1) as f64;
    2.0 * magnitude_squared / (n * n)
}

/// Index and power of the strongest entry, and the power of the next strongest.
fn strongest(powers: &[f64; 4]) -> (usize, f64, f64) {
    let mut best = 0;
    for (i, &p) in powers.iter().enumerate() {
        if p > powers.get(best).copied().unwrap_or(0.0) {
            best = i;
        }
    }
    let best_power = powers.get(best).copied().unwrap_or(0.0);
    let runner_up = powers
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .map(|(_, &p)| p)
        .fold(0.0, f64::max);
    (best, best_power, runner_up)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::g711::Law;
    use std::f64::consts::PI;

    const MS: usize = 8; // samples per millisecond

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// Uniform in [-1, 1).
        fn uniform(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        }
    }

    /// Peak amplitude of a sine at `dbm0`.
    fn amplitude(dbm0: f64) -> f64 {
        DBM0_RMS * 2f64.sqrt() * 10f64.powf(dbm0 / 20.0)
    }

    fn key_frequencies(key: char) -> (f64, f64) {
        for (r, row) in KEYPAD.iter().enumerate() {
            for (c, &k) in row.iter().enumerate() {
                if k == key {
                    return (ROW_HZ[r], COLUMN_HZ[c]);
                }
            }
        }
        panic!("no key {key}");
    }

    /// Builds a signal as f64 so noise can be added before rounding to i16.
    #[derive(Default)]
    struct Signal(Vec<f64>);

    impl Signal {
        fn silence(&mut self, ms: usize) -> &mut Self {
            self.0.extend(std::iter::repeat_n(0.0, ms * MS));
            self
        }

        fn tones(&mut self, freqs: &[(f64, f64)], ms: usize) -> &mut Self {
            let start = self.0.len();
            for n in 0..ms * MS {
                let t = (start + n) as f64 / f64::from(SAMPLE_RATE);
                let v: f64 = freqs
                    .iter()
                    .map(|&(hz, dbm0)| amplitude(dbm0) * (2.0 * PI * hz * t).sin())
                    .sum();
                self.0.push(v);
            }
            self
        }

        fn key(&mut self, key: char, dbm0: f64, ms: usize) -> &mut Self {
            let (row, column) = key_frequencies(key);
            self.tones(&[(row, dbm0), (column, dbm0)], ms)
        }

        /// White noise of the given RMS over the whole signal so far.
        fn noise(&mut self, rms: f64, seed: u64) -> &mut Self {
            let mut rng = XorShift(seed);
            let peak = rms * 3f64.sqrt(); // uniform noise: rms = peak / sqrt(3)
            for v in &mut self.0 {
                *v += peak * rng.uniform();
            }
            self
        }

        fn pcm(&self) -> Vec<i16> {
            self.0
                .iter()
                .map(|&v| v.round().clamp(-32768.0, 32767.0) as i16)
                .collect()
        }
    }

    fn through(law: Law, pcm: &[i16]) -> Vec<i16> {
        let mut octets = Vec::new();
        law.encode(pcm, &mut octets);
        let mut out = Vec::new();
        law.decode(&octets, &mut out);
        out
    }

    /// Runs the detector over `pcm` in chunks of `chunk` samples.
    fn detect(pcm: &[i16], chunk: usize) -> String {
        let mut detector = InbandDetector::new();
        pcm.chunks(chunk).flat_map(|c| detector.push(c)).collect()
    }

    /// Tone level for the tests: -20 dBm0 per tone, a quiet but ordinary handset level
    /// (Q.24 senders aim for about -6 to -9 dBm0 per tone; loss on the way brings it down).
    const LEVEL: f64 = -20.0;

    /// White noise 20 dB below the two tones together (each tone's power is amplitude^2/2).
    fn noise_rms_for(dbm0_per_tone: f64) -> f64 {
        let tone_power = 2.0 * amplitude(dbm0_per_tone).powi(2) / 2.0;
        (tone_power / 100.0).sqrt()
    }

    fn keyed(keys: &str, lead_in_samples: usize, dbm0: f64, seed: u64) -> Vec<i16> {
        let mut signal = Signal::default();
        signal.0.extend(std::iter::repeat_n(0.0, lead_in_samples));
        for key in keys.chars() {
            signal.key(key, dbm0, 50).silence(50);
        }
        signal.silence(100).noise(noise_rms_for(dbm0), seed);
        signal.pcm()
    }

    #[test]
    fn every_key_at_minus_20_dbm0_in_noise() {
        let keys = "123A456B789C*0#D";
        for (i, lead_in) in [0, 1, 37, 80, 121, 159].into_iter().enumerate() {
            let pcm = keyed(keys, lead_in, LEVEL, 0x1234 + i as u64);
            assert_eq!(detect(&pcm, 160), keys, "lead-in {lead_in}");
        }
    }

    #[test]
    fn sequence_detected_in_order_once_each() {
        let keys = "159#*0D";
        for lead_in in (0..160).step_by(7) {
            let pcm = keyed(keys, lead_in, LEVEL, 99 + lead_in as u64);
            for chunk in [160, 37, 1000] {
                assert_eq!(detect(&pcm, chunk), keys, "lead-in {lead_in} chunk {chunk}");
            }
        }
    }

    #[test]
    fn sequence_survives_g711_round_trip() {
        let keys = "159#*0D";
        for law in [Law::Ulaw, Law::Alaw] {
            for lead_in in (0..160).step_by(23) {
                let pcm = through(law, &keyed(keys, lead_in, LEVEL, 7 + lead_in as u64));
                assert_eq!(detect(&pcm, 160), keys, "{law:?} lead-in {lead_in}");
            }
        }
    }

    #[test]
    fn accepts_the_level_range() {
        for dbm0 in [0.0, -10.0, -25.0, -30.0] {
            let pcm = through(Law::Ulaw, &keyed("5#", 40, dbm0, 3));
            assert_eq!(detect(&pcm, 160), "5#", "{dbm0} dBm0");
        }
        let pcm = keyed("5#", 40, -45.0, 3);
        assert_eq!(detect(&pcm, 160), "", "-45 dBm0");
    }

    #[test]
    fn twist_limits() {
        let (row, column) = key_frequencies('8');
        let case = |row_dbm0: f64, column_dbm0: f64| {
            let mut signal = Signal::default();
            signal
                .silence(20)
                .tones(&[(row, row_dbm0), (column, column_dbm0)], 100)
                .silence(40);
            detect(&signal.pcm(), 160)
        };
        assert_eq!(case(-20.0, -20.0), "8");
        assert_eq!(case(-26.0, -20.0), "8", "6 dB forward twist");
        assert_eq!(case(-30.0, -20.0), "", "10 dB forward twist");
        assert_eq!(case(-20.0, -23.0), "8", "3 dB reverse twist");
        assert_eq!(case(-20.0, -26.0), "", "6 dB reverse twist");
    }

    #[test]
    fn long_press_is_one_digit_and_gap_separates_repeats() {
        let mut signal = Signal::default();
        signal
            .key('7', LEVEL, 1500)
            .silence(60)
            .key('7', LEVEL, 60)
            .silence(60);
        signal.noise(noise_rms_for(LEVEL), 5);
        assert_eq!(detect(&signal.pcm(), 160), "77");
    }

    #[test]
    fn brief_dropout_does_not_repeat_a_digit() {
        let mut signal = Signal::default();
        signal
            .key('3', LEVEL, 200)
            .silence(10)
            .key('3', LEVEL, 200)
            .silence(60);
        assert_eq!(detect(&signal.pcm(), 160), "3");
    }

    #[test]
    fn too_short_tones_are_ignored() {
        let mut signal = Signal::default();
        for key in "123".chars() {
            signal.key(key, LEVEL, 16).silence(80);
        }
        assert_eq!(detect(&signal.pcm(), 160), "");
    }

    #[test]
    fn single_tone_is_not_a_key() {
        let mut signal = Signal::default();
        signal.tones(&[(770.0, -10.0)], 3000);
        assert_eq!(detect(&signal.pcm(), 160), "");
        let mut signal = Signal::default();
        signal.tones(&[(1336.0, -10.0)], 3000);
        assert_eq!(detect(&signal.pcm(), 160), "");
    }

    #[test]
    fn white_noise_is_not_a_key() {
        for dbm0 in [-30.0, -15.0, 0.0] {
            let mut signal = Signal::default();
            signal
                .silence(3000)
                .noise(DBM0_RMS * 10f64.powf(dbm0 / 20.0), 11);
            assert_eq!(detect(&signal.pcm(), 160), "", "{dbm0} dBm0");
        }
    }

    /// A vowel-like sound: an impulse train at a wandering pitch (100-200 Hz) through three
    /// formant resonators at 700, 1200 and 2600 Hz, scaled to `dbm0` RMS. The formants sit on
    /// the 697 Hz row and 1209 Hz column on purpose.
    fn vowel(seconds: f64, dbm0: f64, pitch: impl Fn(f64) -> f64) -> Vec<i16> {
        let n = (seconds * f64::from(SAMPLE_RATE)) as usize;
        let fs = f64::from(SAMPLE_RATE);
        let mut phase = 0.0;
        let mut source = Vec::with_capacity(n);
        for i in 0..n {
            let t = i as f64 / fs;
            phase += pitch(t) / fs;
            if phase >= 1.0 {
                phase -= 1.0;
                source.push(1.0);
            } else {
                source.push(0.0);
            }
        }
        let mut signal = source;
        for (formant, bandwidth) in [(700.0, 110.0), (1200.0, 110.0), (2600.0, 160.0)] {
            let r = (-PI * bandwidth / fs).exp();
            let a1 = 2.0 * r * (2.0 * PI * formant / fs).cos();
            let a2 = -r * r;
            let (mut y1, mut y2) = (0.0, 0.0);
            for v in &mut signal {
                let y = *v + a1 * y1 + a2 * y2;
                y2 = y1;
                y1 = y;
                *v = y;
            }
        }
        let rms = (signal.iter().map(|v| v * v).sum::<f64>() / n as f64).sqrt();
        let gain = DBM0_RMS * 10f64.powf(dbm0 / 20.0) / rms;
        signal
            .iter()
            .map(|v| (v * gain).round().clamp(-32768.0, 32767.0) as i16)
            .collect()
    }

    #[test]
    fn vowel_like_speech_is_not_a_key() {
        let gliding = |t: f64| 150.0 + 50.0 * (2.0 * PI * 0.7 * t).sin();
        let stepping = |t: f64| 100.0 + 10.0 * (t * 4.0).floor() % 100.0;
        for (name, pcm) in [
            ("gliding", vowel(4.0, -15.0, gliding)),
            ("stepping", vowel(4.0, -15.0, stepping)),
            ("steady 100 Hz", vowel(2.0, -15.0, |_| 100.0)),
            ("steady 172 Hz", vowel(2.0, -15.0, |_| 172.0)),
            ("steady 174 Hz", vowel(2.0, -15.0, |_| 174.0)),
        ] {
            for law in [None, Some(Law::Ulaw)] {
                let pcm = law.map_or_else(|| pcm.clone(), |law| through(law, &pcm));
                assert_eq!(detect(&pcm, 160), "", "{name} {law:?}");
            }
        }
    }

    /// Ratios of every 20 ms window, stepping by the detector's hop.
    fn window_ratios(pcm: &[i16]) -> Vec<f64> {
        let detector = InbandDetector::new();
        pcm.windows(WINDOW_SAMPLES)
            .step_by(HOP_SAMPLES)
            .map(|w| detector.analyze(w).tone_ratio)
            .collect()
    }

    #[test]
    fn energy_share_separates_tones_from_vowels() {
        let threshold = DetectorConfig::default().min_tone_ratio;
        let gliding = |t: f64| 150.0 + 50.0 * (2.0 * PI * 0.7 * t).sin();
        let mut worst_vowel = window_ratios(&vowel(4.0, -15.0, gliding))
            .into_iter()
            .fold(0.0, f64::max);
        for f0 in (100..=200).step_by(2) {
            let pcm = vowel(0.5, -15.0, move |_| f64::from(f0));
            worst_vowel = window_ratios(&pcm).into_iter().fold(worst_vowel, f64::max);
        }
        assert!(worst_vowel < threshold - 0.03, "vowel {worst_vowel}");

        // Windows wholly inside a tone, through noise and G.711, up to 1.5% off frequency.
        let mut worst_tone = 1.0f64;
        for key in "123A456B789C*0#D".chars() {
            for deviation in [-0.015, 0.0, 0.015] {
                let (row, column) = key_frequencies(key);
                let mut signal = Signal::default();
                signal
                    .tones(
                        &[
                            (row * (1.0 + deviation), LEVEL),
                            (column * (1.0 + deviation), LEVEL),
                        ],
                        100,
                    )
                    .noise(noise_rms_for(LEVEL), 1);
                let pcm = through(Law::Ulaw, &signal.pcm());
                worst_tone = window_ratios(&pcm).into_iter().fold(worst_tone, f64::min);
            }
        }
        assert!(worst_tone > threshold + 0.03, "tone {worst_tone}");
    }

    #[test]
    fn accepts_tones_off_frequency_by_one_and_a_half_percent() {
        for deviation in [-0.015, 0.015] {
            let mut signal = Signal::default();
            signal.silence(30);
            for key in "2580#D".chars() {
                let (row, column) = key_frequencies(key);
                let f = |hz: f64| (hz * (1.0 + deviation), LEVEL);
                signal.tones(&[f(row), f(column)], 50).silence(50);
            }
            signal.noise(noise_rms_for(LEVEL), 17);
            assert_eq!(detect(&signal.pcm(), 160), "2580#D", "{deviation}");
        }
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let mut detector = InbandDetector::new();
        let mut rng = XorShift(42);
        for len in [0, 1, 159, 160, 161, 1000] {
            let pcm: Vec<i16> = (0..len).map(|_| rng.next() as i16).collect();
            detector.push(&pcm);
        }
        detector.push(&[i16::MAX; 500]);
        detector.push(&[i16::MIN; 500]);
        detector.reset();
        assert_eq!(detector.push(&[0; 1000]), Vec::<char>::new());
    }
}
